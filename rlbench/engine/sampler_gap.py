"""The gap between the sampler's numerics and the trainer's, and the truncated importance-sampling correction.

A backend samples token y_t with log-prob ``s_t`` under its own kernels (vLLM's, bf16, another batch layout); the
trainer recomputes ``l_t = log pi(y_t)`` at the same weights. Were they the same computation, ``l_t = s_t``. Logged
per step, over the completion tokens of the rows compared:

    sampler_gap_abs = mean_t |l_t - s_t|,      sampler_gap_kl = mean_t [ exp(l_t - s_t) - 1 - (l_t - s_t) ]

the second being k3, an estimate of KL(sampler || trainer) from the sampler's own tokens. Truncated importance
sampling (``rollout.tis_cap``, as verl and TRL apply to vLLM rollouts) weighs each token's advantage by
``min(exp(l_t - s_t), cap)``: the gradient is then that of samples from the trainer's policy, with the weight's
variance bounded by the cap.
"""

from __future__ import annotations

import torch

from rlbench.engine.distributed import Ranks
from rlbench.engine.maths import fill_padding, masked_mean


class GapMeter:
    """Accumulates token sums over the rows compared in one step.

    ``shared`` sums come from the whole batch, which every data-parallel rank holds; the others from this rank's
    share of it, and are summed over ranks.
    """

    def __init__(self) -> None:
        self.sums = {True: [0.0, 0.0, 0.0], False: [0.0, 0.0, 0.0]}  # shared? -> [|delta|, k3, tokens]

    def add(self, trainer: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor, shared: bool = True) -> None:
        delta = fill_padding(trainer.detach().float() - sampler.float(), mask)
        for i, value in enumerate((delta.abs().sum(), (torch.expm1(delta) - delta).sum(), mask.sum())):
            self.sums[shared][i] += float(value)

    def metrics(self, ranks: Ranks | None = None) -> dict[str, float]:
        local = ranks.sum_floats(self.sums[False]) if ranks is not None else self.sums[False]
        abs_sum, k3_sum, tokens = (a + b for a, b in zip(self.sums[True], local))
        if not tokens:
            return {}
        return {"sampler_gap_abs": abs_sum / tokens, "sampler_gap_kl": k3_sum / tokens}


def tis_weights(trainer: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor, cap: float) -> torch.Tensor:
    """``min(exp(l_t - s_t), cap)`` per completion token (1 on padding), without gradient.

    >>> tis_weights(torch.tensor([[0.0, -1.0]]), torch.tensor([[-1.0, 0.0]]), torch.ones(1, 2), 2.0)
    tensor([[2.0000, 0.3679]])
    """
    delta = fill_padding(trainer.detach().float() - sampler.float(), mask)
    return torch.exp(delta).clamp(max=cap)


def tis_metrics(weights: torch.Tensor, cap: float, mask: torch.Tensor) -> dict[str, float]:
    """The mean weight and the share of tokens whose weight the cap truncated."""
    return {
        "tis_weight_mean": float(masked_mean(weights, mask)),
        "tis_capped_frac": float(masked_mean((weights >= cap).float(), mask)),
    }
