"""The audit's tamper suite: each way of breaking a comparison is caught and blamed on the right run and field."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from report_helpers import make_comparison, seal

from rlbench.core.results import read_records, record_points, write_records
from rlbench.study.report.audit import audit_comparison
from rlbench.study.report.inputs import load_comparison

SKILL = {"em-pg": 0.6, "grpo": 0.5, "reinforce": 0.55}


def _audit(path: Path) -> dict[str, Any]:
    return audit_comparison(load_comparison(path))


def _edit_yaml(path: Path, change: Callable[[dict], None]) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _edit_rows(path: Path, change: Callable[[list[dict]], list[dict]]) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in change(rows)))


def _config_and_fingerprint(run: Path, section: str, key: str, value: Any) -> None:
    """Change a setting in both files, as a careful forger would."""
    _edit_yaml(run / "config.yaml", lambda c: c.setdefault(section, {}).__setitem__(key, value))
    _edit_json(run / "fingerprint.json", lambda f: f["config"].setdefault(section, {}).__setitem__(key, value))


@pytest.fixture()
def comparison(tmp_path: Path) -> Path:
    return make_comparison(tmp_path / "cmp", SKILL)


def test_an_untouched_comparison_is_matched(comparison):
    audit = _audit(comparison)
    assert audit["matched"] and audit["problems"] == []
    assert all(r["matched"] for r in audit["runs"].values())


def _double_tokens(rows: list[dict]) -> list[dict]:
    for row in rows:
        row["usage"]["tokens"] *= 2
    return rows


def _drop_hash(rows: list[dict]) -> list[dict]:
    del rows[2]["prompt_ids_hash"]
    return rows


def _cut_eval_set(run: Path) -> None:
    """The final evaluation's records cut to 25 problems, renamed."""
    path = record_points(run)[max(record_points(run))]
    write_records(path, [dict(row, id=f"x-{i}") for i, row in enumerate(read_records(path)[:25])])


def _copy_run(src: str) -> Callable[[Path], None]:
    def change(run: Path) -> None:
        shutil.rmtree(run)
        shutil.copytree(run.parent / src, run)

    return change


TAMPERINGS: list[tuple[str, Callable[[Path], None], str]] = [
    ("another lr", lambda r: _config_and_fingerprint(r, "optim", "lr", 2e-4), "optim.lr differs from the other runs'"),
    ("another batch size", lambda r: _config_and_fingerprint(r, "rollout", "batch_size", 32), "rollout.batch_size"),
    (
        "other samples per prompt",
        lambda r: _config_and_fingerprint(r, "rollout", "samples_per_prompt", 4),
        "rollout.samples_per_prompt differs",
    ),
    ("another data seed", lambda r: _config_and_fingerprint(r, "task", "data_seed", 7), "task.data_seed differs"),
    (
        "config edited after the run",
        lambda r: _edit_yaml(r / "config.yaml", lambda c: c["optim"].update(lr=1.0)),
        "config.yaml optim.lr differs from fingerprint.json",
    ),
    ("a copy of another algorithm's run", _copy_run("em-pg-s2"), "algo.name = 'em-pg', but its row grpo runs 'grpo'"),
    (
        "a summary claiming one extra batch",
        lambda r: _edit_json(r / "summary.json", lambda s: s["usage"].update(samples=s["usage"]["samples"] + 16)),
        "summary.json says samples = 112, metrics.jsonl adds up to 96",
    ),
    ("doubled token counts", lambda r: _edit_rows(r / "metrics.jsonl", _double_tokens), "step 1 counts"),
    (
        "a row without a prompt hash",
        lambda r: _edit_rows(r / "metrics.jsonl", _drop_hash),
        "metrics.jsonl line 3 has no prompt hash",
    ),
    (
        "a dropped step",
        lambda r: _edit_rows(r / "metrics.jsonl", lambda rows: rows[:2] + rows[3:]),
        "metrics.jsonl steps are not 1..5 (line 3 is step 4)",
    ),
    (
        "renumbered steps after a drop",
        lambda r: _edit_rows(
            r / "metrics.jsonl", lambda rows: [dict(row, step=i + 1) for i, row in enumerate(rows[:2] + rows[3:])]
        ),
        "usage does not add one batch",
    ),
    (
        "other prompts",
        lambda r: _edit_rows(
            r / "metrics.jsonl",
            lambda rows: [dict(row, prompt_ids_hash="x") if row["step"] == 4 else row for row in rows],
        ),
        "its prompts differ from the other seed-2 runs' from step 4 on",
    ),
    (
        "other initial weights",
        lambda r: _edit_json(r / "fingerprint.json", lambda f: f.update(init_weights="w1")),
        "init_weights differs from the other runs'",
    ),
    (
        "an eval set cut to 25 with renamed ids",
        _cut_eval_set,
        "the final evaluation's records hold 25 problems that are not the 30 of its evaluation set",
    ),
    ("a missing fingerprint", lambda r: (r / "fingerprint.json").unlink(), "unreadable or missing"),
    (
        "another seed in the folder",
        lambda r: _config_and_fingerprint(r, "rollout", "sample_stream", 1),
        "rollout.sample_stream = 1 does not fit its row",
    ),
]


