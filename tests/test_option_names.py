"""One name per knob across algorithms: old option names exit 2 naming the new one; committed runs use the new names."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rlbench.cli import main
from rlbench.core.configure import build_run_config

ROOT = Path(__file__).resolve().parents[1]


def _one_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize(
    "algo, old, new",
    [
        ("grpo", "beta", "kl_loss_coef"),
        ("grpo", "iterations", "epochs"),
        ("em-pg", "kl_coef", "kl_loss_coef"),
        ("ppo", "kl_coef", "kl_reward_coef"),
        ("reinforce", "kl_coef", "kl_reward_coef"),
    ],
)
def test_train_with_an_old_name_exits_2_naming_the_new_one(tmp_path, algo, old, new):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--algo", algo, "--set", f"algo.{old}=0.1", "--out", str(out)])
    line = _one_line(result)
    assert line.startswith(f"rlbench: error: algo.{old}: renamed to algo.{new} ("), line
    assert not out.exists()


def test_an_old_name_in_a_config_file_exits_2_too(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("algo: {name: ppo, kl_coef: 0.05}\nbudget: {steps: 1}\n")
    line = _one_line(CliRunner().invoke(main, ["train", "--config", str(config), "--out", str(tmp_path / "run")]))
    assert "algo.kl_coef: renamed to algo.kl_reward_coef" in line, line


def test_compare_variant_with_an_old_name_exits_2_naming_the_row_and_the_new_name(tmp_path):
    out = tmp_path / "o"
    result = CliRunner().invoke(
        main, ["compare", "--algos", "grpo,grpo[beta=0.1]", "--seeds", "1", "--out", str(out), "--budget", "steps=1"]
    )
    line = _one_line(result)
    assert "--algos grpo[beta=0.1]: algo.beta: renamed to algo.kl_loss_coef (" in line, line
    assert not out.exists()


@pytest.mark.parametrize(
    "path", sorted(ROOT.glob("results/*/runs/*/config.yaml")), ids=lambda p: f"{p.parts[-4]}/{p.parts[-2]}"
)
def test_committed_runs_record_the_current_option_names(path):
    # a committed run's config.yaml resolves to itself: every algorithm option under its current name, none missing
    saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert build_run_config(saved).algo == saved["algo"]
