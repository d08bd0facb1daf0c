"""The budget meter: what a run has consumed, and whether it may take another step."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from rlbench.core.config import BudgetConfig

# The budget's units, in the order every table and check lists them (BudgetConfig's limits, Usage's counters).
UNITS = ("samples", "tokens", "steps", "seconds")


@dataclass
class Usage:
    prompts: int = 0
    samples: int = 0
    tokens: int = 0  # generated completion tokens
    steps: int = 0  # optimiser steps
    seconds: float = 0.0  # training-loop wall time, evaluation excluded


def planned_steps(budget: BudgetConfig, samples_per_step: int) -> int | None:
    """The number of optimiser steps a run will take, when only ``samples`` and ``steps`` limit it; None when
    ``tokens`` or ``seconds`` may stop it sooner (they cannot be known in advance)."""
    if budget.tokens is not None or budget.seconds is not None:
        return None
    limits = [budget.steps] if budget.steps is not None else []
    if budget.samples is not None:
        limits.append(budget.samples // samples_per_step)
    return min(limits) if limits else None


class BudgetMeter:
    """Counts consumption; a run stops before a step that would overrun ``samples`` or ``steps``.

    ``tokens`` and ``seconds`` cannot be known before a step, so they stop the run once reached (overshoot is at
    most one step, recorded in the summary).
    """

    def __init__(self, budget: BudgetConfig, samples_per_step: int, used: Usage | None = None) -> None:
        self.budget = budget
        self.samples_per_step = samples_per_step
        self.used = used or Usage()
        self._started: float | None = None

    def start(self) -> None:
        self._started = time.perf_counter()

    def pause(self) -> None:
        if self._started is not None:
            self.used.seconds += time.perf_counter() - self._started
            self._started = None

    def elapsed(self) -> float:
        live = time.perf_counter() - self._started if self._started is not None else 0.0
        return self.used.seconds + live

    def add(self, prompts: int, samples: int, tokens: int, steps: int) -> None:
        self.used.prompts += prompts
        self.used.samples += samples
        self.used.tokens += tokens
        self.used.steps += steps

    def exhausted(self) -> str | None:
        """Name of the limit that forbids another step, or None."""
        b, u = self.budget, self.used
        if b.steps is not None and u.steps + 1 > b.steps:
            return "steps"
        if b.samples is not None and u.samples + self.samples_per_step > b.samples:
            return "samples"
        if b.tokens is not None and u.tokens >= b.tokens:
            return "tokens"
        if b.seconds is not None and self.elapsed() >= b.seconds:
            return "seconds"
        return None

    def fraction(self) -> float:
        """How much of the tightest limit is used, in [0, 1] (for progress bars and eval points)."""
        b, u = self.budget, self.used
        parts = []
        if b.steps:
            parts.append(u.steps / b.steps)
        if b.samples:
            parts.append(u.samples / b.samples)
        if b.tokens:
            parts.append(u.tokens / b.tokens)
        if b.seconds:
            parts.append(self.elapsed() / b.seconds)
        return min(1.0, max(parts)) if parts else 0.0

    def snapshot(self) -> dict:
        usage = asdict(self.used)
        usage["seconds"] = round(self.elapsed(), 3)
        return usage
