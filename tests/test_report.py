"""rlbench report on synthetic comparison folders: numbers, flags, incomplete runs, bad input, self-contained HTML."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest
from click.testing import CliRunner
from report_helpers import final_records, make_comparison, read_json, seal

from rlbench.cli import main
from rlbench.core.results import read_records, record_points, write_records
from rlbench.study.report import stats, verdicts
from rlbench.study.report.build import build_report, write_report
from rlbench.study.report.inputs import ReportInputError, load_comparison
from rlbench.study.report.markdown import render_markdown

SKILL = {"em-pg": 0.7, "grpo": 0.5, "ppo": 0.3, "reinforce": 0.6}


def _report(path: Path, reference=None, metric="greedy", ci="t") -> dict:
    return build_report([load_comparison(path)], reference, metric, ci, path)


def _row(data: dict, algo: str, task: int = 0) -> dict:
    return next(r for r in data["tasks"][task]["algorithms"] if r["algo"] == algo)


def _cli(*args: str):
    return CliRunner().invoke(main, ["report", *args])


@pytest.fixture()
def comparison(tmp_path: Path) -> Path:
    return make_comparison(tmp_path / "arith", SKILL)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory):
    """One comparison reported through the CLI, shared by the tests that read the written files (plots are slow)."""
    path = make_comparison(tmp_path_factory.mktemp("written") / "arith", SKILL)
    return path, _cli(str(path))


def test_cli_writes_three_files_that_agree(written):
    comparison, result = written
    assert result.exit_code == 0, result.output
    data = read_json(comparison / "report.json")
    md = (comparison / "leaderboard.md").read_text()
    page = (comparison / "index.html").read_text()
    ranked = [r["algo"] for r in data["tasks"][0]["algorithms"]]
    assert ranked == sorted(SKILL, key=lambda a: -_row(data, a)["accuracy"]["greedy"]["mean"])
    scores = {r["algo"]: r["seed_scores"]["greedy"] for r in data["tasks"][0]["algorithms"]}
    assert [r["rank"] for r in data["tasks"][0]["algorithms"]] == [
        verdicts.grouped_ranks(scores, ranked)[a] for a in ranked
    ]
    for algo in SKILL:
        cell = _row(data, algo)["accuracy"]["greedy"]
        text = f"{100 * cell['mean']:.1f} [{100 * cell['lo']:.1f}, {100 * cell['hi']:.1f}]"
        assert text in md and text in page
    assert re.search(r"arith \(greedy, audit matched\): 1=? \w", result.output)


def test_html_is_self_contained(written):
    page = (written[0] / "index.html").read_text()
    assert "<script" not in page
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:)""", page)
    assert not re.search(r"https?://", page)
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', page)
    # reward_mean is flat within every synthetic run, so it has no training curve; length_mean changes
    assert images == [
        "Greedy accuracy during training",
        "Run scores",
        "Difference from em-pg",
        "Training curve: rollout length (tokens)",
        "Where the training time goes",
    ]
    # leaderboard, cost, example completions, runs; the behaviour table (all 0 here) is left out
    assert page.count("<table>") == 4 and "Audit" in page


def test_report_is_deterministic(written):
    comparison = written[0]
    before = {name: (comparison / name).read_bytes() for name in ("report.json", "leaderboard.md", "index.html")}
    write_report([comparison], comparison)
    for name, content in before.items():
        assert (comparison / name).read_bytes() == content, name


def test_accuracy_is_the_mean_of_the_seeds_final_evaluations(comparison):
    data = _report(comparison)
    for algo in SKILL:
        finals = [read_json(comparison / "runs" / f"{algo}-s{s}" / "summary.json")["final"] for s in (1, 2, 3)]
        for metric in ("greedy", "sampled"):
            cell = _row(data, algo)["accuracy"][metric]
            expected = stats.t_interval([f[metric] for f in finals], bounds=(0.0, 1.0))
            assert cell["mean"] == pytest.approx(statistics.fmean(f[metric] for f in finals))
            assert (cell["lo"], cell["hi"], cell["n"]) == (pytest.approx(expected.lo), pytest.approx(expected.hi), 3)


def test_headline_test_is_the_paired_t_over_seeds_with_holm(comparison):
    data = _report(comparison)
    tests = {a: _row(data, a)["test"] for a in SKILL if a != "em-pg"}
    assert _row(data, "em-pg")["test"] is None
    raw = {}
    for algo, test in tests.items():
        mine, ref = (
            _row(data, algo)["accuracy"]["greedy"]["values"],
            _row(data, "em-pg")["accuracy"]["greedy"]["values"],
        )
        expected = stats.paired_t(mine, ref)
        assert test["delta"] == pytest.approx(expected.delta) and test["p"] == pytest.approx(expected.p)
        assert test["seed_list"] == [1, 2, 3] and test["n"] == 3
        raw[algo] = expected.p
    adjusted = stats.holm(list(raw.values()))
    assert [tests[a]["p_holm"] for a in raw] == pytest.approx(adjusted)


