"""GRPO: Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath), with the later fixes as options.

For the G samples of one prompt with outcome rewards R_1..R_G, every token of sample i gets the advantage

    A_i = (R_i - mean(R_1..R_G)) / (std(R_1..R_G) + eps)          (scale_rewards: false drops the division: Dr. GRPO)

and the loss is PPO's clipped surrogate against the sampling policy plus a k3 KL to a frozen reference:

    loss = agg_t[ max(-A_i r_t, -A_i clip(r_t, 1 - eps_low, 1 + eps_high)) ]
         + kl_loss_coef * agg_t[ k3(pi || pi_ref)_t ],                        (the paper's beta)
    r_t  = pi(y_t | x, y_<t) / pi_old(y_t | x, y_<t)

run for ``epochs`` (the paper's mu) passes over ``minibatches`` minibatches of each fresh batch. std is the unbiased
sample standard deviation (torch.std, as in verl and TRL); eps = 1e-6 as in verl. A group whose rewards are all equal
gets A = 0. With one epoch and one minibatch the policy at loss time is the sampling policy: the ratio is 1, the clip
never binds, and the gradient is the plain policy gradient of -A log pi (TRL takes the same shortcut and so do we:
old log-probs are then not recomputed but taken as the detached current ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlbench.core.registry import register_algorithm
from rlbench.engine.batch import PolicyOutput, RolloutBatch

from .base import (
    AggMode,
    Algorithm,
    AlgorithmConfig,
    Check,
    clipped_pg_loss,
    group_stats,
    kl_penalty,
    per_token,
    zero_advantage_rows,
)

STD_EPS = 1e-6  # added to the group std (verl's epsilon; TRL uses 1e-4)


@dataclass
class GRPOConfig(AlgorithmConfig):
    clip_low: float = 0.2  # eps_low: the ratio is clipped below at 1 - clip_low (verl, TRL)
    clip_high: float = 0.2  # eps_high: clipped above at 1 + clip_high (verl, TRL; DAPO suggests 0.28)
    kl_loss_coef: float = 0.0  # beta: k3 KL to the reference (TRL's default 0; verl 0.001 when use_kl_loss is on)
    scale_rewards: bool = True  # divide by the group std; false = Dr. GRPO
    epochs: int = 1  # mu: passes over each batch (TRL num_iterations, verl ppo_epochs)
    minibatches: int = 1  # optimiser steps per pass
    loss_agg: AggMode = "token-mean"  # verl's default; TRL's "dapo" is the same token-level normalisation


@register_algorithm
class GRPO(Algorithm):
    name = "grpo"
    description = "GRPO: group-normalised outcome advantage, PPO-clipped ratio, optional k3 KL to the reference"
    Config = GRPOConfig
    renamed = {"beta": "kl_loss_coef", "iterations": "epochs"}

    def checks(self) -> list[Check]:
        c = self.config
        return [
            *super().checks(),
            ("clip_low", 0 <= c.clip_low < 1, "must be in [0, 1): the ratio's lower bound is 1 - clip_low"),
            ("clip_high", c.clip_high >= 0, "must be >= 0"),
            ("kl_loss_coef", c.kl_loss_coef >= 0, "must be >= 0"),
            ("epochs", c.epochs >= 1, "must be >= 1"),
            ("minibatches", c.minibatches >= 1, "must be >= 1"),
        ]

    @property
    def needs_reference(self) -> bool:
        return self.config.kl_loss_coef > 0

    @property
    def needs_old_logprobs(self) -> bool:
        # with a single update per batch the sampling policy is the current one: the ratio is 1 by construction
        return self.config.epochs * self.config.minibatches > 1

    @property
    def epochs(self) -> int:
        return self.config.epochs

    @property
    def minibatches(self) -> int:
        return self.config.minibatches

    def compute_advantages(self, batch: RolloutBatch) -> dict[str, float]:
        reward = batch.rewards.to(batch.response_mask.dtype)
        mean, std, _ = group_stats(reward, batch.group_ids)
        advantage = reward - mean
        if self.config.scale_rewards:
            advantage = advantage / (std + STD_EPS)
        batch.advantages = per_token(advantage, batch.response_mask)
        # the trainer already logs the fraction of zero-spread groups (whose advantages are all 0)
        return {"advantage_abs_mean": float(advantage.abs().mean())}

    def inert_rows(self, batch: RolloutBatch) -> torch.Tensor | None:
        # A = 0 makes both clipped terms 0 whatever the ratio; only the KL term could still move such a row
        return zero_advantage_rows(batch.advantages, batch.response_mask) if self.config.kl_loss_coef == 0 else None

    def loss(self, batch: RolloutBatch, out: PolicyOutput) -> tuple[torch.Tensor, dict[str, float]]:
        mask = batch.response_mask
        old = batch.old_logprobs if batch.old_logprobs is not None else out.logprobs.detach()
        c = self.config
        loss, metrics = clipped_pg_loss(
            out.logprobs, old, batch.advantages, mask, c.clip_low, c.clip_high, c.loss_agg, c.loss_norm_len
        )
        metrics["pg_loss"] = float(loss.detach())
        if batch.ref_logprobs is not None:
            kl = self.aggregate(kl_penalty(out.logprobs, batch.ref_logprobs, "k3", mask), mask)
            metrics["kl"] = float(kl.detach())
            if c.kl_loss_coef > 0:
                loss = loss + c.kl_loss_coef * kl
        return loss, metrics
