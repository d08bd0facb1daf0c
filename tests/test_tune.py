"""rlbench tune: equal trials per algorithm on the validation split, a tuned.yaml that compare applies and the
leaderboard states, and an audit that holds each row to its own tuned settings."""

import json
import subprocess
import sys

import pytest
import yaml
from rlbench.tasks.arith import Arith, ArithConfig

from rlbench.core.config import ConfigError
from rlbench.core.results import read_records, record_points
from rlbench.study.compare import Comparison
from rlbench.study.report.audit import audit_comparison
from rlbench.study.report.inputs import load_comparison
from rlbench.study.tune import choose, load_tuned, parse_grid, trial_rows
from rlbench.study.variants import parse_rows

SETTINGS = [
    "--set",
    "rollout.batch_size=8",
    "--set",
    "rollout.samples_per_prompt=2",
    "--set",
    "sampling.max_new_tokens=8",
    "--set",
    "eval.limit=6",
    "--set",
    "eval.every=1",
    "--set",
    "eval.samples=0",
    "--set",
    "eval.final_mean_of=2",
    "--set",
    "task.train_size=60",
    "--set",
    "task.validation_size=12",
    "--set",
    "task.test_size=12",
]


def _rlbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlbench.cli", *args], capture_output=True, text=True, timeout=600)


def test_grid_parsing_and_trial_rows():
    assert parse_grid(["optim.lr=1e-3,2e-3", "optim.warmup_steps=0,5"]) == {
        "optim.lr": ["1e-3", "2e-3"],
        "optim.warmup_steps": [0, 5],
    }
    for bad in (["lr=1e-3"], ["optim.lr"], ["optim.lr="], ["optim.lr=1,1"], ["optim.lr=1", "optim.lr=2"], []):
        with pytest.raises(ConfigError, match="--grid"):
            parse_grid(bad)
    rows = trial_rows("em-pg,grpo", parse_grid(["optim.lr=1e-3,2e-3"]))
    assert [r.label for r in rows] == [
        "em-pg[optim.lr=1e-3]",
        "em-pg[optim.lr=2e-3]",
        "grpo[optim.lr=1e-3]",
        "grpo[optim.lr=2e-3]",
    ]
    assert rows[0].settings == {"optim.lr": "1e-3"} and rows[0].algo_options == {}
    with pytest.raises(ConfigError, match="plain algorithms"):
        trial_rows("em-pg[baseline=mean]", {"optim.lr": [1]})


def test_choice_is_the_best_mean_and_the_first_among_equals():
    trials = {
        "a": [
            {"settings": {"x": 1}, "mean": 0.5},
            {"settings": {"x": 2}, "mean": 0.6},
            {"settings": {"x": 3}, "mean": 0.6},
        ]
    }
    assert choose(trials) == {"a": {"x": 2}}
    with pytest.raises(ConfigError, match="did not complete"):
        choose({"a": [{"settings": {"x": 1}, "mean": None}, {"settings": {"x": 2}, "mean": 0.1}]})


def test_tuned_file_must_cover_every_algorithm_of_its_task(tmp_path):
    path = tmp_path / "tuned.yaml"
    path.write_text(yaml.safe_dump({"tuned": {"em-pg": {"optim.lr": 1e-3}}, "protocol": {"task": "arith"}}))
    tuned, protocol = load_tuned(path, "arith", ["em-pg"])
    assert tuned == {"em-pg": {"optim.lr": 1e-3}} and protocol["tuned"] == tuned
    with pytest.raises(ConfigError, match="no tuned settings for grpo"):
        load_tuned(path, "arith", ["em-pg", "grpo"])
    with pytest.raises(ConfigError, match="tuned on task 'arith'"):
        load_tuned(path, "gsm8k", ["em-pg"])
    with pytest.raises(ConfigError, match="cannot read"):
        load_tuned(tmp_path / "missing.yaml", "arith", ["em-pg"])


