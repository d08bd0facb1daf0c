"""Power of the seed-level paired t test: what a number of seeds can resolve, and how many a difference needs.

The exact noncentral-t power (:func:`paired_t_power`), its inverse in the effect (:func:`min_detectable_difference`,
the MDE the report prints) and in the seed count (:func:`seeds_needed`); the chi-square interval of a seed SD
(:func:`sd_interval`), which makes the MDE's own uncertainty visible; and the pooled SD over rows (:func:`pooled_sd`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as scipy_stats
from scipy.optimize import brentq

from rlbench.study.report.stats import DEFAULT_LEVEL, t_quantile


def paired_t_power(effect: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t over ``n`` seeds at a true Δ of ``effect`` (per-seed differences of SD ``sd``):
    P(|T| > t_{1-α/2, n-1}) with T noncentral t, n-1 degrees of freedom, noncentrality Δ·√n/sd. Exact for normal
    differences; both rejection tails count.

    >>> round(paired_t_power(0.0, 0.04, 5), 6)  # no effect: the test's own level
    0.05
    """
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    if sd <= 0:
        return 1.0 if effect != 0 else alpha
    critical = t_quantile(1.0 - alpha / 2.0, n - 1)
    shift = effect * math.sqrt(n) / sd
    df = n - 1
    far = float(scipy_stats.nct.cdf(-critical, df, shift))  # the opposite tail: below 1e-6 past a shift of 4
    return float(scipy_stats.nct.sf(critical, df, shift)) + (0.0 if math.isnan(far) else far)


def min_detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Smallest true Δ a two-sided paired t-test over ``n`` seeds detects with probability ``power``.

    ``sd`` is the SD of the per-seed differences. Solved exactly on the noncentral t (:func:`paired_t_power`), not by
    the usual (t_{1-α/2} + t_{power}) · sd/√n shortcut, which is optimistic with few seeds (its true power is 0.77
    with 3 seeds, 0.79 with 5). None below 2 seeds.

    >>> round(min_detectable_difference(0.04, 5), 4)  # the shortcut would say 0.0665
    0.0673
    """
    if sd < 0:
        raise ValueError(f"sd must be >= 0, got {sd}")
    if not (0.0 < alpha < 1.0 and 0.0 < power < 1.0):
        raise ValueError(f"alpha and power must be in (0, 1), got {alpha} and {power}")
    if n < 2:
        return None
    if sd == 0:
        return 0.0
    if power <= alpha:
        return 0.0
    # the shortcut is a lower bound; power rises with Δ, so the root lies between it and a few times it
    lo = (t_quantile(1.0 - alpha / 2.0, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n) * 0.5
    hi = lo * 4.0
    while paired_t_power(hi, sd, n, alpha) < power:
        hi *= 2.0
    return float(brentq(lambda x: paired_t_power(x, sd, n, alpha) - power, lo, hi, xtol=1e-12 * hi, rtol=1e-12))


def seeds_needed(sd: float, effect: float, alpha: float = 0.05, power: float = 0.8, max_n: int = 10_000) -> int | None:
    """Smallest n >= 2 with :func:`min_detectable_difference` (sd, n) <= ``effect``; None if above ``max_n``.

    ``sd == 0`` needs only the minimum of 2 seeds; a nonpositive ``effect`` with sd > 0 can never be met (None).
    The MDD falls monotonically in n, so this bisects.

    >>> seeds_needed(0.04, 0.0673), seeds_needed(0.04, 0.0672), seeds_needed(0.0, 0.01)
    (5, 6, 2)
    """
    if max_n < 2:
        raise ValueError(f"max_n must be >= 2, got {max_n}")

    def met(n: int) -> bool:
        return min_detectable_difference(sd, n, alpha, power) <= effect  # type: ignore[operator]

    if sd == 0:
        return 2
    if effect <= 0 or not met(max_n):
        return None
    lo, hi = 1, max_n  # invariant: met(hi), and lo = 1 or not met(lo)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if met(mid):
            hi = mid
        else:
            lo = mid
    return hi


def sd_interval(sd: float, dof: int, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """The ``level`` interval of a standard deviation estimated with ``dof`` degrees of freedom (chi-square):
    [sd·√(dof/χ²_{(1+level)/2}), sd·√(dof/χ²_{(1-level)/2})]. Few degrees of freedom make it wide.

    >>> [round(x, 3) for x in sd_interval(4.45, 12)]
    [3.191, 7.346]
    """
    if dof < 1:
        raise ValueError(f"dof must be >= 1, got {dof}")
    tail = (1.0 - level) / 2.0
    return (
        sd * math.sqrt(dof / float(scipy_stats.chi2.ppf(1.0 - tail, dof))),
        sd * math.sqrt(dof / float(scipy_stats.chi2.ppf(tail, dof))),
    )


def pooled_sd(groups: Sequence[Sequence[float]]) -> float | None:
    """Pooled SD of several samples: sqrt(Σ_g Σ_s (x - mean_g)² / Σ_g (n_g - 1)); None with no degrees of freedom.

    Each group is centred on its own mean, so e.g. the per-seed differences of several algorithm pairs give one SD
    of seed-to-seed noise even though the pairs differ in Δ. Empty and one-value groups add nothing.

    >>> round(pooled_sd([[0.1, 0.3], [0.0, 0.2, 0.4], [0.9]]), 6)  # (0.02 + 0.08) / (1 + 2)
    0.182574
    >>> pooled_sd([[0.5], []]) is None
    True
    """
    squares, dof = 0.0, 0
    for group in groups:
        values = np.asarray(group, dtype=float)
        if values.size >= 2:
            squares += float(((values - values.mean()) ** 2).sum())
            dof += int(values.size) - 1
    return math.sqrt(squares / dof) if dof else None
