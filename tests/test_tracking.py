"""Experiment tracking (report_to): what a tracker is sent, read back offline; and trackers never make a run another."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rlbench.cli import main
from rlbench.core.config import ConfigError
from rlbench.core.configure import build_run_config, saved_config_mismatch
from rlbench.run.tracking import TensorBoardTracker, Tracker, run_identity, scalars

REPO = Path(__file__).resolve().parents[1]
TREE = {
    "algo": {"name": "reinforce"},
    "rollout": {"batch_size": 4, "samples_per_prompt": 2},
    "sampling": {"max_new_tokens": 6},
    "task": {"name": "arith", "train_size": 20, "test_size": 4},
    "budget": {"steps": 3},
    "eval": {"limit": 4, "every": 2},
    "checkpoint_every": 0,
}
SETS = [
    "--algo",
    "reinforce",
    "--task",
    "arith",
    "--set",
    "rollout.batch_size=4",
    "--set",
    "rollout.samples_per_prompt=2",
    "--set",
    "sampling.max_new_tokens=6",
    "--set",
    "task.train_size=20",
    "--set",
    "task.test_size=4",
    "--set",
    "budget.steps=3",
    "--set",
    "eval.limit=4",
    "--set",
    "eval.every=2",
    "--set",
    "checkpoint_every=0",
]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _events(logdir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _series(acc, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


# ------------------------------------------------------------------------------------------------ config


def test_report_to_is_validated_and_names_the_key():
    with pytest.raises(ConfigError, match=r"report_to='comet': must be one of tensorboard, wandb, trackio"):
        build_run_config({"report_to": ["comet"]})
    assert build_run_config({}).report_to == []


def test_a_missing_tracker_package_is_one_line_naming_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(
        ConfigError, match=r"report_to=\['wandb'\]: wandb is not installed; pip install 'rlbench\[wandb\]'"
    ):
        build_run_config({"report_to": ["wandb"]})
    result = CliRunner().invoke(main, ["train", "--report-to", "wandb", "--out", "unused"])
    assert result.exit_code == 2 and "rlbench[wandb]" in result.output and len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(main, ["train", "--report-to", "tensorboard,comet", "--out", "unused"])
    assert result.exit_code == 2 and "report_to='comet'" in result.output


def test_trackers_do_not_make_a_saved_run_different(tmp_path):
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump({**build_run_config({}).to_dict(), "report_to": ["tensorboard", "wandb"]}))
    assert saved_config_mismatch(saved, build_run_config({})) is None
    assert "optim.lr" in saved_config_mismatch(saved, build_run_config({"optim": {"lr": 0.5}}))


def test_the_audit_ignores_trackers(tmp_path):
    from report_helpers import make_comparison, seal

    from rlbench.study.report.audit import audit_comparison
    from rlbench.study.report.inputs import load_comparison

    path = make_comparison(tmp_path / "c", {"em-pg": 0.6, "grpo": 0.5})
    config_file = path / "runs" / "grpo-s2" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config_file.write_text(yaml.safe_dump({**config, "report_to": ["tensorboard"]}))
    seal(config_file.parent)  # the run was launched so
    audit = audit_comparison(load_comparison(path))
    assert audit["matched"], audit["problems"]


def test_run_identity_groups_by_comparison(tmp_path):
    (tmp_path / "cmp" / "runs" / "grpo-s1").mkdir(parents=True)
    assert run_identity(tmp_path / "cmp" / "runs" / "grpo-s1") == ("grpo-s1", None)  # no manifest: standalone
    (tmp_path / "cmp" / "manifest.json").write_text("{}")
    assert run_identity(tmp_path / "cmp" / "runs" / "grpo-s1") == ("grpo-s1", "cmp")
    assert run_identity(tmp_path / "solo") == ("solo", None)


def test_rows_become_flat_numbers_at_their_step():
    step = {
        "step": 3,
        "reward_mean": 0.5,
        "usage": {"tokens": 40, "seconds": 1.5},
        "time": {"generate": 0.2},
        "prompt_ids_hash": "ab12",
        "flag": True,
    }
    assert scalars("step", step) == (
        3,
        {"reward_mean": 0.5, "usage/tokens": 40, "usage/seconds": 1.5, "time/generate": 0.2},
    )
    ev = {
        "point": 1,
        "step": 2,
        "greedy": {"accuracy": 0.25, "reasons": {"correct": 1}},
        "sampled": {"accuracy": 0.5, "pass@4": 0.75, "length_mean": 7.0},
    }
    assert scalars("eval", ev) == (
        2,
        {
            "eval/point": 1,
            "eval/greedy/accuracy": 0.25,
            "eval/greedy/reasons/correct": 1,
            "eval/sampled/accuracy": 0.5,
            "eval/sampled/pass@4": 0.75,
            "eval/sampled/length_mean": 7.0,
        },
    )
    assert scalars("other", ev) is None


def test_a_failing_tracker_warns_once_and_the_run_goes_on(tmp_path, capsys):
    class Broken(Tracker):
        name = "broken"
        calls = 0

        def open(self, resumed, first_step):
            pass

        def log(self, step, numbers):
            Broken.calls += 1
            raise RuntimeError("server unreachable\ndetails")

    tracker = Broken(tmp_path / "run", {})
    for step in (1, 2, 3):
        tracker("step", {"step": step, "loss": 1.0})  # never raises
    tracker.close()
    assert Broken.calls == 1
    err = capsys.readouterr().err
    assert err.count("broken tracking stopped (server unreachable)") == 1


# ------------------------------------------------------------------------------------------------ tensorboard


def test_tensorboard_resume_replaces_the_relogged_steps(tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    first = TensorBoardTracker(out, {"seed": 1, "optim": {"lr": 0.1}})
    first("eval", {"point": 0, "step": 0, "greedy": {"accuracy": 0.1}})
    for step in (1, 2, 3):
        first("step", {"step": step, "loss": float(step)})
    first.close()
    resumed = TensorBoardTracker(out, {"seed": 1, "optim": {"lr": 0.1}})
    for step in (3, 4):  # the state was saved after step 2: step 3 is taken again
        resumed("step", {"step": step, "loss": 10.0 * step})
    resumed.close()
    acc = _events(out / "tensorboard")
    assert _series(acc, "loss") == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
    assert _series(acc, "eval/greedy/accuracy") == [(0, pytest.approx(0.1))]


def test_tensorboard_run_logs_every_step_and_evaluation(tiny_qwen_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from rlbench.run.training import train

    out = tmp_path / "run"
    config = build_run_config({**TREE, "model": str(tiny_qwen_dir), "out": str(out), "report_to": ["tensorboard"]})
    summary = train(config, progress=False)
    assert summary["status"] == "completed"
    metrics, evals = _rows(out / "metrics.jsonl"), _rows(out / "eval.jsonl")
    acc = _events(out / "tensorboard")
    assert _series(acc, "reward_mean") == [(r["step"], pytest.approx(r["reward_mean"])) for r in metrics]
    assert [s for s, _ in _series(acc, "reward_mean")] == [1, 2, 3]
    assert _series(acc, "usage/tokens") == [(r["step"], r["usage"]["tokens"]) for r in metrics]
    assert [s for s, _ in _series(acc, "time/generate")] == [1, 2, 3]
    for kind in ("greedy", "sampled"):
        assert _series(acc, f"eval/{kind}/accuracy") == [(e["step"], pytest.approx(e[kind]["accuracy"])) for e in evals]
    assert [s for s, _ in _series(acc, "eval/greedy/accuracy")] == [0, 2, 3]
    assert _series(acc, "eval/sampled/length_mean")[-1][1] == pytest.approx(evals[-1]["sampled"]["length_mean"])
    assert "config/text_summary" in acc.Tags()["tensors"]
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "report_to:\n- tensorboard" in text and "name: reinforce" in text
    # the tracker is in config.yaml (what ran), not in the fingerprint (what makes runs comparable)
    assert yaml.safe_load((out / "config.yaml").read_text())["report_to"] == ["tensorboard"]
    assert "report_to" not in json.loads((out / "fingerprint.json").read_text())["config"]


# ------------------------------------------------------------------------------------------------ trackio, wandb


def _cli_train(model: Path, out: Path, trackers: str, env: dict[str, str | None]) -> subprocess.CompletedProcess:
    """``rlbench train --report-to TRACKERS`` in a process of its own (trackers read their settings at import)."""
    cmd = [
        sys.executable,
        "-m",
        "rlbench.cli",
        "train",
        "--model",
        str(model),
        "--out",
        str(out),
        "--quiet",
        "--report-to",
        trackers,
        *SETS,
    ]
    full = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, env=full)


def test_trackio_logs_locally_grouped_by_comparison(tiny_qwen_dir, tmp_path):
    pytest.importorskip("trackio")
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "manifest.json").write_text("{}")  # a comparison folder: its name is the trackio project
    out = tmp_path / "cmp" / "runs" / "reinforce-s0"
    env = {"TRACKIO_DIR": str(tmp_path / "trackio")}
    done = _cli_train(tiny_qwen_dir, out, "trackio", env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["status"] == "completed"  # trackio's chatter went to stderr
    read = (
        "import json, sys; from trackio.sqlite_storage import SQLiteStorage as S; "
        "print(json.dumps({'runs': S.get_runs('cmp'), 'logs': S.get_logs('cmp', 'reinforce-s0'), "
        "'config': S.get_run_config('cmp', 'reinforce-s0')}, default=str))"
    )
    back = subprocess.run(
        [sys.executable, "-c", read], capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )
    assert back.returncode == 0, back.stderr[-3000:]
    data = json.loads(back.stdout.strip().splitlines()[-1])
    assert data["runs"] == ["reinforce-s0"]
    metrics, evals = _rows(out / "metrics.jsonl"), _rows(out / "eval.jsonl")
    steps = {}
    for log in data["logs"]:
        steps.setdefault(log["step"], {}).update(log)
    assert [steps[r["step"]]["reward_mean"] for r in metrics] == pytest.approx([r["reward_mean"] for r in metrics])
    assert [steps[e["step"]]["eval/greedy/accuracy"] for e in evals] == pytest.approx(
        [e["greedy"]["accuracy"] for e in evals]
    )
    assert "usage/tokens" in steps[3] and "eval/sampled/accuracy" in steps[0]
    assert data["config"]["optim"]["lr"] == pytest.approx(1e-4) and data["config"]["seed"] == 0


def test_wandb_runs_offline_into_the_run_folder_when_wandb_mode_says_so(tiny_qwen_dir, tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    # offline because WANDB_MODE says so: rlbench no longer forces it (a logged-in user's runs go online)
    env = {
        "WANDB_MODE": "offline",
        "WANDB_API_KEY": None,
        "WANDB_DIR": None,
        "WANDB_SILENT": "true",
        "HOME": str(tmp_path),
    }
    done = _cli_train(tiny_qwen_dir, out, "wandb", env)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert (out / "wandb" / "rlbench-run-id").read_text().strip() in runs[0].name


def test_wandb_mode_is_left_to_wandb(tmp_path, monkeypatch):
    """No mode is forced: wandb.init gets none, so WANDB_MODE, `wandb login` and `wandb offline` decide."""
    import types

    from rlbench.run.tracking import WandbTracker

    calls = []
    fake = types.SimpleNamespace(
        init=lambda project=None, group=None, name=None, id=None, resume=None, dir=None, config=None, mode=None, reinit=None: (
            calls.append(mode) or types.SimpleNamespace()
        )
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    WandbTracker(tmp_path / "run", {}).open(resumed=False, first_step=0)
    assert calls == [None]
