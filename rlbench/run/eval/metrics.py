"""Every evaluation metric, computed in one place from per-problem records.

A record holds everything the metrics read (completion, reward, correct, reason, extracted answer, tokens, truncated),
so the same numbers come out of one evaluation call, of many chunks joined, or of records read back from disk.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import comb
from typing import Any

from rlbench.tasks.base import Grade


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chen et al. (2021): P(at least one of k draws without replacement from n samples, c correct, is correct).

    >>> pass_at_k(4, 1, 2)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    0.5
    """
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_correct(grades: Sequence[Grade]) -> bool:
    """The most common extracted answer (ties broken by first occurrence) is a correct one."""
    answers = [g.extracted for g in grades if g.extracted is not None]
    if not answers:
        return False
    top = Counter(answers).most_common(1)[0][0]
    return any(g.correct for g in grades if g.extracted == top)


@dataclass
class Scored:
    text: str
    tokens: int
    truncated: bool
    grade: Grade

    def record(self) -> dict[str, Any]:
        return {
            "completion": self.text,
            "reward": self.grade.reward,
            "correct": self.grade.correct,
            "reason": self.grade.reason,
            "extracted": self.grade.extracted,
            "tokens": self.tokens,
            "truncated": self.truncated,
        }

    @staticmethod
    def from_record(entry: Mapping[str, Any]) -> Scored:
        grade = Grade(entry["reward"], entry["correct"], entry["reason"], entry["extracted"])
        return Scored(entry["completion"], entry["tokens"], entry["truncated"], grade)


def _lengths(scored: list[Scored]) -> dict[str, float | None]:
    def mean(xs: list[int]) -> float | None:
        return round(statistics.fmean(xs), 2) if xs else None

    return {
        "length_mean": mean([s.tokens for s in scored]),
        "length_median": statistics.median([s.tokens for s in scored]) if scored else None,
        "length_correct": mean([s.tokens for s in scored if s.grade.correct]),
        "length_wrong": mean([s.tokens for s in scored if not s.grade.correct]),
        "truncated_frac": round(sum(s.truncated for s in scored) / len(scored), 4) if scored else None,
    }


def _speed(scored: list[Scored], seconds: float | None) -> float | None:
    return round(sum(s.tokens for s in scored) / seconds, 1) if seconds else None


def sampled_metrics(
    per_problem: Sequence[Sequence[Scored]],
    samples: int,
    temperature: float,
    top_p: float,
    ks: Sequence[int],
    tokens_per_second: float | None,
) -> dict[str, Any]:
    """mean@k, unbiased pass@k, maj@k, reasons and lengths from ``samples`` graded completions per problem."""
    scored = [s for group in per_problem for s in group]
    sampled: dict[str, Any] = {
        "k": samples,
        "temperature": temperature,
        "top_p": top_p,
        "accuracy": sum(s.grade.correct for s in scored) / len(scored),  # mean@k
        "reasons": dict(Counter(s.grade.reason for s in scored)),
        **_lengths(scored),
        "tokens_per_second": tokens_per_second,
    }
    for k in ks:
        if 1 <= k <= samples:
            sampled[f"pass@{k}"] = statistics.fmean(
                pass_at_k(samples, sum(s.grade.correct for s in group), k) for group in per_problem
            )
    if samples > 1:
        sampled[f"maj@{samples}"] = statistics.fmean(majority_correct([s.grade for s in g]) for g in per_problem)
    return sampled


def summarize(
    records: Sequence[Mapping[str, Any]],
    *,
    ks: Sequence[int],
    temperature: float,
    top_p: float,
    seconds: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The aggregate metrics of an evaluation from its per-problem records.

    ``seconds`` is the generation time per mode (``greedy``, ``sampled``); without it ``tokens_per_second`` is None.
    """
    seconds = seconds or {}
    result: dict[str, Any] = {"problems": len(records)}
    if records and "greedy" in records[0]:
        scored = [Scored.from_record(r["greedy"]) for r in records]
        result["greedy"] = {
            "accuracy": sum(s.grade.correct for s in scored) / len(scored),
            "reasons": dict(Counter(s.grade.reason for s in scored)),
            **_lengths(scored),
            "tokens_per_second": _speed(scored, seconds.get("greedy")),
        }
    if records and "samples" in records[0]:
        per_problem = [[Scored.from_record(s) for s in r["samples"]] for r in records]
        samples = len(per_problem[0])
        if any(len(group) != samples for group in per_problem):
            raise ValueError("records hold different numbers of samples per problem; they are not from one evaluation")
        scored = [s for group in per_problem for s in group]
        result["sampled"] = sampled_metrics(
            per_problem, samples, temperature, top_p, ks, _speed(scored, seconds.get("sampled"))
        )
    return result


def samples_summary(groups: Sequence[Sequence[Grade]]) -> dict[str, Any]:
    """mean@k, unbiased pass@j and maj@k of each problem's k graded samples, and their means over problems.

    k may differ between problems: each problem's mean@k and maj@k use its own k, it gets pass@j for j = 1..k, and
    the overall pass@j goes up to the smallest k (where every problem has an unbiased estimate). ``k`` says whether
    k was one number (``uniform``) and how many problems had each.
    """
    if not groups or any(not group for group in groups):
        raise ValueError("every problem needs at least one graded sample")
    per_problem = []
    for group in groups:
        n, c = len(group), sum(g.correct for g in group)
        per_problem.append(
            {
                "k": n,
                "correct": c,
                "mean@k": c / n,
                **{f"pass@{j}": pass_at_k(n, c, j) for j in range(1, n + 1)},
                "maj@k": float(majority_correct(group)),
            }
        )
    ks = Counter(p["k"] for p in per_problem)
    smallest = min(ks)
    overall = {
        "mean@k": statistics.fmean(p["mean@k"] for p in per_problem),
        **{f"pass@{j}": statistics.fmean(p[f"pass@{j}"] for p in per_problem) for j in range(1, smallest + 1)},
        "maj@k": statistics.fmean(p["maj@k"] for p in per_problem),
    }
    return {
        "problems": len(per_problem),
        "k": {"uniform": len(ks) == 1, "min": smallest, "max": max(ks), "problems_with": dict(sorted(ks.items()))},
        "overall": overall,
        "per_problem": per_problem,
    }
