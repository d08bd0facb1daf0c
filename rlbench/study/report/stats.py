"""Small-sample statistics for leaderboards: means with confidence intervals, and a paired bootstrap test.

Everything here is deterministic: bootstraps draw from ``numpy.random.default_rng(seed)`` with a fixed seed, so the
same inputs always give the same intervals and p-values (a report can be regenerated and diffed).

Two interval methods for "mean over seeds":

* :func:`t_interval` -- Student-t with n-1 degrees of freedom. With 3 seeds its multiplier is 4.30 (not 1.96), so it
  is wide; it is exact only if the seed-to-seed spread is roughly normal, which nobody can check with 3 points.
* :func:`bootstrap_ci` -- the percentile bootstrap. With 3 seeds there are only 10 distinct resamples and the
  interval is known to be too narrow (it undercovers), so the report uses it only when asked.

:func:`paired_bootstrap` compares two algorithms on the same held-out problems under the same seeds.

Seed-level inference (the headline comparison): a training seed is the unit of replication, because each training
run shifts its accuracy on *every* problem by its own random amount. Resampling problems (even crossed with seeds,
as :func:`paired_bootstrap` does) lets the problem count pose as replication and rejects a true null far more often
than 5% once that run-to-run shift is a few points (``tests/test_calibration.py`` measures it). So the headline is
:func:`seed_test` on per-seed scores: the paired t over seeds (:func:`paired_t`), with the exact sign-flip
permutation test (:func:`sign_flip_test`) beside it when there are enough seeds for it to reach p < 0.05.
:func:`holm` adjusts a family of such p-values; :mod:`rlbench.study.report.power` says what a given number of seeds can
resolve.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

DEFAULT_LEVEL = 0.95
DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0
#: Resamples processed at once by the paired bootstrap; bounds memory at chunk x problems floats.
_CHUNK = 1_000
#: Largest seed count for which :func:`sign_flip_test` enumerates all 2^n sign patterns; above it, Monte Carlo.
SIGN_FLIP_EXACT_MAX = 20
#: Random sign patterns drawn by :func:`sign_flip_test` above :data:`SIGN_FLIP_EXACT_MAX` seeds.
SIGN_FLIP_DRAWS = 100_000
#: Sign patterns evaluated at once by :func:`sign_flip_test`; bounds memory at chunk x seeds floats.
_FLIP_CHUNK = 1 << 16


@dataclass(frozen=True)
class Interval:
    """A mean and its confidence interval; ``lo``/``hi`` are None when there are too few values for one."""

    mean: float
    lo: float | None
    hi: float | None
    n: int
    method: str
    level: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PairedTest:
    """Result of :func:`paired_bootstrap`: Δ = mean(a - b), its bootstrap CI and a two-sided p-value."""

    delta: float
    lo: float
    hi: float
    p: float
    seeds: int
    problems: int
    resamples: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SeedTest:
    """Seed-level comparison of two algorithms (:func:`seed_test`, :func:`paired_t`) from per-seed scores.

    ``delta`` = mean over seeds of a - b; ``lo``/``hi`` its paired-t interval at ``level`` and ``p`` its two-sided
    paired-t p-value (the headline), all None with fewer than 2 seeds. ``p_perm`` is the exact sign-flip p-value, None
    when there are too few seeds for it to reach ``1 - level`` (fewer than 6 at the 95% level). ``n`` counts the
    seeds and ``sd`` is the SD of the per-seed differences (None below 2 seeds).
    """

    delta: float
    lo: float | None
    hi: float | None
    p: float | None
    p_perm: float | None
    n: int
    sd: float | None
    method: str
    level: float = DEFAULT_LEVEL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; raises on an empty sequence rather than inventing a value.

    >>> mean([0.5, 0.25, 0.75])
    0.5
    """
    if len(values) == 0:
        raise ValueError("mean of no values")
    return float(math.fsum(values) / len(values))


