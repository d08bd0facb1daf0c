"""Splitting a minibatch into micro-batches (to save memory) must not change the gradient."""

import pytest
import torch

from rlbench.core.configure import build_run_config
from rlbench.run.training import build_trainer


def _grads(tiny_qwen_dir, tmp_path, algo: dict, micro: int | None) -> list[torch.Tensor]:
    config = build_run_config(
        {
            "model": str(tiny_qwen_dir),
            "algo": algo,
            "out": str(tmp_path / f"run-{micro}"),
            "rollout": {"batch_size": 8, "samples_per_prompt": 2, "micro_batch_size": micro},
            "sampling": {"max_new_tokens": 10},
            "task": {"name": "arith", "train_size": 40, "test_size": 8},
            "budget": {"steps": 1},
            "eval": {"limit": 2},
        }
    )
    trainer = build_trainer(config, progress=False)
    times: dict[str, float] = {}
    batch, _, _ = trainer.rollout(0, times)
    batch.rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0])  # spread, so advantages are non-zero
    trainer._fill_logprobs(batch, times)
    trainer.algo.compute_advantages(batch)
    trainer.optimizer.zero_grad()
    size = micro or batch.size
    for rows in torch.arange(batch.size).split(size):
        part = batch.select(rows)
        out = trainer.policy.forward(part, with_entropy=True, with_values=trainer.algo.needs_values)
        loss, _ = trainer.algo.loss(part, out)
        (loss * trainer.algo.microbatch_weight(part, batch)).backward()
    return [p.grad.clone() for p in trainer.policy.parameters() if p.grad is not None]


@pytest.mark.parametrize(
    "algo",
    [
        {"name": "grpo", "loss_agg": "token-mean"},
        {"name": "reinforce", "loss_agg": "seq-mean-token-mean"},
        {"name": "em-pg", "loss_agg": "seq-mean-token-sum-norm"},
    ],
)
def test_micro_batches_give_the_whole_batch_gradient(algo, tiny_qwen_dir, tmp_path):
    whole = _grads(tiny_qwen_dir, tmp_path, algo, None)
    split = _grads(tiny_qwen_dir, tmp_path, algo, 3)
    assert len(whole) == len(split) > 0
    assert any(g.abs().sum() > 0 for g in whole)
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
