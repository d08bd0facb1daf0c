"""FSDP: 2 processes (accelerate launch --use_fsdp, gloo on CPU) holding half the model each reproduce the 1-process
run, write their files once, and resume exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest
import torch

# the data-parallel test's comparison (tests/test_distributed.py): same keys, same tolerance
from run_helpers import assert_reproduces, stable_rows

from rlbench.core.config import ConfigError
from rlbench.engine.build import check_fsdp_transformers


def _fsdp_refusal() -> str | None:
    """Why rlbench refuses --fsdp with the installed transformers (check_fsdp_transformers), or None."""
    try:
        check_fsdp_transformers(installed_version("transformers"))
    except ConfigError as exc:
        return str(exc)
    return None


# Only the floor environment of scripts/test_floor.sh has a transformers too old for --fsdp (the refusal itself is
# tested in tests/test_collectives.py); CI's lock has a newer one, where these runs must reproduce.
FSDP_REFUSAL = _fsdp_refusal()
pytestmark = pytest.mark.skipif(FSDP_REFUSAL is not None, reason=FSDP_REFUSAL or "")

# each rank's Trainer.save_state: after the state of step STOP_AT_STEP is on disk, a Ctrl-C (every rank at once)
STOPPER = """
import os
if os.environ.get("RLBENCH_TEST_STOP_AT_STEP"):
    from rlbench.engine.trainer import Trainer

    _save_state = Trainer.save_state

    def save_then_stop(self, evals_done):
        _save_state(self, evals_done)
        if self.meter.used.steps == int(os.environ["RLBENCH_TEST_STOP_AT_STEP"]):
            raise KeyboardInterrupt

    Trainer.save_state = save_then_stop