def test_problem_level_delta_is_descriptive_and_paired_over_seeds_and_problems(comparison):
    data = _report(comparison)
    assert data["tasks"][0]["reference"] == "em-pg" and _row(data, "em-pg")["problem_delta"] is None

    def correct(algo: str, seed: int) -> list[float]:
        return [
            float(r["greedy"]["reason"] == "correct") for r in final_records(comparison / "runs" / f"{algo}-s{seed}")
        ]

    d = _row(data, "ppo")["problem_delta"]["greedy"]
    expected = statistics.fmean(a - b for s in (1, 2, 3) for a, b in zip(correct("ppo", s), correct("em-pg", s)))
    assert d["delta"] == pytest.approx(expected)
    assert (d["seeds"], d["problems"], d["paired_on"]) == (3, 30, "problems")
    assert d["p"] < 0.01  # 0.3 vs 0.7 skill on 90 pairs
    assert d["lo"] <= d["delta"] <= d["hi"]


def test_older_records_without_correct_flag_use_the_reason(tmp_path):
    comparison = make_comparison(tmp_path / "old", SKILL, legacy=True)  # before every evaluation kept its records
    before = _row(_report(comparison), "grpo")["problem_delta"]
    for run in (comparison / "runs").iterdir():
        path = run / "eval_records.jsonl"
        rows = [json.loads(r) for r in path.read_text().splitlines()]
        for row in rows:
            for item in [row["greedy"], *row["samples"]]:
                del item["correct"]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = _report(comparison)
    assert _row(data, "grpo")["problem_delta"] == before and data["tasks"][0]["audit"]["matched"]


def test_identical_algorithm_scores_delta_zero_and_p_one(tmp_path):
    path = make_comparison(tmp_path / "c", {"em-pg": 0.6, "clone": 0.6}, twin={"clone": "em-pg"})
    data = _report(path)
    d = _row(data, "clone")["problem_delta"]
    for metric in ("greedy", "sampled"):
        assert d[metric]["delta"] == 0.0 and d[metric]["p"] == 1.0
    assert _row(data, "clone")["test"]["delta"] == 0.0 and _row(data, "clone")["test"]["p"] == 1.0
    assert {_row(data, a)["rank"] for a in ("em-pg", "clone")} == {"1="}


def test_reference_and_metric_options(comparison):
    data = _report(comparison, reference="grpo", metric="sampled")
    assert _row(data, "grpo")["test"] is None
    ranked = [r["accuracy"]["sampled"]["mean"] for r in data["tasks"][0]["algorithms"]]
    assert ranked == sorted(ranked, reverse=True)
    md = render_markdown(data)
    assert "Δ sampled vs grpo (pp)" in md and "--reference grpo --metric sampled" in md


def test_header_names_both_commands_protocol_ci_and_audit(comparison):
    md = render_markdown(_report(comparison))
    manifest = read_json(comparison / "manifest.json")
    assert f"`{manifest['command']}`" in md
    assert f"`rlbench report {comparison} --metric greedy --ci t`" in md
    assert "95% Student-t interval over seeds" in md and f"multiplier is {stats.t_quantile(0.975, 2):.2f}" in md
    assert "two-sided paired t-test over seeds" in md and "Holm-adjusted" in md
    assert "**Verdict**: " in md and "minimum detectable difference" in md and "detecting 3 pp would take" in md
    assert "a run scores the mean of its last evaluation (the final one)" in md
    assert "**Learning**: every completed run's greedy score is above its evaluation before training" in md
    assert "30 problems of the 'test' split" in md and "2 sampled completion(s)" in md
    assert "**Audit**: matched" in md


def test_bootstrap_ci_option_is_stated(comparison):
    data = _report(comparison, ci="bootstrap")
    cell = _row(data, "grpo")["accuracy"]["greedy"]
    assert cell["method"] == "bootstrap"
    assert "percentile bootstrap over seeds, 10,000 resamples" in render_markdown(data)


def _tamper_prompt(comparison: Path, run: str, step: int) -> None:
    path = comparison / "runs" / run / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[step - 1]["prompt_ids_hash"] = "tampered"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seal(path.parent)  # re-hashed, as a careful forger would: the prompt stream itself must give it away


