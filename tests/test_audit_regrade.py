"""The audit checks the numbers that rank: each edit that moves a leaderboard is caught, its run or file named, and
the run left out of the means and tests, even when the forger re-hashes the files in summary.json."""

from __future__ import annotations

import json
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import SHARED_DATA
from report_helpers import final_records, make_comparison, seal

from rlbench.cli import main
from rlbench.core.configure import build_task
from rlbench.core.results import EVAL_RECORDS, read_records, record_points, write_records
from rlbench.run.eval.metrics import Scored, summarize
from rlbench.study.report.audit import audit_comparison
from rlbench.study.report.audit_run import Findings
from rlbench.study.report.build import build_report
from rlbench.study.report.inputs import ReportInputError, load_comparison, load_run
from rlbench.study.report.regrade import Regrader, regrade_run

SKILL = {"em-pg": 0.6, "grpo": 0.5, "reinforce": 0.55}
GSM8K = SHARED_DATA / "gsm8k" / "test.jsonl"


@pytest.fixture()
def comparison(tmp_path: Path) -> Path:
    # the score is the mean of the last 3 evaluations, as in the main job; 4 logged rollouts per step
    return make_comparison(tmp_path / "cmp", SKILL, rollouts=4, final_mean_of=3)


def _audit(path: Path) -> dict[str, Any]:
    return audit_comparison(load_comparison(path))


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _flagged(audit: dict[str, Any]) -> list[str]:
    return sorted(name for name, run in audit["runs"].items() if not run["matched"])


# ------------------------------------------------------------------------------------------------ the tamperings


def _raise_accuracy(back: int) -> Callable[[Path], None]:
    """Raise the greedy accuracy of the evaluation ``back`` places before the last by 0.10 in eval.jsonl."""

    def change(runs: Path) -> None:
        run = runs / "grpo-s2"
        rows = _rows(run / "eval.jsonl")
        rows[-1 - back]["greedy"]["accuracy"] += 0.10
        _write_rows(run / "eval.jsonl", rows)
        seal(run)

    return change


def _final_file(run: Path) -> Path:
    points = record_points(run)
    return points[max(points)]


def _flip_flags(runs: Path) -> None:
    """20 ``correct`` flags flipped in the final evaluation's records (nothing else touched)."""
    run = runs / "grpo-s2"
    records = read_records(_final_file(run))
    for record in records[:20]:
        record["greedy"]["correct"] = not record["greedy"]["correct"]
    write_records(_final_file(run), records)
    seal(run)


def _wrong_made_right(runs: Path) -> None:
    """15 wrong final greedy answers marked correct, with eval.jsonl and summary.json recomputed to agree."""
    run = runs / "grpo-s2"
    records = read_records(_final_file(run))
    wrong = [r for r in records if not r["greedy"]["correct"]][:15]
    assert len(wrong) == 15
    for record in wrong:
        record["greedy"].update(reward=1.0, correct=True, reason="correct")
    write_records(_final_file(run), records)
    evals = _rows(run / "eval.jsonl")
    evals[-1].update(summarize(records, ks=range(1, 3), temperature=1.0, top_p=1.0))
    _write_rows(run / "eval.jsonl", evals)
    summary = json.loads((run / "summary.json").read_text())
    summary["final"]["greedy"] = evals[-1]["greedy"]["accuracy"]
    summary["score"]["greedy"] = statistics.fmean(row["greedy"]["accuracy"] for row in evals[1:][-3:])
    (run / "summary.json").write_text(json.dumps(summary))
    seal(run)


def _swap_evaluations(runs: Path) -> None:
    """eval.jsonl and every evaluation's records swapped between em-pg-s2 and grpo-s2."""
    a, b, tmp = runs / "em-pg-s2", runs / "grpo-s2", runs.parent / "swap"
    tmp.mkdir()
    for name in ("eval.jsonl", "eval_records"):
        shutil.move(a / name, tmp / name)
        shutil.move(b / name, a / name)
        shutil.move(tmp / name, b / name)
    seal(a)
    seal(b)


def _rollouts_marked_correct(runs: Path) -> None:
    """Wrong training rollouts in samples.jsonl marked correct."""
    run = runs / "grpo-s2"
    rows = _rows(run / "samples.jsonl")
    changed = [r for r in rows if r["reward"] == 0.0][:3]
    assert changed
    for row in changed:
        row.update(reward=1.0, reason="correct")
    _write_rows(run / "samples.jsonl", rows)
    seal(run)