"""

# gradients on a random model that earns no reward: the entropy bonus (and em-pg's KL, so the reference is sharded
# too); PPO's policy from its first step (its critic, with a backbone of its own, is sharded as well)
EXTRA = {
    "em-pg": ("algo.entropy_coef=0.01", "algo.kl_loss_coef=0.1"),
    "ppo": ("algo.entropy_coef=0.01", "algo.critic_warmup=0"),
}


def _train(model: Path, out: Path, algo: str, *flags: str, env: dict | None = None) -> subprocess.CompletedProcess:
    args = [
        sys.executable,
        "-m",
        "rlbench.cli",
        "train",
        "--model",
        str(model),
        "--algo",
        algo,
        "--task",
        "arith",
        "--out",
        str(out),
        "--quiet",
        *flags,
    ]
    for item in (
        "task.train_size=40",
        "task.test_size=8",
        "rollout.batch_size=8",
        "rollout.samples_per_prompt=2",
        "rollout.seed_rows=true",
        "sampling.max_new_tokens=12",
        "budget.steps=3",
        "eval.limit=4",
        "eval.samples=0",
        "eval.every=2",
        "threads=1",
        "checkpoint_every=2",
        "keep_checkpoints=1",
        *EXTRA[algo],
    ):
        args += ["--set", item]
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tiny_qwen_dir, tmp_path_factory):
    """Per algorithm, the 1-process run and the 2-process FSDP run of the same config."""
    root = tmp_path_factory.mktemp("sharding")
    out = {}
    for algo in EXTRA:
        for name, flags in (("one", ()), ("fsdp", ("--processes", "2", "--fsdp"))):
            done = _train(tiny_qwen_dir, root / f"{algo}-{name}", algo, *flags)
            assert done.returncode == 0, done.stderr[-3000:]
            out[algo, name] = root / f"{algo}-{name}"
    return out


@pytest.mark.slow
@pytest.mark.parametrize("algo", list(EXTRA))
def test_fsdp_two_processes_reproduce_one(algo, runs):
    one, two = runs[algo, "one"], runs[algo, "fsdp"]
    a_rows = assert_reproduces(one, two)
    assert [r["step"] for r in a_rows] == [1, 2, 3]
    assert any(r["grad_norm"] > 0 for r in a_rows)  # it trained: equal runs are not trivially equal
    assert [e["step"] for e in _rows(two / "eval.jsonl")] == [0, 2, 3]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["status"] == "completed"
    # each rank holds its half of the weights (FSDP pads an uneven split: about half, not exactly)
    counts = summary["parameters"]
    assert sum(counts["per_rank"]) == counts["total"] and len(counts["per_rank"]) == 2
    assert all(abs(n - counts["total"] / 2) <= 0.01 * counts["total"] for n in counts["per_rank"])
    from safetensors.torch import load_file

    w_one, w_two = (load_file(run / "checkpoint" / "model.safetensors") for run in (one, two))
    assert w_one.keys() == w_two.keys()
    for name in w_one:  # the full weights, gathered from the shards: one process's up to round-off
        torch.testing.assert_close(w_two[name], w_one[name], rtol=1e-4, atol=1e-6)
    assert (two / "checkpoint-2" / "model.safetensors").exists()
    if algo == "ppo":
        heads = [torch.load(run / "checkpoint" / "value_head.pt", weights_only=True) for run in (one, two)]
        assert heads[0].keys() == heads[1].keys()
        for name in heads[0]:
            torch.testing.assert_close(heads[1][name], heads[0][name], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_fsdp_resume_continues_like_the_uninterrupted_run(runs, tiny_qwen_dir, tmp_path):
    stopper = tmp_path / "stopper"
    stopper.mkdir()
    (stopper / "sitecustomize.py").write_text(STOPPER)  # every rank imports it at start-up
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(stopper), os.environ.get("PYTHONPATH")])),
        "RLBENCH_TEST_STOP_AT_STEP": "2",
    }
    out, flags = tmp_path / "broken", ("--processes", "2", "--fsdp")
    stopped = _train(tiny_qwen_dir, out, "ppo", *flags, env=env)
    assert stopped.returncode != 0
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert (out / "state").is_dir()
    before = (out / "metrics.jsonl").read_text().splitlines()
    assert len(before) == 2
    resumed = _train(tiny_qwen_dir, out, "ppo", *flags, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # resumed, not restarted: steps 1 and 2 are the first session's rows, timings and all
    assert (out / "metrics.jsonl").read_text().splitlines()[:2] == before
    whole = runs["ppo", "fsdp"]
    for name in ("metrics.jsonl", "eval.jsonl"):  # the same run, bit for bit (but for its clock)
        assert stable_rows(out / name) == stable_rows(whole / name), name
    from safetensors.torch import load_file

    a, b = (load_file(run / "checkpoint" / "model.safetensors") for run in (whole, out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _refused(*args: str):
    from click.testing import CliRunner

    from rlbench.cli import main

    return CliRunner().invoke(main, ["train", "--model", "tiny", "--algo", "em-pg", "--quiet", *args])


def test_lora_with_fsdp_is_refused_before_anything_starts(tmp_path):
    done = _refused("--out", str(tmp_path / "run"), "--processes", "2", "--fsdp", "--set", "lora.rank=4")
    assert done.exit_code == 2
    assert done.output.strip().splitlines()[-1].startswith("rlbench: error: lora.rank=4: LoRA with FSDP")
    assert not (tmp_path / "run").exists()


def test_fsdp_needs_processes(tmp_path):
    done = _refused("--out", str(tmp_path / "run"), "--fsdp")
    assert done.exit_code == 2 and "--processes N" in done.output


def test_8bit_adamw_with_fsdp_is_refused_before_anything_starts(tmp_path):
    done = _refused(
        "--out",
        str(tmp_path / "run"),
        "--processes",
        "2",
        "--fsdp",
        "--set",
        "optim.name=adamw-8bit",
        "--set",
        "rollout.seed_rows=true",
    )
    assert done.exit_code == 2
    assert (
        done.output.strip()
        .splitlines()[-1]
        .startswith("rlbench: error: optim.name=adamw-8bit: bitsandbytes' 8-bit AdamW cannot update FSDP's sharded")
    )
    assert not (tmp_path / "run").exists()
