"""Precision that trains: ``bf16`` (autocast over fp32 masters) moves the weights at the paper's lr 1e-6;
``bf16-pure`` at that lr would not, and is refused; the old ``bf16-mixed`` exits 2 naming its new name."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from rlbench.tasks.base import Grade

from rlbench.cli import main
from rlbench.core.configure import build_run_config, load_yaml
from rlbench.engine import precision
from rlbench.engine.precision import bf16_step_check, smallest_bf16_step
from rlbench.run.training import build_trainer

ROOT = Path(__file__).resolve().parents[1]
PAPER_CONFIGS = ["gsm8k-qwen2.5-1.5b.yaml", "math-hard-qwen2.5-math-7b.yaml"]
PROGRESS_BAR = re.compile(r"\d+%\|")


def _one_line(result) -> str:
    lines = [line for line in re.split(r"[\r\n]", result.output) if line.strip() and not PROGRESS_BAR.search(line)]
    assert result.exit_code == 2 and len(lines) == 1, (result.exit_code, result.output, result.exception)
    return lines[0]


def test_the_arithmetic_doctests():
    assert doctest.testmod(precision).failed == 0


def test_the_guard_refuses_exactly_below_median_times_2_to_the_minus_9():
    w = torch.nn.Parameter(torch.tensor([[0.01, 0.02, 0.04]], dtype=torch.bfloat16))  # median 0.02 (bf16: 0.0200195)
    limit = smallest_bf16_step(float(w.detach().float().median()))
    assert bf16_step_check([w], limit * 0.99).stuck and not bf16_step_check([w], limit * 1.01).stuck
    frozen = torch.nn.Parameter(w.detach().clone(), requires_grad=False)
    assert bf16_step_check([frozen], 1e-9) is None  # frozen bf16 weights (a LoRA base) are not updated: no check
    assert bf16_step_check([torch.nn.Parameter(torch.ones(2, 2))], 1e-9) is None  # fp32 masters: no check


def test_bf16_mixed_is_renamed_with_one_line(tmp_path):
    line = _one_line(CliRunner().invoke(main, ["train", "--out", str(tmp_path / "r"), "--set", "precision=bf16-mixed"]))
    assert line.startswith("rlbench: error: precision=bf16-mixed: renamed to bf16 (")


def _paper_run(config_name: str, tiny_qwen_dir: Path, tmp_path: Path, **overrides) -> dict:
    tree = load_yaml(ROOT / "configs" / config_name)
    tree.update(
        {
            "model": str(tiny_qwen_dir),
            "task": {"name": "arith", "train_size": 40, "test_size": 8},
            "device": "cpu",
            "out": str(tmp_path / "run"),
            "budget": {"steps": 3},
            "sampling": {"max_new_tokens": 8},
            "rollout": {
                **tree["rollout"],
                "batch_size": 8,
                "samples_per_prompt": 2,
                "micro_batch_size": 4,
                "generation_batch_size": 8,
            },
            "eval": {**tree["eval"], "limit": 2, "every": 0, "final_mean_of": 1},
            **overrides,
        }
    )
    return tree


def _changed_share(tree: dict) -> float:
    """Run 3 steps with rewards that alternate 1, 0 (a random model earns none); the share of trainable weights that
    differ from where they started."""
    trainer = build_trainer(build_run_config(tree), progress=False)
    trainer.task.grade_many = lambda texts, examples: [
        Grade.right("x") if i % 2 else Grade.fail("wrong") for i in range(len(texts))
    ]
    params = [p for p in trainer.policy.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    summary = trainer.run()
    assert summary["status"] == "completed" and summary["usage"]["steps"] == 3
    changed = sum(int((p.detach() != b).sum()) for p, b in zip(params, before))
    return changed / sum(p.numel() for p in params)


@pytest.mark.parametrize("config_name", PAPER_CONFIGS)
def test_each_paper_configs_precision_moves_the_weights_at_lr_1e_6(config_name, tiny_qwen_dir, tmp_path):
    tree = _paper_run(config_name, tiny_qwen_dir, tmp_path)
    assert tree["precision"] == "bf16" and tree["optim"]["lr"] == 1e-6  # what the paper configs say
    share = _changed_share(tree)
    print(f"{config_name}: {share:.4%} of trainable weights changed in 3 steps")
    assert share >= 0.99


def test_bf16_pure_at_lr_1e_6_is_refused_naming_the_fix(tiny_qwen_dir, tmp_path):
    line = _one_line(
        CliRunner().invoke(
            main,
            [
                "train",
                "--model",
                str(tiny_qwen_dir),
                "--out",
                str(tmp_path / "run"),
                "--quiet",
                "--set",
                "device=cpu",
                "--set",
                "precision=bf16-pure",
                "--set",
                "optim.lr=1e-6",
                "--set",
                "task.train_size=20",
            ],
        )
    )
    assert line.startswith("rlbench: error: precision=bf16-pure: optim.lr=1e-06 is too small")
    assert "use precision: bf16" in line and "allow_stuck_bf16: true" in line


def test_forced_bf16_pure_at_lr_1e_6_barely_moves(tiny_qwen_dir, tmp_path):
    # what the guard prevents, measured: the same 3 steps in bf16 weights leave almost every weight where it was
    tree = _paper_run(PAPER_CONFIGS[0], tiny_qwen_dir, tmp_path, precision="bf16-pure", allow_stuck_bf16=True)
    share = _changed_share(tree)
    print(f"bf16-pure (forced): {share:.4%} of trainable weights changed in 3 steps")
    assert share < 0.10


def test_bf16_pure_trains_when_the_lr_can_move_it(tiny_qwen_dir, tmp_path):
    tree = _paper_run(
        PAPER_CONFIGS[0],
        tiny_qwen_dir,
        tmp_path,
        precision="bf16-pure",
        optim={"lr": 1e-3, "weight_decay": 0.01, "grad_clip": 1.0},
    )
    assert _changed_share(tree) >= 0.9


def test_the_config_and_the_engine_know_the_same_precisions():
    import typing

    from rlbench.core.config import RunConfig

    assert typing.get_args(typing.get_type_hints(RunConfig)["precision"]) == precision.PRECISIONS