def test_the_report_recomputes_the_audit_and_leaves_flagged_runs_out(comparison):
    audit = read_json(comparison / "audit.json")  # a stale "matched" record must not be believed
    _tamper_prompt(comparison, "ppo-s2", 3)
    data = _report(comparison)
    task = data["tasks"][0]
    # only the culprit is flagged, not the other runs of its seed; "ppo-s2" does not match inside "ppo-s22"
    assert audit["matched"] and task["audit"]["flagged_runs"] == ["ppo-s2"]
    assert task["audit"]["problems"] == ["ppo-s2: its prompts differ from the other seed-2 runs' from step 3 on"]
    ppo = _row(data, "ppo")
    assert ppo["flagged"] == ["ppo-s2"] and ppo["complete"] == 2 and ppo["accuracy"]["greedy"]["n"] == 2
    md = render_markdown(data)
    assert "**Audit**: NOT matched: 1 problem(s)" in md and "- ppo-s2: its prompts differ" in md
    assert re.search(r"\| [\d=–]+ \| ppo ⚠ \|", md)
    assert re.search(r"\| ppo-s2 \| flagged .*⚠ ppo-s2: its prompts differ", md)
    kept = build_report([load_comparison(comparison)], None, "greedy", "t", comparison, include_flagged=True)
    assert _row(kept, "ppo")["accuracy"]["greedy"]["n"] == 3 and "--include-flagged" in kept["report_command"]


def test_incomplete_runs_are_listed_and_left_out(comparison):
    summary_path = comparison / "runs" / "grpo-s3" / "summary.json"
    summary = read_json(summary_path)
    summary["status"] = "interrupted"
    summary_path.write_text(json.dumps(summary))
    (comparison / "runs" / "ppo-s1" / "summary.json").unlink()  # killed: logs, no summary
    data = _report(comparison)
    task = data["tasks"][0]
    assert task["incomplete_runs"] == ["grpo-s3", "ppo-s1"]
    grpo = _row(data, "grpo")
    assert (grpo["complete"], grpo["runs"], grpo["accuracy"]["greedy"]["n"]) == (2, 3, 2)
    assert grpo["incomplete"] == [{"name": "grpo-s3", "status": "interrupted"}]
    assert _row(data, "ppo")["incomplete"] == [{"name": "ppo-s1", "status": "running"}]
    assert _row(data, "ppo")["test"]["seed_list"] == [2, 3]
    md = render_markdown(data)
    assert re.search(r"\| [\d=–]+ \| grpo (⚠ )?\| 2/3 \|", md)
    assert "Incomplete runs, left out of every number above: grpo-s3 (interrupted), ppo-s1 (running)." in md
    assert re.search(r"\| ppo-s1 \| running \|", md)


def test_missing_run_folder_is_reported_as_missing(comparison):
    import shutil

    shutil.rmtree(comparison / "runs" / "reinforce-s2")
    data = _report(comparison)
    run = next(r for r in data["tasks"][0]["runs"] if r["name"] == "reinforce-s2")
    assert run["status"] == "missing" and not run["complete"]
    assert _row(data, "reinforce")["complete"] == 2


def test_behaviours_are_counted_in_final_completions(tmp_path):
    texts = {"grpo": "Wait, let me verify: first 3+4=7. #### 7"}
    path = make_comparison(tmp_path / "c", {"em-pg": 0.5, "grpo": 0.5}, texts=texts, problems=10, samples=3)
    data = _report(path)
    grpo, em = _row(data, "grpo")["behaviours"], _row(data, "em-pg")["behaviours"]
    for kind, n in (("greedy", 30), ("sampled", 90)):
        for name in ("self_verification", "backtracking", "decomposition"):
            assert grpo[kind][name] == {"per_100": 100.0, "matches_per_100": 100.0, "responses": n}
            assert em[kind][name]["per_100"] == 0.0  # " 3+4=7 #### 7" shows none: the tiny lab's true answer
    assert data["behaviour_patterns"]["backtracking"][0] == r"\bwait\b"


def test_several_tasks_make_one_leaderboard(tmp_path):
    a = make_comparison(tmp_path / "arith", SKILL)
    b = make_comparison(tmp_path / "gsm", {"em-pg": 0.4, "grpo": 0.45}, task="gsm8k")
    _one_error_line(_cli(str(a), str(b)), "--out is required")
    data = build_report([load_comparison(a), load_comparison(b)], None, "greedy", "t", tmp_path / "both")
    assert data["summary"]["tasks"] == ["arith", "gsm8k"]
    assert data["summary"]["cells"]["ppo"]["gsm8k"] is None
    assert data["summary"]["cells"]["grpo"]["gsm8k"] == _row(data, "grpo", task=1)["accuracy"]["greedy"]
    md = render_markdown(data)
    assert f"--out {tmp_path / 'both'}" in md
    assert "## Summary: final greedy accuracy % by task" in md
    assert "## Task: arith" in md and "## Task: gsm8k" in md
    assert re.search(r"\| ppo \| [\d.]+ \[[\d.]+, [\d.]+\] \| – \|", md)
    assert "[-" not in md.split("## Task")[0]  # accuracy intervals never leave 0-100%


