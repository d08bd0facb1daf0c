"""A row's curves, read off its runs' logs: held-out accuracy per evaluation point and training quantities per step.

Both keep every seed's own line next to the across-seed mean, so a figure can show the spread as it is (thin lines)
rather than as an interval over three points. Training series longer than :data:`MAX_POINTS` steps are averaged in
equal bins of consecutive steps, which keeps report.json small; the values are rounded to :data:`DIGITS`
significant digits (far below what a figure shows).
"""

from __future__ import annotations

import math
from typing import Any

from rlbench.study.report import stats
from rlbench.study.report.inputs import RunFiles
from rlbench.study.report.runs import dig, number

#: metrics.jsonl keys drawn as training curves, in page order, with their axis label. One place defines them.
QUANTITIES: dict[str, str] = {
    "reward_mean": "reward (rollout mean)",
    "zero_spread_groups": "groups with one reward (share)",
    "kl_ref": "KL to the reference (k3)",
    "kl": "KL loss term",
    "kl_reward_penalty": "KL reward penalty",
    "approx_kl": "approx. KL to the rollout policy",
    "entropy": "policy entropy (nats/token)",
    "grad_norm": "gradient norm",
    "clip_frac": "ratio clip fraction",
    "vf_clip_frac": "value clip fraction",
    "tis_capped_frac": "capped importance weights (share)",
    "length_mean": "rollout length (tokens)",
    "value_explained_var": "value explained variance",
}
#: x-axes of the accuracy curves: usage key -> axis label.
EVAL_AXES: dict[str, str] = {
    "samples": "samples consumed",
    "tokens": "tokens generated in training",
    "seconds": "training-loop seconds",
}
MAX_POINTS = 40
DIGITS = 4


def eval_curves(runs: list[RunFiles], metric: str, ci: str, bounds: tuple[float, float]) -> dict[str, Any]:
    """Accuracy at each evaluation point (mean over seeds, with its interval) and each seed's own curve.

    Points are aligned by their order: every run of a comparison evaluates at the same budget fractions. A point's
    x is the mean over seeds of the usage there (seconds and tokens differ a little from seed to seed).
    """
    points: list[dict[str, Any]] = []
    for j in range(min((len(r.evals) for r in runs), default=0)):
        rows = [r.evals[j] for r in runs]
        accs = [v for v in (number(dig(p, metric, "accuracy")) for p in rows) if v is not None]
        if not accs:
            continue
        iv = stats.interval(accs, ci, bounds=bounds)
        usage = {axis: stats.mean_of_present(number(dig(p, "usage", axis)) for p in rows) for axis in EVAL_AXES}
        points.append({**usage, "mean": iv.mean, "lo": iv.lo, "hi": iv.hi, "n": iv.n})
    seeds = {}
    for r in runs:
        pts = [p for p in r.evals if number(dig(p, metric, "accuracy")) is not None]
        if pts:
            seeds[str(r.seed)] = {
                "accuracy": [number(dig(p, metric, "accuracy")) for p in pts],
                **{axis: [number(dig(p, "usage", axis)) for p in pts] for axis in EVAL_AXES},
            }
    return {"points": points, "seeds": seeds}


def training_curves(runs: list[RunFiles]) -> dict[str, Any]:
    """Per quantity of :data:`QUANTITIES` that some run logged: binned step, each seed's values, the mean.

    ``{"bin": steps per point, "step": [...], "quantities": {key: {"seeds": {seed: [v or None]}, "mean": [...],
    "varies": bool}}}``; ``varies`` is whether any run's raw values of it change over its steps.
    """
    last = max((number(row.get("step")) or 0 for r in runs for row in r.metrics), default=0)
    if not last:
        return {"bin": 0, "step": [], "quantities": {}}
    width = max(1, math.ceil(last / MAX_POINTS))
    bins = math.ceil(last / width)
    steps = [_round(b * width + (min(width, last - b * width) + 1) / 2) for b in range(bins)]
    out: dict[str, Any] = {}
    for key in QUANTITIES:
        seeds, varies = {}, False
        for r in runs:
            sums, counts, seen = [0.0] * bins, [0] * bins, set()
            for row in r.metrics:
                step, value = number(row.get("step")), number(row.get(key))
                if step is None or value is None or step < 1:
                    continue
                b = min(int((step - 1) // width), bins - 1)
                sums[b] += value
                counts[b] += 1
                seen.add(value)
            if seen:
                seeds[str(r.seed)] = [_round(s / c) if c else None for s, c in zip(sums, counts)]
                varies = varies or len(seen) > 1
        if seeds:
            mean = [stats.mean_of_present(v[b] for v in seeds.values()) for b in range(bins)]
            out[key] = {"seeds": seeds, "mean": [None if m is None else _round(m) for m in mean], "varies": varies}
    return {"bin": width, "step": steps, "quantities": out}


def plotted_quantities(rows: list[dict[str, Any]]) -> list[str]:
    """The quantities worth a figure: logged by some row, and changing over the steps of some run."""
    return [k for k in QUANTITIES if any(dig(r, "training", "quantities", k, "varies") for r in rows)]


def _round(value: float) -> float:
    return float(f"{value:.{DIGITS}g}")
