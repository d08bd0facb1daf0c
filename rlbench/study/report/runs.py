"""Numbers of one training run, read off its logs: final accuracy, lengths, throughput, time split, audit flags.

Every function returns None for a number the logs do not hold rather than guessing one.
"""

from __future__ import annotations

import math
import re
from typing import Any

from rlbench.engine.budget import UNITS
from rlbench.study.report.inputs import RunFiles

#: Stages the trainer times inside each optimiser step (metrics.jsonl "time"); "other" is the loop time left over.
STAGES = ("generate", "grade", "logprobs", "update", "sync")
METRICS = ("greedy", "sampled")


def dig(row: Any, *keys: str) -> Any:
    """row[k1][k2]..., or None where any level is missing or not a mapping."""
    for key in keys:
        if not isinstance(row, dict):
            return None
        row = row.get(key)
    return row


def number(value: Any) -> float | None:
    """A finite float, or None for anything else (None, strings, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def final_eval(run: RunFiles) -> dict[str, Any] | None:
    """The evaluation at the end of the budget (the last eval row of a completed run)."""
    return run.evals[-1] if run.complete else None


def run_score(run: RunFiles, metric: str, k: int) -> float | None:
    """The run's score: mean ``metric`` accuracy over its last ``k`` evaluations after training started.

    Read from eval.jsonl rather than summary.json so that the report recomputes it from the logs. None unless the
    run completed and each of those evaluations holds the metric.
    """
    if not run.complete:
        return None
    values = [number(dig(row, metric, "accuracy")) for row in run.evals[1:][-k:]]
    if not values or any(v is None for v in values):
        return None
    return math.fsum(values) / len(values)  # type: ignore[arg-type]


def usage(run: RunFiles) -> dict[str, Any]:
    """What the run consumed: the summary's usage, else the last metrics row's (a run still going)."""
    found = dig(run.summary, "usage") or (run.metrics[-1].get("usage") if run.metrics else None)
    return found if isinstance(found, dict) else {}


def throughput(run: RunFiles) -> dict[str, float | None]:
    """Generated tokens per second of generation time, seconds per optimiser step, and the share of each stage.

    Ratios of totals (not means of per-step ratios), so a short first step cannot skew them. Shares are of the
    training-loop seconds (evaluation excluded); "other" is what the timed stages do not cover.
    """
    used = usage(run)
    totals = dict.fromkeys(STAGES, 0.0)
    for row in run.metrics:
        for stage in STAGES:
            totals[stage] += number(dig(row, "time", stage)) or 0.0
    loop, steps, tokens = number(used.get("seconds")), number(used.get("steps")), number(used.get("tokens"))
    timed = sum(totals.values())
    whole = loop if loop and loop >= timed else timed
    shares: dict[str, float | None] = {s: (100.0 * totals[s] / whole if whole else None) for s in STAGES}
    shares["other"] = 100.0 * (whole - timed) / whole if whole else None
    return {
        "gen_tokens_per_s": tokens / totals["generate"] if tokens is not None and totals["generate"] > 0 else None,
        "seconds_per_step": loop / steps if loop is not None and steps else None,
        **{f"{stage}_pct": share for stage, share in shares.items()},
    }


def correct(item: Any) -> bool:
    """A graded completion's verdict: its ``correct`` flag, or (older records) ``reason == "correct"``."""
    if not isinstance(item, dict):
        return False
    flag = item.get("correct")
    return flag if isinstance(flag, bool) else item.get("reason") == "correct"


def record_scores(run: RunFiles, metric: str) -> dict[str, float]:
    """Per held-out problem id: 1/0 for the greedy answer, or the fraction of correct samples."""
    out: dict[str, float] = {}
    for rec in run.records:
        if metric == "greedy":
            greedy = rec.get("greedy")
            if isinstance(greedy, dict):
                out[str(rec["id"])] = float(correct(greedy))
        else:
            samples = rec.get("samples")
            if isinstance(samples, list) and samples:
                out[str(rec["id"])] = sum(correct(s) for s in samples) / len(samples)
    return out


def completions(run: RunFiles, metric: str) -> list[str]:
    """The final evaluation's completions: one greedy per problem, or every sample."""
    texts: list[str] = []
    for rec in run.records:
        items = [rec.get("greedy")] if metric == "greedy" else rec.get("samples") or []
        texts.extend(i["completion"] for i in items if isinstance(i, dict) and isinstance(i.get("completion"), str))
    return texts


def audit_flags(audit: dict[str, Any] | None, names: list[str]) -> dict[str, list[str]]:
    """Runs the audit singles out, with why: named in one of its problems, or marked unmatched in its run table."""
    flags: dict[str, list[str]] = {name: [] for name in names}
    if not audit:
        return flags
    problems = [str(p) for p in audit.get("problems") or []]
    runs = audit.get("runs") if isinstance(audit.get("runs"), dict) else {}
    for name in names:
        # a run name is a token like "ppo-s1": do not let "ppo-s1" match inside "ppo-s11"
        pattern = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
        flags[name].extend(p for p in problems if pattern.search(p))
        if dig(runs, name, "matched") is False:
            flags[name].append(f"{name}: audit marks it unmatched")
    return flags


def run_row(run: RunFiles, flags: list[str], k: int) -> dict[str, Any]:
    """Everything the report says about one run; ``score`` is the mean of its last ``k`` evaluations."""
    used = usage(run)
    last = final_eval(run)
    return {
        "name": run.name,
        "algo": run.algo,
        "seed": run.seed,
        "score": {m: run_score(run, m, k) for m in METRICS},
        "start": {m: number(dig(run.evals[0], m, "accuracy")) if run.evals else None for m in METRICS},
        "score_steps": [dig(row, "step") for row in run.evals[1:][-k:]] if run.complete else [],
        "status": run.status,
        "complete": run.complete,
        "stop_reason": dig(run.summary, "stop_reason"),
        "audit_flags": flags,
        "usage": {k: used.get(k) for k in UNITS},
        "wall_seconds": number(dig(run.summary, "wall_seconds")),
        "evals": len(run.evals),
        "records": len(run.records),
        "final": {m: number(dig(last, m, "accuracy")) for m in METRICS},
        "length": {
            m: {k: number(dig(last, m, k)) for k in ("length_mean", "length_correct", "length_wrong", "truncated_frac")}
            for m in METRICS
        },
        "throughput": throughput(run),
    }
