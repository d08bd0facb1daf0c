"""EM Policy Gradient (T. Xu, arXiv 2504.18587): the M-step of EM over reasoning traces, as a policy gradient.

A trace tau = (x, Z, y) is a latent variable; the E-step samples N answers per prompt from the current policy and
scores them (failures are kept); the M-step maximises E_D[R(tau) log P_theta(tau)], whose gradient is

    grad = E_D[ (R~(tau) - b) * grad log pi_theta(tau) ],      R~ = sigmoid((R - mu) / sigma)

with mu, sigma the batch's reward mean and standard deviation (the "smoothed" reward) and b a baseline. The loss
per token is -(R~ - b) * log pi(y_t | x, y_<t): no importance ratio, no clipping, one update per fresh batch.

Baselines (``baseline``):

- ``mean`` (default, the paper's): b = mean of R~ over the batch; mu, sigma over the batch's trajectories.
- ``code`` (the author's verl fork): A_t = 2 * sigmoid((G_t - mu) / sqrt(var + 1e-8)) - 1, with G_t the
  return-to-go (gamma = 1) of the outcome reward on the last token, and mu, var over all valid response tokens of
  the batch. That is b = 1/2 and a scale of 2 on sigmoid-smoothed returns; longer answers weigh more in mu and var.
- ``group`` (a variant of ours): mu, sigma and b taken within each prompt's group of samples, like GRPO's statistics.

sigma = 0 (every reward of the batch, or of a group for ``group``, equal): z = (R - mu) / sqrt(sigma^2 + eps) is
exactly 0, so R~ = 1/2 for all and the baseline (their mean, or the code's 1/2) cancels it: A = 0, the step carries no
policy-gradient signal (only the KL and entropy terms act), as in GRPO for a zero-spread group. The paper's formula
would divide 0 by 0 there. The eps keeps z continuous: spreads far below sqrt(eps) = 1e-4 (for instance rewards that
differ only by a tiny KL penalty) are not inflated to unit scale.

Optional terms: ``kl_coef`` * k3 KL to a frozen reference in the loss (the paper's beta; the author's code used
0.001), ``kl_reward_coef`` * k1 KL subtracted from the reward (the code's 0.01 per token), ``entropy_coef`` * entropy
as a bonus (the code's 0.001 in some runs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

from rlbench.engine.batch import PolicyOutput, RolloutBatch
from rlbench.registry import register_algorithm

from .base import (
    AggMode,
    Algorithm,
    AlgorithmConfig,
    group_stats,
    kl_penalty,
    masked_mean,
    masked_sum,
    outcome_token_rewards,
    per_token,
    require,
    returns_to_go,
    whiten,
    zero_advantage_rows,
)

WHITEN_EPS = 1e-8  # inside the square root, as in the author's code (verl's masked_whiten)


@dataclass
class EMPGConfig(AlgorithmConfig):
    baseline: Literal["mean", "code", "group"] = "mean"
    kl_coef: float = 0.0  # beta: k3 KL(pi || pi_ref) added to the loss
    kl_reward_coef: float = 0.0  # k1 KL (sampling policy vs reference) subtracted from the reward
    entropy_coef: float = 0.0  # entropy bonus subtracted from the loss
    loss_agg: AggMode = "seq-mean-token-mean"  # the author's code: mean over a sequence's tokens, then over sequences


@register_algorithm
class EMPG(Algorithm):
    name = "em-pg"
    description = "EM policy gradient: (sigmoid-whitened reward - baseline) * log-likelihood, no ratio, no clip"
    Config = EMPGConfig

    def validate(self) -> None:
        super().validate()
        for key in ("kl_coef", "kl_reward_coef", "entropy_coef"):
            value = getattr(self.config, key)
            require(value >= 0, key, value, "must be >= 0")

    @property
    def needs_reference(self) -> bool:
        return self.config.kl_coef > 0 or self.config.kl_reward_coef > 0

    @property
    def needs_old_logprobs(self) -> bool:
        # only the KL-in-reward needs the sampling policy's log-probs; the loss itself has no ratio
        return self.config.kl_reward_coef > 0

    @property
    def needs_entropy_grad(self) -> bool:
        return self.config.entropy_coef > 0

    def compute_advantages(self, batch: RolloutBatch) -> dict[str, float]:
        mask = batch.response_mask
        kl = None
        if self.config.kl_reward_coef > 0:
            kl = kl_penalty(batch.old_logprobs, batch.ref_logprobs, "k1", mask)
        batch.advantages = _ADVANTAGES[self.config.baseline](batch, kl, self.config.kl_reward_coef)
        metrics = {
            "advantage_mean": float(masked_mean(batch.advantages, mask)),
            "advantage_abs_mean": float(masked_mean(batch.advantages.abs(), mask)),
        }
        if kl is not None:
            metrics["kl_reward_penalty"] = float(masked_sum(kl, mask, dim=1).mean())
        return metrics

    def inert_rows(self, batch: RolloutBatch) -> torch.Tensor | None:
        # e.g. baseline=group on a group whose rewards agree; a KL or entropy term keeps every row live
        if self.config.kl_coef > 0 or self.config.entropy_coef > 0:
            return None
        return zero_advantage_rows(batch.advantages, batch.response_mask)

    def loss(self, batch: RolloutBatch, out: PolicyOutput) -> tuple[torch.Tensor, dict[str, float]]:
        mask = batch.response_mask
        pg_loss = self.aggregate(-batch.advantages * out.logprobs, mask)
        loss = pg_loss
        metrics = {"pg_loss": float(pg_loss.detach())}
        if batch.ref_logprobs is not None:
            kl = self.aggregate(kl_penalty(out.logprobs, batch.ref_logprobs, "k3", mask), mask)
            metrics["kl"] = float(kl.detach())
            if self.config.kl_coef > 0:
                loss = loss + self.config.kl_coef * kl
        if out.entropy is not None:
            entropy = self.aggregate(out.entropy, mask)
            metrics["entropy"] = float(entropy.detach())
            if self.config.entropy_coef > 0:
                loss = loss - self.config.entropy_coef * entropy
        return loss, metrics


# ------------------------------------------------------------------------------------------------ baselines
# Each maps (batch, per-token k1 KL or None, its coefficient) to advantages [B, T].


def _sequence_rewards(batch: RolloutBatch, kl: torch.Tensor | None, coef: float) -> torch.Tensor:
    """R(tau), less the trajectory's summed KL when the KL is charged in the reward."""
    reward = batch.rewards.to(batch.response_mask.dtype)
    if kl is not None:
        reward = reward - coef * kl.sum(dim=1)
    return reward


