"""Grouped ranks, Holm across rows, the power statement, and variant-row parsing."""

from __future__ import annotations

import pytest

from rlbench.core.config import ConfigError
from rlbench.study.report import stats, verdicts
from rlbench.study.report.power import min_detectable_difference, pooled_sd, seeds_needed
from rlbench.study.variants import control_of, parse_rows

SEEDS = range(1, 7)


def _scores(base: float, shifts: list[float]) -> dict[int, float]:
    return {s: base + d for s, d in zip(SEEDS, shifts)}


NOISE = [0.01, -0.02, 0.015, -0.005, 0.0, 0.01]


def test_rows_that_cannot_be_told_apart_share_the_leaders_rank():
    scores = {"a": _scores(0.50, NOISE), "b": _scores(0.495, NOISE[::-1]), "c": _scores(0.30, NOISE)}
    ranks = verdicts.grouped_ranks(scores, ["a", "b", "c"])
    assert ranks == {"a": "1=", "b": "1=", "c": "3"}


def test_clearly_separated_rows_get_strict_ranks():
    scores = {"a": _scores(0.7, NOISE), "b": _scores(0.5, NOISE[::-1]), "c": _scores(0.3, NOISE)}
    assert verdicts.grouped_ranks(scores, ["a", "b", "c"]) == {"a": "1", "b": "2", "c": "3"}


def test_a_second_group_starts_after_the_first():
    scores = {"a": _scores(0.7, NOISE), "b": _scores(0.3, NOISE), "c": _scores(0.299, NOISE[::-1])}
    assert verdicts.grouped_ranks(scores, ["a", "b", "c"]) == {"a": "1", "b": "2=", "c": "2="}


def test_verdicts_holm_adjust_the_tests_against_the_reference_and_say_so():
    scores = {
        "ref": _scores(0.5, NOISE),
        "x": _scores(0.505, NOISE[::-1]),
        "y": _scores(0.3, NOISE),
        "ref (A/A control)": _scores(0.5, NOISE[::-1]),
    }
    out = verdicts.verdicts(scores, ["x", "ref", "y"], "ref", {"ref (A/A control)": "ref"})
    tests = out["vs_reference"]
    raw = [stats.paired_t(list(scores[r].values()), list(scores["ref"].values())).p for r in ("x", "y")]
    assert [tests["x"]["p_holm"], tests["y"]["p_holm"]] == pytest.approx(stats.holm(raw))
    assert tests["y"]["p_holm"] < 0.05 <= tests["x"]["p_holm"]
    assert out["statement"].startswith("Significant at α = 0.05 after Holm correction")
    assert "y below ref by 20.0 pp" in out["statement"] and "x " not in out["statement"]
    assert "ref (A/A control)" not in out["ranks"] and out["control"]["ref (A/A control)"]["n"] == 6
    assert out["control"]["ref (A/A control)"]["copy_of"] == "ref"


def test_nothing_significant_is_said_in_words_with_the_detectable_difference():
    scores = {"ref": _scores(0.5, NOISE), "x": _scores(0.505, NOISE[::-1])}
    out = verdicts.verdicts(scores, ["x", "ref"], "ref", {})
    power = out["power"]
    diffs = [a - b for a, b in zip(scores["x"].values(), scores["ref"].values())]
    assert power["sd"] == pytest.approx(pooled_sd([diffs]))
    assert power["mdd"] == pytest.approx(min_detectable_difference(power["sd"], 6))
    assert power["seeds_for_effect"] == seeds_needed(power["sd"], 0.03)
    assert out["statement"].startswith("No row differs significantly from ref at α = 0.05 after Holm correction")
    assert f"{100 * power['mdd']:.1f} pp" in out["statement"]


def test_variant_rows_parse_into_labels_options_and_folder_names():
    rows = parse_rows("em-pg, em-pg[baseline=mean],grpo[loss_agg=seq-mean-token-sum-norm,clip_low=0.3],ppo")
    assert [r.label for r in rows] == [
        "em-pg",
        "em-pg[baseline=mean]",
        "grpo[loss_agg=seq-mean-token-sum-norm,clip_low=0.3]",
        "ppo",
    ]
    assert [r.algo for r in rows] == ["em-pg", "em-pg", "grpo", "ppo"]
    assert rows[2].options == {"loss_agg": "seq-mean-token-sum-norm", "clip_low": 0.3}
    assert [r.slug for r in rows] == [
        "em-pg",
        "em-pg.baseline-mean",
        "grpo.loss_agg-seq-mean-token-sum-norm.clip_low-0.3",
        "ppo",
    ]
    control = control_of(rows[1])
    assert control.control and control.options == {"baseline": "mean"} and control.slug == "em-pg.baseline-mean.control"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("em-pg,em-pg", "'em-pg' names two rows"),
        ("em-pg[baseline=mean", "'[' without ']'"),
        ("em-pg]", "']' without '['"),
        ("em-pg[baseline]", "'baseline' is not key=value"),
        ("em pg", "is not an algorithm name"),
        (" , ", "name at least one algorithm"),
    ],
)
def test_bad_rows_name_the_bad_entry(text, fragment):
    with pytest.raises(ConfigError, match=None) as err:
        parse_rows(text)
    assert fragment in str(err.value)
