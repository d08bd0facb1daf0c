"""PPO (Schulman et al. 2017) for language models, as in Ziegler et al. 2019 / Ouyang et al. 2022 (TRL, verl).

Each completion token is an action; a critic estimates V(s_t) for the state before token t: a value model of its own
(``critic: model``, verl's: a copy of the initial policy's transformer with a scalar head) or a value head on the
policy's last hidden state (``critic: head``, TRL's). Token rewards: the outcome reward R on the last valid token,
optionally minus a per-token k1 KL to a frozen reference (reward shaping, ``kl_reward_coef``):

    r_t = -kl_reward_coef * (log pi_old(y_t) - log pi_ref(y_t)) + [t = last] * R

Advantages by GAE(gamma, lambda) with V_old from the sampling step, then whitened over the batch's valid tokens:

    delta_t = r_t + gamma V_{t+1} - V_t,   A_t = delta_t + gamma lambda A_{t+1},   G_t = A_t + V_t   (value target)

Loss, for ``epochs`` passes over ``minibatches`` minibatches:

    L = agg[ max(-A r_t, -A clip(r_t, 1 - eps_low, 1 + eps_high)) ]                            (clipped policy loss)
      + vf_coef * agg[ 1/2 max((V - G)^2, (V_old + clip(V - V_old, -vf_clip, vf_clip) - G)^2) ]  (clipped value loss)
      - entropy_coef * agg[ H ]

The critic is its own optimiser parameter group at ``critic_lr_scale`` x ``optim.lr`` (verl: critic lr 10x the
actor's), and only it trains for the first ``critic_warmup`` steps (the policy's lr is 0). ``vf_coef`` weighs the
value gradient against the policy's where they share a backbone (``critic: head``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from rlbench.core.registry import register_algorithm
from rlbench.engine.batch import PolicyOutput, RolloutBatch

from .base import (
    AggMode,
    Algorithm,
    AlgorithmConfig,
    Check,
    clipped_pg_loss,
    clipped_value_loss,
    explained_variance,
    gae,
    kl_penalty,
    masked_mean,
    masked_sum,
    outcome_token_rewards,
    whiten,
)


@dataclass
class PPOConfig(AlgorithmConfig):
    gamma: float = 1.0  # discount (TRL, verl)
    lam: float = 1.0  # GAE lambda (verl; TRL 0.95): value targets are the outcome, not partly the critic's own V
    clip_low: float = 0.2  # ratio clipped below at 1 - clip_low (TRL, verl)
    clip_high: float = 0.2  # ratio clipped above at 1 + clip_high
    vf_clip: float | None = 0.2  # value clipping around V_old; null disables it (TRL 0.2, verl 0.5)
    vf_coef: float = 0.1  # weight of the value loss (TRL)
    critic: Literal["model", "head"] = "model"  # model: a value model of its own (verl); head: on the policy's (TRL)
    critic_lr_scale: float = 10.0  # the critic's lr = this x optim.lr (verl's examples: 10; docs/algorithms.md)
    critic_warmup: int = 0  # first steps in which only the critic trains, the policy's lr 0 (verl critic_warmup)
    kl_reward_coef: float = 0.0  # per-token k1 KL in the reward (verl: off by default; TRL 0.05)
    entropy_coef: float = 0.0  # entropy bonus (verl, TRL: 0)
    epochs: int = 1  # passes over each batch (verl ppo_epochs; TRL num_ppo_epochs 4)
    minibatches: int = 4  # optimiser steps per pass (verl: train batch / ppo_mini_batch_size = 4; TRL 1)
    whiten_advantages: bool = True  # over the valid tokens of the whole batch (TRL, verl)
    loss_agg: AggMode = "token-mean"  # TRL, verl


@register_algorithm
class PPO(Algorithm):
    name = "ppo"
    description = "PPO: GAE advantages from a value head, clipped policy and value losses, minibatch updates per batch"
    Config = PPOConfig
    renamed = {"kl_coef": "kl_reward_coef"}

    def checks(self) -> list[Check]:
        c = self.config
        return [
            *super().checks(),
            ("gamma", 0 <= c.gamma <= 1, "must be in [0, 1]"),
            ("lam", 0 <= c.lam <= 1, "must be in [0, 1]"),
            ("clip_low", 0 <= c.clip_low < 1, "must be in [0, 1): the ratio's lower bound is 1 - clip_low"),
            ("clip_high", c.clip_high >= 0, "must be >= 0"),
            ("vf_clip", c.vf_clip is None or c.vf_clip >= 0, "must be >= 0 or null"),
            *((key, getattr(c, key) >= 0, "must be >= 0") for key in ("vf_coef", "kl_reward_coef", "entropy_coef")),
            ("critic_lr_scale", c.critic_lr_scale > 0, "must be > 0"),
            ("critic_warmup", c.critic_warmup >= 0, "must be >= 0"),
            ("epochs", c.epochs >= 1, "must be >= 1"),
            ("minibatches", c.minibatches >= 1, "must be >= 1"),
        ]

    @property
    def needs_values(self) -> bool:
        return True

    critic_model = property(lambda self: self.config.critic == "model")
    critic_lr_scale = property(lambda self: self.config.critic_lr_scale)
    critic_warmup = property(lambda self: self.config.critic_warmup)

    @property
    def needs_reference(self) -> bool:
        return self.config.kl_reward_coef > 0

    @property
    def needs_old_logprobs(self) -> bool:
        # the KL reward is charged to the sampling policy; the ratio needs it once the policy moves within a batch
        return self.config.kl_reward_coef > 0 or self.config.epochs * self.config.minibatches > 1

    @property
    def needs_entropy_grad(self) -> bool:
        return self.config.entropy_coef > 0

    @property
    def epochs(self) -> int:
        return self.config.epochs

    @property
    def minibatches(self) -> int:
        return self.config.minibatches

    def compute_advantages(self, batch: RolloutBatch) -> dict[str, float]:
        c, mask = self.config, batch.response_mask
        token_rewards = outcome_token_rewards(batch.rewards, mask)
        metrics = {}
        if c.kl_reward_coef > 0:
            k1 = kl_penalty(batch.old_logprobs, batch.ref_logprobs, "k1", mask)
            token_rewards = token_rewards - c.kl_reward_coef * k1
            metrics["kl_reward_penalty"] = float(masked_sum(k1, mask, dim=1).mean())
        values = batch.values.detach()
        advantages, returns = gae(token_rewards, values, mask, c.gamma, c.lam)
        batch.returns = returns
        batch.advantages = whiten(advantages, mask, unbiased=True) if c.whiten_advantages else advantages
        metrics["value_mean"] = float(masked_mean(values, mask))
        metrics["value_explained_var"] = float(explained_variance(values, returns, mask))
        return metrics

    def loss(self, batch: RolloutBatch, out: PolicyOutput) -> tuple[torch.Tensor, dict[str, float]]:
        if out.values is None:
            raise ValueError("ppo needs the value head's output (PolicyOutput.values) in the loss")
        c, mask = self.config, batch.response_mask
        old = batch.old_logprobs if batch.old_logprobs is not None else out.logprobs.detach()
        pg_loss, metrics = clipped_pg_loss(
            out.logprobs, old, batch.advantages, mask, c.clip_low, c.clip_high, c.loss_agg, c.loss_norm_len
        )
        vf_loss, vf_clip_frac = clipped_value_loss(
            out.values, batch.values, batch.returns, mask, c.vf_clip, c.loss_agg, c.loss_norm_len
        )
        loss = pg_loss + c.vf_coef * vf_loss
        metrics.update(pg_loss=float(pg_loss.detach()), vf_loss=float(vf_loss.detach()), vf_clip_frac=vf_clip_frac)
        if out.entropy is not None:
            entropy = self.aggregate(out.entropy, mask)
            metrics["entropy"] = float(entropy.detach())
            if c.entropy_coef > 0:
                loss = loss - c.entropy_coef * entropy
        return loss, metrics