@pytest.mark.parametrize("case, tamper, why", TAMPERINGS, ids=[t[0] for t in TAMPERINGS])
def test_each_tampering_is_caught_and_blamed_on_its_run(comparison, case, tamper, why):
    tamper(comparison / "runs" / "grpo-s2")
    audit = _audit(comparison)
    assert not audit["matched"], case
    flagged = sorted(name for name, run in audit["runs"].items() if not run["matched"])
    assert flagged == ["grpo-s2"], (case, audit["problems"])
    assert any(why in p for p in audit["problems"]), (case, audit["problems"])


def _resum(rows: list[dict], batch: int = 16) -> list[dict]:
    """Usage rebuilt from each step's batch and mean length, as the trainer counts it."""
    tokens = 0
    for i, row in enumerate(rows):
        tokens += int(batch * row["length_mean"])
        row["step"] = i + 1
        row["usage"] = {**row["usage"], "steps": i + 1, "samples": (i + 1) * batch, "tokens": tokens}
    return rows


def _set_rows(run: Path, change: Callable[[list[dict]], list[dict]]) -> None:
    """Rewrite metrics.jsonl consistently (usage re-summed; evaluations, their records and the summary moved to
    the steps that remain; files re-hashed): only the budget rule can object."""
    _edit_rows(run / "metrics.jsonl", lambda rows: _resum(change(rows)))
    usage = {row["step"]: row["usage"] for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    last = max(usage)
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    for row in evals[1:]:
        row["step"] = min(row["step"], last) if row is not evals[-1] else last
        row["usage"] = usage[row["step"]]
        path = record_points(run)[row["point"]]
        write_records(path, [dict(r, step=row["step"]) for r in read_records(path)])
    (run / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    _edit_json(run / "summary.json", lambda s: s.update(usage=usage[last], score_steps=[last]))
    seal(run)


def test_a_run_that_took_one_more_step_than_its_budget_is_caught(comparison):
    _set_rows(comparison / "runs" / "em-pg-s1", lambda rows: rows + [json.loads(json.dumps(rows[-1]))])
    audit = _audit(comparison)
    assert "em-pg-s1: step 7 was taken after the budget was spent" in audit["problems"]
    assert sorted(n for n, r in audit["runs"].items() if not r["matched"]) == ["em-pg-s1"]


def test_tokens_budgets_accept_runs_that_stop_at_different_steps(tmp_path):
    path = make_comparison(tmp_path / "cmp", SKILL, steps=6)
    _edit_json(path / "manifest.json", lambda m: m.update(budget={"tokens": 1_000}))
    for run in (path / "runs").iterdir():
        _config_and_fingerprint(run, "budget", "tokens", 1_000)
        _config_and_fingerprint(run, "budget", "samples", None)
        # 16 completions of 10 + step + seed tokens: every run reaches 1,000 tokens at step 5
        _set_rows(run, lambda rows: rows[:5])
    assert _audit(path)["matched"]

    def longer_step_4(rows: list[dict]) -> list[dict]:
        rows[3]["length_mean"] = 24.0  # 192 + 208 + 224 + 384 = 1,008 tokens: the budget is spent after step 4
        return rows[:4]

    _set_rows(path / "runs" / "em-pg-s1", longer_step_4)  # a legitimate early stop: its prompts are a prefix
    assert _audit(path)["matched"]
    _set_rows(path / "runs" / "grpo-s2", lambda rows: rows + [json.loads(json.dumps(rows[-1]))])
    _set_rows(path / "runs" / "reinforce-s3", lambda rows: rows[:3])
    problems = _audit(path)["problems"]
    assert "grpo-s2: step 6 was taken after the budget was spent" in problems
    assert "reinforce-s3: stopped at step 3 with budget left (another step was allowed)" in problems
    assert {p.split(":")[0] for p in problems} == {"grpo-s2", "reinforce-s3"}
