"""Masked token maths shared by the engine (its metrics) and every algorithm (their losses).

All per-token tensors are ``[B, T]`` over completion positions, with ``mask`` 1.0 on real tokens and 0.0 on padding.
The reductions select with ``torch.where`` rather than multiply, so a non-finite value in a padded position can never
turn a sum into NaN. ``tests/test_algo_base.py`` runs the docstrings' examples as doctests.
"""

from __future__ import annotations

from typing import Literal

import torch

KLEstimator = Literal["k1", "k2", "k3"]


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` where ``mask`` is 1 (padded entries are ignored even when they are inf or NaN).

    >>> masked_sum(torch.tensor([[1., 2., 3.]]), torch.tensor([[1., 1., 0.]]))
    tensor(3.)
    >>> masked_sum(torch.tensor([[1., 2., float("-inf")]]), torch.tensor([[1., 1., 0.]]), dim=1)
    tensor([3.])
    """
    picked = torch.where(mask.bool(), x, torch.zeros_like(x))
    return picked.sum() if dim is None else picked.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (0 where the mask is empty).

    >>> masked_mean(torch.tensor([[1., 2., 9.], [4., 0., 0.]]), torch.tensor([[1., 1., 0.], [1., 0., 0.]]))
    tensor(2.3333)
    >>> masked_mean(torch.tensor([[1., 2., 9.], [4., 0., 0.]]), torch.tensor([[1., 1., 0.], [1., 0., 0.]]), dim=1)
    tensor([1.5000, 4.0000])
    """
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1.0)


def kl_penalty(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1/k2/k3).

    With ``log r = ref - logp``: k1 = -log r, k2 = (log r)^2 / 2, k3 = r - 1 - log r (unbiased, always >= 0).
    For logp = log 0.5 and ref = log 0.25: k1 = 0.6931, k2 = 0.2402, k3 = 0.5 - 1 + 0.6931 = 0.1931.
    With ``mask``, padded positions give 0 (and a zero, finite gradient) whatever log-probs they hold.

    >>> logp, ref = torch.tensor([0.5]).log(), torch.tensor([0.25]).log()
    >>> [round(kl_penalty(logp, ref, k).item(), 4) for k in ("k1", "k2", "k3")]
    [0.6931, 0.2402, 0.1931]
    >>> kl_penalty(torch.tensor([[0.0, float("-inf")]]), torch.tensor([[0.0, 5.0]]), "k3", torch.tensor([[1.0, 0.0]]))
    tensor([[0., 0.]])
    """
    log_ratio = ref_logprobs - logprobs
    if mask is not None:
        log_ratio = fill_padding(log_ratio, mask)
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        return torch.exp(log_ratio) - 1.0 - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}")


def fill_padding(x: torch.Tensor, mask: torch.Tensor, value: float = 0.0) -> torch.Tensor:
    """``x`` with padded positions replaced by ``value``.

    Used before a nonlinear op (exp, square): autograd multiplies the op's local derivative at a padded position by
    a zero upstream gradient, and 0 * inf is NaN, so a non-finite padded input must be replaced, not only masked out.

    >>> fill_padding(torch.tensor([[1.0, float("nan")]]), torch.tensor([[1.0, 0.0]]))
    tensor([[1., 0.]])
    """
    return torch.where(mask.bool(), x, torch.full_like(x, value))
