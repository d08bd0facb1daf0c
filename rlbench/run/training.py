"""One training run, composed: the task, the algorithm, the model (the tiny lab's warm-start or a real one), the
evaluation protocol and the engine's trainer, under the run folder's lock.

This is the layer above the engine: ``rlbench.engine`` never imports a task, an algorithm, the evaluation or the
tiny lab; it receives them here.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Sequence
from typing import Any

import torch

from rlbench.core.bars import tqdm
from rlbench.core.config import ConfigError, RunConfig
from rlbench.core.configure import build_task
from rlbench.core.lifeline import lock_wait
from rlbench.core.locks import hold, is_run_folder, refuse_foreign
from rlbench.core.results import SUMMARY
from rlbench.engine.budget import planned_steps
from rlbench.engine.distributed import Ranks, init_ranks
from rlbench.engine.generation import Generator
from rlbench.engine.seeding import derive_seed
from rlbench.engine.trainer import Trainer, run_dir
from rlbench.run.eval.evaluate import evaluate
from rlbench.run.tracking import build_trackers, close_trackers
from rlbench.tasks.base import Example, Task


def resolve_model_path(config: RunConfig, task: Task, progress: bool) -> str:
    """``tiny`` builds (or reuses) the tiny lab's warm-start; anything else is a hub id or local directory."""
    if config.model == "tiny":
        from rlbench.run.tiny.warmstart import ensure_warmstart

        return str(ensure_warmstart(config.tiny, task, config.sampling, progress=progress))
    return config.model


class RunEvaluator:
    """The comparison's evaluation protocol for one run: greedy and ``eval.samples`` sampled completions on the
    first ``eval.limit`` problems of ``eval.split``, sampled from a seed derived from the run's (each sample from its
    own seed, so every run of a seed draws the same uniform numbers: common random numbers across rows).

    Evaluations that enter the run's score (:func:`scored_steps`) use those settings; the others draw the learning
    curve only, on the first ``eval.curve_limit`` problems with ``eval.curve_samples`` samples where those are set.

    With ``progress``, a bar counts the completions of each pass (greedy, then sampled) as they are made. It only
    watches: the passes, their batches and seeds are those of an evaluation without it, so results are the same bit
    for bit."""

    def __init__(self, config: RunConfig, task: Task, progress: bool = False) -> None:
        self.config, self.task, self.progress = config, task, progress
        examples = task.load(config.eval.split)
        self.examples: Sequence[Example] = examples[: config.eval.limit] if config.eval.limit else examples
        self.scored = scored_steps(config)

    def __call__(self, generator: Generator, *, step: int) -> dict[str, Any]:
        c = self.config
        examples, samples = self.examples, c.eval.samples
        if self.scored is not None and step not in self.scored:
            examples = examples[: c.eval.curve_limit] if c.eval.curve_limit else examples
            samples = samples if c.eval.curve_samples is None else c.eval.curve_samples
        completions = len(examples) * (int(c.eval.greedy) + samples)
        with tqdm(
            total=completions,
            desc="evaluating",
            unit="completion",
            leave=False,
            file=sys.stderr,
            disable=not self.progress,
        ) as bar:
            return evaluate(
                _Counted(generator, bar) if self.progress else generator,
                self.task,
                examples,
                max_new_tokens=c.sampling.max_new_tokens,
                temperature=c.sampling.temperature,
                top_p=c.sampling.top_p,
                greedy=c.eval.greedy,
                samples=samples,
                ks=range(1, samples + 1),
                seed=derive_seed(c.seed, "eval"),
                keep_records=True,
            )


def scored_steps(config: RunConfig) -> set[int] | None:
    """The optimiser steps of the evaluations that enter the run's score: the last ``eval.final_mean_of`` of those
    after training started (every ``eval.every`` steps, and at the end of the budget). None when the budget cannot
    say in advance how many steps the run takes (``tokens`` or ``seconds``): then every evaluation is full size."""
    total = planned_steps(config.budget, config.rollout.batch_size)
    if total is None:
        return None
    every = config.eval.every
    points = [s for s in range(every, total, every)] if every else []
    return set([*points, total][-config.eval.final_mean_of :])


