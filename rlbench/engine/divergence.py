"""A run whose loss, gradient norm or weights stop being finite stops as ``diverged``, saving no state after it."""

from __future__ import annotations

import math
from typing import Any

import torch

from rlbench.engine.policy import Policy


class Diverged(Exception):
    """A non-finite loss, gradient norm or weight: the run stops (status ``diverged``) and saves no state after it."""

    def __init__(self, step: int, quantity: str, value: Any) -> None:
        super().__init__(f"step {step}: {quantity} is {value}")
        self.step, self.quantity = step, quantity


def check_finite(step: int, quantity: str, value: float) -> None:
    if not math.isfinite(value):
        raise Diverged(step, quantity, value)


def check_weights(policy: Policy, step: int) -> None:
    """Raise :class:`Diverged` naming the first non-finite parameter (one device sync when all are finite).

    Under FSDP each rank checks its own shards and the flags are all-reduced: every rank stops at the same step."""
    from rlbench.engine.sharding import is_sharded, nonfinite_weights

    named = list(policy.model.named_parameters())
    if policy.value_head is not None:
        named += [(f"value_head.{n}", p) for n, p in policy.value_head.named_parameters()]
    if any(is_sharded(p) for _, p in named):
        for (name, _), (nan, inf) in zip(named, nonfinite_weights(p for _, p in named)):
            if nan or inf:
                raise Diverged(step, f"weight {name}", "nan" if nan else "inf")
        return
    if bool(torch.stack([torch.isfinite(p).all() for p in policy.parameters()]).all()):
        return
    for name, p in named:
        if not bool(torch.isfinite(p).all()):
            raise Diverged(step, f"weight {name}", "nan" if bool(torch.isnan(p).any()) else "inf")
