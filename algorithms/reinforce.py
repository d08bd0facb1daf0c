"""REINFORCE (Williams, 1992) with a choice of baseline.

    grad J = E[ (R - b) * grad log pi(y | x) ],   loss = -agg_t[ (R - b) * log pi(y_t | x, y_<t) ]

Baselines: ``none`` (b = 0), ``mean`` (b = the batch's mean reward), ``rloo`` (leave-one-out: b = mean reward of the
other samples of the same prompt, Kool et al. 2019 / Ahmadian et al. 2024). Optional KL in the reward:
R <- R - kl_reward_coef * sum_t k1_t, the per-token KL to a frozen reference summed over the completion.
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
    group_stats,
    kl_penalty,
    masked_sum,
    per_token,
    zero_advantage_rows,
)


@dataclass
class ReinforceConfig(AlgorithmConfig):
    baseline: Literal["none", "mean", "rloo"] = "mean"
    kl_reward_coef: float = 0.0  # coefficient of the summed k1 KL subtracted from the reward
    loss_agg: AggMode = "seq-mean-token-mean"


@register_algorithm
class Reinforce(Algorithm):
    name = "reinforce"
    description = "REINFORCE: (R - b) * log-likelihood, baseline none / batch mean / leave-one-out"
    Config = ReinforceConfig
    renamed = {"kl_coef": "kl_reward_coef"}

    def checks(self) -> list[Check]:
        return [*super().checks(), ("kl_reward_coef", self.config.kl_reward_coef >= 0, "must be >= 0")]

    @property
    def needs_reference(self) -> bool:
        return self.config.kl_reward_coef > 0

    @property
    def needs_old_logprobs(self) -> bool:
        return self.config.kl_reward_coef > 0

    def compute_advantages(self, batch: RolloutBatch) -> dict[str, float]:
        reward = batch.rewards.float()
        metrics = {}
        if self.config.kl_reward_coef > 0:
            kl = masked_sum(
                kl_penalty(batch.old_logprobs, batch.ref_logprobs, "k1", batch.response_mask),
                batch.response_mask,
                dim=1,
            )
            reward = reward - self.config.kl_reward_coef * kl
            metrics["kl_reward_penalty"] = float(kl.mean())
        if self.config.baseline == "mean":
            reward = reward - reward.mean()
        elif self.config.baseline == "rloo":
            mean, _, count = group_stats(reward, batch.group_ids)
            # mean of the others = (n * mean - R) / (n - 1), so R - b = n / (n - 1) * (R - mean)
            reward = torch.where(
                count > 1, (reward - mean) * count / (count - 1).clamp(min=1), torch.zeros_like(reward)
            )
        batch.advantages = per_token(reward, batch.response_mask)
        return metrics

    def inert_rows(self, batch: RolloutBatch) -> torch.Tensor:
        # the loss is A * log pi alone (any KL is already inside A)
        return zero_advantage_rows(batch.advantages, batch.response_mask)

    def loss(self, batch: RolloutBatch, out: PolicyOutput) -> tuple[torch.Tensor, dict[str, float]]:
        loss = self.aggregate(-batch.advantages * out.logprobs, batch.response_mask)
        return loss, {"pg_loss": float(loss.detach())}