def test_one_seed_says_it_has_no_interval(tmp_path):
    path = make_comparison(tmp_path / "c", {"em-pg": 0.6, "grpo": 0.4}, seeds=(7,))
    md = render_markdown(_report(path))
    assert "(n=1, no CI)" in md


# -------------------------------------------------------------------------------------------- bad input


def _one_error_line(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_folder_without_manifest(tmp_path):
    (tmp_path / "empty").mkdir()
    _one_error_line(_cli(str(tmp_path / "empty")), str(tmp_path / "empty" / "manifest.json"), "missing")


def test_broken_manifest(comparison):
    (comparison / "manifest.json").write_text('{"task": "arith", ')
    _one_error_line(_cli(str(comparison)), "manifest.json", "not valid JSON")


def test_manifest_missing_a_key(comparison):
    manifest = read_json(comparison / "manifest.json")
    del manifest["seeds"]
    (comparison / "manifest.json").write_text(json.dumps(manifest))
    _one_error_line(_cli(str(comparison)), "manifest.json", "missing key 'seeds'")


def test_broken_jsonl_line_is_named(comparison):
    path = comparison / "runs" / "ppo-s2" / "metrics.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:20]
    path.write_text("\n".join(lines) + "\n")
    _one_error_line(_cli(str(comparison)), f"{path}:3", "not valid JSON")


def test_record_without_id_is_named(comparison):
    path = record_points(comparison / "runs" / "grpo-s1")[3]  # the final evaluation's
    rows = read_records(path)
    del rows[4]["id"]
    write_records(path, rows)
    _one_error_line(_cli(str(comparison)), f"{path}:5", "field 'id' missing")


def test_broken_summary_is_named(comparison):
    (comparison / "runs" / "em-pg-s1" / "summary.json").write_text("{")
    _one_error_line(_cli(str(comparison)), "em-pg-s1/summary.json", "not valid JSON")


def test_torn_last_line_is_forgiven(comparison):
    path = comparison / "runs" / "ppo-s2" / "metrics.jsonl"
    with path.open("a") as handle:
        handle.write('{"step": 7, "usa')  # a writer killed mid-line
    seal(path.parent)  # there when the run finished: a later edit is the audit's to name
    data = _report(comparison)
    assert _row(data, "ppo")["complete"] == 3


def test_unknown_reference(comparison):
    _one_error_line(_cli(str(comparison), "--reference", "dpo"), "--reference dpo", "manifest.json")


def test_sampled_metric_needs_a_sampled_evaluation(comparison):
    manifest = read_json(comparison / "manifest.json")
    manifest["eval"]["samples"] = 0
    (comparison / "manifest.json").write_text(json.dumps(manifest))
    _one_error_line(_cli(str(comparison), "--metric", "sampled"), "--metric sampled", "eval.samples = 0")


def test_default_reference_falls_back_to_the_first_algorithm(tmp_path):
    path = make_comparison(tmp_path / "c", {"grpo": 0.5, "ppo": 0.4})
    assert _report(path)["tasks"][0]["reference"] == "grpo"


def test_load_errors_are_report_input_errors(tmp_path):
    with pytest.raises(ReportInputError, match="not a directory"):
        load_comparison(tmp_path / "nowhere")


def test_runs_that_did_not_beat_their_start_are_named(comparison):
    run = comparison / "runs" / "ppo-s3"
    path = run / "eval.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    final = final_records(run)  # a run whose evaluation before training already answered as its final one does
    write_records(record_points(run)[0], [dict(r, point=0, step=0) for r in final])
    rows[0].update({k: v for k, v in rows[-1].items() if k not in ("point", "step", "usage")})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seal(run)
    data = _report(comparison)
    assert data["tasks"][0]["not_above_start"] == ["ppo-s3"]
    assert (
        "**Learning**: 1 completed run(s) did not end above their evaluation before training on greedy: ppo-s3"
        in render_markdown(data)
    )


def test_report_never_overwrites_files_rlbench_did_not_write(written, tmp_path):
    out = tmp_path / "site"
    out.mkdir()
    (out / "index.html").write_text("<html>my own page</html>")
    result = _cli(str(written[0]), "--out", str(out))
    assert result.exit_code == 2
    assert "index.html there was not written by rlbench; it is kept" in result.output
    assert (out / "index.html").read_text() == "<html>my own page</html>" and not (out / "report.json").exists()
    assert _cli(str(written[0])).exit_code == 0  # its own files are rewritten
