"""Evaluation in chunks of problems, for a progress bar, with every metric recomputed exactly from the records.

``evaluate()`` decodes all problems of a mode in one call, so nothing can report progress. Running it per chunk of
problems and recomputing the aggregates from the per-problem records (``summarize``) gives the same numbers as one
call that produced the same completions: every metric is a per-problem or per-completion quantity. What chunking does
change is which completions are sampled: each chunk draws from its own seed, derived from (seed, chunk index), so a
run is reproducible for a given seed, chunk size and batch size, and differs (as a fresh draw) when those change.
"""
from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any, Mapping, Sequence

from rlbench.engine.policy import Policy
from rlbench.engine.rollout import Generation, Generator
from rlbench.engine.trainer import derive_seed
from rlbench.evaluate import Scored, _lengths, evaluate, sampled_metrics
from rlbench.tasks.base import Example, Grade, Task

MODES = ("greedy", "sampled")


def chunk_seed(seed: int, chunk: int) -> int:
    """The sampling seed of chunk ``chunk``; stable across processes and machines."""
    return derive_seed(seed, "eval-chunk", chunk)


class TimedGenerator:
    """Delegates to a generator and adds up seconds and tokens per mode, so speed survives chunking."""

    def __init__(self, inner: Generator) -> None:
        self.inner = inner
        self.seconds = {mode: 0.0 for mode in MODES}
        self.tokens = {mode: 0 for mode in MODES}

    @property
    def policy(self) -> Policy:
        return self.inner.policy  # type: ignore[attr-defined]

    def generate(
        self, prompt_ids: Sequence[list[int]], *, temperature: float, top_p: float, max_new_tokens: int,
        greedy: bool = False, seed: int | None = None,
    ) -> Generation:
        start = time.perf_counter()
        gen = self.inner.generate(prompt_ids, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                  greedy=greedy, seed=seed)
        mode = "greedy" if greedy else "sampled"
        self.seconds[mode] += time.perf_counter() - start
        self.tokens[mode] += gen.num_tokens
        return gen

    def sync_weights(self, policy: Policy) -> None:
        self.inner.sync_weights(policy)


def _scored(entry: Mapping[str, Any]) -> Scored:
    grade = Grade(entry["reward"], entry["correct"], entry["reason"], entry["extracted"])
    return Scored(entry["completion"], entry["tokens"], entry["truncated"], grade)


def _speed(scored: list[Scored], seconds: float | None) -> float | None:
    return round(sum(s.tokens for s in scored) / seconds, 1) if seconds else None


def summarize(
    records: Sequence[Mapping[str, Any]],
    *,
    ks: Sequence[int],
    temperature: float,
    top_p: float,
    seconds: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The aggregate metrics of ``evaluate()`` (same keys, same arithmetic) from its per-problem records.

    ``seconds`` is the generation time per mode; without it ``tokens_per_second`` is None.
    """
    seconds = seconds or {}
    result: dict[str, Any] = {"problems": len(records)}
    if records and "greedy" in records[0]:
        scored = [_scored(r["greedy"]) for r in records]
        result["greedy"] = {
            "accuracy": sum(s.grade.correct for s in scored) / len(scored),
            "reasons": dict(Counter(s.grade.reason for s in scored)),
            **_lengths(scored),
            "tokens_per_second": _speed(scored, seconds.get("greedy")),
        }
    if records and "samples" in records[0]:
        per_problem = [[_scored(s) for s in r["samples"]] for r in records]
        samples = len(per_problem[0])
        if any(len(group) != samples for group in per_problem):
            raise ValueError("records hold different numbers of samples per problem; they are not from one evaluation")
        scored = [s for group in per_problem for s in group]
        speed = _speed(scored, seconds.get("sampled"))
        result["sampled"] = sampled_metrics(per_problem, samples, temperature, top_p, ks, speed)
    return result


def evaluate_chunked(
    generator: Generator,
    task: Task,
    examples: Sequence[Example],
    *,
    chunk_size: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = True,
    samples: int = 1,
    ks: Sequence[int] = (1,),
    seed: int = 0,
    progress: bool = True,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``evaluate()`` over chunks of ``chunk_size`` problems with a progress bar on stderr; (metrics, records)."""
    from tqdm.auto import tqdm

    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}: must be >= 1")
    timed = TimedGenerator(generator)
    records: list[dict[str, Any]] = []
    with tqdm(total=len(examples), unit="problem", desc="evaluating", file=sys.stderr, disable=not progress) as bar:
        for index, start in enumerate(range(0, len(examples), chunk_size)):
            chunk = list(examples[start : start + chunk_size])
            part = evaluate(
                timed, task, chunk, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                greedy=greedy, samples=samples, ks=ks, seed=chunk_seed(seed, index), keep_records=True,
            )
            records.extend(part["records"])
            bar.update(len(chunk))
    metrics = summarize(records, ks=ks, temperature=temperature, top_p=top_p, seconds=timed.seconds)
    metrics["generation_seconds"] = {mode: round(s, 3) for mode, s in timed.seconds.items() if s > 0}
    metrics["tokens"] = {mode: n for mode, n in timed.tokens.items() if n > 0}
    return metrics, records
