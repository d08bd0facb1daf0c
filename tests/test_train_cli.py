"""End to end through the CLI: any local HF model, config errors, interruption."""

import json
import os
import signal
import subprocess
import sys
import time

from click.testing import CliRunner

from rlbench.cli import main
from rlbench.core.results import read_records, records_path
from rlbench.engine.file_hashes import file_hashes
from rlbench.run.eval.metrics import summarize

SMALL = [
    "--set",
    "rollout.batch_size=8",
    "--set",
    "rollout.samples_per_prompt=2",
    "--set",
    "sampling.max_new_tokens=8",
    "--set",
    "eval.limit=4",
    "--set",
    "task.train_size=50",
    "--set",
    "task.test_size=10",
    "--set",
    "optim.lr=1e-3",
]


def test_train_two_steps_on_a_local_qwen2(tiny_qwen_dir, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--model",
            str(tiny_qwen_dir),
            "--task",
            "arith",
            "--algo",
            "reinforce",
            "--out",
            str(out),
            "--set",
            "budget.steps=2",
            "--set",
            "eval.every=1",
            "--quiet",
            *SMALL,
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["stop_reason"] == "steps"
    assert summary["usage"]["steps"] == 2 and summary["usage"]["samples"] == 16
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in (
        "reward_mean",
        "accuracy",
        "zero_spread_groups",
        "length_mean",
        "truncated_frac",
        "entropy",
        "grad_norm",
        "gen_tokens_per_s",
        "train_tokens_per_s",
    ):
        assert key in rows[0], key
    assert set(rows[0]["time"]) >= {"generate", "grade", "update", "sync"}
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    # eval.every=1 over 2 steps: before training, after step 1, at the end (step 2 is not evaluated twice)
    assert [e["step"] for e in evals] == [0, 1, 2] and [e["point"] for e in evals] == [0, 1, 2]
    assert evals[0]["problems"] == 4
    assert (out / "checkpoint" / "config.json").exists()
    # every evaluation kept its per-problem records, tagged with its point and step, and they give its numbers
    for e in evals:
        records = read_records(records_path(out, e["point"]))
        assert len(records) == 4 and {(r["point"], r["step"]) for r in records} == {(e["point"], e["step"])}
        again = summarize(records, ks=range(1, e["sampled"]["k"] + 1), temperature=1.0, top_p=1.0)
        assert all(again[m]["accuracy"] == e[m]["accuracy"] for m in ("greedy", "sampled"))
    # the summary hashed every other file of the finished run (the model's too)
    assert summary["files"] == file_hashes(out)
    assert {"eval.jsonl", "eval_records/point-0002.jsonl.gz", "checkpoint/config.json"} <= set(summary["files"])


def test_training_changes_the_weights(tiny_qwen_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--model",
            str(tiny_qwen_dir),
            "--out",
            str(out),
            "--set",
            "budget.samples=16",
            "--quiet",
            "--set",
            "algo.baseline=none",
            *SMALL,
        ],
    )
    assert result.exit_code == 0, result.output
    before = AutoModelForCausalLM.from_pretrained(tiny_qwen_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out / "checkpoint").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_bad_flag_and_bad_value_exit_2_with_one_line():
    runner = CliRunner()
    for args, needle in (
        (["train", "--no-such-flag"], "--no-such-flag"),
        (["train", "--set", "sampling.temperature=-1"], "sampling.temperature"),
        (["train", "--set", "rollout.batch_size=7"], "rollout.batch_size"),
        (["train", "--set", "budget.steps=0"], "budget.steps"),
        (["train", "--algo", "nope"], "nope"),
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and needle in lines[0], (args, result.output)


def test_list_shows_algorithms_and_tasks():
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0
    assert "reinforce" in result.output and "arith" in result.output


def test_ctrl_c_leaves_valid_metrics_and_an_interrupted_summary(tiny_qwen_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "rlbench.cli",
        "train",
        "--model",
        str(tiny_qwen_dir),
        "--out",
        str(out),
        "--quiet",
        "--set",
        "budget.steps=100000",
        *SMALL,
    ]
    # Ctrl-C as a terminal sends it: with SIGINT's default action in the run (a shell's background job inherits it
    # ignored, and Python then never installs its KeyboardInterrupt handler)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    lines = metrics.read_text().splitlines()
    assert len(lines) >= 3
    for line in lines:
        json.loads(line)  # every line is complete JSON
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["usage"]["steps"] == len(lines)
