"""The report's reading aids: training-curve panels, accuracy small multiples, hidden empty sections, examples."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from report_helpers import arith, make_comparison, rollout, seal

from rlbench.study.report import curves
from rlbench.study.report.build import build_report, write_report
from rlbench.study.report.html import render_html
from rlbench.study.report.inputs import load_comparison
from rlbench.study.report.markdown import render_markdown
from rlbench.study.report.plots import task_plots

SKILL = {"em-pg": 0.6, "grpo": 0.5}


def _report(path: Path) -> dict:
    return build_report([load_comparison(path)], None, "greedy", "t", path)


def _row(data: dict, algo: str) -> dict:
    return next(r for r in data["tasks"][0]["algorithms"] if r["algo"] == algo)


def _edit_metrics(path: Path, change) -> None:
    """Rewrite every run's metrics.jsonl, ``change(algo, seed, row)`` editing each row in place."""
    for run in sorted((path / "runs").iterdir()):
        algo, _, seed = run.name.rpartition("-s")
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        for row in rows:
            change(algo, int(seed), row)
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        seal(run)  # as the run logged it


def _write_samples(path: Path, rows_for) -> None:
    for run in sorted((path / "runs").iterdir()):
        algo, _, seed = run.name.rpartition("-s")
        (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_for(algo, int(seed))))
        seal(run)  # as the run logged it


@pytest.fixture()
def comparison(tmp_path: Path) -> Path:
    return make_comparison(tmp_path / "arith", SKILL, seeds=(1, 2), problems=8, samples=2)


# ------------------------------------------------------------------------------------------------ training curves


def test_curves_are_drawn_only_for_quantities_some_run_logged_and_changed(comparison):
    def change(algo: str, seed: int, row: dict) -> None:
        row["grad_norm"] = 0.5  # logged everywhere, never changes: no figure
        if algo == "grpo":
            row["entropy"] = 1.0 / row["step"] + seed  # logged by one row only, changes: a figure
        row["algo"], row["seed"] = algo, seed  # the trainer's new keys are not quantities

    _edit_metrics(comparison, change)
    data = _report(comparison)
    grpo, em = _row(data, "grpo")["training"], _row(data, "em-pg")["training"]
    assert set(grpo["quantities"]) == {"reward_mean", "length_mean", "grad_norm", "entropy"}
    assert "entropy" not in em["quantities"] and em["quantities"]["grad_norm"]["varies"] is False
    assert grpo["step"] == [1, 2, 3, 4, 5, 6] and grpo["bin"] == 1
    entropy = grpo["quantities"]["entropy"]
    assert entropy["seeds"]["1"][0] == 2.0 and entropy["seeds"]["2"][1] == 2.5
    assert entropy["mean"][0] == 2.5  # the mean over seeds, step by step
    # reward_mean is flat within every run (the synthetic skill), kl_ref was never logged
    rows = data["tasks"][0]["algorithms"]
    assert curves.plotted_quantities(rows) == ["entropy", "length_mean"]
    titles = [p.title for p in task_plots(data["tasks"][0], data)]
    assert [t for t in titles if t.startswith("Training curve")] == [
        "Training curve: policy entropy (nats/token)",
        "Training curve: rollout length (tokens)",
    ]
    page = render_html(data)
    assert page.count('alt="Training curve: ') == 2 and "gradient norm" not in page


def test_long_runs_are_averaged_in_bins(comparison, monkeypatch):
    monkeypatch.setattr(curves, "MAX_POINTS", 4)  # 6 steps -> bins of 2
    runs = [r for r in load_comparison(comparison).runs if r.algo == "em-pg"]
    out = curves.training_curves(runs)
    assert out["bin"] == 2 and out["step"] == [1.5, 3.5, 5.5]
    # length_mean = 10 + step + seed
    assert out["quantities"]["length_mean"]["seeds"] == {"1": [12.5, 14.5, 16.5], "2": [13.5, 15.5, 17.5]}
    assert out["quantities"]["length_mean"]["mean"] == [13.0, 15.0, 17.0]


