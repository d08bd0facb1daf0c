"""Small-sample statistics for leaderboards: means with confidence intervals, and a paired bootstrap test.

Everything here is deterministic: bootstraps draw from ``numpy.random.default_rng(seed)`` with a fixed seed, so the
same inputs always give the same intervals and p-values (a report can be regenerated and diffed).

Two interval methods for "mean over seeds":

* :func:`t_interval` -- Student-t with n-1 degrees of freedom. With 3 seeds its multiplier is 4.30 (not 1.96), so it
  is wide; it is exact only if the seed-to-seed spread is roughly normal, which nobody can check with 3 points.
* :func:`bootstrap_ci` -- the percentile bootstrap. With 3 seeds there are only 10 distinct resamples and the
  interval is known to be too narrow (it undercovers), so the report uses it only when asked.

:func:`paired_bootstrap` compares two algorithms on the same held-out problems under the same seeds.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

DEFAULT_LEVEL = 0.95
DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0
#: Resamples processed at once by the paired bootstrap; bounds memory at chunk x problems floats.
_CHUNK = 1_000


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


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; raises on an empty sequence rather than inventing a value.

    >>> mean([0.5, 0.25, 0.75])
    0.5
    """
    if len(values) == 0:
        raise ValueError("mean of no values")
    return float(math.fsum(values) / len(values))


def t_cdf(x: float, df: float) -> float:
    """P(T <= x) for Student's t with ``df`` degrees of freedom (via the regularised incomplete beta function).

    >>> round(t_cdf(0.0, 3), 12)
    0.5
    >>> round(t_cdf(12.706204736174707, 1), 6)  # the classic 97.5% point for df = 1
    0.975
    """
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + x * x))
    return 1.0 - tail if x >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The x with P(T <= x) = p, found by bisection on :func:`t_cdf` (to about 1e-12).

    >>> round(t_quantile(0.975, 2), 6)
    4.302653
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def t_interval(values: Sequence[float], level: float = DEFAULT_LEVEL,
               bounds: tuple[float, float] | None = None) -> Interval:
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


def bootstrap_ci(values: Sequence[float], level: float = DEFAULT_LEVEL, resamples: int = DEFAULT_RESAMPLES,
                 seed: int = DEFAULT_SEED) -> Interval:
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


def interval(values: Sequence[float], method: str, level: float = DEFAULT_LEVEL, resamples: int = DEFAULT_RESAMPLES,
             seed: int = DEFAULT_SEED, bounds: tuple[float, float] | None = None) -> Interval:
    """Dispatch on ``method``: ``"t"`` or ``"bootstrap"`` (a bootstrap of values in ``bounds`` stays in them)."""
    if method == "t":
        return t_interval(values, level, bounds)
    if method == "bootstrap":
        return bootstrap_ci(values, level, resamples, seed)
    raise ValueError(f"unknown interval method {method!r} (t or bootstrap)")


def paired_bootstrap(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], resamples: int = DEFAULT_RESAMPLES,
                     seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL) -> PairedTest:
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


def _draw_counts(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """``rows`` multinomial(n; uniform) count vectors: how often each of n items is drawn in a size-n resample."""
    picks = rng.integers(0, n, size=(rows, n)) + n * np.arange(rows)[:, None]
    return np.bincount(picks.ravel(), minlength=rows * n).reshape(rows, n).astype(float)


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) by Lentz's continued fraction (Numerical Recipes, 3rd ed., 6.4)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # the continued fraction converges fast only for x below the mean a / (a + b); use the symmetry otherwise
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _betacf(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-15:
            break
    return h
