"""One evaluation protocol for every run: greedy pass@1, sampled mean@k, unbiased pass@k, maj@k, lengths, speed.

:func:`evaluate` generates and grades, keeping one record per problem, and computes every metric from those records
(:func:`rlbench.run.eval.metrics.summarize`). With ``chunk_size`` it runs a chunk of problems at a time behind a progress
bar.

Sampled completions are seeded one by one, from (seed, problem id, sample index), on every backend that can seed rows
(``rlbench``, ``vllm``): a problem's j-th sample then draws the same uniform numbers in every evaluation that shares
the seed, whatever the batch, the chunking or the other problems. Two models evaluated with one seed are compared on
common random numbers: where they put similar probabilities on the same tokens, inverse-CDF sampling picks the same
tokens, so the noise of their difference is far below that of two independent draws (docs/tiny-lab.md measures it).
A backend that draws every row from one stream (``hf``) samples each chunk from a seed derived from (seed, chunk).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

from rlbench.core.bars import tqdm
from rlbench.engine.generation import Generator, encode_prompt
from rlbench.engine.seeding import derive_seed
from rlbench.run.eval.metrics import Scored, summarize
from rlbench.tasks.base import Example, Task

MODES = ("greedy", "sampled")


def chunk_seed(seed: int, chunk: int) -> int:
    """The sampling seed of chunk ``chunk`` for a backend that cannot seed rows; stable across machines."""
    return derive_seed(seed, "eval-chunk", chunk)


def sample_seeds(seed: int, examples: Sequence[Example], samples: int) -> list[int]:
    """One seed per sampled completion, problem by problem: ``samples`` for each example, in order."""
    return [derive_seed(seed, "eval-sample", str(e.id), j) for e in examples for j in range(samples)]


def _run(generator: Generator, task: Task, prompt_ids, examples, **gen_kwargs) -> tuple[list[Scored], float]:
    start = time.perf_counter()
    gen = generator.generate(prompt_ids, **gen_kwargs)
    seconds = time.perf_counter() - start
    grades = task.grade_many(gen.texts, examples)
    lengths = gen.response_mask.sum(1).long().tolist()
    return [
        Scored(t, n, bool(tr), g) for t, n, tr, g in zip(gen.texts, lengths, gen.truncated.tolist(), grades)
    ], seconds


def _records(
    generator: Generator,
    task: Task,
    examples: Sequence[Example],
    seconds: dict[str, float],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    greedy: bool,
    samples: int,
    seed: int,
) -> list[dict[str, Any]]:
    """One record per problem: its greedy completion and ``samples`` sampled ones, graded; adds to ``seconds``."""
    prompt_ids = [encode_prompt(generator.tokenizer, task.prompt(e)) for e in examples]
    records: list[dict[str, Any]] = [{"id": e.id} for e in examples]
    if greedy:
        scored, took = _run(
            generator,
            task,
            prompt_ids,
            list(examples),
            greedy=True,
            temperature=1.0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
        )
        seconds["greedy"] = seconds.get("greedy", 0.0) + took
        for rec, s in zip(records, scored):
            rec["greedy"] = s.record()
    if samples > 0:
        repeated = [p for p in prompt_ids for _ in range(samples)]
        rep_examples = [e for e in examples for _ in range(samples)]
        seeds = sample_seeds(seed, examples, samples) if getattr(generator, "seeds_rows", False) else seed
        scored, took = _run(
            generator,
            task,
            repeated,
            rep_examples,
            greedy=False,
            seed=seeds,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
        )
        seconds["sampled"] = seconds.get("sampled", 0.0) + took
        for i, rec in enumerate(records):
            rec["samples"] = [s.record() for s in scored[i * samples : (i + 1) * samples]]
    return records


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
    chunk_size: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate on ``examples``: greedy decoding once, and ``samples`` sampled completions per problem.

    Returns the metrics, plus ``records`` with ``keep_records``, plus ``generation_seconds`` and ``tokens`` per mode
    when chunked (``chunk_size``: problems per generator call, each chunk with its own seed, a progress bar).
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}: must be >= 1")
    settings = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, greedy=greedy, samples=samples)
    seconds: dict[str, float] = {}
    if chunk_size is None:
        records = _records(generator, task, examples, seconds, seed=seed, **settings)
    else:
        records = []
        with tqdm(total=len(examples), unit="problem", desc="evaluating", file=sys.stderr, disable=not progress) as bar:
            for index, start in enumerate(range(0, len(examples), chunk_size)):
                chunk = list(examples[start : start + chunk_size])
                seeded = seed if getattr(generator, "seeds_rows", False) else chunk_seed(seed, index)
                records += _records(generator, task, chunk, seconds, seed=seeded, **settings)
                bar.update(len(chunk))
    result = summarize(records, ks=ks, temperature=temperature, top_p=top_p, seconds=seconds)
    if chunk_size is not None:
        result["generation_seconds"] = {mode: round(s, 3) for mode, s in seconds.items() if s > 0}
        tokens = {
            "greedy": sum(r["greedy"]["tokens"] for r in records if "greedy" in r),
            "sampled": sum(s["tokens"] for r in records for s in r.get("samples", [])),
        }
        result["tokens"] = {mode: n for mode, n in tokens.items() if n > 0}
    if keep_records:
        result["records"] = records
    return result
