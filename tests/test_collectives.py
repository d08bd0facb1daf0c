"""Every collective runs on the process group's device: checked on a group that refuses CPU tensors, as NCCL does
(tests/relay_group.py), with two processes on the CPU. And the launches rlbench refuses, and the group's timeout."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from run_helpers import assert_reproduces

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_collective_runs_on_a_group_that_refuses_cpu_tensors():
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "PYTHONPATH": str(REPO),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(TESTS / "relay_group.py")],
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(next(line[7:] for line in out.splitlines() if line.startswith("RESULT "))) for out, _ in outs]
    for rank, res in enumerate(results):
        assert res["cpu_tensor"] == "No backend type associated with device type cpu"  # the group is NCCL-like
        assert res["device"] == f"lazy:{rank}"  # the group's device, at the rank's local index
        assert res["sum_floats"] == [3.0, 1.0]
        assert res["grads"] == [[1.0, 1.0], [2.0, 2.0], None]  # summed where any rank touched it; untouched: None
        assert res["gather_rows"] == [[0, 0], [1, 10]]
        assert res["gather_objects"] == [{"rank": 0}, {"rank": 1}]
        assert res["broadcast"] == "from 0"
        assert res["gap"]["sampler_gap_abs"] == pytest.approx(1 / 4)  # |delta| 0 + 0 + 1 + 0 over 4 tokens
        assert res["nonfinite"] == [[False, False], [True, False]]  # rank 1's NaN, seen by both


def _train(model: Path, out: Path, processes: int, env: dict) -> subprocess.CompletedProcess:
    args = [
        sys.executable,
        "-m",
        "rlbench.cli",
        "train",
        "--model",
        str(model),
        "--algo",
        "ppo",
        "--task",
        "arith",
        "--out",
        str(out),
        "--quiet",
        "--processes",
        str(processes),
    ]
    for item in (
        "task.train_size=40",
        "task.test_size=8",
        "rollout.batch_size=8",
        "rollout.samples_per_prompt=2",
        "rollout.seed_rows=true",
        "sampling.max_new_tokens=12",
        "budget.steps=2",
        "eval.limit=4",
        "eval.samples=0",
        "eval.every=0",
        "threads=1",
        "checkpoint_every=0",
        "algo.entropy_coef=0.01",
    ):
        args += ["--set", item]
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


def test_two_processes_on_a_group_that_refuses_cpu_tensors_reproduce_one(tiny_qwen_dir, tmp_path):
    relay = tmp_path / "relay"
    relay.mkdir()
    # every rank imports it at start-up: its process group is the relay group
    (relay / "sitecustomize.py").write_text("import relay_group\nrelay_group.install()\n")
    path = os.pathsep.join(filter(None, [str(relay), str(TESTS), os.environ.get("PYTHONPATH")]))
    one = _train(tiny_qwen_dir, tmp_path / "one", 1, dict(os.environ))
    assert one.returncode == 0, one.stderr[-3000:]
    two = _train(tiny_qwen_dir, tmp_path / "two", 2, {**os.environ, "PYTHONPATH": path})
    assert two.returncode == 0, two.stderr[-3000:]
    rows = assert_reproduces(tmp_path / "one", tmp_path / "two")
    assert any(r["grad_norm"] > 0 for r in rows)


def test_the_process_group_timeout_is_generous_and_configurable(monkeypatch):
    from rlbench.core.config import ConfigError
    from rlbench.engine.process_group import DEFAULT_TIMEOUT_S, TIMEOUT_ENV, timeout

    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    assert timeout() == timedelta(seconds=DEFAULT_TIMEOUT_S) > timedelta(minutes=10)  # NCCL's own default: 10 min
    monkeypatch.setenv(TIMEOUT_ENV, "5400")
    assert timeout() == timedelta(seconds=5400)
    for bad in ("soon", "0", "-3", "inf"):
        monkeypatch.setenv(TIMEOUT_ENV, bad)
        with pytest.raises(ConfigError, match=f"^{TIMEOUT_ENV}="):
            timeout()


def _cli_train(tmp_path, env_extra: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    return subprocess.run(
        [sys.executable, "-m", "rlbench.cli", "train", "--model", "tiny", "--quiet", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_deepspeed_is_refused_in_one_line_pointing_to_fsdp(tmp_path):
    done = _cli_train(tmp_path, {"ACCELERATE_USE_DEEPSPEED": "true"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("rlbench: error: DeepSpeed is not supported")
    assert "--fsdp" in done.stderr and not (tmp_path / "run").exists()


def test_a_world_spanning_machines_is_refused_in_one_line(tmp_path):
    done = _cli_train(tmp_path, {"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8", "RANK": "9"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("rlbench: error: multi-machine training is not supported")
    assert not (tmp_path / "run").exists()


def test_fsdp_below_its_transformers_release_is_refused_in_one_line(tmp_path, monkeypatch):
    """Sharded runs on an older transformers train another model than the one-process run (bisected in
    scripts/test_floor.sh's environment: 5.22.2 fails tests/test_sharding.py, 5.23.0 passes), so --fsdp is refused
    there before any process starts, and the check runs in every rank of a direct accelerate launch too."""
    from click.testing import CliRunner

    from rlbench.cli.group import main
    from rlbench.core.config import ConfigError
    from rlbench.engine.build import check_fsdp_transformers

    for old in ("4.56.2", "5.22.2"):
        with pytest.raises(ConfigError, match=rf"^--fsdp: needs transformers >= 5\.23 \(sharded runs with {old} "):
            check_fsdp_transformers(old)
    for new in ("5.23.0", "5.25.0", "6.0.0.dev0"):
        check_fsdp_transformers(new)
    monkeypatch.setattr("rlbench.engine.build.installed_version", lambda name: "5.22.2")
    monkeypatch.setattr("rlbench.cli.train.launch", lambda *a, **k: pytest.fail("launched despite the refusal"))
    out = tmp_path / "run"
    args = ["train", "--processes", "2", "--fsdp", "--set", "rollout.seed_rows=true", "--quiet", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines == [lines[-1]] and lines[-1].startswith("rlbench: error: --fsdp: needs transformers >= 5.23")
    assert not out.exists()
