"""The algorithm protocol and the maths every algorithm shares.

All per-token tensors are ``[B, T]`` over completion positions, with ``mask`` 1.0 on real tokens and 0.0 on padding.
Masks are 0/1: the masked reductions select with ``torch.where`` rather than multiply, so a non-finite value in a
padded position (a log-prob of ``-inf``, a garbage value-head output) can never turn a sum into NaN.

Every helper's docstring carries a small worked example; ``tests/test_algo_base.py`` runs them as doctests.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from rlbench.engine.batch import PolicyOutput, RolloutBatch

# the token maths the engine itself needs (its metrics) lives there; every algorithm shares it through this module
from rlbench.engine.maths import KLEstimator, fill_padding, kl_penalty, masked_mean, masked_sum  # noqa: F401

AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]

# exp() of a log-ratio beyond this is no longer a meaningful importance weight, only an overflow risk (verl clamps too)
MAX_LOG_RATIO = 20.0


@dataclass
class AlgorithmConfig:
    """Hyperparameters every algorithm has; subclasses add their own."""

    loss_agg: AggMode = "seq-mean-token-mean"
    loss_norm_len: int | None = None  # the constant of seq-mean-token-sum-norm; None = the batch's padded length T


# (option name, whether its bound holds, what the bound is): one entry of Algorithm.checks
Check = tuple[str, bool, str]


class Algorithm(ABC):
    """An RL objective. The trainer asks what it needs through the ``needs_*`` properties, never by name.

    Per step the trainer: samples, grades, fills ``old_logprobs`` / ``ref_logprobs`` / ``values`` as requested, calls
    :meth:`compute_advantages` once, then for ``epochs`` x ``minibatches`` calls :meth:`loss` and steps the optimiser.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Config: ClassVar[type[AlgorithmConfig]] = AlgorithmConfig
    # old option name -> its new name; the old one is refused with a ConfigError (exit 2) that names the new one
    renamed: ClassVar[dict[str, str]] = {}

    def __init__(self, config: AlgorithmConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()

    @classmethod
    def options(cls) -> dict[str, Any]:
        """Option name -> default, the algorithm's own options first, then those every algorithm has."""
        defaults = cls.Config()
        shared = {f.name for f in dataclasses.fields(AlgorithmConfig)}
        names = [f.name for f in dataclasses.fields(cls.Config)]
        return {n: getattr(defaults, n) for n in sorted(names, key=lambda n: n in shared)}

    def checks(self) -> list[Check]:
        """(option, holds, why) for every bound on the options; the configure step
        (:func:`rlbench.core.configure.build_algorithm`) refuses the first that does not hold, naming ``algo.<option>=value``.

        Subclasses extend this with ``[*super().checks(), ...]``.
        """
        n = self.config.loss_norm_len
        return [("loss_norm_len", n is None or n >= 1, "must be >= 1 or null")]

    def aggregate(self, per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """:func:`agg_loss` with this algorithm's configured mode, for every term of its loss alike."""
        return agg_loss(per_token, mask, self.config.loss_agg, self.config.loss_norm_len)

    def microbatch_weight(self, micro: RolloutBatch, whole: RolloutBatch) -> float:
        """The share of ``whole``'s loss that ``micro`` carries when a minibatch is split to save memory.

        Summing ``weight * loss(micro)`` over the micro-batches then equals ``loss(whole)`` exactly: token-mean
        weighs by tokens, the seq-mean modes by sequences (every mode's terms use the same aggregation).
        """
        if self.config.loss_agg == "token-mean":
            return float(micro.response_mask.sum() / whole.response_mask.sum().clamp(min=1.0))
        return micro.size / whole.size

    def inert_rows(self, batch: RolloutBatch) -> torch.Tensor | None:
        """A ``[B]`` bool mask of rows whose loss terms are exactly 0 with exactly 0 gradient, or None.

        The trainer leaves these rows out of the forward and backward pass (they still count in every
        normaliser through :meth:`microbatch_weight`), so the update is the same at less cost. Called once per
        step, after :meth:`compute_advantages`. Only claim rows whose every loss term vanishes: a KL, entropy or
        value term makes a row live whatever its advantage.
        """
        return None

    @property
    def needs_reference(self) -> bool:
        return False

    @property
    def needs_values(self) -> bool:
        return False

    @property
    def critic_model(self) -> bool:
        """With ``needs_values``: a value model of its own (a copy of the initial policy's transformer and a scalar
        head, verl's critic) instead of a value head on the policy's last hidden state."""
        return False

    @property
    def critic_lr_scale(self) -> float:
        """The critic's learning rate as a multiple of ``optim.lr`` (its own optimiser parameter group)."""
        return 1.0

    @property
    def critic_warmup(self) -> int:
        """The first steps in which only the critic trains: the policy's learning rate is 0 until then."""
        return 0

    @property
    def needs_old_logprobs(self) -> bool:
        return False

    @property
    def needs_entropy_grad(self) -> bool:
        return False

    @property
    def epochs(self) -> int:
        return 1

    @property
    def minibatches(self) -> int:
        return 1

    @abstractmethod
    def compute_advantages(self, batch: RolloutBatch) -> dict[str, float]:
        """Set ``batch.advantages`` (and ``batch.returns`` if a critic is trained); return metrics."""

    @abstractmethod
    def loss(self, batch: RolloutBatch, out: PolicyOutput) -> tuple[torch.Tensor, dict[str, float]]:
        """The scalar to minimise on (a minibatch of) ``batch`` given the current policy's forward pass."""


# --------------------------------------------------------------------------------------------- shared maths


def agg_loss(loss: torch.Tensor, mask: torch.Tensor, mode: AggMode, norm_len: int | None = None) -> torch.Tensor:
    """Reduce a ``[B, T]`` per-token loss to a scalar.

    - ``token-mean``: every token of the batch weighs the same (long answers weigh more in total).
    - ``seq-mean-token-mean``: mean over each sequence's tokens, then over sequences (each answer weighs the same).
    - ``seq-mean-token-sum``: sum over each sequence's tokens, then mean over sequences.
    - ``seq-mean-token-sum-norm``: token sum divided by a constant ``norm_len`` (default ``T``) instead of the
      sequence's own length, then mean over sequences: Dr. GRPO's fix for the length bias.

    >>> loss, mask = torch.tensor([[1., 2., 3.], [4., 0., 0.]]), torch.tensor([[1., 1., 1.], [1., 0., 0.]])
    >>> [round(agg_loss(loss, mask, m).item(), 4) for m in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")]
    [2.5, 3.0, 5.0]
    >>> round(agg_loss(loss, mask, "seq-mean-token-sum-norm").item(), 4)  # (6/3 + 4/3) / 2
    1.6667
    """
    if mode == "token-mean":
        return masked_mean(loss, mask)
    if mode == "seq-mean-token-mean":
        return masked_mean(loss, mask, dim=1).mean()
    if mode == "seq-mean-token-sum":
        return masked_sum(loss, mask, dim=1).mean()
    if mode == "seq-mean-token-sum-norm":
        length = norm_len if norm_len is not None else loss.shape[1]
        return (masked_sum(loss, mask, dim=1) / length).mean()
    raise ValueError(f"unknown loss aggregation mode {mode!r}")


def whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8, unbiased: bool = False
) -> torch.Tensor:
    """Normalise ``x`` to unit variance (and zero mean if ``shift_mean``) over masked positions; 0 on padding.

    ``(x - mean) / sqrt(var + eps)``. ``unbiased`` divides the variance by ``n - 1`` (as verl's ``masked_whiten`` and
    TRL's ``whiten`` do) instead of ``n``. When every masked value is equal the result is exactly 0: the ``eps``
    inside the square root keeps a zero spread from dividing by zero.

    ``x = [[1, 3], [5, 0]]``, ``mask = [[1, 1], [1, 0]]``: mean 3, variance 8/3 (unbiased: 4).

    >>> x, mask = torch.tensor([[1., 3.], [5., 0.]]), torch.tensor([[1., 1.], [1., 0.]])
    >>> whiten(x, mask)
    tensor([[-1.2247,  0.0000],
            [ 1.2247,  0.0000]])
    >>> whiten(x, mask, unbiased=True)
    tensor([[-1.,  0.],
            [ 1.,  0.]])
    >>> whiten(torch.tensor([1., 1., 1.]), torch.ones(3))
    tensor([0., 0., 0.])
    """
    mean = masked_mean(x, mask)
    sq = masked_sum((x - mean).square(), mask)
    n = mask.sum()
    var = sq / (n - 1).clamp(min=1.0) if unbiased else sq / n.clamp(min=1.0)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask.bool(), out, torch.zeros_like(out))


