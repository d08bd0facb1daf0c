"""PPO's critic: its own optimiser parameter group and learning rate, a warm-up in which only it trains, a value model
of its own (verl's) or a head on the policy's hidden state (TRL's), and a value loss that falls as it learns."""

from __future__ import annotations

import pytest
import torch
from rlbench.algorithms.ppo import PPO

from rlbench.core.config import ConfigError
from rlbench.core.configure import build_algorithm, build_run_config
from rlbench.engine.policy import ValueHead, ValueModel
from rlbench.run.training import build_trainer

LR = 1e-3


def _trainer(tiny_qwen_dir, tmp_path, **algo):
    config = build_run_config(
        {
            "model": str(tiny_qwen_dir),
            "algo": {"name": "ppo", **algo},
            "out": str(tmp_path / "run"),
            "device": "cpu",
            "rollout": {"batch_size": 8, "samples_per_prompt": 2},
            "sampling": {"max_new_tokens": 8},
            "task": {"name": "arith", "train_size": 40, "test_size": 8},
            "budget": {"steps": 1},
            "eval": {"limit": 2, "samples": 0},
            "optim": {"lr": LR},
        }
    )
    return build_trainer(config, progress=False)


def _batch(trainer):
    """A sampled batch with spread rewards, so that the policy and the critic both have something to learn."""
    batch, _, _ = trainer.rollout(0, {})
    batch.rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    return batch


def _update(trainer, batch) -> dict[str, float]:
    """One PPO step on ``batch``: values and log-probs from the current weights, advantages, the update."""
    trainer._fill_logprobs(batch, {})
    metrics = trainer.algo.compute_advantages(batch)
    return {**metrics, **trainer.update(batch, {})}


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _changed(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in module.named_parameters() if not torch.equal(p, before[n])}


@pytest.mark.parametrize("critic", ["model", "head"])
def test_the_critic_is_its_own_param_group_at_its_own_lr(tiny_qwen_dir, tmp_path, critic):
    trainer = _trainer(tiny_qwen_dir, tmp_path, critic=critic, critic_lr_scale=5.0)
    policy, head = trainer.policy, trainer.policy.value_head
    assert isinstance(head, ValueModel if critic == "model" else ValueHead) and policy.value_model == (
        critic == "model"
    )
    actor, critic_group = trainer.optimizer.param_groups
    assert actor["lr"] == pytest.approx(LR) and critic_group["lr"] == pytest.approx(5 * LR)
    assert [id(p) for p in critic_group["params"]] == [id(p) for p in head.parameters()]
    assert [id(p) for p in actor["params"]] == [id(p) for p in policy.model.parameters()]
    if critic == "model":  # a copy of the initial transformer, sharing no tensor with the policy
        assert not {p.data_ptr() for p in head.parameters()} & {p.data_ptr() for p in policy.model.parameters()}
        backbone = policy.model.base_model.state_dict()
        assert all(torch.equal(t, backbone[n]) for n, t in head.backbone.state_dict().items())


@pytest.mark.parametrize("critic", ["model", "head"])
def test_warmup_trains_only_the_critic(tiny_qwen_dir, tmp_path, critic):
    trainer = _trainer(tiny_qwen_dir, tmp_path, critic=critic, critic_warmup=2, critic_lr_scale=10.0)
    model, head = trainer.policy.model, trainer.policy.value_head
    batch = _batch(trainer)
    for _ in range(2):
        assert trainer.scheduler.get_last_lr() == [0.0, pytest.approx(10 * LR)]
        model_before, head_before = _snapshot(model), _snapshot(head)
        _update(trainer, batch)
        assert not _changed(model, model_before), "the policy moved during the critic's warm-up"
        assert _changed(head, head_before), "the critic did not train"
    # the policy's Adam moments never saw a warm-up gradient: its first step after the warm-up is a fresh one
    assert not any(trainer.optimizer.state.get(p) for p in model.parameters())
    assert trainer.scheduler.get_last_lr() == [pytest.approx(LR), pytest.approx(10 * LR)]
    model_before = _snapshot(model)
    _update(trainer, batch)
    assert _changed(model, model_before)


@pytest.mark.parametrize("critic", ["model", "head"])
def test_the_value_loss_falls(tiny_qwen_dir, tmp_path, critic):
    # a few PPO steps on one batch of fixed rewards: the critic fits its returns (the policy trains too)
    trainer = _trainer(tiny_qwen_dir, tmp_path, critic=critic, critic_lr_scale=10.0)
    batch = _batch(trainer)
    rows = [_update(trainer, batch) for _ in range(6)]
    vf = [r["vf_loss"] for r in rows]
    assert vf[-1] < 0.5 * vf[0], vf
    assert rows[-1]["value_explained_var"] > rows[0]["value_explained_var"]


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"critic_lr_scale": 0}, "algo.critic_lr_scale=0.0: must be > 0"),
        ({"critic_warmup": -1}, "algo.critic_warmup=-1: must be >= 0"),
        ({"critic": "mlp"}, "algo.critic"),
    ],
)
def test_critic_options_are_validated(options, key):
    with pytest.raises(ConfigError, match=key):
        build_algorithm(PPO, options)
