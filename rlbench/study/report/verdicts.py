"""What a comparison can and cannot say: seed-level tests, Holm correction, grouped ranks, detectable differences.

The unit of replication is the training seed: a run's score (the mean of its last K evaluations) is one number per
(row, seed), and two rows are compared by the paired differences of their scores over the seeds both ran. Problems
are not independent replicates of an algorithm: two runs of one algorithm differ by more than their per-problem
noise explains (the seed x algorithm random effect), so a test that resamples problems with the seeds held fixed
rejects a true null far more often than its level says (tests/test_calibration.py measures both).
"""

from __future__ import annotations

from typing import Any

from rlbench.study.report import stats
from rlbench.study.report.power import min_detectable_difference, pooled_sd, sd_interval, seeds_needed

ALPHA = 0.05
POWER = 0.8
TARGET_EFFECT = 0.03  # the difference the header asks "how many seeds would detect this?" about (3 pp)


def seed_pairs(mine: dict[int, float], ref: dict[int, float]) -> tuple[list[int], list[float], list[float]]:
    """The seeds both rows scored, and their scores in seed order."""
    seeds = sorted(s for s in mine if s in ref)
    return seeds, [mine[s] for s in seeds], [ref[s] for s in seeds]


def compare_with(mine: dict[int, float], ref: dict[int, float]) -> dict[str, Any] | None:
    """Paired test over seeds of mine − ref (None when they share no seed)."""
    seeds, a, b = seed_pairs(mine, ref)
    if not seeds:
        return None
    test = stats.seed_test(a, b).to_dict()
    if test["lo"] is not None:  # a difference of accuracies cannot leave [-1, 1]
        test["lo"], test["hi"] = max(test["lo"], -1.0), min(test["hi"], 1.0)
    return {**test, "seed_list": seeds, "differences": [x - y for x, y in zip(a, b)]}


def verdicts(
    scores: dict[str, dict[int, float]], ranked: list[str], reference: str, controls: dict[str, str]
) -> dict[str, Any]:
    """Everything the leaderboard concludes from per-seed scores.

    ``scores``: row label -> {seed: score}; ``ranked``: the rows that compete, best mean first (controls excluded);
    ``reference``: the row the others are tested against; ``controls``: A/A control label -> the row it copies, which
    it is tested against. Returns the tests against the reference (with Holm-
    adjusted p-values across them), the grouped ranks, the detectable-difference statement and the A/A control.
    """
    others = [r for r in ranked if r != reference and r in scores]
    tests = {r: compare_with(scores[r], scores.get(reference, {})) for r in others}
    adjusted = stats.holm([t["p"] if t else None for t in tests.values()])
    for row, p_holm in zip(tests, adjusted):
        if tests[row] is not None:
            tests[row]["p_holm"] = p_holm
    power = detectable(tests)
    control = {c: compare_with(scores.get(c, {}), scores.get(source, {})) for c, source in controls.items()}
    # the controls are a family of their own (Holm over them), apart from the rows': adding a control never
    # changes a row's verdict
    for c, p_holm in zip(control, stats.holm([t["p"] if t else None for t in control.values()])):
        if control[c] is not None:
            control[c]["copy_of"] = controls[c]
            control[c]["p_holm"] = p_holm
            control[c]["found"] = p_holm is not None and p_holm < ALPHA
    return {
        "alpha": ALPHA,
        "vs_reference": tests,
        "ranks": grouped_ranks(scores, ranked),
        "power": power,
        "control": control,
        "statement": statement(tests, reference, power),
    }


