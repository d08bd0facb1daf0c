"""A small comparison: matched budgets, an audit, and a SIGKILL in the middle that a rerun recovers from bitwise."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlbench.cli import main
from rlbench.compare import parse_budget
from rlbench.config import ConfigError

SETTINGS = [
    "--set", "rollout.batch_size=8", "--set", "rollout.samples_per_prompt=2", "--set", "sampling.max_new_tokens=8",
    "--set", "eval.limit=6", "--set", "eval.points=2", "--set", "task.train_size=60", "--set", "task.test_size=12",
    "--set", "optim.lr=1e-3", "--set", "checkpoint_every=2",
]
VOLATILE = {"time", "gen_tokens_per_s", "train_tokens_per_s", "tokens_per_second", "seconds"}


def _cmd(model: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "rlbench.cli", "compare", "--model", str(model), "--task", "arith",
            "--algos", "reinforce,em-pg", "--seeds", "1", "--budget", "steps=6", "--out", str(out), "--jobs", "1",
            "--no-report", "--quiet", *SETTINGS]


def _stable(value):
    """Everything but wall-clock measurements."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _rows(path: Path) -> list:
    return [_stable(json.loads(line)) for line in path.read_text().splitlines()]


def test_budget_parsing():
    assert parse_budget("samples=3840").samples == 3840
    both = parse_budget("steps=5, seconds=60")
    assert (both.steps, both.seconds) == (5, 60.0)
    for bad in ("samples", "samples=0", "apples=3", "steps=x"):
        with pytest.raises(ConfigError):
            parse_budget(bad)


def test_sigkill_then_rerun_equals_an_uninterrupted_comparison(tiny_qwen_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    subprocess.run(_cmd(tiny_qwen_dir, clean), check=True, env=env, capture_output=True, timeout=600)

    proc = subprocess.Popen(_cmd(tiny_qwen_dir, killed), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    victim = killed / "runs" / "em-pg-s1" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (victim.exists() and len(victim.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert victim.exists() and not (victim.parent / "summary.json").exists(), "the kill must land mid-run"

    done = subprocess.run(_cmd(tiny_qwen_dir, killed), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "audit: matched" in done.stdout
    for run in ("reinforce-s1", "em-pg-s1"):
        a, b = clean / "runs" / run, killed / "runs" / run
        for name in ("metrics.jsonl", "eval.jsonl", "eval_records.jsonl"):
            assert _rows(a / name) == _rows(b / name), (run, name)
        steps = [r["step"] for r in _rows(b / "metrics.jsonl")]
        assert steps == list(range(1, 7))  # no duplicated or missing rows
        sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
        assert sa["final"] == sb["final"] and sa["status"] == sb["status"] == "completed"
    audit = json.loads((killed / "audit.json").read_text())
    assert audit["matched"] and audit["runs"]["reinforce-s1"]["prompt_hash"] == audit["runs"]["em-pg-s1"]["prompt_hash"]
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["algos"] == ["reinforce", "em-pg"] and manifest["budget"]["steps"] == 6
    assert manifest["packages"]["torch"]


def test_rerun_with_a_different_budget_is_refused(tiny_qwen_dir, tmp_path):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"task": "arith", "budget": {"steps": 99}}))
    result = CliRunner().invoke(main, ["compare", "--model", str(tiny_qwen_dir), "--task", "arith", "--algos",
                                       "reinforce", "--seeds", "1", "--budget", "steps=2", "--out", str(out), *SETTINGS])
    assert result.exit_code == 2
    assert "differs from the comparison" in result.output


def test_unknown_algorithm_option_is_named(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("algo_options: {grpo: {clip_high: 0.28}}\n")
    result = CliRunner().invoke(main, ["compare", "--algos", "reinforce", "--config", str(cfg), "--out", str(tmp_path / "o"),
                                       "--budget", "steps=1"])
    assert result.exit_code == 2 and "algo_options.grpo" in result.output
