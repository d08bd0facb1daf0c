"""What the engine asks of the parts plugged into it; it imports none of them.

Algorithms (``algorithms/``, built on :class:`rlbench.algorithms.base.Algorithm`), tasks (``tasks/``) and the run's
evaluation (``rlbench.run.eval``) sit above the engine and satisfy these protocols; the composition happens in
``rlbench.run.training``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from rlbench.engine.batch import PolicyOutput, RolloutBatch
from rlbench.engine.generation import Generator


class Grade(Protocol):
    reward: float
    correct: bool
    reason: str


class Task(Protocol):
    name: str

    def load(self, split: str) -> list[Any]: ...

    def prompt(self, example: Any) -> str | list[dict[str, str]]: ...

    def grade_many(self, completions: Sequence[str], examples: Sequence[Any]) -> Sequence[Grade]: ...


class Algorithm(Protocol):
    """An RL objective; the trainer asks what it needs and never branches on a name."""

    needs_reference: bool
    needs_values: bool
    critic_model: bool  # with needs_values: the critic is a copy of the initial transformer, not a head on the policy's
    critic_lr_scale: float  # the critic's learning rate as a multiple of optim.lr
    critic_warmup: int  # first steps in which only the critic trains (the policy's lr is 0)
    needs_old_logprobs: bool
    needs_entropy_grad: bool
    epochs: int  # passes over each batch
    minibatches: int  # optimiser steps per pass

    def compute_advantages(self, batch: RolloutBatch) -> dict[str, float]: ...

    def inert_rows(self, batch: RolloutBatch) -> torch.Tensor | None: ...

    def loss(self, batch: RolloutBatch, out: PolicyOutput) -> tuple[torch.Tensor, dict[str, float]]: ...

    def microbatch_weight(self, micro: RolloutBatch, whole: RolloutBatch) -> float: ...


class Evaluator(Protocol):
    """The run's held-out evaluation: ``examples`` define the evaluation set (and the run's fingerprint)."""

    examples: Sequence[Any]

    def __call__(self, generator: Generator, *, step: int) -> dict[str, Any]:
        """The evaluation at optimiser step ``step``: aggregate metrics (``greedy``/``sampled``) and ``records`` (one
        per problem). An evaluation that enters the run's score uses all of ``examples``; the others only draw the
        learning curve and may be smaller."""
