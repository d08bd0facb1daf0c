"""Memory levers: gradient checkpointing (same gradients, layers really recomputed) and the 8-bit optimiser's refusal
where bitsandbytes cannot run."""

from __future__ import annotations

import re
import sys

import pytest
import torch
from click.testing import CliRunner

from rlbench.cli import main
from rlbench.core.config import ConfigError
from rlbench.core.configure import build_run_config
from rlbench.engine.build import check_optimizer
from rlbench.run.training import build_trainer

PROGRESS_BAR = re.compile(r"\d+%\|")


def _grads(tiny_qwen_dir, tmp_path, checkpointing: bool, lora_rank: int) -> tuple[list[torch.Tensor], int]:
    """The gradient of one GRPO loss, and how many times layer 0's MLP ran again in the backward pass."""
    config = build_run_config(
        {
            "model": str(tiny_qwen_dir),
            "algo": "grpo",
            "out": str(tmp_path / f"run-{checkpointing}"),
            "device": "cpu",
            "rollout": {"batch_size": 8, "samples_per_prompt": 2, "micro_batch_size": 4},
            "sampling": {"max_new_tokens": 10},
            "task": {"name": "arith", "train_size": 40, "test_size": 8},
            "budget": {"steps": 1},
            "eval": {"limit": 2},
            "gradient_checkpointing": checkpointing,
            "lora": {"rank": lora_rank},
        }
    )
    trainer = build_trainer(config, progress=False)
    assert trainer.policy.model.training == checkpointing  # checkpointing acts in training mode only
    times: dict[str, float] = {}
    batch, _, _ = trainer.rollout(0, times)
    batch.rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    trainer._fill_logprobs(batch, times)
    trainer.algo.compute_advantages(batch)
    calls = []
    base = trainer.policy.model.get_base_model() if lora_rank else trainer.policy.model
    # a pre-hook: the recomputation stops early, once the last tensor the backward needs exists, before any
    # post-forward hook of the layer's last module would run
    hook = base.model.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    trainer.optimizer.zero_grad()
    out = trainer.policy.forward(batch, with_entropy=True)
    loss, _ = trainer.algo.loss(batch, out)
    in_forward = len(calls)
    loss.backward()
    hook.remove()
    return [p.grad.clone() for p in trainer.policy.parameters() if p.grad is not None], len(calls) - in_forward


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_checkpointing_gives_the_same_gradients_and_recomputes_the_layers(tiny_qwen_dir, tmp_path, lora_rank):
    if lora_rank:
        pytest.importorskip("peft")
    plain, plain_recomputed = _grads(tiny_qwen_dir, tmp_path, False, lora_rank)
    checkpointed, recomputed = _grads(tiny_qwen_dir, tmp_path, True, lora_rank)
    assert len(plain) == len(checkpointed) > 0 and any(g.abs().sum() > 0 for g in plain)
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)
    # with checkpointing the backward runs the layer again (one forward over the whole rows, so once); without, never
    assert plain_recomputed == 0 and recomputed == 1


def _one_line(result) -> str:
    lines = [line for line in re.split(r"[\r\n]", result.output) if line.strip() and not PROGRESS_BAR.search(line)]
    assert result.exit_code == 2 and len(lines) == 1, (result.exit_code, result.output, result.exception)
    return lines[0]


def test_adamw_8bit_on_a_cpu_is_one_line_naming_cuda(tiny_qwen_dir, tmp_path):
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
                "optim.name=adamw-8bit",
                "--set",
                "task.train_size=20",
            ],
        )
    )
    assert line.startswith("rlbench: error: optim.name=adamw-8bit:") and "CUDA" in line and "optim.name=adamw" in line


def test_adamw_8bit_without_bitsandbytes_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # importing it now fails, installed or not
    with pytest.raises(ConfigError, match=r"optim.name=adamw-8bit: needs bitsandbytes.*pip install bitsandbytes"):
        check_optimizer("adamw-8bit", torch.device("cuda"))
    check_optimizer("adamw", torch.device("cuda"))  # the default needs nothing


def test_unknown_optimiser_names_are_refused():
    with pytest.raises(ConfigError, match="optim.name"):
        build_run_config({"optim": {"name": "sgd"}})
