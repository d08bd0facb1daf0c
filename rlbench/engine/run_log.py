"""What a run logs as it goes, as the trainer's mixin: one ``metrics.jsonl`` row and a few logged samples per step, one
``eval.jsonl`` row and its per-problem records per evaluation; each row told to the listeners once it is on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rlbench.core.results import EVALS, METRICS, SAMPLES, append_jsonl, append_jsonl_many, records_path, write_records
from rlbench.engine.batch import RolloutBatch, rollout_metrics
from rlbench.engine.maths import kl_penalty, masked_mean

SAMPLES_LOGGED_PER_STEP = 4
# told every row rank 0 writes, after it is on disk: ("step", a metrics.jsonl row) or ("eval", an eval.jsonl row);
# experiment trackers (TensorBoard, W&B, trackio) listen here
Listener = Callable[[str, dict[str, Any]], None]


class RunLog:
    """Mixed into :class:`rlbench.engine.trainer.Trainer`, whose attributes it reads (config, out, algo, task, meter,
    scheduler, ranks, generator, evaluator, listeners)."""

    def _record(
        self,
        batch: RolloutBatch,
        examples: list[Any],
        grades: list[Any],
        adv_metrics: dict[str, float],
        upd: dict[str, float],
        times: dict[str, float],
    ) -> dict[str, Any]:
        c = self.config
        tokens = int(batch.response_mask.sum())
        self.meter.add(prompts=c.rollout.prompts_per_step, samples=batch.size, tokens=tokens, steps=1)
        # algo and seed on every row: a metrics file read on its own (or concatenated with others) says whose it is
        row: dict[str, Any] = {
            "step": self.meter.used.steps,
            "algo": c.algo_name,
            "seed": c.seed,
            **rollout_metrics(batch, grades, c.rollout.samples_per_prompt),
            **upd,
            **adv_metrics,
            "lr": self.scheduler.get_last_lr()[0],
        }
        if batch.ref_logprobs is not None and batch.old_logprobs is not None:
            row["kl_ref"] = float(
                masked_mean(kl_penalty(batch.old_logprobs, batch.ref_logprobs, "k3"), batch.response_mask)
            )
        row["time"] = {k: round(v, 4) for k, v in times.items()}
        row["gen_tokens_per_s"] = round(tokens / times["generate"], 1) if times.get("generate") else None
        trained = tokens * self.algo.epochs
        row["train_tokens_per_s"] = round(trained / times["update"], 1) if times.get("update") else None
        row["usage"] = self.meter.snapshot()
        row["prompt_ids_hash"] = batch.info["prompt_ids_hash"]  # lets a comparison audit that runs saw the same prompts
        if self.ranks.main:
            append_jsonl(self.out / METRICS, row)
            self._tell("step", row)
            logged = list(zip(examples, batch.info["texts"], grades))[:SAMPLES_LOGGED_PER_STEP]
            append_jsonl_many(
                self.out / SAMPLES,
                [
                    {
                        "step": row["step"],
                        "id": ex.id,
                        "prompt": self.task.prompt(ex),
                        "completion": text,
                        "reward": g.reward,
                        "reason": g.reason,
                    }
                    for ex, text, g in logged
                ],
            )
        return row

    def evaluate(self, point: int) -> dict[str, Any]:
        """Evaluate at budget point ``point`` (0 = before training), keeping its per-problem records: the audit
        regrades every evaluation that can enter the run's score from them.

        Rank 0 evaluates (the weights are the same on every rank); the others wait for it."""
        if not self.ranks.main:
            self.ranks.barrier()
            return {}
        res = self.evaluator(self.generator, step=self.meter.used.steps)
        self.generator.sleep()
        records = res.pop("records", None)
        row = {"point": point, "step": self.meter.used.steps, "usage": self.meter.snapshot(), **res}
        if records is not None:  # before the eval row: a resume drops the records of every point past its state
            write_records(records_path(self.out, point), ({"point": point, "step": row["step"], **r} for r in records))
        append_jsonl(self.out / EVALS, row)
        self._tell("eval", row)
        self.ranks.barrier()
        return row

    def _tell(self, kind: str, row: dict[str, Any]) -> None:
        for listener in self.listeners:
            listener(kind, row)
