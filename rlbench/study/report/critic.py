"""How well a run's critic (PPO's value model) predicts its returns, and what a prompt-only critic could reach.

The trainer logs the critic's explained variance of each batch's returns, ``1 - Var(G - V) / Var(G)`` over its
valid tokens, with V the values of the sampling step (before the critic trains on that batch), so each row is an
out-of-sample score. One batch (64 completions in the tiny lab) makes it noisy, a standard deviation of 0.02 to
0.05 from step to step there; the mean over the last steps is the steadier number.

The ceiling is the share of the reward variance that lies between problems, estimated from the final evaluation's
sampled completions (several per problem): ``1 - mean_p s_p^2 / Var(all rewards)``, with ``s_p^2`` the unbiased
variance within problem p. A critic that knew each problem's exact success rate, and nothing about the completion,
would explain that much; a per-token critic can exceed it once a completion shows where it is going.
"""

from __future__ import annotations

import statistics
from typing import Any

from rlbench.study.report import stats
from rlbench.study.report.inputs import RunFiles
from rlbench.study.report.runs import correct, number

EV_KEY = "value_explained_var"
LAST_STEPS = 10


def critic_fit(run: RunFiles, last: int = LAST_STEPS) -> dict[str, Any] | None:
    """The critic's explained variance averaged over the run's first and last ``last`` steps (did it learn?) and at
    its last step; None when the run has no critic (no step logs one)."""
    values = [v for v in (number(row.get(EV_KEY)) for row in run.metrics) if v is not None]
    if not values:
        return None
    tail = values[-last:]
    return {
        "first_mean": stats.mean(values[:last]),
        "final": values[-1],
        "last_mean": stats.mean(tail),
        "last_steps": len(tail),
        "ceiling": prompt_only_ceiling(run),
    }


def prompt_only_ceiling(run: RunFiles) -> float | None:
    """Between-problem share of the sampled rewards' variance in the final evaluation; None without at least two
    samples on some problem, or when every reward is the same."""
    groups = []
    for rec in run.records:
        samples = rec.get("samples")
        if isinstance(samples, list) and len(samples) >= 2:
            groups.append([float(correct(s)) for s in samples])
    if not groups:
        return None
    total = statistics.pvariance([r for g in groups for r in g])
    if total == 0:
        return None
    within = stats.mean([statistics.variance(g) for g in groups])
    return 1.0 - within / total