def test_a_row_may_not_change_what_makes_runs_matched(tmp_path):
    base = {"task": {"name": "arith"}}
    for key in ("budget.samples", "eval.limit", "rollout.batch_size", "task.max_ops", "sampling.temperature"):
        comp = Comparison(tmp_path, base, parse_rows(f"em-pg[{key}=8]"), [1], {}, "cmd")
        with pytest.raises(ConfigError, match="cannot differ between rows"):
            comp.validate()
    comp = Comparison(tmp_path, base, parse_rows("em-pg,grpo"), [1], {}, "cmd", tuned={"grpo": {"optim.lr": "3e-4"}})
    assert comp.run_config(comp.rows[1], 1).optim.lr == 3e-4
    assert comp.run_config(comp.rows[0], 1).optim.lr != 3e-4


@pytest.mark.slow
def test_tune_then_compare_with_the_tuned_settings(tiny_qwen_dir, tmp_path):
    tuning, cmp = tmp_path / "tuning", tmp_path / "cmp"
    common = [
        "--model",
        str(tiny_qwen_dir),
        "--task",
        "arith",
        "--algos",
        "reinforce,em-pg",
        "--budget",
        "steps=2",
        "--jobs",
        "1",
        "--quiet",
        *SETTINGS,
    ]
    done = _rlbench("tune", *common, "--grid", "optim.lr=1e-3,3e-3", "--seeds", "1,2", "--out", str(tuning))
    assert done.returncode == 0, done.stderr
    document = yaml.safe_load((tuning / "tuned.yaml").read_text())
    assert set(document["tuned"]) == {"reinforce", "em-pg"}
    assert document["protocol"]["split"] == "validation" and document["protocol"]["trials_per_algorithm"] == 2
    for algo, trials in document["trials"].items():  # equal effort: same trials, same seeds, scores recomputable
        assert [t["settings"]["optim.lr"] for t in trials] == ["1e-3", "3e-3"]
        assert all(sorted(t["scores"]) == [1, 2] for t in trials)
        best = max(trials, key=lambda t: t["mean"])
        assert document["tuned"][algo] == best["settings"]
    task = Arith(ArithConfig(train_size=60, validation_size=12, test_size=12))
    validation, test = ({e.id for e in task.load(split)} for split in ("validation", "test"))
    for run in (tuning / "runs").iterdir():  # every trial evaluated on validation problems, never on test ones
        ids = {row["id"] for path in record_points(run).values() for row in read_records(path)}
        assert ids and ids <= validation and not ids & test, run.name

    done = _rlbench("compare", *common, "--seeds", "1", "--tuned", str(tuning / "tuned.yaml"), "--out", str(cmp))
    assert done.returncode == 0, done.stderr
    assert "audit: matched" in done.stdout
    for algo, settings in document["tuned"].items():
        config = yaml.safe_load((cmp / "runs" / f"{algo}-s1" / "config.yaml").read_text())
        assert config["optim"]["lr"] == float(settings["optim.lr"])
    assert "tuned with equal effort on the validation split" in (cmp / "leaderboard.md").read_text()

    # the audit holds each row to its own tuned setting: a run trained at another lr is blamed
    run = cmp / "runs" / "em-pg-s1"
    wrong = 123.0
    for name, edit in (
        ("config.yaml", lambda d: d["optim"].update(lr=wrong)),
        ("fingerprint.json", lambda d: d["config"]["optim"].update(lr=wrong)),
    ):
        path = run / name
        data = yaml.safe_load(path.read_text()) if name.endswith("yaml") else json.loads(path.read_text())
        edit(data)
        path.write_text(yaml.safe_dump(data) if name.endswith("yaml") else json.dumps(data))
    audit = audit_comparison(load_comparison(cmp))
    assert not audit["matched"]
    assert any("em-pg-s1: optim.lr = 123.0, but its row em-pg runs" in p for p in audit["problems"]), audit["problems"]
    assert audit["runs"]["reinforce-s1"]["matched"]
