"""rlbench.study.report.stats against textbook values and known cases (identical algorithms, a clear winner, determinism)."""

from __future__ import annotations

import doctest
import math
import random
import statistics

import pytest

from rlbench.study.report import behaviours, stats
from rlbench.study.report.power import min_detectable_difference, paired_t_power, pooled_sd, seeds_needed


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


# --- seed-level inference -----------------------------------------------------------------------------------------


def test_paired_t_matches_a_hand_computation():
    a, b = [0.62, 0.55, 0.60, 0.58], [0.50, 0.52, 0.51, 0.49]  # d = .12, .03, .09, .09: mean .0825
    d = [0.12, 0.03, 0.09, 0.09]
    sd = math.sqrt(sum((x - 0.0825) ** 2 for x in d) / 3)  # 0.0377492
    t_stat = 0.0825 / (sd / 2)  # 4.37091
    half = 3.182446305 * sd / 2  # t_{.975, 3} from tables
    test = stats.paired_t(a, b)
    assert (test.n, test.method, test.level, test.p_perm) == (4, "paired-t", stats.DEFAULT_LEVEL, None)
    assert test.delta == pytest.approx(0.0825) and test.sd == pytest.approx(sd)
    assert test.lo == pytest.approx(0.0825 - half) and test.hi == pytest.approx(0.0825 + half)
    # df = 3: P(|T| > t) = 1 - (2/π)(atan(t/√3) + (t/√3) / (1 + t²/3)), the closed form for 3 degrees of freedom
    x = t_stat / math.sqrt(3)
    assert test.p == pytest.approx(1 - (2 / math.pi) * (math.atan(x) + x / (1 + x * x)), rel=1e-9)
    assert 0.02 < test.p < 0.03  # a worked value: p = 0.0222


def test_paired_t_is_antisymmetric_and_its_interval_matches_t_interval_of_the_differences():
    a, b = [0.41, 0.47, 0.39, 0.52, 0.44], [0.40, 0.43, 0.42, 0.45, 0.41]
    ab, ba = stats.paired_t(a, b), stats.paired_t(b, a)
    assert ba.delta == pytest.approx(-ab.delta) and ba.p == pytest.approx(ab.p)
    assert ba.lo == pytest.approx(-ab.hi) and ba.hi == pytest.approx(-ab.lo)
    iv = stats.t_interval([x - y for x, y in zip(a, b)])
    assert (ab.lo, ab.hi) == (pytest.approx(iv.lo), pytest.approx(iv.hi))
    assert ab.lo < 0 < ab.hi and ab.p > 0.05  # the CI covers 0 exactly when p > 1 - level
    assert stats.paired_t(a, b, level=0.80).hi < ab.hi


def test_paired_t_edge_cases():
    one = stats.paired_t([0.6], [0.5])
    assert (one.p, one.lo, one.hi, one.sd, one.n) == (None, None, None, None, 1) and one.delta == pytest.approx(0.1)
    same = stats.paired_t([0.3, 0.5, 0.7], [0.3, 0.5, 0.7])
    assert (same.delta, same.p, same.lo, same.hi, same.sd) == (0.0, 1.0, 0.0, 0.0, 0.0)
    # equal nonzero differences (0.2 up to float noise: 0.5 - 0.3 != 0.7 - 0.5 in floats) -> no spread, p = 0
    shift = stats.paired_t([0.5, 0.7, 0.9], [0.3, 0.5, 0.7])
    assert (shift.p, shift.sd) == (0.0, 0.0) and shift.lo == shift.hi == shift.delta == pytest.approx(0.2)
    with pytest.raises(ValueError):
        stats.paired_t([0.5, 0.6], [0.5])
    with pytest.raises(ValueError):
        stats.paired_t([], [])


def test_min_detectable_difference_known_value_and_monotonicity():
    # (t_{.975, 4} + t_{.80, 4}) · sd / √5 = (2.776445 + 0.940965) · 0.04 / √5
    # exact noncentral t: 1.68200 sd at 5 seeds (the shortcut (t.975 + t.8) / sqrt(5) = 1.66254 is optimistic)
    assert min_detectable_difference(0.04, 5) == pytest.approx(0.04 * 1.681997, rel=1e-5)
    assert min_detectable_difference(0.04, 5) > (2.776445105 + 0.940964840) * 0.04 / math.sqrt(5)
    assert min_detectable_difference(0.04, 1) is None
    assert min_detectable_difference(0.0, 5) == 0.0
    mdd = [min_detectable_difference(0.05, n) for n in range(2, 40)]
    assert all(x > y for x, y in zip(mdd, mdd[1:]))  # more seeds, smaller detectable Δ
    assert min_detectable_difference(0.10, 5) == pytest.approx(2 * min_detectable_difference(0.05, 5))
    assert min_detectable_difference(0.05, 5, power=0.9) > min_detectable_difference(0.05, 5)
    assert min_detectable_difference(0.05, 5, alpha=0.01) > min_detectable_difference(0.05, 5)
    # large n: (1.96 + 0.8416) · sd / √n
    assert min_detectable_difference(1.0, 10_000) == pytest.approx((1.959964 + 0.841621) / 100, rel=1e-3)
    assert paired_t_power(min_detectable_difference(0.03, 7), 0.03, 7) == pytest.approx(0.8, abs=1e-9)
    with pytest.raises(ValueError):
        min_detectable_difference(-0.1, 5)
    with pytest.raises(ValueError):
        min_detectable_difference(0.1, 5, power=1.0)


def test_seeds_needed_inverts_the_mdd():
    sd = 0.04
    for n in (2, 3, 5, 10, 37):
        mdd = min_detectable_difference(sd, n)
        assert seeds_needed(sd, mdd * (1 + 1e-9)) == n
        assert seeds_needed(sd, mdd * (1 - 1e-6)) == n + 1
    needed = [seeds_needed(sd, effect) for effect in (0.2, 0.1, 0.05, 0.03, 0.02, 0.01)]
    assert needed == sorted(needed) and needed[0] == 3  # smaller effects need more seeds
    # the normal rule (1.96 + 0.84)² · (sd/Δ)² = 125.6; the t quantiles at 127 df push it to 128
    assert seeds_needed(sd, 0.01) == 128
    assert seeds_needed(0.0, 0.01) == 2
    assert seeds_needed(sd, 0.0) is None and seeds_needed(sd, 1e-4) is None
    assert 300_000 < seeds_needed(sd, 2e-4, max_n=1_000_000) < 330_000  # 7.84 · 200² = 313,600


def test_pooled_sd():
    # groups centred on their own means: SS = 0.02 + 0.08 + 0, dof = 1 + 2 + 0
    assert pooled_sd([[0.1, 0.3], [0.0, 0.2, 0.4], [0.9]]) == pytest.approx(math.sqrt(0.1 / 3))
    # one group: the ordinary sample SD; a shift of one group changes nothing
    values = [0.02, -0.01, 0.05, 0.03]
    assert pooled_sd([values]) == pytest.approx(statistics.stdev(values))
    assert pooled_sd([values, [0.5, 0.7]]) == pytest.approx(pooled_sd([values, [0.0, 0.2]]))
    assert pooled_sd([[0.5], [], [0.3]]) is None and pooled_sd([]) is None
    assert pooled_sd([[0.4, 0.4, 0.4]]) == pytest.approx(0.0, abs=1e-15)