def test_accuracy_curves_have_a_tokens_axis_and_every_seed(comparison):
    data = _report(comparison)
    c = _row(data, "grpo")["curves"]
    assert all(p["tokens"] is not None for p in c["eval"])
    assert c["eval"][-1]["tokens"] > c["eval"][1]["tokens"] > c["eval"][0]["tokens"] == 0
    assert set(c["eval_seeds"]) == {"1", "2"}
    seed = c["eval_seeds"]["1"]
    assert len(seed["accuracy"]) == len(seed["tokens"]) == len(seed["samples"]) == len(c["eval"])
    assert seed["tokens"] != c["eval_seeds"]["2"]["tokens"]  # each seed on its own x


# ------------------------------------------------------------------------------------------------ empty sections


def test_behaviour_section_is_left_out_when_every_count_is_zero(comparison, tmp_path):
    data = _report(comparison)
    assert _row(data, "grpo")["behaviours"]["greedy"]["decomposition"]["per_100"] == 0.0  # kept in report.json
    assert "Reasoning behaviours" not in render_markdown(data) and "Reasoning behaviours" not in render_html(data)
    shown = make_comparison(tmp_path / "shown", SKILL, seeds=(1, 2), problems=8, texts={"grpo": "First 3+4=7. #### 7"})
    data = _report(shown)
    assert "### Reasoning behaviours per 100 responses" in render_markdown(data)
    assert "<h3>Reasoning behaviours per 100 responses</h3>" in render_html(data)


# ------------------------------------------------------------------------------------------------ examples


def _problem(step: int, i: int):
    return arith().load("train")[3 * step + i]


def _samples(algo: str, seed: int) -> list[dict]:
    """Rollouts whose completions (graded as the trainer would) and prompt need escaping."""
    return [
        dict(
            rollout(step, _problem(step, i), ok, f"<script>alert({step})</script> `x` |"),
            prompt="<b>What is 3+4?</b> & say",
        )
        for step in (5, 6)
        for i, ok in enumerate((True, False, True))
    ]


def test_examples_come_from_the_latest_step_and_are_escaped(comparison):
    _write_samples(comparison, _samples)
    write_report([comparison], comparison)
    data = json.loads((comparison / "report.json").read_text())
    examples = _row(data, "em-pg")["examples"]
    assert [(e["step"], e["correct"], e["seed"]) for e in examples] == [
        (6, True, 1),
        (6, True, 1),
        (6, False, 1),
        (6, False, 2),
    ]
    assert examples[0]["prompt"] == "<b>What is 3+4?</b> & say" and examples[0]["reward"] == 1.0
    page = (comparison / "index.html").read_text()
    section = page[page.index("<h3>Example completions</h3>") : page.index("<h3>Runs</h3>")]
    assert "<th>prompt</th>" in section and "<th>reward</th>" in section
    answer = _problem(6, 0).answer
    assert f'<td class="pre">&lt;script&gt;alert(6)&lt;/script&gt; `x` | #### {answer}</td>' in section
    assert '<td class="pre">&lt;b&gt;What is 3+4?&lt;/b&gt; &amp; say</td>' in section
    assert "<script" not in page and "<b>" not in page
    md = (comparison / "leaderboard.md").read_text()
    assert "### Example completions" in md
    markdown_it = pytest.importorskip("markdown_it")
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(md)
    assert not re.search(r"<(script|b)\b", html)
    table = md[md.index("### Example completions") : md.index("### Runs")]
    rows = [line for line in table.splitlines() if line.startswith("| em-pg")]
    assert rows and all(line.count(" | ") == 7 for line in rows)  # 8 cells: the completion's pipe is escaped


def test_older_samples_show_what_they_hold(comparison):
    # the trainer's earlier samples.jsonl rows: no prompt, no reward
    _write_samples(
        comparison,
        lambda algo, seed: [
            {k: v for k, v in r.items() if k not in ("prompt", "reward")} for r in _samples(algo, seed)
        ],
    )
    data = _report(comparison)
    assert _row(data, "grpo")["examples"][0]["prompt"] is None
    md = render_markdown(data)
    header = next(line for line in md.splitlines() if line.startswith("| row | seed | step"))
    assert header == "| row | seed | step | problem | completion | verdict |"


