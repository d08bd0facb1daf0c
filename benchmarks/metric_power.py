"""Which score can tell algorithms apart per CPU-minute? Measured on a comparison run on the validation split.

For each candidate score of a run -- greedy or sampled accuracy averaged over the last K evaluations, the area under
the learning curve (the mean over every evaluation after training starts), and the samples needed to reach a
threshold -- it pools the seed-to-seed SD of the paired differences against the reference row and turns it into the
minimum detectable difference (two-sided paired t, α = 0.05, 80% power, exact noncentral t) at 5 and 10 seeds.

It also splits the sampled score's noise into evaluation sampling and training: from the per-problem records of
the scored evaluations (common random numbers: every run of a seed draws the same uniform numbers for a problem's
j-th sample), the evaluation part of Var(Δ) is the within-problem variance of the paired sample differences over k
samples, summed over problems; what is left is the training runs' own spread. That tells what more problems or more
samples per problem would buy without running them.

    python benchmarks/metric_power.py runs/tiny-arith-validation [--reference em-pg] [--k 3] [--threshold 0.6]
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rlbench.core.results import read_records, record_points
from rlbench.study.report.inputs import RunFiles, load_comparison
from rlbench.study.report.power import min_detectable_difference, pooled_sd
from rlbench.study.report.runs import dig, number

Score = Callable[[RunFiles], "float | None"]


def accuracies(run: RunFiles, metric: str) -> list[tuple[float, float]]:
    """(samples used, accuracy) of every evaluation after training started."""
    out = []
    for row in run.evals[1:]:
        acc = number(dig(row, metric, "accuracy"))
        if acc is not None:
            out.append((float(dig(row, "usage", "samples") or 0), acc))
    return out


def last_k(metric: str, k: int) -> Score:
    def score(run: RunFiles) -> float | None:
        found = accuracies(run, metric)[-k:]
        return statistics.fmean(a for _, a in found) if len(found) == k else None

    return score


def area(metric: str, first: int | None = None) -> Score:
    """The mean over the evaluations after training starts (the first ``first`` of them: the score of a run stopped
    there, since a constant learning rate makes its first steps those of the longer run)."""

    def score(run: RunFiles) -> float | None:
        found = accuracies(run, metric)[:first]
        return statistics.fmean(a for _, a in found) if found else None

    return score


def to_threshold(metric: str, threshold: float) -> Score:
    """Samples until the curve first reaches ``threshold`` (linear between evaluations), as a negative number so
    that higher is better like every other score; the budget when it never does (censored)."""

    def score(run: RunFiles) -> float | None:
        points = [(0.0, number(dig(run.evals[0], metric, "accuracy")) or 0.0), *accuracies(run, metric)]
        for (s0, a0), (s1, a1) in zip(points, points[1:]):
            if a1 >= threshold:
                frac = 0.0 if a1 == a0 else max(0.0, (threshold - a0) / (a1 - a0))
                return -(s0 + frac * (s1 - s0)) / 1000.0
        return -points[-1][0] / 1000.0

    return score


def reference_of(row: str, reference: str) -> str:
    """The row ``row`` is paired with: ``reference``, with the same bracketed settings in a tuning folder (so
    ``grpo[optim.lr=1e-4]`` pairs with ``em-pg[optim.lr=1e-4]``)."""
    return reference + row[row.index("[") :] if "[" in row else reference


def candidates_points(done: dict[tuple[str, int], RunFiles]) -> list[tuple[float, float]]:
    """The evaluations after training starts of one completed run (every run of a comparison has the same)."""
    return accuracies(next(iter(done.values())), "sampled")


def paired_sd(scores: dict[str, dict[int, float]], reference: str) -> tuple[float | None, int]:
    groups = []
    for row, by_seed in scores.items():
        ref = reference_of(row, reference)
        if row == ref or ref not in scores:
            continue
        seeds = sorted(set(by_seed) & set(scores[ref]))
        groups.append([by_seed[s] - scores[ref][s] for s in seeds])
    return pooled_sd(groups), sum(len(g) - 1 for g in groups if len(g) > 1)


def eval_noise(runs: dict[tuple[str, int], RunFiles], reference: str, k_last: int) -> dict[str, float]:
    """Per metric, the evaluation-sampling variance of one run's sampled score and of a paired Δ, averaged over the
    (row, seed) pairs, from the scored evaluations' records: Var of a mean@k over P problems is
    Σ_i s_i² / (k P²), s_i² the variance of problem i's k sample outcomes (or of their paired differences)."""
    single, paired = [], []
    for (row, seed), run in runs.items():
        partner = reference_of(row, reference)
        if row == partner or (partner, seed) not in runs:
            continue
        ref = runs[(partner, seed)]
        mine_files, ref_files = record_points(run.path), record_points(ref.path)
        for point in sorted(mine_files)[-k_last:]:
            if point not in ref_files:
                continue
            a = {r["id"]: [s["correct"] for s in r.get("samples", [])] for r in read_records(mine_files[point])}
            b = {r["id"]: [s["correct"] for s in r.get("samples", [])] for r in read_records(ref_files[point])}
            ids = [i for i in a if i in b and len(a[i]) == len(b[i]) >= 2]
            if not ids:
                continue
            k, P = len(a[ids[0]]), len(ids)
            single.append(sum(np.var(a[i], ddof=1) for i in ids) / (k * P * P))
            paired.append(sum(np.var(np.subtract(a[i], b[i], dtype=float), ddof=1) for i in ids) / (k * P * P))
    if not single:
        return {}
    # the mean of K evaluations' scores: their sampling noise averages over K independent draws
    return {
        "var_one_run": statistics.fmean(single) / k_last,
        "var_paired": statistics.fmean(paired) / k_last,
        "var_independent": 2 * statistics.fmean(single) / k_last,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--reference", default="em-pg")
    parser.add_argument("--k", type=int, default=None, help="evaluations averaged (default: the manifest's K)")
    parser.add_argument("--threshold", type=float, default=None, help="sampled accuracy for samples-to-threshold")
    args = parser.parse_args()
    comp = load_comparison(args.folder)
    k = args.k or comp.final_mean_of
    done = {(r.algo, r.seed): r for r in comp.runs if r.complete and r.algo not in comp.controls}
    start = statistics.fmean(number(dig(r.evals[0], "sampled", "accuracy")) or 0.0 for r in done.values())
    threshold = args.threshold if args.threshold is not None else round(start + 0.1, 2)
    candidates: dict[str, Score] = {
        f"greedy, mean of last {k}": last_k("greedy", k),
        f"sampled, mean of last {k}": last_k("sampled", k),
        "greedy, area under the curve": area("greedy"),
        "sampled, area under the curve": area("sampled"),
        "greedy, area under the first half of the curve": area(
            "greedy", first=max(1, len(candidates_points(done)) // 2)
        ),
        "sampled, area under the first half of the curve": area(
            "sampled", first=max(1, len(candidates_points(done)) // 2)
        ),
        f"sampled, samples (thousands) to {threshold:.2f}": to_threshold("sampled", threshold),
    }
    print(f"{args.folder}: {len(done)} runs, reference {args.reference}, K = {k}")
    print("| score | mean | pooled SD of paired Δ | dof | MDE, 5 seeds | MDE, 10 seeds |")
    print("|---|---|---|---|---|---|")
    for name, score in candidates.items():
        scores: dict[str, dict[int, float]] = {}
        for (row, seed), run in done.items():
            value = score(run)
            if value is not None:
                scores.setdefault(row, {})[seed] = value
        sd, dof = paired_sd(scores, args.reference)
        mean = statistics.fmean(v for by in scores.values() for v in by.values())
        unit = 1.0 if "samples" in name else 100.0
        fmt = (lambda x: f"{x:.2f}") if unit == 1.0 else (lambda x: f"{100 * x:.2f} pp")
        mde5 = min_detectable_difference(sd, 5) if sd else None
        mde10 = min_detectable_difference(sd, 10) if sd else None
        print(
            f"| {name} | {fmt(mean)} | {fmt(sd) if sd else '–'} | {dof} | {fmt(mde5) if mde5 else '–'} | "
            f"{fmt(mde10) if mde10 else '–'} |"
        )
    noise = eval_noise(done, args.reference, k)
    if noise:
        sd_sampled, _ = paired_sd(
            {
                row: {s: last_k("sampled", k)(r) for (rr, s), r in done.items() if rr == row}
                for row in {r for r, _ in done}
            },
            args.reference,
        )
        total = (sd_sampled or 0.0) ** 2
        print(
            f"\nsampled score's evaluation noise (mean of last {k}): one run SD "
            f"{100 * math.sqrt(noise['var_one_run']):.2f} pp; a paired Δ SD {100 * math.sqrt(noise['var_paired']):.2f}"
            f" pp with common random numbers vs {100 * math.sqrt(noise['var_independent']):.2f} pp with independent"
            f" draws (correlation {1 - noise['var_paired'] / noise['var_independent']:.2f}); the training part of "
            f"Var(Δ): SD {100 * math.sqrt(max(total - noise['var_paired'], 0.0)):.2f} pp of the "
            f"{100 * math.sqrt(total):.2f} pp total"
        )


if __name__ == "__main__":
    main()
