"""rlbench.stats against textbook values and known cases (identical algorithms, a clear winner, determinism)."""
from __future__ import annotations

import doctest
import math
import random

import pytest

from rlbench import behaviours, stats


def test_doc_examples_hold():
    for module in (stats, behaviours):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


@pytest.mark.parametrize("df, expected", [(1, 12.706204736), (2, 4.302652730), (4, 2.776445105), (30, 2.042272456)])
def test_t_quantile_matches_tables(df, expected):
    assert stats.t_quantile(0.975, df) == pytest.approx(expected, abs=1e-8)
    assert stats.t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-8)


def test_t_quantile_approaches_the_normal():
    assert stats.t_quantile(0.975, 1e6) == pytest.approx(1.959964, abs=1e-4)


def test_t_interval_worked_example():
    iv = stats.t_interval([0.40, 0.50, 0.60])  # sd 0.1, half = 4.302653 * 0.1 / sqrt(3)
    half = 4.302652730 * 0.1 / math.sqrt(3)
    assert (iv.mean, iv.n, iv.method) == (pytest.approx(0.5), 3, "t")
    assert iv.lo == pytest.approx(0.5 - half) and iv.hi == pytest.approx(0.5 + half)


def test_one_value_has_no_interval():
    for iv in (stats.t_interval([0.3]), stats.bootstrap_ci([0.3])):
        assert (iv.mean, iv.lo, iv.hi, iv.n) == (0.3, None, None, 1)


def test_mean_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        stats.mean([])


def test_bootstrap_ci_contains_the_mean_and_is_deterministic():
    values = [0.31, 0.42, 0.38, 0.55, 0.47]
    a, b = stats.bootstrap_ci(values), stats.bootstrap_ci(values)
    assert a == b
    assert a.lo < a.mean < a.hi
    assert min(values) <= a.lo and a.hi <= max(values)
    many = [((i * 37) % 101) / 101 for i in range(40)]
    assert stats.bootstrap_ci(many, seed=1) != stats.bootstrap_ci(many)  # the seed is what fixes the draws


def test_constant_values_give_a_zero_width_interval():
    for method in ("t", "bootstrap"):
        iv = stats.interval([0.5, 0.5, 0.5], method)
        assert iv.lo == iv.hi == iv.mean == 0.5


def test_bootstrap_is_narrower_than_t_for_three_seeds():
    # the reason the report defaults to the t interval: with 3 values the percentile bootstrap undercovers
    values = [0.40, 0.50, 0.60]
    t, boot = stats.t_interval(values), stats.bootstrap_ci(values)
    assert boot.hi - boot.lo < 0.5 * (t.hi - t.lo)


def test_unknown_interval_method():
    with pytest.raises(ValueError, match="unknown interval method"):
        stats.interval([1.0, 2.0], "wald")


def _grid(rng: random.Random, seeds: int, problems: int, p: float) -> list[list[float]]:
    return [[float(rng.random() < p) for _ in range(problems)] for _ in range(seeds)]


def test_identical_algorithms_have_zero_delta_and_p_one():
    grid = _grid(random.Random(0), 3, 100, 0.5)
    test = stats.paired_bootstrap(grid, [row[:] for row in grid])
    assert test.delta == 0.0 and test.p == 1.0
    assert test.lo == test.hi == 0.0
    assert (test.seeds, test.problems, test.resamples) == (3, 100, stats.DEFAULT_RESAMPLES)


def test_clearly_better_algorithm_has_small_p():
    rng = random.Random(1)
    better, worse = _grid(rng, 3, 200, 0.8), _grid(rng, 3, 200, 0.3)
    test = stats.paired_bootstrap(better, worse)
    assert test.delta == pytest.approx(sum(map(sum, better)) / 600 - sum(map(sum, worse)) / 600)
    assert test.p == pytest.approx(1 / (stats.DEFAULT_RESAMPLES + 1))
    assert 0 < test.lo < test.delta < test.hi


def test_paired_test_is_antisymmetric_and_deterministic():
    rng = random.Random(2)
    a, b = _grid(rng, 3, 60, 0.55), _grid(rng, 3, 60, 0.5)
    ab, ba = stats.paired_bootstrap(a, b), stats.paired_bootstrap(b, a)
    assert ab == stats.paired_bootstrap(a, b)
    assert ba.delta == pytest.approx(-ab.delta)
    assert ba.p == pytest.approx(ab.p)
    assert ba.lo == pytest.approx(-ab.hi) and ba.hi == pytest.approx(-ab.lo)


def test_null_p_values_are_not_too_small():
    """Under 'no difference' a 5% test should reject about 5% of the time; allow sampling noise, not 20%."""
    rng = random.Random(3)
    rejections = sum(
        stats.paired_bootstrap(_grid(rng, 3, 80, 0.5), _grid(rng, 3, 80, 0.5), resamples=400, seed=i).p < 0.05
        for i in range(60)
    )
    assert rejections <= 9


def test_seed_spread_widens_the_interval():
    """Problems alone would call seed-to-seed disagreement significant; resampling seeds too must widen the CI."""
    a = [[1.0] * 50, [0.0] * 50, [1.0] * 50]  # one seed collapses, two succeed
    b = [[0.5] * 50] * 3
    crossed = stats.paired_bootstrap(a, b)
    problems_only = stats.paired_bootstrap([[sum(col) / 3 for col in zip(*a)]], [[0.5] * 50])
    assert crossed.delta == pytest.approx(problems_only.delta)
    assert crossed.hi - crossed.lo > problems_only.hi - problems_only.lo


def test_paired_test_rejects_mismatched_grids():
    with pytest.raises(ValueError, match="seeds x problems"):
        stats.paired_bootstrap([[1, 0]], [[1, 0, 1]])
    with pytest.raises(ValueError):
        stats.paired_bootstrap([], [])