TAMPERINGS: list[tuple[str, Callable[[Path], None], list[str], str]] = [
    (
        "final greedy accuracy raised",
        _raise_accuracy(0),
        ["grpo-s2"],
        "grpo-s2: eval point 3 (step 6): eval.jsonl says greedy accuracy",
    ),
    (
        "second-to-last (scored) accuracy raised",
        _raise_accuracy(1),
        ["grpo-s2"],
        "grpo-s2: eval point 2 (step 4): eval.jsonl says greedy accuracy",
    ),
    (
        "20 correct flags flipped",
        _flip_flags,
        ["grpo-s2"],
        "grpo-s2: eval point 3 (step 6): 20 of 90 stored grades differ from regrading their completions",
    ),
    (
        "15 wrong records made correct, eval.jsonl and summary.json made consistent",
        _wrong_made_right,
        ["grpo-s2"],
        "grpo-s2: eval point 3 (step 6): 15 of 90 stored grades differ from regrading",
    ),
    (
        "evaluations swapped between two runs",
        _swap_evaluations,
        ["em-pg-s2", "grpo-s2"],
        "grpo-s2: eval.jsonl point 1 (step 2) says tokens = ",
    ),
    (
        "wrong rollouts marked correct",
        _rollouts_marked_correct,
        ["grpo-s2"],
        "grpo-s2: samples.jsonl: 3 of 24 logged rollouts' rewards differ from regrading",
    ),
]


def test_an_untouched_comparison_is_matched_with_nothing_left_unchecked(comparison):
    audit = _audit(comparison)
    assert audit["matched"] and audit["problems"] == [] and audit["unchecked"] == []
    data = build_report([load_comparison(comparison)], None, "greedy", "t", comparison)
    assert all(row["accuracy"]["greedy"]["n"] == 3 for row in data["tasks"][0]["algorithms"])


@pytest.mark.parametrize("case, tamper, culprits, why", TAMPERINGS, ids=[t[0] for t in TAMPERINGS])
def test_each_edit_of_a_scored_number_is_caught_named_and_left_out(comparison, case, tamper, culprits, why):
    tamper(comparison / "runs")
    audit = _audit(comparison)
    assert _flagged(audit) == culprits, (case, audit["problems"])
    assert any(why in p for p in audit["problems"]), (case, audit["problems"])
    task = build_report([load_comparison(comparison)], None, "greedy", "t", comparison)["tasks"][0]
    assert task["audit"]["flagged_runs"] == culprits
    for name in culprits:
        row = next(r for r in task["algorithms"] if r["algo"] == name.rsplit("-s", 1)[0])
        assert row["accuracy"]["greedy"]["n"] == 2 and 2 not in row["seed_scores"]["greedy"], case
        assert next(r for r in task["runs"] if r["name"] == name)["status"] == "flagged"


# ------------------------------------------------------------------------------------------------ the manifest


