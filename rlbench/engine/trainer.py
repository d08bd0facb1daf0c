"""The training loop shared by every algorithm, task, model and rollout backend.

    prompts -> N samples per prompt -> grade -> (old / reference log-probs, values) -> advantages
            -> epochs x minibatches of (forward, loss, backward, clip, step) -> weight sync -> metrics

The trainer asks the algorithm what it needs (``needs_*``, ``epochs``, ``minibatches``); it never branches on a name.
What it trains with is built by :mod:`rlbench.engine.build`; the task, algorithm and evaluation are handed in
(``rlbench.run.training`` composes them), so nothing here imports a task, an algorithm or the evaluation protocol.
"""

from __future__ import annotations

import math
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from rlbench.core.bars import tqdm
from rlbench.core.config import RunConfig
from rlbench.core.results import EVALS, FINGERPRINT, STATE, SUMMARY, RunFileError, read_jsonl, token_hash, write_json
from rlbench.engine.batch import RolloutBatch, live_rows
from rlbench.engine.budget import BudgetMeter
from rlbench.engine.build import build_parts
from rlbench.engine.contracts import Algorithm, Evaluator, Task
from rlbench.engine.distributed import Ranks, gather_generation, rank_device, weighted_means
from rlbench.engine.divergence import Diverged, check_finite, check_weights
from rlbench.engine.file_hashes import finished_run_hashes
from rlbench.engine.generation import encode_prompt
from rlbench.engine.interrupts import interrupts_deferred, raise_interrupt
from rlbench.engine.maths import masked_mean
from rlbench.engine.persistence import RunPersistence
from rlbench.engine.run_log import Listener, RunLog
from rlbench.engine.run_state import check_run_dir, record_fingerprint, run_summary
from rlbench.engine.sampler_gap import GapMeter, tis_metrics, tis_weights
from rlbench.engine.seeding import derive_seed, prompt_indices, sample_seed
from rlbench.engine.sharding import clip_grad_norm, local_parameters, padded_micro_batches

# the trainer's own entropy measure, logged as "entropy" (an algorithm's term is overridden)
_ENTROPY = "_policy_entropy"