def mean_of_present(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not None (a number a run did not log); None when there are none.

    >>> mean_of_present([0.5, None, 0.25]), mean_of_present([None])
    (0.375, None)
    """
    found = [v for v in values if v is not None]
    return mean(found) if found else None


def t_cdf(x: float, df: float) -> float:
    """P(T <= x) for Student's t with ``df`` degrees of freedom.

    >>> round(t_cdf(0.0, 3), 12)
    0.5
    >>> round(t_cdf(12.706204736174707, 1), 6)  # the classic 97.5% point for df = 1
    0.975
    """
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    return float(scipy_stats.t.cdf(x, df))


def t_quantile(p: float, df: float) -> float:
    """The x with P(T <= x) = p.

    >>> round(t_quantile(0.975, 2), 6)
    4.302653
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    return float(scipy_stats.t.ppf(p, df))


def t_interval(
    values: Sequence[float], level: float = DEFAULT_LEVEL, bounds: tuple[float, float] | None = None
) -> Interval:
    """Mean ± t_{(1+level)/2, n-1} · s/√n, cut to ``bounds`` if given. One value gives no interval (lo = hi = None).

    ``bounds`` is for quantities that cannot leave a range (an accuracy lies in [0, 1]): with 3 seeds the t
    interval easily reaches past 0 or 1, and values nobody can observe carry no information.

    >>> iv = t_interval([0.40, 0.50, 0.60])  # s = 0.1, n = 3, t = 4.3027
    >>> round(iv.mean, 3), round(iv.lo, 4), round(iv.hi, 4)
    (0.5, 0.2516, 0.7484)
    >>> t_interval([0.0, 0.1, 0.2], bounds=(0.0, 1.0)).lo
    0.0
    """
    n = len(values)
    centre = mean(values)
    if n < 2:
        return Interval(centre, None, None, n, "t", level)
    sd = float(np.std(np.asarray(values, dtype=float), ddof=1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    lo, hi = centre - half, centre + half
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return Interval(centre, lo, hi, n, "t", level)


def bootstrap_ci(
    values: Sequence[float], level: float = DEFAULT_LEVEL, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> Interval:
    """Percentile bootstrap of the mean: resample ``values`` with replacement, take the level's central quantiles.

    One value gives no interval. Deterministic for a given ``seed``.

    >>> iv = bootstrap_ci([0.0, 1.0, 1.0, 1.0])
    >>> iv.mean, iv.lo <= iv.mean <= iv.hi, iv.hi
    (0.75, True, 1.0)
    """
    n = len(values)
    centre = mean(values)
    if n < 2:
        return Interval(centre, None, None, n, "bootstrap", level)
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return Interval(centre, float(lo), float(hi), n, "bootstrap", level)


def interval(
    values: Sequence[float],
    method: str,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    bounds: tuple[float, float] | None = None,
) -> Interval:
    """Dispatch on ``method``: ``"t"`` or ``"bootstrap"`` (a bootstrap of values in ``bounds`` stays in them)."""
    if method == "t":
        return t_interval(values, level, bounds)
    if method == "bootstrap":
        return bootstrap_ci(values, level, resamples, seed)
    raise ValueError(f"unknown interval method {method!r} (t or bootstrap)")


def paired_bootstrap(
    a: Sequence[Sequence[float]],
    b: Sequence[Sequence[float]],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = DEFAULT_LEVEL,
) -> PairedTest:
    """Paired two-sided bootstrap test of Δ = mean(a) - mean(b) on a seeds x problems grid.

    ``a[s][i]`` and ``b[s][i]`` are the scores (e.g. 0/1 correct) of the two algorithms on problem ``i`` under seed
    ``s``; only the differences d = a - b are used. Each resample draws seeds with replacement and, independently,
    problems with replacement (the same problem draw for every seed, because a problem is the same problem under
    every seed), and takes the mean of d over the drawn cells. This crossed resampling lets both the seed-to-seed
    and the problem-to-problem spread widen the interval.

    p-value: the resampled Δ* are centred on the observed Δ to mimic the null "no difference", and
    p = (1 + #{|Δ* - Δ| >= |Δ|}) / (resamples + 1). Identical score grids give Δ = 0 and p = 1; the smallest
    possible p is 1 / (resamples + 1).

    >>> t = paired_bootstrap([[1, 1, 0, 1]], [[1, 1, 0, 1]])
    >>> t.delta, t.p
    (0.0, 1.0)
    >>> t = paired_bootstrap([[1] * 50], [[0] * 50], resamples=999)
    >>> t.delta, t.p
    (1.0, 0.001)
    """
    da, db = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if da.shape != db.shape or da.ndim != 2 or da.size == 0:
        raise ValueError(f"need two equal, non-empty seeds x problems grids, got {da.shape} and {db.shape}")
    d = da - db
    n_seeds, n_problems = d.shape
    delta = float(d.mean())
    rng = np.random.default_rng(seed)
    stars = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        m = min(_CHUNK, resamples - start)
        seed_counts = _draw_counts(rng, m, n_seeds)
        problem_counts = _draw_counts(rng, m, n_problems)
        # Σ_s Σ_i c_s · d[s, i] · c_i over the drawn multiset, divided by its size (n_seeds · n_problems cells)
        stars[start : start + m] = ((seed_counts @ d) * problem_counts).sum(axis=1) / (n_seeds * n_problems)
    # a float sum can differ from the exact one in the last bits; without the tolerance Δ = 0 could score p < 1
    tolerance = 1e-12 * max(1.0, float(np.abs(d).max()))
    extreme = int(np.count_nonzero(np.abs(stars - delta) >= abs(delta) - tolerance))
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stars, [alpha, 1.0 - alpha])
    return PairedTest(delta, float(lo), float(hi), (1 + extreme) / (resamples + 1), n_seeds, n_problems, resamples)


def _differences(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    da, db = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if da.shape != db.shape or da.ndim != 1 or da.size == 0:
        raise ValueError(f"need two equal, non-empty per-seed score lists, got shapes {da.shape} and {db.shape}")
    return da - db


def paired_t(a: Sequence[float], b: Sequence[float], level: float = DEFAULT_LEVEL) -> SeedTest:
    """Paired t-test over seeds: ``a[s]`` and ``b[s]`` are the two algorithms' scores under the same seed ``s``.

    Δ = mean(d) for d = a - b; CI = Δ ± t_{(1+level)/2, n-1} · s_d/√n; p two-sided from Student's t with n-1 df.
    The seed is the unit of replication, so this stays at its nominal level when training runs differ by a random
    effect (which problem-level resampling cannot see). One seed gives no interval and no p (None). When every
    difference is the same (s_d = 0, up to float noise) there is no spread to test against: Δ = 0 gives p = 1, and a
    nonzero Δ gives p = 0.0 -- formally infinitely significant, i.e. the data cannot say how uncertain it is; with so
    few seeds that this happens, read it as "run more seeds", not as proof.

    >>> t = paired_t([0.50, 0.60, 0.55], [0.45, 0.50, 0.52])  # d = .05, .10, .03: s_d = .036056, t = 2.8823, df 2
    >>> round(t.delta, 4), round(t.sd, 6), round(t.lo, 4), round(t.hi, 4), round(t.p, 4)
    (0.06, 0.036056, -0.0296, 0.1496, 0.1022)
    >>> paired_t([0.5, 0.6], [0.4, 0.5]).p, paired_t([0.5, 0.6], [0.5, 0.6]).p
    (0.0, 1.0)
    >>> paired_t([0.5], [0.4]).p is None
    True
    """
    d = _differences(a, b)
    n = int(d.size)
    delta = float(math.fsum(d) / n)
    if n < 2:
        return SeedTest(delta, None, None, None, None, n, None, "paired-t", level)
    sd = float(np.std(d, ddof=1))
    if sd <= 1e-12 * max(1.0, float(np.abs(d).max())):  # every difference equal (float noise aside)
        sd = 0.0
        return SeedTest(delta, delta, delta, 1.0 if delta == 0.0 else 0.0, None, n, sd, "paired-t", level)
    se = sd / math.sqrt(n)
    half = t_quantile(0.5 + level / 2.0, n - 1) * se
    p = min(1.0, 2.0 * t_cdf(-abs(delta) / se, n - 1))  # the lower tail is computed directly: accurate for tiny p
    return SeedTest(delta, delta - half, delta + half, p, None, n, sd, "paired-t", level)


def sign_flip_min_p(n: int) -> float:
    """The smallest two-sided p the exact sign-flip test can give with ``n`` seeds: 2 / 2^n (capped at 1).

    So it can reach p < 0.05 only from 6 seeds on (2/64 = 0.031; 5 seeds give 2/32 = 0.0625).

    >>> sign_flip_min_p(3), sign_flip_min_p(5), sign_flip_min_p(6)
    (0.25, 0.0625, 0.03125)
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return min(1.0, 2.0 ** (1 - n))


def sign_flip_test(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided sign-flip permutation test over seeds of mean(a - b) = 0; exact, and free of any normality.

    Under "no difference" each per-seed difference d_s is as likely to be -d_s (the two algorithms' runs are
    exchangeable), so all 2^n sign patterns σ are equally likely: p = #{|Σ σ·d| >= |Σ d|} / 2^n (a tiny tolerance
    keeps float noise from splitting exact ties). Up to :data:`SIGN_FLIP_EXACT_MAX` seeds every pattern is
    enumerated; above that :data:`SIGN_FLIP_DRAWS` random patterns are drawn from ``default_rng(DEFAULT_SEED)`` and
    p = (1 + #extreme) / (draws + 1), deterministic and never 0. No seeds gives None.

    >>> sign_flip_test([0.6, 0.7, 0.8], [0.5, 0.5, 0.5])  # all 3 positive: only +++ and --- are as extreme
    0.25
    >>> sign_flip_test([0.6] * 6, [0.5] * 6) == 2 / 64
    True
    """
    d = _differences(a, b) if len(a) or len(b) else np.empty(0)
    n = int(d.size)
    if n == 0:
        return None
    observed = abs(float(math.fsum(d)))
    tolerance = 1e-12 * max(1.0, float(np.abs(d).sum()))
    if n > SIGN_FLIP_EXACT_MAX:
        rng = np.random.default_rng(DEFAULT_SEED)
        extreme = 0
        for start in range(0, SIGN_FLIP_DRAWS, _FLIP_CHUNK):
            m = min(_FLIP_CHUNK, SIGN_FLIP_DRAWS - start)
            signs = 1.0 - 2.0 * rng.integers(0, 2, size=(m, n))
            extreme += int(np.count_nonzero(np.abs(signs @ d) >= observed - tolerance))
        return (1 + extreme) / (SIGN_FLIP_DRAWS + 1)
    # σ and -σ give the same |Σ σ·d|: enumerate the 2^(n-1) patterns with σ_0 = +1 and count each twice
    bits = np.arange(n - 1)
    extreme = 0
    total = 1 << (n - 1)
    for start in range(0, total, _FLIP_CHUNK):
        k = np.arange(start, min(total, start + _FLIP_CHUNK))
        signs = 1.0 - 2.0 * ((k[:, None] >> bits) & 1)
        extreme += int(np.count_nonzero(np.abs(d[0] + signs @ d[1:]) >= observed - tolerance))
    return extreme / total


def seed_test(a: Sequence[float], b: Sequence[float], level: float = DEFAULT_LEVEL) -> SeedTest:
    """The headline comparison from per-seed scores: :func:`paired_t`, plus :func:`sign_flip_test` as ``p_perm``.

    ``p_perm`` is left None when the sign-flip test cannot reach ``1 - level`` at all (fewer than 6 seeds at 95%):
    a p-value that can never be significant would read as evidence of no difference.

    >>> t = seed_test([0.6] * 6, [0.5] * 6)
    >>> t.p, t.p_perm, t.method
    (0.0, 0.03125, 'paired-t+sign-flip')
    >>> seed_test([0.50, 0.60, 0.55], [0.45, 0.50, 0.52]).p_perm is None
    True
    """
    t = paired_t(a, b, level)
    if sign_flip_min_p(t.n) >= 1.0 - level:
        return t
    return SeedTest(t.delta, t.lo, t.hi, t.p, sign_flip_test(a, b), t.n, t.sd, "paired-t+sign-flip", level)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni step-down adjusted p-values, in the input order; None entries pass through uncounted.

    With m p-values sorted p_(1) <= ... <= p_(m): adj_(i) = max_{j <= i} min(1, (m - j + 1) · p_(j)). Rejecting where
    adj <= α controls the family-wise error at α under any dependence (several algorithms vs one reference share
    the reference's runs), and it is never less powerful than plain Bonferroni.

    >>> holm([0.01, 0.04, None, 0.03])  # sorted .01, .03, .04 -> 3 × .01, 2 × .03, max(.06, 1 × .04)
    [0.03, 0.06, None, 0.06]
    """
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(present)
    adjusted: list[float | None] = list(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p-values must be in [0, 1], got {p}")
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def _draw_counts(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """``rows`` multinomial(n; uniform) count vectors: how often each of n items is drawn in a size-n resample."""
    picks = rng.integers(0, n, size=(rows, n)) + n * np.arange(rows)[:, None]
    return np.bincount(picks.ravel(), minlength=rows * n).reshape(rows, n).astype(float)
