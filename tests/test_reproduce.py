"""The reproduction check: calibrated by simulation (false alarms, power on a 5 pp shift), and end to end on folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from report_helpers import make_comparison

from rlbench.cli import main
from rlbench.study.report import reproduce as rep
from rlbench.study.report.inputs import ReportInputError, load_comparison

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "results" / "tiny-arith"
SIMULATIONS = 2_000  # binomial SE of a 5% rate: 0.005


def _committed_design() -> tuple[int, dict[str, dict[str, tuple[float, float]]]]:
    """The committed main job's seed count and, per metric and row, the mean and SD of its per-seed scores: the
    check is calibrated at the noise it will meet."""
    comp = load_comparison(COMMITTED)
    design: dict[str, dict[str, tuple[float, float]]] = {}
    seeds = 0
    for metric in rep.METRICS:
        scores = rep.seed_scores(comp, metric, [])
        design[metric] = {row: (float(np.mean(v)), float(np.std(v, ddof=1))) for row, v in scores.items()}
        seeds = max(seeds, *(len(v) for v in scores.values()))
    return seeds, design


def _simulate(shift: float, simulations: int, seed: int) -> float:
    """Fraction of simulated pairs of results in which the check says ``differs``; ``shift`` moves the first row's
    scores on every metric in the candidate (a real change of a model moves all its accuracies). Holm finds a
    difference exactly when the smallest p is at most α / m, so each simulation needs only its smallest p."""
    seeds, design = _committed_design()
    rng = np.random.default_rng(seed)
    first = next(iter(design[rep.METRICS[0]]))
    cells = [(row, mean, sd) for rows in design.values() for row, (mean, sd) in rows.items()]
    a = np.stack([rng.normal(mean, sd, (simulations, seeds)) for _, mean, sd in cells], axis=1)
    b = np.stack(
        [rng.normal(mean + (shift if row == first else 0.0), sd, (simulations, seeds)) for row, mean, sd in cells],
        axis=1,
    )
    p = rep.welch_p_many(a, b)  # [simulations, tests]
    differs = p.min(axis=1) <= rep.ALPHA / len(cells)
    for i in range(5):  # the shortcut is the check itself: Holm over the same p-values
        tests = rep.check(
            [rep.RowTest(r, "m", tuple(a[i, j]), tuple(b[i, j]), float(p[i, j])) for j, (r, _, _) in enumerate(cells)]
        )
        assert any(t.differs for t in tests) == differs[i]
    return float(differs.mean())


def test_false_alarms_stay_at_about_five_percent():
    """Pairs of results drawn from one distribution (20,000 simulated): `differs` in at most about 5%; Holm keeps the
    family's rate at or under α."""
    rate = _simulate(0.0, 10 * SIMULATIONS, seed=1)
    assert 0.02 <= rate <= 0.055, rate


def test_a_five_point_shift_in_one_row_is_flagged():
    rate = _simulate(0.05, SIMULATIONS, seed=2)
    assert rate >= 0.80, rate


def test_detectable_shift_has_the_power_it_claims():
    """80% on fresh draws (the shift is solved on draws of its own)."""
    shift = rep.detectable_shift(0.02, 5, 5, family=10)
    rng = np.random.default_rng(3)
    p = rep.welch_p_many(rng.normal(0, 0.02, (20_000, 5)), rng.normal(shift, 0.02, (20_000, 5)))
    assert float((p < 0.05 / 10).mean()) == pytest.approx(0.80, abs=0.015)


def test_welch_p_edges():
    assert rep.welch_p([0.5], [0.5, 0.6]) is None
    assert rep.welch_p([0.5, 0.5], [0.5, 0.5]) == 1.0
    assert rep.welch_p([0.5, 0.5], [0.6, 0.6]) == 0.0
    from scipy import stats as scipy_stats

    a, b = [0.41, 0.44, 0.40, 0.47], [0.45, 0.49, 0.50, 0.46, 0.52]
    assert rep.welch_p(a, b) == pytest.approx(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-12)


@pytest.fixture()
def two(tmp_path: Path) -> tuple[Path, Path]:
    a = make_comparison(tmp_path / "a", {"em-pg": 0.6, "grpo": 0.4}, seeds=(1, 2, 3, 4), problems=60)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    return a, b


def test_a_copy_reproduces_and_the_cli_exits_0(two: tuple[Path, Path], tmp_path: Path):
    a, b = two
    out = tmp_path / "check.json"
    result = CliRunner().invoke(main, ["reproduce", str(a), str(b), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith("reproduced")
    assert "starting weights: identical" in result.output
    data = json.loads(out.read_text())
    assert data["reproduced"] and data["family"] == 4 and all(not t["differs"] for t in data["tests"])


def test_a_different_result_is_named_with_exit_1(tmp_path: Path):
    a = make_comparison(tmp_path / "a", {"em-pg": 0.6, "grpo": 0.4}, seeds=(1, 2, 3, 4), problems=200)
    b = make_comparison(tmp_path / "b", {"em-pg": 0.6, "grpo": 0.9}, seeds=(1, 2, 3, 4), problems=200)
    result = CliRunner().invoke(main, ["reproduce", str(a), str(b)])
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("differs: grpo greedy +") and "em-pg" not in last


def test_different_experiments_are_refused_naming_the_field(tmp_path: Path):
    a = make_comparison(tmp_path / "a", {"em-pg": 0.6, "grpo": 0.4}, seeds=(1, 2, 3))
    b = make_comparison(tmp_path / "b", {"em-pg": 0.6, "grpo": 0.4}, seeds=(1, 2, 3), problems=40)
    with pytest.raises(ReportInputError, match="different experiments: eval"):
        rep.reproduce(load_comparison(a), load_comparison(b))
    result = CliRunner().invoke(main, ["reproduce", str(a), str(b)])
    assert result.exit_code == 2 and "different experiments" in result.output
