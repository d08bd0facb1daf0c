"""Comparing run files across two runs that should agree: everything but wall-clock measurements."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rlbench.core.results import read_records, record_points

# timing fields of metrics.jsonl / eval.jsonl rows: the one thing two equal runs cannot share
RUN_TIMING = frozenset({"time", "gen_tokens_per_s", "train_tokens_per_s", "tokens_per_second", "seconds"})


def stable(value: Any, volatile: frozenset[str] = RUN_TIMING) -> Any:
    """``value`` with every key in ``volatile`` dropped, at any depth."""
    if isinstance(value, dict):
        return {k: stable(v, volatile) for k, v in value.items() if k not in volatile}
    if isinstance(value, list):
        return [stable(v, volatile) for v in value]
    return value


def stable_rows(path: Path) -> list:
    """A JSONL file's rows without their timing fields."""
    return [stable(json.loads(line)) for line in path.read_text().splitlines()]


def stable_records(run: Path) -> dict[int, list]:
    """Every evaluation's per-problem records (eval_records/), by point, without timing fields."""
    return {point: [stable(row) for row in read_records(path)] for point, path in record_points(run).items()}


# metrics.jsonl fields that depend on wall time; and the quantities that several data-parallel ranks sum in another
# order than one process does: equal up to float round-off
DP_TIMING = ("time", "usage", "gen_tokens_per_s", "train_tokens_per_s")
DP_ROUNDED = (
    "entropy",
    "approx_kl",
    "loss",
    "pg_loss",
    "vf_loss",
    "grad_norm",
    "kl",
    "sampler_gap_abs",
    "sampler_gap_kl",
    "value_explained_var",
)


def assert_reproduces(one: Path, many: Path) -> list[dict]:
    """A run of several processes (``many``) reproduces the one-process run (``one``): the same prompts, every logged
    value equal (summed ones within round-off), the same evaluations; rows written once. Returns ``one``'s metrics."""
    rows_one, rows_many = (
        [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, many)
    )
    assert [r["step"] for r in rows_many] == [r["step"] for r in rows_one]  # written once, by rank 0
    for a, b in zip(rows_one, rows_many):
        assert a["prompt_ids_hash"] == b["prompt_ids_hash"]
        for key in a:
            if key in DP_TIMING:
                continue
            if key in DP_ROUNDED:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
            else:
                assert b[key] == a[key], (a["step"], key)
    evals_one, evals_many = (
        [json.loads(line) for line in (d / "eval.jsonl").read_text().splitlines()] for d in (one, many)
    )
    assert [e["step"] for e in evals_many] == [e["step"] for e in evals_one]
    assert [e["greedy"]["accuracy"] for e in evals_many] == [e["greedy"]["accuracy"] for e in evals_one]
    assert json.loads((many / "summary.json").read_text())["status"] == "completed"
    return rows_one


def set_flags(*overrides: str) -> list[str]:
    """``--set KEY=VALUE`` for each override, as the command line takes them."""
    return [flag for item in overrides for flag in ("--set", item)]


# a comparison small enough for a test: 8 samples a step, 8 new tokens, 6 evaluation problems every 3 steps
SMALL_COMPARISON = set_flags(
    "rollout.batch_size=8",
    "rollout.samples_per_prompt=2",
    "sampling.max_new_tokens=8",
    "eval.limit=6",
    "eval.every=3",
    "task.train_size=60",
    "task.test_size=12",
    "optim.lr=1e-3",
    "checkpoint_every=2",
)
