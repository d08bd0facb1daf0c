"""EM Policy Gradient (T. Xu, arXiv 2504.18587): the M-step of EM over reasoning traces, as a policy gradient.

E-step: sample N answers per prompt from the current policy and score them, failures kept. M-step: one step on
E_D[R(tau) log P_theta(tau)], whose gradient is

    grad = E_D[ (R~ - b) grad log pi(tau) ],    R~ = sigmoid((R - mu) / sqrt(sigma^2 + eps)),    eps = 1e-8,

as the loss -agg_t[ A_t log pi(y_t | x, y_<t) ]: no ratio, no clip, one update per fresh batch; variances with n - 1.
``loss_agg``: seq-mean-token-mean, as the author's code (the paper is silent). ``baseline`` chooses A:

- ``code`` (default: the author's verl fork, which produced the paper's table): A_t = 2 sigmoid((G_t - mu) /
  sqrt(var + eps)) - 1, G_t the return-to-go (gamma = 1) of the outcome reward on the last token, mu and var over
  all valid response tokens of the batch; b = 1/2 and a factor 2 on R~.
- ``mean`` (the paper's equation): mu, sigma over the batch's trajectories, b = the batch mean of R~.
- ``group`` (ours): mu, sigma and b within each prompt's group of samples, as GRPO's statistics.

Why not ``mean``: on 0/1 rewards it is REINFORCE with the batch-mean baseline times one scalar per batch. R~ takes
two values, r1 (R = 1) > r0 (R = 0), so R~ = r0 + (r1 - r0) R and, p the batch's success rate,

    A = R~ - mean(R~) = c (R - p),    c = r1 - r0, a function of p and B only (0.40 < c < 0.55 for B >= 4),

so its gradient is c times REINFORCE's (same loss_agg) on the same batch. AdamW's first step m/sqrt(v) = g/|g|
ignores c (and the grad clip's scale) up to its eps; later ones differ only as these scales drift between batches.
Without a KL in the reward ``code`` too has two values a1 > a0 per batch (G_t = R): A = (a1 - a0)(R - b'), but
b' = -a0 / (a1 - a0) is not p: its statistics count tokens (long answers weigh more) and the sigmoid pulls b' from q,
the token-weighted success rate, toward 1/2. So sum_i A_i != 0 in general: the step also moves all answers' likelihood.

sigma = 0 (all rewards of the batch, or of a ``group``, equal; the paper's formula gives 0/0): z = 0, R~ = 1/2 = b,
A = 0 exactly, as in GRPO. eps keeps z continuous: spreads far below sqrt(eps) = 1e-4 are not inflated to unit scale.

Optional: ``kl_loss_coef`` * k3 KL to a frozen reference in the loss (the paper's beta; code 0.001), ``kl_reward_coef``
* k1 KL charged in the reward (the code's 0.01 per token), ``entropy_coef`` * entropy bonus (0.001 in some runs).
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
    masked_mean,
    masked_sum,
    outcome_token_rewards,
    per_token,
    returns_to_go,
    whiten,
    zero_advantage_rows,
)

WHITEN_EPS = 1e-8  # inside the square root, as in the author's code (verl's masked_whiten)


@dataclass
class EMPGConfig(AlgorithmConfig):
    baseline: Literal["code", "mean", "group"] = "code"
    kl_loss_coef: float = 0.0  # beta: k3 KL(pi || pi_ref) added to the loss
    kl_reward_coef: float = 0.0  # k1 KL (sampling policy vs reference) subtracted from the reward
    entropy_coef: float = 0.0  # entropy bonus subtracted from the loss
    loss_agg: AggMode = "seq-mean-token-mean"  # the author's code: mean over a sequence's tokens, then over sequences


@register_algorithm
class EMPG(Algorithm):
    name = "em-pg"
    description = "EM policy gradient: (sigmoid-whitened reward - baseline) * log-likelihood, no ratio, no clip"
    Config = EMPGConfig
    renamed = {"kl_coef": "kl_loss_coef"}

    def checks(self) -> list[Check]:
        keys = ("kl_loss_coef", "kl_reward_coef", "entropy_coef")
        return [*super().checks(), *((key, getattr(self.config, key) >= 0, "must be >= 0") for key in keys)]

    @property
    def needs_reference(self) -> bool:
        return self.config.kl_loss_coef > 0 or self.config.kl_reward_coef > 0

    @property
    def needs_old_logprobs(self) -> bool:  # only the KL-in-reward needs them; the loss itself has no ratio
        return self.config.kl_reward_coef > 0

    @property
    def needs_entropy_grad(self) -> bool:
        return self.config.entropy_coef > 0

    def compute_advantages(self, batch: RolloutBatch) -> dict[str, float]:
        mask, kl, coef = batch.response_mask, None, self.config.kl_reward_coef
        if coef > 0:
            kl = kl_penalty(batch.old_logprobs, batch.ref_logprobs, "k1", mask)
        batch.advantages = _ADVANTAGES[self.config.baseline](batch, kl, coef)
        metrics = {
            "advantage_mean": float(masked_mean(batch.advantages, mask)),
            "advantage_abs_mean": float(masked_mean(batch.advantages.abs(), mask)),
        }
        if kl is not None:
            metrics["kl_reward_penalty"] = float(masked_sum(kl, mask, dim=1).mean())
        return metrics

    def inert_rows(self, batch: RolloutBatch) -> torch.Tensor | None:
        # e.g. baseline=group on a group whose rewards agree; a KL or entropy term keeps every row live
        if self.config.kl_loss_coef > 0 or self.config.entropy_coef > 0:
            return None
        return zero_advantage_rows(batch.advantages, batch.response_mask)

    def loss(self, batch: RolloutBatch, out: PolicyOutput) -> tuple[torch.Tensor, dict[str, float]]:
        mask = batch.response_mask
        loss = self.aggregate(-batch.advantages * out.logprobs, mask)
        metrics = {"pg_loss": float(loss.detach())}
        if batch.ref_logprobs is not None:
            kl = self.aggregate(kl_penalty(out.logprobs, batch.ref_logprobs, "k3", mask), mask)
            metrics["kl"] = float(kl.detach())
            if self.config.kl_loss_coef > 0:
                loss = loss + self.config.kl_loss_coef * kl
        if out.entropy is not None:
            entropy = self.aggregate(out.entropy, mask)
            metrics["entropy"] = float(entropy.detach())
            if self.config.entropy_coef > 0:
                loss = loss - self.config.entropy_coef * entropy
        return loss, metrics


# Each baseline maps (batch, per-token k1 KL or None, its coefficient) to advantages [B, T].


def _sequence_rewards(batch: RolloutBatch, kl: torch.Tensor | None, coef: float) -> torch.Tensor:
    """R(tau), less the trajectory's summed KL when the KL is charged in the reward."""
    reward = batch.rewards.to(batch.response_mask.dtype)
    return reward if kl is None else reward - coef * kl.sum(dim=1)


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
    return per_token(smoothed - group_stats(smoothed, batch.group_ids)[0], batch.response_mask)


def _code_advantages(batch: RolloutBatch, kl: torch.Tensor | None, coef: float) -> torch.Tensor:
    """The author's code: A_t = 2 sigmoid(whitened G_t over all valid tokens) - 1, G_t the return-to-go (gamma 1)."""
    mask = batch.response_mask
    token_rewards = outcome_token_rewards(batch.rewards, mask) - (0.0 if kl is None else coef * kl)
    returns = returns_to_go(token_rewards, mask, gamma=1.0)
    return (2.0 * torch.sigmoid(whiten(returns, mask, eps=WHITEN_EPS, unbiased=True)) - 1.0) * mask


_ADVANTAGES = {"code": _code_advantages, "mean": _paper_advantages, "group": _group_advantages}