@pytest.mark.parametrize(
    "change, statement",
    [
        (lambda m: m["budget"].update(samples=112), "budget samples=112"),
        (lambda m: m["config"]["sampling"].update(temperature=0.7), "config sampling.temperature = 0.7"),
    ],
)
def test_a_manifest_at_odds_with_every_run_is_the_manifests_error_in_one_line(comparison, change, statement):
    manifest = json.loads((comparison / "manifest.json").read_text())
    change(manifest)
    (comparison / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ReportInputError, match="contradicted by all 9 runs it governs"):
        _audit(comparison)
    result = CliRunner().invoke(main, ["report", str(comparison)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"{comparison / 'manifest.json'}: {statement} is contradicted" in lines[0], lines
    assert "the manifest is wrong, not the runs" in lines[0]


def test_a_run_alone_at_odds_with_the_manifest_is_still_that_runs_problem(comparison):
    config = comparison / "runs" / "grpo-s2" / "config.yaml"
    config.write_text(config.read_text().replace("temperature: 1.0", "temperature: 0.7"))
    audit = _audit(comparison)
    assert "grpo-s2: sampling.temperature = 0.7, but the manifest says 1.0" in audit["problems"]
    assert _flagged(audit) == ["grpo-s2"]


# ------------------------------------------------------------------------------------------------ file hashes


def test_a_file_changed_removed_or_added_after_the_run_finished_is_named(comparison):
    run = comparison / "runs" / "grpo-s2"
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text() + "\n")  # every number still the same
    problems = _audit(comparison)["problems"]
    assert problems == [
        "grpo-s2: metrics.jsonl changed after the run finished (its sha256 is not the one summary.json recorded)"
    ]
    record_points(run)[1].unlink()
    shutil.copy(record_points(run)[0], run / EVAL_RECORDS)
    problems = _audit(comparison)["problems"]
    assert (
        "grpo-s2: eval_records/point-0001.jsonl.gz is missing (summary.json hashed it when the run finished)"
        in problems
    )
    assert "grpo-s2: eval point(s) 1 of the score have no records in eval_records/" in problems
    assert any(p.startswith("grpo-s2: eval_records.jsonl was added after the run finished") for p in problems)
    assert _flagged(_audit(comparison)) == ["grpo-s2"]


def test_model_files_left_out_of_published_results_are_not_a_problem(comparison):
    run = comparison / "runs" / "grpo-s2"
    (run / "checkpoint").mkdir()
    (run / "checkpoint" / "model.safetensors").write_bytes(b"weights")
    seal(run)
    assert "checkpoint/model.safetensors" in json.loads((run / "summary.json").read_text())["files"]
    shutil.rmtree(run / "checkpoint")
    assert _audit(comparison)["matched"]


# ------------------------------------------------------------------------------------------------ other checks


def test_records_of_another_evaluation_are_caught(comparison):
    run = comparison / "runs" / "grpo-s2"
    shutil.copy(record_points(run)[2], record_points(run)[3])
    seal(run)
    assert (
        "grpo-s2: eval point 3 (step 6): its records file holds records of point 2 (step 4)"
        in _audit(comparison)["problems"]
    )


def test_a_summary_that_disagrees_with_eval_jsonl_is_caught(comparison):
    run = comparison / "runs" / "grpo-s2"
    summary = json.loads((run / "summary.json").read_text())
    summary["score"]["sampled"] += 0.05
    (run / "summary.json").write_text(json.dumps(summary))
    problems = _audit(comparison)["problems"]
    assert [p.split(" accuracy")[0] for p in problems] == ["grpo-s2: summary.json says score sampled"]


def test_an_older_run_folder_is_matched_but_says_what_it_could_not_check(tmp_path):
    path = make_comparison(tmp_path / "old", SKILL, rollouts=4, final_mean_of=3, legacy=True)
    audit = _audit(path)
    assert audit["matched"], audit["problems"]
    assert audit["unchecked"] == [
        "summary.json holds no file hashes (written before runs recorded them), so later edits to the run's files are "
        "found only by the other checks (all 9 runs)",
        "eval point(s) 1, 2 of the score kept no per-problem records (an older run folder keeps the final "
        "evaluation's only), so they are not regraded (all 9 runs)",
    ]
    task = build_report([load_comparison(path)], None, "greedy", "t", path)["tasks"][0]
    assert "not regraded" in task["audit"]["unchecked"][1]
    # the final evaluation's records are still regraded
    records = final_records(path / "runs" / "grpo-s1")
    records[0]["greedy"]["correct"] = not records[0]["greedy"]["correct"]
    _write_rows(path / "runs" / "grpo-s1" / EVAL_RECORDS, records)
    assert _flagged(_audit(path)) == ["grpo-s1"]


def test_an_unreadable_earlier_records_file_is_its_runs_problem(comparison):
    run = comparison / "runs" / "grpo-s2"
    path = record_points(run)[1]
    path.write_bytes(path.read_bytes()[:50])
    seal(run)
    assert any(p.startswith(f"grpo-s2: {path}: cannot read") for p in _audit(comparison)["problems"])


# ------------------------------------------------------------------------------------------------ real GSM8K data


@pytest.mark.skipif(not GSM8K.exists(), reason=f"GSM8K's test split is not at {GSM8K} (../shared/data)")
def test_a_gsm8k_sized_evaluation_is_regraded_against_the_real_references(tmp_path):
    task = build_task({"name": "gsm8k", "data": str(GSM8K)})
    run = tmp_path / "grpo-s1"
    records = []
    for i, e in enumerate(task.load("test")):  # a greedy and 4 sampled completions of each of the 1,319 problems
        texts = [f"Try {j}. " + (e.solution if (i + j) % 3 else f"#### {e.answer}1") for j in range(5)]
        scored = [Scored(t, 100, False, g).record() for t, g in zip(texts, task.grade_many(texts, [e] * 5))]
        records.append({"point": 0, "step": 0, "id": e.id, "greedy": scored[0], "samples": scored[1:]})
    row = {"point": 0, "step": 0, "usage": {}, **summarize(records, ks=range(1, 5), temperature=1.0, top_p=1.0)}
    (run / "eval_records").mkdir(parents=True)
    (run / "eval.jsonl").write_text(json.dumps(row) + "\n")
    (run / "summary.json").write_text(json.dumps({"status": "completed"}))
    config = {"task": {"name": "gsm8k", "data": str(GSM8K)}, "eval": {"split": "test"}}

    def regrade() -> Findings:
        found = Findings()
        regrade_run(load_run(run, "grpo", 1), config, 1, Regrader(), found)
        return found

    write_records(run / "eval_records" / "point-0000.jsonl.gz", records)
    assert regrade().problems == [] and regrade().unchecked == []
    wrong = records[700]["samples"][1]
    assert wrong["reason"] == "wrong"
    wrong.update(correct=True, reward=1.0, reason="correct")  # marked right
    write_records(run / "eval_records" / "point-0000.jsonl.gz", records)
    assert regrade().problems == [
        "grpo-s1: eval point 0 (step 0): 1 of 6595 stored grades differ from regrading their "
        "completions (first: problem 'test-700', sample 1: stored correct, regraded wrong)"
    ]


def _moved_evaluation(change: Callable[[list[dict], dict[int, dict]], None]) -> Callable[[Path], None]:
    """Edit grpo-s2's eval.jsonl with ``change(evals, usage by step)``; files re-hashed."""

    def tamper(run: Path) -> None:
        usage = {row["step"]: row["usage"] for row in _rows(run / "metrics.jsonl")}
        evals = _rows(run / "eval.jsonl")
        change(evals, usage)
        _write_rows(run / "eval.jsonl", evals)
        seal(run)

    return tamper


@pytest.mark.parametrize(
    "tamper, why",
    [
        (_moved_evaluation(lambda evals, usage: evals[2].update(point=5)), "eval.jsonl line 3 is point 5, not 2"),
        (
            _moved_evaluation(lambda evals, usage: evals[1].update(step=9)),
            "eval.jsonl point 1 is at step 9, which metrics.jsonl does not have",
        ),
        (
            _moved_evaluation(lambda evals, usage: evals[-1].update(step=5, usage=usage[5])),
            "the final evaluation is at step 5, but the run's last step is 6",
        ),
    ],
    ids=["renumbered", "at a step never taken", "final before the end"],
)
def test_an_evaluation_out_of_place_is_caught(comparison, tamper, why):
    tamper(comparison / "runs" / "grpo-s2")
    audit = _audit(comparison)
    assert any(p == f"grpo-s2: {why}" for p in audit["problems"]), audit["problems"]
    assert _flagged(audit) == ["grpo-s2"]


def test_rollouts_of_problems_outside_the_training_split_are_caught(comparison):
    run = comparison / "runs" / "grpo-s2"
    rows = _rows(run / "samples.jsonl")
    rows[5]["id"] = "1+1+1+1+1+1"  # not an arith problem of the training split
    _write_rows(run / "samples.jsonl", rows)
    seal(run)
    assert (
        "grpo-s2: samples.jsonl logs 1 rollout(s) of problems that are not in the training split (first: '1+1+1+1+1+1')"
    ) in _audit(comparison)["problems"]


def test_a_task_that_cannot_be_loaded_leaves_grades_unchecked_but_accuracies_checked(comparison):
    run = comparison / "runs" / "grpo-s2"
    config = {"task": {"name": "gsm8k", "data": str(comparison / "absent.jsonl")}, "eval": {"split": "test"}}
    found = Findings()
    regrade_run(load_run(run, "grpo", 2), config, 3, Regrader(), found)
    assert found.problems == [] and len(found.unchecked) == 2
    assert found.unchecked[0].startswith("task 'gsm8k''s test split cannot be loaded here (")
    assert found.unchecked[0].endswith("; stored evaluation grades are checked against the accuracies only")
    _raise_accuracy(0)(comparison / "runs")
    found = Findings()
    regrade_run(load_run(run, "grpo", 2), config, 3, Regrader(), found)
    assert [p.split(" greedy")[0] for p in found.problems] == ["grpo-s2: eval point 3 (step 6): eval.jsonl says"]
