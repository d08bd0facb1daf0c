"""What a comparison can and cannot say: seed-level tests, Holm correction, grouped ranks, detectable differences.

The unit of replication is the training seed: a run's score (the mean of its last K evaluations) is one number per
(row, seed), and two rows are compared by the paired differences of their scores over the seeds both ran. Problems
are not independent replicates of an algorithm: two runs of one algorithm differ by more than their per-problem
noise explains (the seed x algorithm random effect), so a test that resamples problems with the seeds held fixed
rejects a true null far more often than its level says (tests/test_calibration.py measures both).
"""
from __future__ import annotations

from typing import Any

from rlbench.report import stats

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


def verdicts(scores: dict[str, dict[int, float]], ranked: list[str], reference: str,
             controls: dict[str, str]) -> dict[str, Any]:
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
    for c, source in controls.items():
        if control[c] is not None:
            control[c]["copy_of"] = source
    return {"alpha": ALPHA, "vs_reference": tests, "ranks": grouped_ranks(scores, ranked), "power": power,
            "control": control, "statement": statement(tests, reference, power)}


def grouped_ranks(scores: dict[str, dict[int, float]], ranked: list[str]) -> dict[str, str]:
    """Rank labels such as ``1=``: the leader shares its rank with every row not significantly worse than it.

    Rows go in order of mean score. The best remaining row leads a group; each other remaining row joins it unless
    the paired t-test over seeds (Holm-corrected across the rows tested against this leader) says it is worse.
    The next group starts at the position after the last one, as in sports tables (1=, 1=, 3, 4=, 4=).
    """
    remaining = [r for r in ranked if scores.get(r)]
    out: dict[str, str] = {}
    position = 1
    while remaining:
        leader, rest = remaining[0], remaining[1:]
        tests = [compare_with(scores[r], scores[leader]) for r in rest]
        adjusted = stats.holm([t["p"] if t else None for t in tests])
        tied = [leader] + [r for r, p in zip(rest, adjusted) if p is None or p >= ALPHA]
        for row in tied:
            out[row] = f"{position}=" if len(tied) > 1 else str(position)
        remaining = [r for r in remaining if r not in tied]
        position += len(tied)
    return out


def detectable(tests: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """From the observed spread of per-seed differences: the minimum detectable difference at 80% power with the
    seeds run, and the seeds needed to detect 3 pp (both for a two-sided paired t at α = 0.05)."""
    found = [t for t in tests.values() if t and t["n"] >= 2]
    groups = [t["differences"] for t in found]
    sd = stats.pooled_sd(groups) if groups else None
    n = min((t["n"] for t in found), default=0)
    mdd = stats.min_detectable_difference(sd, n, ALPHA, POWER) if sd is not None and n >= 2 else None
    needed = stats.seeds_needed(sd, TARGET_EFFECT, ALPHA, POWER) if sd is not None else None
    return {"sd": sd, "seeds": n, "mdd": mdd, "effect": TARGET_EFFECT, "seeds_for_effect": needed,
            "power": POWER, "alpha": ALPHA}


def statement(tests: dict[str, dict[str, Any] | None], reference: str, power: dict[str, Any]) -> str:
    """One sentence a reader can quote: which rows differ from the reference, or that none can be told apart."""
    significant = [(r, t) for r, t in tests.items() if t and t.get("p_holm") is not None and t["p_holm"] < ALPHA]
    seeds = power["seeds"]
    if not tests:
        return "Only one row: nothing to compare."
    if not significant:
        text = (f"No row differs significantly from {reference} at α = {ALPHA} after Holm correction "
                f"(paired t over {seeds} seeds)")
        if power["mdd"]:
            text += f"; with {seeds} seeds only differences of about {100 * power['mdd']:.1f} pp or more are detectable"
        return text + "."
    parts = [f"{r} {'above' if t['delta'] > 0 else 'below'} {reference} by {100 * abs(t['delta']):.1f} pp "
             f"(Holm p = {t['p_holm']:.3g})" for r, t in significant]
    return "Significant at α = 0.05 after Holm correction (paired t over seeds): " + "; ".join(parts) + "."
