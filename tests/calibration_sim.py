"""Simulated leaderboard comparisons with a seed x algorithm random effect, and the harness that scores a test on them.

Model (one replicate = one comparison of algorithm A with algorithm B):

* ``problems`` held-out problems with true difficulty p_i ~ Uniform(0.1, 0.9), drawn afresh per replicate and
  shared by both algorithms and every seed;
* ``seeds`` training seeds; each (seed, algorithm) training run draws its own shift u ~ N(0, sigma_u), added to
  every p_i -- the run-to-run variation that makes the seed, not the problem, the unit of replication;
* A runs at p_i + u + effect/2 and B at p_i + u' - effect/2 (clipped to [0, 1]); each cell is Bernoulli, drawn
  independently. Splitting the effect symmetrically keeps clipping negligible for effects up to ~15 pp.

:func:`rejection_rates` runs any number of tests on the same replicates, each test a function of the two 0/1 grids
(seeds x problems) returning a p-value, so one harness judges the seed-level t, the sign-flip test and the old
bootstrap alike. Shared by ``tests/test_calibration.py`` and ``benchmarks/calibration.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from rlbench.study.report import stats

#: A test under calibration: (a, b) 0/1 grids of shape (seeds, problems) -> two-sided p-value (None = no verdict).
GridTest = Callable[[np.ndarray, np.ndarray], "float | None"]

#: Replicates simulated at once; bounds memory at chunk x seeds x problems cells per algorithm.
CHUNK = 250


@dataclass(frozen=True)
class Setting:
    """One simulated scenario; ``sigma_u`` and ``effect`` are on the accuracy scale (0.07 = 7 percentage points)."""

    sigma_u: float
    seeds: int
    problems: int = 500
    effect: float = 0.0


def simulate(setting: Setting, replicates: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (a, b) boolean arrays of shape (m, seeds, problems), ``replicates`` in all, deterministic per ``seed``."""
    rng = np.random.default_rng(seed)
    shape = (setting.seeds, setting.problems)
    for start in range(0, replicates, CHUNK):
        m = min(CHUNK, replicates - start)
        difficulty = rng.uniform(0.1, 0.9, size=(m, 1, setting.problems))
        runs = []
        for shift in (setting.effect / 2.0, -setting.effect / 2.0):
            u = rng.normal(0.0, setting.sigma_u, size=(m, setting.seeds, 1))
            prob = np.clip(difficulty + u + shift, 0.0, 1.0)
            runs.append(rng.random((m, *shape)) < prob)
        yield runs[0], runs[1]


def rejection_rates(
    tests: Mapping[str, GridTest], setting: Setting, replicates: int, seed: int = 0, alpha: float = 0.05
) -> dict[str, float]:
    """Fraction of replicates in which each test gives p <= ``alpha`` (a None p never rejects), on shared replicates.

    Under ``effect = 0`` this is the false-positive rate; otherwise the power.
    """
    rejected = dict.fromkeys(tests, 0)
    for a, b in simulate(setting, replicates, seed):
        for r in range(a.shape[0]):
            for name, test in tests.items():
                p = test(a[r], b[r])
                rejected[name] += int(p is not None and p <= alpha)
    return {name: count / replicates for name, count in rejected.items()}


def per_seed_differences(setting: Setting, replicates: int, seed: int = 0) -> list[np.ndarray]:
    """Per replicate, the per-seed score differences score_A - score_B (for the true SD via :func:`pooled_sd`)."""
    out: list[np.ndarray] = []
    for a, b in simulate(setting, replicates, seed):
        out.extend(a.mean(axis=2) - b.mean(axis=2))
    return out


# --- the tests under calibration, as GridTests -------------------------------------------------------------------


def paired_t(a: np.ndarray, b: np.ndarray) -> float | None:
    """The headline: :func:`stats.seed_test` on per-seed accuracies."""
    return stats.seed_test(a.mean(axis=1), b.mean(axis=1)).p


def sign_flip(a: np.ndarray, b: np.ndarray) -> float | None:
    """The exact sign-flip permutation test on per-seed accuracies."""
    return stats.sign_flip_test(a.mean(axis=1), b.mean(axis=1))


def crossed_bootstrap(resamples: int) -> GridTest:
    """The old headline: :func:`stats.paired_bootstrap` over the full seeds x problems grid."""
    return lambda a, b: stats.paired_bootstrap(a, b, resamples=resamples).p


def problems_bootstrap(resamples: int) -> GridTest:
    """Seeds held fixed, problems resampled: the paired bootstrap on each problem's accuracy averaged over seeds."""
    return lambda a, b: (
        stats.paired_bootstrap(a.mean(axis=0, keepdims=True), b.mean(axis=0, keepdims=True), resamples=resamples).p
    )