@contextmanager
def _timer(times: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    times[stage] = times.get(stage, 0.0) + time.perf_counter() - start


class Trainer(RunPersistence, RunLog):
    def __init__(
        self,
        config: RunConfig,
        *,
        task: Task,
        algorithm: Algorithm,
        model_path: str,
        evaluator: Evaluator,
        progress: bool = True,
        ranks: Ranks = Ranks(),
        listeners: Sequence[Listener] = (),
    ) -> None:
        self.config, self.task, self.algo, self.model_path = config, task, algorithm, model_path
        self.evaluator, self.progress, self.ranks = evaluator, progress and ranks.main, ranks
        self.listeners = listeners if ranks.main else ()
        torch.manual_seed(config.seed)
        self.out = run_dir(config)
        self.train_examples = task.load("train")  # before the model: bad data fails in a second, not after a load
        parts = build_parts(config, model_path, algorithm, device=rank_device(config.device, ranks), ranks=ranks)
        self.policy, self.reference, self.generator = parts.policy, parts.reference, parts.generator
        self.sharding = parts.sharding  # FSDP (rlbench.engine.sharding); None: every rank holds the whole model
        self.optimizer, self.scheduler, self._init_weights = parts.optimizer, parts.scheduler, parts.init_weights
        self.parameter_counts = {"trainable": parts.trainable_parameters, "total": parts.total_parameters}
        if self.sharding is not None:  # each rank's shard, in rank order: about total / processes each
            self.parameter_counts["per_rank"] = ranks.gather_objects(
                sum(local_parameters(m) for m in (self.policy.model, self.policy.value_head) if m is not None)
            )
        if self.progress:  # LoRA users check this first: did only the adapters (and a value head) end up trainable?
            share = parts.trainable_parameters / max(parts.total_parameters, 1)
            tqdm.write(
                f"trainable parameters: {parts.trainable_parameters:,} of {parts.total_parameters:,} ({share:.2%})",
                file=sys.stderr,
            )
        self.device = self.policy.device
        self.prompt_cache: dict[int, list[int]] = {}
        self.meter = BudgetMeter(config.budget, config.rollout.batch_size)

    # ------------------------------------------------------------------------------------------ one step

    def _prompt_ids(self, index: int) -> list[int]:
        if index not in self.prompt_cache:
            example = self.train_examples[index]
            self.prompt_cache[index] = encode_prompt(self.policy.tokenizer, self.task.prompt(example))
        return self.prompt_cache[index]

    def _micro(self, rows: torch.Tensor) -> list[torch.Tensor]:
        return list(rows.split(self.config.rollout.micro_batch_size or len(rows)))

    def rollout(self, step: int, times: dict[str, float]) -> tuple[RolloutBatch, list[Any], list]:
        c = self.config
        n = c.rollout.samples_per_prompt
        indices = prompt_indices(len(self.train_examples), c.seed, step, c.rollout.prompts_per_step)
        examples = [self.train_examples[i] for i in indices for _ in range(n)]
        prompt_ids = [self._prompt_ids(i) for i in indices for _ in range(n)]
        mine = self.ranks.share(len(prompt_ids))  # every row, in one process
        seed = sample_seed(c.seed, c.rollout.sample_stream, step)
        with _timer(times, "generate"):
            gen = self.generator.generate(
                [prompt_ids[r] for r in mine],
                temperature=c.sampling.temperature,
                top_p=c.sampling.top_p,
                max_new_tokens=c.sampling.max_new_tokens,
                seed=[derive_seed(seed, "row", r) for r in mine] if c.rollout.seed_rows else seed,
            )
            self.generator.sleep()
        with _timer(times, "grade"):
            grades = self.task.grade_many(gen.texts, [examples[r] for r in mine])
        if self.ranks.world > 1:
            gen, grades = gather_generation(gen, grades, prompt_ids, self.policy, self.ranks)
        batch = RolloutBatch(
            input_ids=gen.input_ids,
            attention_mask=gen.attention_mask,
            response_mask=gen.response_mask,
            prompt_len=gen.prompt_len,
            rewards=torch.tensor([g.reward for g in grades], dtype=torch.float, device=self.device),
            group_ids=torch.arange(len(indices), device=self.device).repeat_interleave(n),
            truncated=gen.truncated,
            sample_logprobs=gen.logprobs,
            # the prompts' token ids, not their indices: an audit then proves "same data", not "same seed and step"
            info={"texts": gen.texts, "prompt_ids_hash": token_hash([self._prompt_ids(i) for i in indices])},
        )
        return batch, examples, grades

    @property
    def _needs_old_logprobs(self) -> bool:
        return self.algo.needs_old_logprobs or self.config.rollout.tis_cap is not None

    @torch.no_grad()
    def _fill_logprobs(self, batch: RolloutBatch, times: dict[str, float]) -> None:
        temperature, algo = self.config.sampling.temperature, self.algo
        with _timer(times, "logprobs"):
            # each rank computes its share of the rows, then every rank holds all of them
            rows = self._micro(torch.tensor(list(self.ranks.share(batch.size)), dtype=torch.long))
            gather = self.ranks.gather_rows
            parts = (
                [self.policy.forward(batch.select(i), temperature, with_values=algo.needs_values) for i in rows]
                if (self._needs_old_logprobs or algo.needs_values)
                else []
            )
            if self._needs_old_logprobs:
                batch.old_logprobs = gather(torch.cat([p.logprobs for p in parts]))
            if algo.needs_values:
                batch.values = gather(torch.cat([p.values for p in parts]))
            if self.reference is not None:
                batch.ref_logprobs = gather(
                    torch.cat([self.reference.forward(batch.select(i), temperature).logprobs for i in rows])
                )

    def _correct_for_sampler(self, batch: RolloutBatch) -> dict[str, float]:
        """Truncated importance sampling on the advantages (``rollout.tis_cap``); see rlbench.engine.sampler_gap."""
        cap = self.config.rollout.tis_cap
        if cap is None or batch.sample_logprobs is None:
            return {}
        weights = tis_weights(batch.old_logprobs, batch.sample_logprobs, batch.response_mask, cap)
        batch.advantages = batch.advantages * weights
        return tis_metrics(weights, cap, batch.response_mask)

    def update(self, batch: RolloutBatch, times: dict[str, float]) -> dict[str, float]:
        algo, c, ranks = self.algo, self.config, self.ranks
        metrics: dict[str, list[float]] = {}
        losses: list[float] = []
        grad_norms: list[float] = []
        gap = GapMeter()
        if batch.sample_logprobs is not None and batch.old_logprobs is not None:
            gap.add(batch.old_logprobs, batch.sample_logprobs, batch.response_mask)
        inert = algo.inert_rows(batch)
        inert = inert.cpu() if inert is not None else None
        gen = torch.Generator().manual_seed(derive_seed(c.seed, "minibatch", self.meter.used.steps))
        with _timer(times, "update"):
            for epoch in range(algo.epochs):
                order = torch.randperm(batch.size, generator=gen) if algo.minibatches > 1 else torch.arange(batch.size)
                for index, rows in enumerate(order.tensor_split(algo.minibatches)):
                    mini = batch.select(rows.to(self.device))  # every normaliser is the global minibatch's
                    live, scale = live_rows(rows.tensor_split(ranks.world)[ranks.rank], inert)
                    # before this step's first optimiser step the policy is the sampler's: measure the gap on it
                    at_sampler = epoch == 0 and index == 0 and batch.old_logprobs is None
                    self.optimizer.zero_grad(set_to_none=True)
                    loss_sum, terms = 0.0, []
                    micros = self._micro(live)
                    if self.sharding is not None:  # FSDP: every rank runs as many as the busiest, the extra at weight 0
                        padding = padded_micro_batches(len(micros), ranks) - len(micros)
                        stand_in = batch.select(micros[0][:1].to(self.device)) if padding else None
                        for _ in range(padding):
                            out = self.policy.forward(
                                stand_in, c.sampling.temperature, with_entropy=True, with_values=algo.needs_values
                            )
                            (algo.loss(stand_in, out)[0] * 0.0).backward()
                    for micro_rows in micros:
                        micro = batch.select(micro_rows.to(self.device))
                        out = self.policy.forward(
                            micro, c.sampling.temperature, with_entropy=True, with_values=algo.needs_values
                        )
                        if at_sampler and micro.sample_logprobs is not None:
                            gap.add(out.logprobs, micro.sample_logprobs, micro.response_mask, shared=False)
                        if not algo.needs_entropy_grad:
                            out.entropy = out.entropy.detach()
                        loss, parts = algo.loss(micro, out)
                        weight = scale * algo.microbatch_weight(micro, mini)
                        (loss * weight).backward()
                        loss_sum += weight * loss.item()
                        parts[_ENTROPY] = float(masked_mean(out.entropy.detach(), micro.response_mask))
                        terms.append((weight, {k: float(v) for k, v in parts.items()}))
                    losses.append(ranks.sum_floats([loss_sum])[0])
                    for k, v in weighted_means(ranks.gather_objects(terms)).items():
                        metrics.setdefault(k, []).append(v)
                    ranks.sum_grads(self.policy.parameters())
                    self._optimizer_step(losses[-1], grad_norms)
            self.scheduler.step()
        # the loss is the whole minibatch's; the other terms and the entropy average over the rows trained on
        result = {k: statistics.fmean(v) for k, v in metrics.items() if k != _ENTROPY}
        result["loss"] = statistics.fmean(losses)
        result["grad_norm"] = statistics.fmean(grad_norms)
        result["entropy"] = statistics.fmean(metrics[_ENTROPY])
        result["inert_rows_frac"] = float(inert.float().mean()) if inert is not None else 0.0
        return {**result, **gap.metrics(ranks)}

    def _optimizer_step(self, loss: float, grad_norms: list[float]) -> None:
        step = self.meter.used.steps + 1
        check_finite(step, "loss", loss)
        clip = self.config.optim.grad_clip
        for (
            group
        ) in self.optimizer.param_groups:  # a group at lr 0 is frozen: Adam's moments and steps stay as they are
            if group["lr"] == 0:  # (the policy's during a critic warm-up, rlbench.engine.build.make_scheduler)
                for p in group["params"]:
                    p.grad = None
        params = [p for p in self.policy.parameters() if p.grad is not None]
        clip_norm = clip_grad_norm if self.sharding is not None else torch.nn.utils.clip_grad_norm_
        norm = clip_norm(params, clip if clip > 0 else math.inf)
        grad_norms.append(float(norm))
        check_finite(step, "grad_norm", grad_norms[-1])  # before clipping, which would hide it
        self.optimizer.step()
        check_weights(self.policy, step)

    def step(self) -> dict[str, Any]:
        times: dict[str, float] = {}
        batch, examples, grades = self.rollout(self.meter.used.steps, times)
        self._fill_logprobs(batch, times)
        adv_metrics = self.algo.compute_advantages(batch)
        adv_metrics.update(self._correct_for_sampler(batch))
        upd = self.update(batch, times)
        with _timer(times, "sync"):
            self.generator.sync_weights(self.policy)
        with interrupts_deferred():  # a step is counted and logged together, or not at all
            return self._record(batch, examples, grades, adv_metrics, upd, times)

    # ------------------------------------------------------------------------------------------ whole run

    def run(self, resume: bool = False) -> dict[str, Any]:
        c, ranks = self.config, self.ranks
        if ranks.main:
            check_run_dir(self.out, c, resume)
            self._write_config()
            record_fingerprint(self.out / FINGERPRINT, self.fingerprint())
        ranks.barrier()
        self._started = time.time()
        evals_done = self._restore() if resume else 0
        status, stop_reason = "running", None
        bar = tqdm(
            total=1000,
            desc=f"{c.algo_name} on {c.task_name} (seed {c.seed})",
            disable=not self.progress,
            bar_format="{l_bar}{bar}| {postfix} [{elapsed}<{remaining}]",
        )
        previous_handler = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, raise_interrupt)
        try:
            if evals_done == 0:
                self.evaluate(point=0)
                evals_done = 1
            self.meter.start()
            # rank 0 decides (a seconds budget would otherwise end on different steps on different ranks)
            while (stop_reason := ranks.broadcast(self.meter.exhausted())) is None:
                row = self.step()
                bar.n = int(1000 * self.meter.fraction())
                bar.set_postfix(step=row["step"], reward=f"{row['reward_mean']:.3f}", len=f"{row['length_mean']:.1f}")
                if c.eval.every and row["step"] % c.eval.every == 0 and ranks.broadcast(self.meter.exhausted()) is None:
                    self.meter.pause()
                    self.evaluate(point=evals_done)
                    evals_done += 1
                    self.meter.start()
                if c.checkpoint_every and row["step"] % c.checkpoint_every == 0:
                    # deferred: torch.save turns a Ctrl-C inside its write into a RuntimeError, a "cannot write"
                    with interrupts_deferred():
                        self.save_periodic_checkpoint(row["step"])  # before the state: a resume rewrites it if need be
                        self.save_state(evals_done)
            self.meter.pause()
            self.evaluate(point=evals_done)
            # inside the try: a Ctrl-C while the model is written still leaves an "interrupted" summary
            checkpoint = self.save_checkpoint() if ranks.main or self.sharding is not None else None
            status = "completed"
        except KeyboardInterrupt:
            self.meter.pause()
            status, stop_reason = "interrupted", "interrupted"
        except Diverged as exc:  # no state or model is saved from here on: the last good state stays
            self.meter.pause()
            status, stop_reason = "diverged", str(exc)
        except Exception as exc:
            self.meter.pause()
            status, stop_reason = "failed", str(exc).strip().split("\n")[0] or type(exc).__name__
            raise
        finally:
            signal.signal(signal.SIGTERM, previous_handler)
            bar.close()
            with interrupts_deferred():  # a second Ctrl-C waits until the summary is on disk
                summary = run_summary(
                    c,
                    self.model_path,
                    status,
                    stop_reason,
                    read_jsonl(self.out / EVALS),
                    usage=self.meter.snapshot(),
                    wall=time.time() - self._started,
                    eval_problems=len(self.evaluator.examples),
                )
                if status == "completed":
                    summary["checkpoint"] = str(checkpoint)
                summary["parameters"] = self.parameter_counts
                if status == "completed" and ranks.main:  # the audit names any file changed after this
                    summary["files"] = finished_run_hashes(self.out)
                try:
                    if ranks.main:
                        write_json(self.out / SUMMARY, summary)
                except RunFileError:
                    if status != "failed":
                        raise
                    # the run is already failing, most likely on this same full disk: report its first error
            if status == "completed" and ranks.main:
                shutil.rmtree(self.out / STATE, ignore_errors=True)  # only once the summary says completed
        if status == "interrupted":
            raise KeyboardInterrupt
        return summary


def run_dir(config: RunConfig) -> Path:
    return Path(config.out or f"runs/{config.task_name}-{config.algo_name}-s{config.seed}")
