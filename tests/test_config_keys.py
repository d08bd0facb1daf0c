"""``rlbench config`` lists every key the config accepts, with its default and help from the code's comments."""

from __future__ import annotations

from click.testing import CliRunner

from rlbench.cli.config import config_keys, field_help
from rlbench.core.config import RolloutConfig, RunConfig


def _leaves(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("algo", "task"):
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out.add(f"{prefix}{key}")
    return out


def test_every_key_is_listed_with_its_default():
    result = CliRunner().invoke(config_keys, [])
    assert result.exit_code == 0, result.output
    listed = {line.split()[0] for line in result.output.splitlines() if line and not line.startswith(" ")}
    expected = _leaves(RunConfig().to_dict()) - {"algo", "task"} | {"algo.name", "task.name"}
    assert listed == expected
    assert "rollout.backend" in result.output and "'rlbench'" in result.output


def test_algorithm_and_task_options_are_listed():
    result = CliRunner().invoke(config_keys, ["--algo", "grpo", "--task", "gsm8k"])
    assert result.exit_code == 0, result.output
    for key in ("algo.kl_loss_coef", "algo.epochs", "algo.clip_high", "algo.loss_agg", "task.data"):
        assert any(line.startswith(key + " ") for line in result.output.splitlines()), key


def test_help_comes_from_the_comment_beside_or_above_a_field():
    helps = field_help(RolloutConfig)
    assert helps["backend"].startswith("who generates")
    assert helps["sample_stream"].startswith("0 draws rollouts")  # a comment above the field
    assert "generation_batch_size" in helps
