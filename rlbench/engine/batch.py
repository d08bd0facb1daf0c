"""RolloutBatch: one step's completions, laid out the way the policy's forward pass wants them.

Layout (as in verl): ``input_ids`` is ``[B, P + T]`` with prompts left-padded to ``P`` and completions right-padded to
``T``. Every per-token tensor (``response_mask``, log-probs, values, advantages) is ``[B, T]`` over completion
positions only, so algorithm code never sees prompt tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class RolloutBatch:
    input_ids: torch.Tensor  # [B, P+T] long
    attention_mask: torch.Tensor  # [B, P+T] long, 0 on padding
    response_mask: torch.Tensor  # [B, T] float, 1 on completion tokens (EOS included), 0 after
    prompt_len: int  # P
    rewards: torch.Tensor  # [B] float, the task's outcome reward
    group_ids: torch.Tensor  # [B] long, which prompt of the step each completion answers
    old_logprobs: torch.Tensor | None = None  # [B, T] under the policy that sampled (theta_old)
    ref_logprobs: torch.Tensor | None = None  # [B, T] under the frozen reference
    values: torch.Tensor | None = None  # [B, T] critic values at sampling time
    advantages: torch.Tensor | None = None  # [B, T]
    returns: torch.Tensor | None = None  # [B, T] value targets
    truncated: torch.Tensor | None = None  # [B] bool, hit max_new_tokens without EOS
    sample_logprobs: torch.Tensor | None = None  # [B, T] as the rollout backend computed them while sampling
    info: dict[str, Any] = field(default_factory=dict)  # texts, grades: never used by losses

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def response_len(self) -> int:
        return int(self.response_mask.shape[1])

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len :]

    def select(self, index: torch.Tensor) -> RolloutBatch:
        """Rows ``index`` of every tensor field (minibatching); ``info`` is not carried."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value[index] if isinstance(value, torch.Tensor) else value
        out["info"] = {}
        return RolloutBatch(**out)

    def to(self, device: torch.device | str) -> RolloutBatch:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for k, v in out.items():
            if isinstance(v, torch.Tensor):
                out[k] = v.to(device)
        return RolloutBatch(**out)


@dataclass
class PolicyOutput:
    """What one forward pass of the policy gives the loss, all ``[B, T]`` over completion positions."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None = None
    values: torch.Tensor | None = None


def rollout_metrics(batch: RolloutBatch, grades: list[Any], samples_per_prompt: int) -> dict[str, float]:
    """What one step sampled: reward, accuracy, groups whose rewards all agree (no GRPO signal), lengths."""
    lengths = batch.response_mask.sum(1)
    rewards = batch.rewards
    groups = rewards.view(-1, samples_per_prompt)
    return {
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
        "accuracy": sum(g.correct for g in grades) / len(grades),
        "zero_spread_groups": float((groups.max(1).values == groups.min(1).values).float().mean()),
        "length_mean": float(lengths.mean()),
        "length_max": int(lengths.max()),
        "truncated_frac": float(batch.truncated.float().mean()),
    }


def live_rows(rows: torch.Tensor, inert: torch.Tensor | None) -> tuple[torch.Tensor, float]:
    """The rows of a minibatch that carry gradient, and the factor on their loss.

    When every row is inert, one row runs at weight 0: the optimiser must still step with zero gradients on the
    same parameters (AdamW moves on its momentum), exactly as when the inert rows are not left out.
    """
    if inert is None:
        return rows, 1.0
    live = rows[~inert[rows]]
    return (live, 1.0) if len(live) else (rows[:1], 0.0)