def pairwise_tests(scores: dict[str, dict[int, float]], rows: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """Paired t over seeds for every pair (better-scoring row first), Holm-adjusted across all k(k-1)/2 pairs.

    One family for every pair, so the grouping controls its error whichever row the data puts on top: under a global
    null, no row leaves the top group in more than α of comparisons (tests/test_calibration.py simulates it)."""
    pairs = [(hi, lo) for i, hi in enumerate(rows) for lo in rows[i + 1 :]]
    tests = {pair: compare_with(scores[pair[1]], scores[pair[0]]) for pair in pairs}
    adjusted = stats.holm([t["p"] if t else None for t in tests.values()])
    for pair, p_holm in zip(pairs, adjusted):
        if tests[pair] is not None:
            tests[pair]["p_holm"] = p_holm
    return {pair: t for pair, t in tests.items() if t is not None}


def grouped_ranks(scores: dict[str, dict[int, float]], ranked: list[str]) -> dict[str, str]:
    """Rank labels in score order, such as ``1=``: a row's rank is one more than the number of rows found better
    than it by :func:`pairwise_tests`, raised where needed so that ranks never go down the table (a lower score is
    never ranked above a higher one). Rows with the same rank share it (``2=``).

    ``ranked``: the competing rows, best mean first.
    """
    rows = [r for r in ranked if scores.get(r)]
    tests = pairwise_tests(scores, rows)
    out: dict[str, int] = {}
    floor = 1
    for row in rows:
        better = sum(
            1
            for (hi, lo), t in tests.items()
            if lo == row and t["p_holm"] is not None and t["p_holm"] < ALPHA and t["delta"] < 0
        )
        floor = max(floor, 1 + better)
        out[row] = floor
    counts = {rank: list(out.values()).count(rank) for rank in set(out.values())}
    return {row: f"{rank}=" if counts[rank] > 1 else str(rank) for row, rank in out.items()}


def detectable(tests: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """From the observed spread of per-seed differences: the minimum detectable difference at 80% power with the
    seeds run (exact noncentral t) and its 95% interval from the SD's chi-square interval, and the seeds needed to
    detect 3 pp (both for a two-sided paired t at α = 0.05)."""
    found = [t for t in tests.values() if t and t["n"] >= 2]
    groups = [t["differences"] for t in found]
    sd = pooled_sd(groups) if groups else None
    n = min((t["n"] for t in found), default=0)
    dof = sum(len(g) - 1 for g in groups)
    mdd = min_detectable_difference(sd, n, ALPHA, POWER) if sd is not None and n >= 2 else None
    needed = seeds_needed(sd, TARGET_EFFECT, ALPHA, POWER) if sd is not None else None
    low, high = sd_interval(sd, dof) if sd and dof else (None, None)
    mdd_ci = [mdd * low / sd, mdd * high / sd] if mdd is not None and low is not None else None
    return {
        "sd": sd,
        "sd_dof": dof,
        "seeds": n,
        "mdd": mdd,
        "mdd_ci": mdd_ci,
        "effect": TARGET_EFFECT,
        "seeds_for_effect": needed,
        "power": POWER,
        "alpha": ALPHA,
    }


def power_by_metric(
    scores: dict[str, dict[str, dict[int, float]]], rows: list[str], reference: str
) -> dict[str, dict[str, Any]]:
    """:func:`detectable` for each metric (``scores``: metric -> row -> {seed: score}) over the competing rows."""
    return {
        metric: detectable(
            {r: compare_with(by_row[r], by_row.get(reference, {})) for r in rows if r != reference and r in by_row}
        )
        for metric, by_row in scores.items()
    }


def statement(tests: dict[str, dict[str, Any] | None], reference: str, power: dict[str, Any]) -> str:
    """One sentence a reader can quote: which rows differ from the reference, or that none can be told apart."""
    significant = [(r, t) for r, t in tests.items() if t and t.get("p_holm") is not None and t["p_holm"] < ALPHA]
    seeds = power["seeds"]
    if not tests:
        return "Only one row: nothing to compare."
    if not significant:
        text = (
            f"No row differs significantly from {reference} at α = {ALPHA} after Holm correction "
            f"(paired t over {seeds} seeds)"
        )
        if power["mdd"]:
            text += f"; with {seeds} seeds only differences of about {100 * power['mdd']:.1f} pp or more are detectable"
        return text + "."
    parts = [
        f"{r} {'above' if t['delta'] > 0 else 'below'} {reference} by {100 * abs(t['delta']):.1f} pp "
        f"(Holm p = {t['p_holm']:.3g})"
        for r, t in significant
    ]
    return "Significant at α = 0.05 after Holm correction (paired t over seeds): " + "; ".join(parts) + "."