def test_without_samples_the_final_evaluation_gives_the_examples(comparison):
    data = _report(comparison)
    examples = _row(data, "em-pg")["examples"]
    assert examples and all(e["source"] == "final evaluation (greedy)" and e["step"] is None for e in examples)
    assert [e["correct"] for e in examples] == sorted((e["correct"] for e in examples), reverse=True)
    assert "| final eval |" in render_markdown(data)


def test_long_texts_are_cut_in_the_middle(comparison):
    long = "A" * 500 + "B" * 500
    _write_samples(comparison, lambda algo, seed: [rollout(1, _problem(1, 0), True, long)])
    text = _row(_report(comparison), "grpo")["examples"][0]["completion"]
    assert len(text) < 700 and text.startswith("AAA") and text.endswith(f"BBB #### {_problem(1, 0).answer}")
    assert " … " in text


# ------------------------------------------------------------------------------------------------ critic, confounds


def test_critic_fit_shows_each_runs_explained_variance_and_the_prompt_only_ceiling(tmp_path):
    comparison = make_comparison(tmp_path / "arith", SKILL, seeds=(1, 2), problems=8, samples=2, steps=25)
    assert "Critic fit" not in render_markdown(_report(comparison))  # no run has a critic: no section
    _edit_metrics(
        comparison,
        lambda algo, seed, row: row.update(value_explained_var=row["step"] / 100) if algo == "grpo" else None,
    )
    data = _report(comparison)
    fit = {r["name"]: r["critic"] for r in data["tasks"][0]["runs"]}
    assert fit["em-pg-s1"] is None
    steps = [json.loads(line)["step"] for line in (comparison / "runs/grpo-s1/metrics.jsonl").read_text().splitlines()]
    assert fit["grpo-s1"]["final"] == steps[-1] / 100
    assert fit["grpo-s1"]["last_mean"] == pytest.approx(sum(steps[-10:]) / len(steps[-10:]) / 100)
    assert fit["grpo-s1"]["first_mean"] == pytest.approx(sum(steps[:10]) / len(steps[:10]) / 100)
    assert "### Critic fit" in render_markdown(data) and "<h3>Critic fit</h3>" in render_html(data)


def test_prompt_only_ceiling_is_the_between_problem_share_of_reward_variance():
    from rlbench.study.report.critic import prompt_only_ceiling
    from rlbench.study.report.inputs import RunFiles

    def run(*groups):
        records = [{"id": str(i), "samples": [{"correct": bool(x)} for x in g]} for i, g in enumerate(groups)]
        return RunFiles("ppo-s1", "ppo", 1, Path("."), "completed", records=records)

    assert prompt_only_ceiling(run([1, 1], [0, 0])) == 1.0  # each problem always or never solved
    # the same rate on both: within-problem variance 0.5 (unbiased) against 0.25 in all, so 1 - 0.5 / 0.25
    assert prompt_only_ceiling(run([1, 0], [0, 1])) == -1.0
    # within each: 4/3 * 3/4 * 1/4 = 0.25, as much as in all (mean 1/2): nothing between the problems
    assert prompt_only_ceiling(run([1, 1, 1, 0], [0, 0, 0, 1])) == pytest.approx(0.0)
    assert prompt_only_ceiling(run([1], [0])) is None and prompt_only_ceiling(run([1, 1], [1, 1])) is None


def test_options_the_rows_share_by_name_but_set_apart_are_named():
    from rlbench.study.report.text import differing_options

    def row(label, **options):
        return {"label": label, "algo": label, "control": False, "options": options}

    line = differing_options(
        [
            row("em-pg", loss_agg="seq-mean-token-mean", baseline="code"),
            row("grpo", loss_agg="token-mean", epochs=1),
            row("ppo", loss_agg="token-mean", epochs=1),
            {**row("em-pg (A/A)", loss_agg="token-sum"), "control": True},
        ]
    )
    assert line.startswith("loss_agg (seq-mean-token-mean: em-pg; token-mean: grpo, ppo). ")
    assert "baseline" not in line and "epochs" not in line and "token-sum" not in line
    assert differing_options([row("grpo", epochs=1), row("ppo", epochs=1)]).startswith("none")
    assert differing_options([]).startswith("– ")
