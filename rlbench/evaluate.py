"""One evaluation protocol for every run: greedy pass@1, sampled mean@k, unbiased pass@k, maj@k, lengths, speed."""
from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass
from math import comb
from typing import Any, Sequence

from rlbench.engine.rollout import Generator, encode_prompt
from rlbench.tasks.base import Example, Grade, Task


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


def _record(s: Scored) -> dict[str, Any]:
    # Everything the aggregate metrics read, so they can be recomputed from records alone (rlbench.eval_chunks).
    return {"completion": s.text, "reward": s.grade.reward, "correct": s.grade.correct, "reason": s.grade.reason,
            "extracted": s.grade.extracted, "tokens": s.tokens, "truncated": s.truncated}


def _run(generator: Generator, task: Task, prompt_ids, examples, **gen_kwargs) -> tuple[list[Scored], float, int]:
    start = time.perf_counter()
    gen = generator.generate(prompt_ids, **gen_kwargs)
    seconds = time.perf_counter() - start
    grades = task.grade_many(gen.texts, examples)
    lengths = gen.response_mask.sum(1).long().tolist()
    scored = [Scored(t, n, bool(tr), g) for t, n, tr, g in zip(gen.texts, lengths, gen.truncated.tolist(), grades)]
    return scored, seconds, gen.num_tokens


def sampled_metrics(
    per_problem: Sequence[Sequence[Scored]], samples: int, temperature: float, top_p: float, ks: Sequence[int],
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


def evaluate(
    generator: Generator,
    task: Task,
    examples: Sequence[Example],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = True,
    samples: int = 1,
    ks: Sequence[int] = (1,),
    seed: int = 0,
    keep_records: bool = False,
) -> dict[str, Any]:
    """Evaluate on ``examples``: greedy decoding once, and ``samples`` sampled completions per problem."""
    tokenizer = generator.policy.tokenizer  # type: ignore[attr-defined]
    prompt_ids = [encode_prompt(tokenizer, task.prompt(e)) for e in examples]
    result: dict[str, Any] = {"problems": len(examples)}
    records: list[dict[str, Any]] = [{"id": e.id} for e in examples] if keep_records else []
    if greedy:
        scored, seconds, tokens = _run(generator, task, prompt_ids, list(examples), greedy=True,
                                       temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens)
        result["greedy"] = {
            "accuracy": sum(s.grade.correct for s in scored) / len(scored),
            "reasons": dict(Counter(s.grade.reason for s in scored)),
            **_lengths(scored),
            "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None,
        }
        for rec, s in zip(records, scored):
            rec["greedy"] = _record(s)
    if samples > 0:
        repeated = [p for p in prompt_ids for _ in range(samples)]
        rep_examples = [e for e in examples for _ in range(samples)]
        scored, seconds, tokens = _run(generator, task, repeated, rep_examples, greedy=False, seed=seed,
                                       temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        per_problem = [scored[i * samples : (i + 1) * samples] for i in range(len(examples))]
        speed = round(tokens / seconds, 1) if seconds > 0 else None
        result["sampled"] = sampled_metrics(per_problem, samples, temperature, top_p, ks, speed)
        for rec, group in zip(records, per_problem):
            rec["samples"] = [_record(s) for s in group]
    if keep_records:
        result["records"] = records
    return result
