"""What a run keeps on disk besides its logs, as the trainer's mixin: its config and fingerprint, the model as a Hugging
Face folder (final and periodic), and the resumable state it continues from bit for bit.

Rank 0 writes every file; under FSDP every rank takes part in gathering the shards it writes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from rlbench.core.results import CHECKPOINT, CONFIG, STATE, write_text_atomic
from rlbench.engine.checkpoints import (
    drop_logs,
    prune_checkpoints,
    restore_state,
    save_model,
    training_state,
    truncate_logs,
)
from rlbench.engine.generation import encode_prompt
from rlbench.engine.run_state import STATE_FILE, load_state_dir, run_fingerprint, save_state_dir


class RunPersistence:
    """Mixed into :class:`rlbench.engine.trainer.Trainer`, whose attributes it reads (config, out, policy,
    optimizer, scheduler, meter, sharding, ranks, generator, evaluator, task)."""

    def fingerprint(self) -> dict[str, Any]:
        prompts = [encode_prompt(self.policy.tokenizer, self.task.prompt(e)) for e in self.evaluator.examples]
        return run_fingerprint(self.config, self._init_weights, self.evaluator.examples, prompts)

    def _write_config(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.out / CONFIG, yaml.safe_dump(self.config.to_dict(), sort_keys=False))

    def save_checkpoint(self, name: str = CHECKPOINT) -> Path | None:
        """The model as a Hugging Face folder: the final ``checkpoint/``, or a periodic ``checkpoint-N/``; rank 0
        writes it (under FSDP every rank calls this: the value head's shards are gathered)."""
        policy = self.sharding.full_policy(self.policy) if self.sharding is not None else self.policy
        return save_model(self.out / name, policy) if self.ranks.main else None

    def save_periodic_checkpoint(self, step: int) -> None:
        """``checkpoint-<step>/`` (``keep_checkpoints`` > 0), then only the newest ``keep_checkpoints`` of them kept."""
        if self.config.keep_checkpoints and (self.ranks.main or self.sharding is not None):
            self.save_checkpoint(f"{CHECKPOINT}-{step}")
            if self.ranks.main:
                prune_checkpoints(self.out, self.config.keep_checkpoints)

    def save_state(self, evals_done: int) -> None:
        """Everything a resumed run needs to continue bit for bit: weights, optimiser, schedule, usage."""
        if self.ranks.main or self.sharding is not None:  # FSDP: every rank sends its shards to rank 0
            state = training_state(
                self.policy,
                self.optimizer,
                self.scheduler,
                self.meter.used,
                evals_done,
                time.time() - self._started,
                sharded=self.sharding is not None,
                main=self.ranks.main,
            )
            if self.ranks.main:
                save_state_dir(self.out / STATE, state)

    def _restore(self) -> int:
        """Load the last state and drop every log row written after it; returns the evaluations already done."""
        sharded = self.sharding is not None
        # FSDP: rank 0 alone reads the state (a 7B's is tens of GB) and sends each rank its shards
        state = load_state_dir(self.out / STATE) if self.ranks.main or not sharded else None
        if sharded and self.ranks.broadcast(state is None):
            state = None
        elif sharded and state is None:
            state = {}
        if state is None:
            if self.ranks.main:
                drop_logs(self.out)
            return 0
        self.meter.used, wall, evals_done = restore_state(
            state,
            self.policy,
            self.optimizer,
            self.scheduler,
            self.out / STATE / STATE_FILE,
            ranks=self.ranks if sharded else None,
        )
        if sharded:
            self.generator.sync_weights(self.policy)  # the rollout copy: the restored weights, not the initial ones
        self._started -= wall  # wall time counts every session of the run
        if self.ranks.main:  # every rank restores the state; only rank 0 owns the logs
            truncate_logs(self.out, self.meter.used.steps, evals_done)
        return evals_done