class _Counted:
    """The generator itself, except that each ``generate`` call advances ``bar`` by the completions it made."""

    def __init__(self, generator: Generator, bar: tqdm) -> None:
        self._generator, self._bar = generator, bar

    def __getattr__(self, name: str) -> Any:
        return getattr(self._generator, name)

    def generate(self, prompt_ids: Sequence[list[int]], **kwargs: Any) -> Any:
        self._bar.set_postfix_str("greedy" if kwargs.get("greedy") else "sampled", refresh=True)
        out = self._generator.generate(prompt_ids, **kwargs)
        self._bar.update(len(prompt_ids))
        return out


def check_processes(config: RunConfig, ranks: Ranks) -> None:
    """With N data-parallel processes the step must split evenly and sample what one process would."""
    if ranks.world == 1:
        return
    r = config.rollout
    if not r.seed_rows:
        raise ConfigError(
            f"rollout.seed_rows=false: {ranks.world} processes must seed each completion on its own "
            "(set rollout.seed_rows=true), or their samples would depend on how the batch is split"
        )
    if r.prompts_per_step % ranks.world:
        raise ConfigError(
            f"rollout.batch_size={r.batch_size}: its {r.prompts_per_step} prompts per step do not split "
            f"evenly over {ranks.world} processes"
        )
    if r.batch_size // config.algorithm.minibatches < ranks.world:
        raise ConfigError(
            f"rollout.batch_size={r.batch_size}: each of the algorithm's {config.algorithm.minibatches} "
            f"minibatches needs at least one row per process ({ranks.world})"
        )


def build_trainer(config: RunConfig, progress: bool = True, ranks: Ranks = Ranks()) -> Trainer:
    check_processes(config, ranks)
    if config.threads:
        torch.set_num_threads(config.threads)
    task = build_task(config.task)
    # loads the evaluation data before any model: bad data fails fast
    evaluator = RunEvaluator(config, task, progress=progress and ranks.main)
    if not ranks.main:
        ranks.barrier()  # rank 0 builds the tiny lab's warm-start (if missing) before the others read it
    model_path = resolve_model_path(config, task, progress and ranks.main)
    if ranks.main:
        ranks.barrier()
    # experiment trackers (report_to) listen on rank 0; train() closes them
    trackers = build_trackers(config, run_dir(config)) if ranks.main else []
    return Trainer(
        config,
        task=task,
        algorithm=config.algorithm,
        model_path=model_path,
        evaluator=evaluator,
        progress=progress,
        ranks=ranks,
        listeners=trackers,
    )


def train(config: RunConfig, progress: bool = True, resume: bool = False) -> dict[str, Any]:
    """Run one training job end to end; returns its summary (also written to ``summary.json``).

    With ``resume``, a finished run is returned as it is and an unfinished one continues from its last state.
    The run folder is locked throughout: a second writer is refused, naming this one's PID. Under a launcher
    (``accelerate launch``, ``torchrun``) the processes train the run together and rank 0 holds the lock.
    """
    ranks = init_ranks(config.device)
    out = run_dir(config)
    if ranks.main:
        refuse_foreign(out, "run", is_run_folder(out))
    with hold(out, "run", wait=lock_wait()) if ranks.main else contextlib.nullcontext():
        done = None
        if resume and (out / SUMMARY).exists():
            summary = json.loads((out / SUMMARY).read_text())
            done = summary if summary.get("status") == "completed" else None
        done = ranks.broadcast(done)
        if done is None:
            trainer = build_trainer(config, progress=progress, ranks=ranks)
            try:
                done = trainer.run(resume=resume)
            finally:  # completed, diverged, interrupted or failed: the tracker runs are finished either way
                close_trackers(trainer.listeners)
        ranks.close()
        return done
