"""Data-parallel training: 2 processes (accelerate launch, gloo on CPU) reproduce the 1-process run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from run_helpers import assert_reproduces

from rlbench.core.configure import build_run_config
from rlbench.engine.distributed import Ranks
from rlbench.run.training import check_processes


def _train(model: Path, out: Path, algo: str, processes: int) -> None:
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
        "budget.steps=3",
        "eval.limit=4",
        "eval.samples=0",
        "eval.every=2",
        "threads=1",
        "checkpoint_every=2",
    ):
        args += ["--set", item]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("algo", ["em-pg", "ppo"])
def test_two_processes_reproduce_one(algo, tiny_qwen_dir, tmp_path):
    _train(tiny_qwen_dir, tmp_path / "one", algo, 1)
    _train(tiny_qwen_dir, tmp_path / "two", algo, 2)
    one = assert_reproduces(tmp_path / "one", tmp_path / "two")
    assert [r["step"] for r in one] == [1, 2, 3]
    assert [e["step"] for e in _rows(tmp_path / "two" / "eval.jsonl")] == [0, 2, 3]
    from safetensors.torch import load_file

    w_one, w_two = (load_file(tmp_path / run / "checkpoint" / "model.safetensors") for run in ("one", "two"))
    assert w_one.keys() == w_two.keys()
    for name in w_one:  # the same optimiser steps on every rank: one model, equal to one process's up to round-off
        torch.testing.assert_close(w_two[name], w_one[name], rtol=1e-4, atol=1e-6)


def test_processes_must_split_the_step_evenly_and_seed_rows():
    config = build_run_config({"rollout": {"batch_size": 12, "samples_per_prompt": 4}})
    with pytest.raises(Exception, match="rollout.seed_rows"):
        check_processes(config, Ranks(0, 2))
    config = build_run_config({"rollout": {"batch_size": 12, "samples_per_prompt": 4, "seed_rows": True}})
    with pytest.raises(Exception, match="3 prompts per step do not split evenly over 2"):
        check_processes(config, Ranks(0, 2))
    check_processes(config, Ranks(0, 3))
    check_processes(config, Ranks())


def test_processes_that_cannot_split_the_step_are_refused_before_any_is_launched(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from rlbench.cli import main, train

    launched = []
    monkeypatch.setattr(train, "launch", lambda *a, **k: launched.append(a) or 0)
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--task",
            "arith",
            "--processes",
            "2",
            "--out",
            str(tmp_path / "r"),
            "--set",
            "rollout.seed_rows=false",
        ],
    )
    assert result.exit_code == 2 and not launched, result.output
    assert result.output.count("rollout.seed_rows=false: 2 processes") == 1


def test_row_seeded_samples_do_not_depend_on_the_batch(tiny_qwen_dir):
    from rlbench.engine.generation import make_generator
    from rlbench.engine.policy import Policy, load_model

    model, tok = load_model(str(tiny_qwen_dir), "fp32", torch.device("cpu"))
    gen = make_generator("rlbench", Policy(model, tok, torch.device("cpu")))
    prompts = [tok("Q: 1+2=? A:").input_ids, tok("Q: 10+20-5=? A:").input_ids, tok("Q: 7*6=? A:").input_ids] * 2
    seeds = list(range(100, 106))
    kw = dict(temperature=1.0, top_p=0.95, max_new_tokens=10)
    whole = gen.generate(prompts, seed=seeds, **kw)
    halves = [gen.generate(prompts[i : i + 3], seed=seeds[i : i + 3], **kw) for i in (0, 3)]
    assert whole.texts == halves[0].texts + halves[1].texts
    assert whole.texts[:3] != whole.texts[3:]  # same prompts, different seeds: different samples