def _paper_advantages(batch: RolloutBatch, kl: torch.Tensor | None, coef: float) -> torch.Tensor:
    """(R~ - b) with R~ = sigmoid(whitened R over the batch's trajectories), b = mean R~ over the batch."""
    reward = _sequence_rewards(batch, kl, coef)
    smoothed = torch.sigmoid(whiten(reward, torch.ones_like(reward), eps=WHITEN_EPS, unbiased=True))
    return per_token(smoothed - smoothed.mean(), batch.response_mask)


def _group_advantages(batch: RolloutBatch, kl: torch.Tensor | None, coef: float) -> torch.Tensor:
    """As the paper's, but mu, sigma and b within each prompt's group of samples."""
    reward = _sequence_rewards(batch, kl, coef)
    mean, std, _ = group_stats(reward, batch.group_ids)
    smoothed = torch.sigmoid((reward - mean) * torch.rsqrt(std.square() + WHITEN_EPS))
    baseline, _, _ = group_stats(smoothed, batch.group_ids)
    return per_token(smoothed - baseline, batch.response_mask)


def _code_advantages(batch: RolloutBatch, kl: torch.Tensor | None, coef: float) -> torch.Tensor:
    """The author's code: A_t = 2 sigmoid(whitened G_t over all valid tokens) - 1, G_t the return-to-go (gamma 1)."""
    mask = batch.response_mask
    token_rewards = outcome_token_rewards(batch.rewards, mask)
    if kl is not None:
        token_rewards = token_rewards - coef * kl
    returns = returns_to_go(token_rewards, mask, gamma=1.0)
    advantages = 2.0 * torch.sigmoid(whiten(returns, mask, eps=WHITEN_EPS, unbiased=True)) - 1.0
    return advantages * mask


_ADVANTAGES: dict[str, Callable[[RolloutBatch, torch.Tensor | None, float], torch.Tensor]] = {
    "mean": _paper_advantages,
    "code": _code_advantages,
    "group": _group_advantages,
}