def group_stats(values: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row mean, (unbiased) std and size of the row's group (a group of one has std 0).

    >>> mean, std, count = group_stats(torch.tensor([1., 0., 1., 1.]), torch.tensor([0, 0, 1, 1]))
    >>> mean, std, count
    (tensor([0.5000, 0.5000, 1.0000, 1.0000]), tensor([0.7071, 0.7071, 0.0000, 0.0000]), tensor([2., 2., 2., 2.]))
    """
    groups, inverse = torch.unique(group_ids, return_inverse=True)
    n = len(groups)
    zeros = torch.zeros(n, dtype=values.dtype, device=values.device)
    count = zeros.index_add(0, inverse, torch.ones_like(values))
    total = zeros.index_add(0, inverse, values)
    mean = (total / count)[inverse]
    sq = zeros.index_add(0, inverse, (values - mean).square())
    std = torch.sqrt(sq / (count - 1).clamp(min=1))[inverse]
    return mean, std, count[inverse]


def per_token(seq_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Broadcast one value per sequence ``[B]`` to every completion token ``[B, T]`` (0 on padding).

    >>> per_token(torch.tensor([2., -1.]), torch.tensor([[1., 1., 0.], [1., 0., 0.]]))
    tensor([[ 2.,  2.,  0.],
            [-1., -0., -0.]])
    """
    return seq_values[:, None].to(mask.dtype) * mask


def zero_advantage_rows(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` True where every completion token's advantage is 0 (e.g. a GRPO group whose rewards all agree).

    >>> zero_advantage_rows(torch.tensor([[0., 0., 5.], [0., 1., 1.]]), torch.tensor([[1., 1., 0.], [1., 1., 1.]]))
    tensor([ True, False])
    """
    return (advantages * mask == 0).all(dim=1)


def outcome_token_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Place each sequence's outcome reward ``[B]`` on its last valid token, 0 elsewhere: ``[B, T]``.

    >>> outcome_token_rewards(torch.tensor([1., 0.5]), torch.tensor([[1., 1., 1.], [1., 1., 0.]]))
    tensor([[0.0000, 0.0000, 1.0000],
            [0.0000, 0.5000, 0.0000]])
    """
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device, dtype=mask.dtype)
    last = (mask * positions).argmax(dim=1)  # the highest position holding a 1; rows with no token get masked below
    out = torch.zeros_like(mask)
    out[torch.arange(mask.shape[0], device=mask.device), last] = rewards.to(mask.dtype)
    return out * mask


@torch.no_grad()
def gae(
    token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over the valid tokens of each completion.

        delta_t = r_t + gamma * V_{t+1} - V_t        (V after the last valid token = 0: the episode ends there)
        A_t     = delta_t + gamma * lam * A_{t+1}
        returns_t = A_t + V_t                          (the value targets)

    Padded positions are skipped (a hole in the mask passes ``V`` and ``A`` through untouched) and get 0.

    ``r = [0, 0, 1]``, ``V = [0.5, 0.6, 0.7]``, gamma 1, lam 0.5: delta = [0.1, 0.1, 0.3],
    A_2 = 0.3, A_1 = 0.1 + 0.5 * 0.3 = 0.25, A_0 = 0.1 + 0.5 * 0.25 = 0.225; returns = [0.725, 0.85, 1.0].

    >>> adv, ret = gae(torch.tensor([[0., 0., 1.]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3), 1.0, 0.5)
    >>> adv, ret
    (tensor([[0.2250, 0.2500, 0.3000]]), tensor([[0.7250, 0.8500, 1.0000]]))
    """
    valid = mask.bool()
    rewards = fill_padding(token_rewards, mask)
    values = fill_padding(values, mask).to(rewards.dtype)
    next_value = torch.zeros_like(rewards[:, 0])
    next_adv = torch.zeros_like(rewards[:, 0])
    reversed_adv = []
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        next_value = torch.where(valid[:, t], values[:, t], next_value)
        next_adv = torch.where(valid[:, t], adv_t, next_adv)
        reversed_adv.append(torch.where(valid[:, t], adv_t, torch.zeros_like(adv_t)))
    advantages = torch.stack(reversed_adv[::-1], dim=1)
    returns = torch.where(valid, advantages + values, torch.zeros_like(advantages))
    return advantages, returns


def returns_to_go(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Discounted return from each valid token to the end, G_t = sum_{k >= t} gamma^(k - t) r_k.

    This is :func:`gae` with V = 0 and lambda = 1 (the deltas telescope into the plain return).

    >>> returns_to_go(torch.tensor([[-0.1, -0.2, 1.0]]), torch.ones(1, 3))
    tensor([[0.7000, 0.8000, 1.0000]])
    """
    return gae(token_rewards, torch.zeros_like(token_rewards), mask, gamma, 1.0)[0]


def clipped_pg_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    mode: AggMode,
    norm_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate (Schulman et al. 2017) with asymmetric bounds (DAPO's eps_low / eps_high).

        ratio_t = pi(a_t) / pi_old(a_t)
        loss_t  = max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - clip_low, 1 + clip_high))

    aggregated with ``mode``. Returns the loss and ``{"clip_frac", "approx_kl"}``: the fraction of valid tokens where
    the clipped term is the larger one (their gradient is 0), and the mean of log(pi_old / pi) (k1 from old to new).
    At ratio = 1 the gradient equals that of ``-A * log pi``: the vanilla policy gradient.

    A = [1, -1], ratio = [1.5, 0.5], clips 0.2: loss = [max(-1.5, -1.2), max(0.5, 0.8)] = [-1.2, 0.8], both clipped;
    token-mean = -0.2, clip_frac = 1.

    >>> loss, m = clipped_pg_loss(torch.tensor([[1.5, 0.5]]).log(), torch.zeros(1, 2), torch.tensor([[1., -1.]]),
    ...                           torch.ones(1, 2), 0.2, 0.2, "token-mean")
    >>> round(loss.item(), 4), m["clip_frac"]
    (-0.2, 1.0)
    """
    log_ratio = fill_padding(logprobs - old_logprobs, mask)
    ratio = torch.exp(log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = agg_loss(torch.maximum(unclipped, clipped), mask, mode, norm_len)
    with torch.no_grad():
        clip_frac = masked_mean((clipped > unclipped).to(mask.dtype), mask)
        approx_kl = masked_mean(-log_ratio, mask)
    return loss, {"clip_frac": float(clip_frac), "approx_kl": float(approx_kl)}


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None,
    mode: AggMode,
    norm_len: int | None = None,
) -> tuple[torch.Tensor, float]:
    """1/2 max((V - G)^2, (V_old + clip(V - V_old, -clip, clip) - G)^2), aggregated; and the clipped fraction.

    The clipped branch stops the value head from moving more than ``clip`` from its sampling-time estimate in one
    batch, mirroring the policy's trust region (``clip=None``: plain 1/2 (V - G)^2).

    V = 0.9, V_old = 0.5, G = 1, clip 0.2: unclipped 1/2 (0.1)^2 = 0.005, clipped 1/2 (0.7 - 1)^2 = 0.045 -> 0.045,
    and its gradient with respect to V is 0 (the clipped branch is flat in V).

    >>> loss, frac = clipped_value_loss(torch.tensor([[0.9]]), torch.tensor([[0.5]]), torch.tensor([[1.0]]),
    ...                                 torch.ones(1, 1), 0.2, "token-mean")
    >>> round(loss.item(), 4), frac
    (0.045, 1.0)
    """
    values, old_values, returns = (fill_padding(x, mask) for x in (values, old_values, returns))
    unclipped = (values - returns).square()
    if clip is None:
        return 0.5 * agg_loss(unclipped, mask, mode, norm_len), 0.0
    clipped = (old_values + (values - old_values).clamp(-clip, clip) - returns).square()
    loss = 0.5 * agg_loss(torch.maximum(unclipped, clipped), mask, mode, norm_len)
    with torch.no_grad():
        frac = masked_mean((clipped > unclipped).to(mask.dtype), mask)
    return loss, float(frac)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(G - V) / Var(G) over valid tokens: 1 is a perfect critic, 0 no better than a constant.

    G = [1, 2, 4], V = [1, 2, 3]: Var(G) = 14/9, G - V = [0, 0, 1] has variance 2/9, so 1 - 1/7.

    >>> ev = explained_variance(torch.tensor([[1., 2., 3.]]), torch.tensor([[1., 2., 4.]]), torch.ones(1, 3))
    >>> round(ev.item(), 4)
    0.8571
    """
    var_returns = masked_mean((returns - masked_mean(returns, mask)).square(), mask)
    residual = returns - values
    var_residual = masked_mean((residual - masked_mean(residual, mask)).square(), mask)
    return 1.0 - var_residual / var_returns.clamp(min=1e-8)
