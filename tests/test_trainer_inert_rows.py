"""Rows an algorithm declares inert (zero advantage, no other loss term) are left out of the update, which must
stay the same update: the same gradients as running every row through the loss, and the same optimiser steps,
including a step where every row is inert and AdamW still moves on its momentum.

Gradients, not weights, are compared: a gradient that is mathematically 0 (a key bias's, softmax being blind to a
shift shared by every key) holds float round-off that differs with the rows in the pass, and Adam turns any
round-off into a full learning-rate step."""

import pytest
import torch

from rlbench.core.configure import build_run_config
from rlbench.engine.trainer import Trainer
from rlbench.run.training import build_trainer

MIXED = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0])  # pairs: agree, agree, differ, agree
AGREE = torch.ones(8)


def _trainer(tiny_qwen_dir, tmp_path, algo: dict, name: str) -> Trainer:
    config = build_run_config(
        {
            "model": str(tiny_qwen_dir),
            "algo": algo,
            "out": str(tmp_path / name),
            "rollout": {"batch_size": 8, "samples_per_prompt": 2},
            "sampling": {"max_new_tokens": 10},
            "task": {"name": "arith", "train_size": 40, "test_size": 8},
            "budget": {"steps": 2},
            "eval": {"limit": 2},
            "optim": {"lr": 1e-2},
        }
    )
    return build_trainer(config, progress=False)


def _batch(trainer: Trainer, step: int, rewards: torch.Tensor):
    times: dict[str, float] = {}
    batch, _, _ = trainer.rollout(step, times)
    batch.rewards = rewards
    trainer._fill_logprobs(batch, times)
    trainer.algo.compute_advantages(batch)
    return batch


def _every_row_update(trainer: Trainer, batch) -> None:
    trainer.optimizer.zero_grad(set_to_none=True)
    out = trainer.policy.forward(batch, trainer.config.sampling.temperature, with_entropy=True)
    loss, _ = trainer.algo.loss(batch, out)
    loss.backward()
    params = [p for p in trainer.policy.parameters() if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(params, trainer.config.optim.grad_clip)
    trainer.optimizer.step()
    trainer.scheduler.step()


@pytest.mark.parametrize(
    "algo,inert_first",
    [
        ({"name": "grpo", "loss_agg": "token-mean"}, 6 / 8),
        ({"name": "reinforce", "baseline": "rloo"}, 6 / 8),
        ({"name": "em-pg", "baseline": "group", "loss_agg": "seq-mean-token-sum-norm"}, 6 / 8),
        ({"name": "grpo", "kl_loss_coef": 0.1}, 0.0),  # the KL term keeps every row live
        ({"name": "reinforce", "baseline": "mean"}, 0.0),
    ],
)
def test_leaving_inert_rows_out_gives_the_same_weights(algo, inert_first, tiny_qwen_dir, tmp_path):
    skipping = _trainer(tiny_qwen_dir, tmp_path, algo, "skip")
    every = _trainer(tiny_qwen_dir, tmp_path, algo, "every")
    for step, rewards in enumerate([MIXED, AGREE]):
        a, b = _batch(skipping, step, rewards), _batch(every, step, rewards)
        assert torch.equal(a.input_ids, b.input_ids)
        before = [p.detach().clone() for p in skipping.policy.parameters()]
        metrics = skipping.update(a, {})
        _every_row_update(every, b)
        if step == 0:
            assert metrics["inert_rows_frac"] == pytest.approx(inert_first)
        grads = [(p.grad, q.grad) for p, q in zip(skipping.policy.parameters(), every.policy.parameters())]
        assert all((g is None) == (h is None) for g, h in grads)
        scale = max(float(h.abs().max()) for _, h in grads if h is not None)
        assert scale > 0 or step == 1
        for g, h in grads:
            if h is not None:
                torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-6 * scale)
        steps = [s["step"] for s in skipping.optimizer.state.values()]
        assert steps == [s["step"] for s in every.optimizer.state.values()] and len(steps) == len(grads)
        assert any(not torch.equal(p, p0) for p, p0 in zip(skipping.policy.parameters(), before))
