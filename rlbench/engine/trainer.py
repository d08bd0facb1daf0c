"""The training loop shared by every algorithm and every model.

    prompts -> N samples per prompt -> grade -> (old / reference log-probs, values) -> advantages
            -> epochs x minibatches of (forward, loss, backward, clip, step) -> weight sync -> metrics

The trainer asks the algorithm what it needs (``needs_*``, ``epochs``, ``minibatches``); it never branches on a name.
"""
from __future__ import annotations

import copy
import dataclasses
import errno
import functools
import hashlib
import json
import math
import platform
import random
import re
import signal
import shutil
import statistics
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml
from tqdm.auto import tqdm

from rlbench import registry
from rlbench.config import ConfigError, RunConfig, saved_config_mismatch
from rlbench.engine.batch import RolloutBatch
from rlbench.engine.budget import BudgetMeter, Usage
from rlbench.engine.policy import Policy, ValueHead, load_model, pick_device
from rlbench.engine.rollout import HFGenerator, encode_prompt
from rlbench.evaluate import evaluate
from rlbench.lifeline import lock_wait
from rlbench.locks import hold, is_run_folder, refuse_foreign, refuse_several_ranks
from rlbench.results import (
    CHECKPOINT, CONFIG, EVAL_RECORDS, EVALS, FINGERPRINT, METRICS, SAMPLES, STATE, SUMMARY, RunFileError, append_jsonl,
    append_jsonl_many, dumps_strict, read_jsonl, token_hash, truncate_jsonl, write_dir_atomic, write_json,
    write_text_atomic,
)
from rlbench.algorithms.base import Algorithm, kl_penalty, masked_mean
from rlbench.tasks.base import Example, Task

SAMPLES_LOGGED_PER_STEP = 4
STATE_FILE = "trainer.pt"  # in the run's state/ folder


class Diverged(Exception):
    """A non-finite loss, gradient norm or weight: the run stops (status ``diverged``) and saves no state after it."""

    def __init__(self, step: int, quantity: str, value: Any) -> None:
        super().__init__(f"step {step}: {quantity} is {value}")
        self.step, self.quantity = step, quantity


def _check_finite(step: int, quantity: str, value: float) -> None:
    if not math.isfinite(value):
        raise Diverged(step, quantity, value)


def derive_seed(*parts: Any) -> int:
    """A stable 63-bit seed from any parts (run seed, step, purpose), identical across processes and machines."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sample_seed(seed: int, stream: int, step: int) -> int:
    """The rollout sampling seed of ``step``; stream 0 is the run's own, any other an independent one."""
    return derive_seed(seed, "sample", step) if stream == 0 else derive_seed(seed, "sample", "stream", stream, step)


def prompt_indices(n_examples: int, seed: int, step: int, per_step: int) -> list[int]:
    """The prompts of ``step``: consecutive slices of a per-epoch shuffle, so every algorithm sees the same order."""
    out: list[int] = []
    start = step * per_step
    while len(out) < per_step:
        epoch, offset = divmod(start + len(out), n_examples)
        order = _epoch_order(n_examples, seed, epoch)
        out.extend(order[offset : offset + per_step - len(out)])
    return out


@functools.lru_cache(maxsize=4)
def _epoch_order(n_examples: int, seed: int, epoch: int) -> tuple[int, ...]:
    """One epoch's shuffle (cached: shuffling 20k indices every step cost ~25 ms, 3% of a tiny-lab step)."""
    order = list(range(n_examples))
    random.Random(derive_seed(seed, "epoch", epoch)).shuffle(order)
    return tuple(order)


@contextmanager
def _timer(times: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    times[stage] = times.get(stage, 0.0) + time.perf_counter() - start


def resolve_model_path(config: RunConfig, task: Task, progress: bool) -> str:
    """``tiny`` builds (or reuses) the tiny lab's warm-start; anything else is a hub id or local directory."""
    if config.model == "tiny":
        from rlbench.tiny.warmstart import ensure_warmstart

        return str(ensure_warmstart(config.tiny, task, config.sampling, progress=progress))
    return config.model


class Trainer:
    def __init__(self, config: RunConfig, progress: bool = True) -> None:
        self.config = config
        self.progress = progress
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        self.out = run_dir(config)
        self.task: Task = registry.get_task(config.task_name).from_options(_options(config.task))
        self.algo: Algorithm = registry.get_algorithm(config.algo_name).from_options(_options(config.algo))
        self.device = pick_device(config.device)
        self.model_path = resolve_model_path(config, self.task, progress)
        try:
            model, tokenizer = load_model(self.model_path, config.precision, self.device)
        except FileNotFoundError as exc:  # load_model's own message already names --model
            raise ConfigError(str(exc)) from None
        except Exception as exc:  # a truncated or corrupt checkpoint, an unknown hub id: one line, not a traceback
            first = str(exc).strip().split("\n")[0] or type(exc).__name__
            raise ConfigError(f"--model {self.model_path}: cannot load ({first})") from None
        value_head = None
        if self.algo.needs_values:
            value_head = ValueHead(model.config.hidden_size).to(self.device)
        self._init_weights = weights_hash(model)  # before any update or resume: the run's starting point
        self.policy = Policy(model, tokenizer, self.device, config.precision, value_head)
        self.reference: Policy | None = None
        if self.algo.needs_reference:
            ref_model = copy.deepcopy(model).eval().requires_grad_(False)
            self.reference = Policy(ref_model, tokenizer, self.device, config.precision)
        self.generator = HFGenerator(self.policy, batch_size=config.rollout.generation_batch_size)
        o = config.optim
        self.optimizer = torch.optim.AdamW(
            list(self.policy.parameters()), lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / o.warmup_steps) if o.warmup_steps else 1.0
        )
        self.train_examples = self.task.load("train")
        eval_examples = self.task.load(config.eval.split)
        self.eval_examples = eval_examples[: config.eval.limit] if config.eval.limit else eval_examples
        self.prompt_cache: dict[int, list[int]] = {}
        self.meter = BudgetMeter(config.budget, config.rollout.batch_size)

    # ------------------------------------------------------------------------------------------ one step

    def _prompt_ids(self, index: int) -> list[int]:
        if index not in self.prompt_cache:
            example = self.train_examples[index]
            self.prompt_cache[index] = encode_prompt(self.policy.tokenizer, self.task.prompt(example))
        return self.prompt_cache[index]

    def _micro(self, batch: RolloutBatch) -> list[torch.Tensor]:
        return self._micro_of(torch.arange(batch.size))

    def _micro_of(self, rows: torch.Tensor) -> list[torch.Tensor]:
        return list(rows.split(self.config.rollout.micro_batch_size or len(rows)))

    @torch.no_grad()
    def _fill_logprobs(self, batch: RolloutBatch, times: dict[str, float]) -> None:
        temperature = self.config.sampling.temperature
        with _timer(times, "logprobs"):
            parts = [self.policy.forward(batch.select(i), temperature, with_values=self.algo.needs_values)
                     for i in self._micro(batch)] if (self.algo.needs_old_logprobs or self.algo.needs_values) else []
            if self.algo.needs_old_logprobs:
                batch.old_logprobs = torch.cat([p.logprobs for p in parts])
            if self.algo.needs_values:
                batch.values = torch.cat([p.values for p in parts])
            if self.reference is not None:
                batch.ref_logprobs = torch.cat(
                    [self.reference.forward(batch.select(i), temperature).logprobs for i in self._micro(batch)]
                )

    def rollout(self, step: int, times: dict[str, float]) -> tuple[RolloutBatch, list[Example], list]:
        c = self.config
        n = c.rollout.samples_per_prompt
        indices = prompt_indices(len(self.train_examples), c.seed, step, c.rollout.prompts_per_step)
        examples = [self.train_examples[i] for i in indices for _ in range(n)]
        prompt_ids = [self._prompt_ids(i) for i in indices for _ in range(n)]
        with _timer(times, "generate"):
            gen = self.generator.generate(
                prompt_ids, temperature=c.sampling.temperature, top_p=c.sampling.top_p,
                max_new_tokens=c.sampling.max_new_tokens, seed=sample_seed(c.seed, c.rollout.sample_stream, step),
            )
        with _timer(times, "grade"):
            grades = self.task.grade_many(gen.texts, examples)
        batch = RolloutBatch(
            input_ids=gen.input_ids,
            attention_mask=gen.attention_mask,
            response_mask=gen.response_mask,
            prompt_len=gen.prompt_len,
            rewards=torch.tensor([g.reward for g in grades], dtype=torch.float, device=self.device),
            group_ids=torch.arange(len(indices), device=self.device).repeat_interleave(n),
            truncated=gen.truncated,
            # the prompts' token ids, not their indices: an audit then proves "same data", not "same seed and step"
            info={"texts": gen.texts, "prompt_ids_hash": token_hash([self._prompt_ids(i) for i in indices])},
        )
        return batch, examples, grades

    def update(self, batch: RolloutBatch, times: dict[str, float]) -> dict[str, float]:
        algo, c = self.algo, self.config
        metrics: dict[str, list[float]] = {}
        losses: list[float] = []
        grad_norms: list[float] = []
        entropies: list[float] = []
        inert = algo.inert_rows(batch)
        inert = inert.cpu() if inert is not None else None
        gen = torch.Generator().manual_seed(derive_seed(c.seed, "minibatch", self.meter.used.steps))
        with _timer(times, "update"):
            for _ in range(algo.epochs):
                order = torch.randperm(batch.size, generator=gen) if algo.minibatches > 1 else torch.arange(batch.size)
                for rows in order.tensor_split(algo.minibatches):
                    mini = batch.select(rows.to(self.device))
                    live, scale = _live_rows(rows, inert)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss_sum = 0.0
                    for micro_rows in self._micro_of(live):
                        micro = batch.select(micro_rows.to(self.device))
                        out = self.policy.forward(micro, c.sampling.temperature, with_entropy=True,
                                                  with_values=algo.needs_values)
                        if not algo.needs_entropy_grad:
                            out.entropy = out.entropy.detach()
                        loss, parts = algo.loss(micro, out)
                        weight = scale * algo.microbatch_weight(micro, mini)
                        (loss * weight).backward()
                        loss_sum += weight * loss.item()
                        for k, v in parts.items():
                            metrics.setdefault(k, []).append(float(v))
                        entropies.append(float(masked_mean(out.entropy.detach(), micro.response_mask)))
                    losses.append(loss_sum)
                    step = self.meter.used.steps + 1
                    _check_finite(step, "loss", loss_sum)
                    clip = c.optim.grad_clip
                    params = [p for p in self.policy.parameters() if p.grad is not None]
                    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
                    grad_norms.append(float(norm))
                    _check_finite(step, "grad_norm", grad_norms[-1])  # before clipping, which would hide it
                    self.optimizer.step()
                    self._check_weights(step)
            self.scheduler.step()
        # the loss is the whole minibatch's; the other terms and the entropy average over the rows trained on
        result = {k: statistics.fmean(v) for k, v in metrics.items()}
        result["loss"] = statistics.fmean(losses)
        result["grad_norm"] = statistics.fmean(grad_norms)
        result["entropy"] = statistics.fmean(entropies)
        result["inert_rows_frac"] = float(inert.float().mean()) if inert is not None else 0.0
        return result

    def _check_weights(self, step: int) -> None:
        """Raise :class:`Diverged` naming the first non-finite parameter (one device sync when all are finite)."""
        if bool(torch.stack([torch.isfinite(p).all() for p in self.policy.parameters()]).all()):
            return
        named = list(self.policy.model.named_parameters())
        if self.policy.value_head is not None:
            named += [(f"value_head.{n}", p) for n, p in self.policy.value_head.named_parameters()]
        for name, p in named:
            if not bool(torch.isfinite(p).all()):
                raise Diverged(step, f"weight {name}", "nan" if bool(torch.isnan(p).any()) else "inf")

    def step(self) -> dict[str, Any]:
        times: dict[str, float] = {}
        batch, examples, grades = self.rollout(self.meter.used.steps, times)
        self._fill_logprobs(batch, times)
        adv_metrics = self.algo.compute_advantages(batch)
        upd = self.update(batch, times)
        with _timer(times, "sync"):
            self.generator.sync_weights(self.policy)
        with _interrupts_deferred():  # a step is counted and logged together, or not at all
            return self._record(batch, examples, grades, adv_metrics, upd, times)

    def _record(self, batch: RolloutBatch, examples: list[Example], grades: list[Any], adv_metrics: dict[str, float],
                upd: dict[str, float], times: dict[str, float]) -> dict[str, Any]:
        c = self.config
        tokens = int(batch.response_mask.sum())
        self.meter.add(prompts=c.rollout.prompts_per_step, samples=batch.size, tokens=tokens, steps=1)
        lengths = batch.response_mask.sum(1)
        rewards = batch.rewards
        groups = rewards.view(-1, c.rollout.samples_per_prompt)
        row: dict[str, Any] = {
            "step": self.meter.used.steps,
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
            "accuracy": sum(g.correct for g in grades) / len(grades),
            "zero_spread_groups": float((groups.max(1).values == groups.min(1).values).float().mean()),
            "length_mean": float(lengths.mean()),
            "length_max": int(lengths.max()),
            "truncated_frac": float(batch.truncated.float().mean()),
            **upd,
            **adv_metrics,
            "lr": self.scheduler.get_last_lr()[0],
        }
        if batch.ref_logprobs is not None and batch.old_logprobs is not None:
            row["kl_ref"] = float(masked_mean(kl_penalty(batch.old_logprobs, batch.ref_logprobs, "k3"), batch.response_mask))
        row["time"] = {k: round(v, 4) for k, v in times.items()}
        row["gen_tokens_per_s"] = round(tokens / times["generate"], 1) if times.get("generate") else None
        trained = tokens * self.algo.epochs
        row["train_tokens_per_s"] = round(trained / times["update"], 1) if times.get("update") else None
        row["usage"] = self.meter.snapshot()
        row["prompt_ids_hash"] = batch.info["prompt_ids_hash"]  # lets a comparison audit that runs saw the same prompts
        append_jsonl(self.out / METRICS, row)
        logged = list(zip(examples, batch.info["texts"], grades))[:SAMPLES_LOGGED_PER_STEP]
        append_jsonl_many(self.out / SAMPLES, [
            {"step": row["step"], "id": ex.id, "completion": text, "reason": g.reason} for ex, text, g in logged])
        return row

    # ------------------------------------------------------------------------------------------ whole run

    def evaluate(self, point: int, final: bool = False) -> dict[str, Any]:
        """Evaluate at budget point ``point`` (0 = before training); the final one keeps per-problem records."""
        c = self.config
        res = evaluate(
            self.generator, self.task, self.eval_examples, max_new_tokens=c.sampling.max_new_tokens,
            temperature=c.sampling.temperature, top_p=c.sampling.top_p, greedy=c.eval.greedy,
            samples=c.eval.samples, ks=range(1, c.eval.samples + 1), seed=derive_seed(c.seed, "eval"),
            keep_records=final,
        )
        records = res.pop("records", None)
        row = {"point": point, "step": self.meter.used.steps, "usage": self.meter.snapshot(), **res}
        append_jsonl(self.out / EVALS, row)
        if records is not None:  # one atomic file: a line per problem, without an fsync per line
            write_text_atomic(self.out / EVAL_RECORDS, "".join(dumps_strict(r) + "\n" for r in records))
        return row

    def fingerprint(self) -> dict[str, Any]:
        """What makes this run comparable with another: its settings, initial weights and evaluation set."""
        c = self.config.to_dict()
        eval_prompts = [encode_prompt(self.policy.tokenizer, self.task.prompt(e)) for e in self.eval_examples]
        return {
            "config": {k: v for k, v in c.items() if k not in ("algo", "seed", "out")},
            "algo": c["algo"],
            "seed": c["seed"],
            "init_weights": self._init_weights,
            "eval_set": {"count": len(self.eval_examples),
                         "ids_sha256": token_hash([str(e.id) for e in self.eval_examples], 64),
                         "prompts_sha256": token_hash(eval_prompts, 64)},
        }

    def _write_config(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.out / CONFIG, yaml.safe_dump(self.config.to_dict(), sort_keys=False))

    def save_checkpoint(self) -> Path:
        """The final model, loadable with ``from_pretrained`` like any hub model (swapped in whole, like the state)."""
        path = self.out / CHECKPOINT

        def write(folder: Path) -> None:
            self.policy.model.save_pretrained(folder)
            self.policy.tokenizer.save_pretrained(folder)
            if self.policy.value_head is not None:
                _torch_save(self.policy.value_head.state_dict(), folder / "value_head.pt")

        write_dir_atomic(path, write)
        return path

    def save_state(self, evals_done: int) -> None:
        """Everything a resumed run needs to continue bit for bit: weights, optimiser, schedule, usage."""
        # only tensors, plain containers and numbers: a resume loads it with torch.load(weights_only=True)
        state = {
            "model": self.policy.model.state_dict(),
            "value_head": self.policy.value_head.state_dict() if self.policy.value_head is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "usage": dataclasses.asdict(self.meter.used),
            "evals_done": int(evals_done),
            "wall_seconds": float(time.time() - self._started),
        }
        save_state_dir(self.out / STATE, state)

    def _restore(self) -> int:
        """Load the last state and drop every log row written after it; returns the evaluations already done."""
        state = load_state_dir(self.out / STATE)
        if state is None:
            for name in (METRICS, SAMPLES, EVALS, EVAL_RECORDS):
                (self.out / name).unlink(missing_ok=True)
            return 0
        try:  # a state of another model, or a dict missing keys: refused before any log row is dropped
            self.policy.model.load_state_dict(state["model"])
            if self.policy.value_head is not None:
                self.policy.value_head.load_state_dict(state["value_head"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.meter.used = Usage(**state["usage"])
            self._started -= float(state["wall_seconds"])  # wall time counts every session of the run
            int(state["evals_done"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            first = str(exc).strip().split("\n")[0].rstrip(":") or type(exc).__name__
            raise RunFileError(f"{self.out / STATE / STATE_FILE}: not a state of this run ({first})") from None
        steps = self.meter.used.steps
        for name in (METRICS, SAMPLES):
            truncate_jsonl(self.out / name, [r for r in read_jsonl(self.out / name) if r["step"] <= steps])
        truncate_jsonl(self.out / EVALS, [r for r in read_jsonl(self.out / EVALS) if r["point"] < state["evals_done"]])
        (self.out / EVAL_RECORDS).unlink(missing_ok=True)
        return int(state["evals_done"])

    def run(self, resume: bool = False) -> dict[str, Any]:
        c = self.config
        check_run_dir(self.out, c, resume)
        self._write_config()
        record_fingerprint(self.out / FINGERPRINT, self.fingerprint())
        self._started = time.time()
        evals_done = self._restore() if resume else 0
        status, stop_reason = "running", None
        bar = tqdm(total=1000, desc=f"{c.algo_name} on {c.task_name} (seed {c.seed})", disable=not self.progress,
                   bar_format="{l_bar}{bar}| {postfix} [{elapsed}<{remaining}]")
        previous_handler = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            if evals_done == 0:
                self.evaluate(point=0)
                evals_done = 1
            self.meter.start()
            while (stop_reason := self.meter.exhausted()) is None:
                row = self.step()
                bar.n = int(1000 * self.meter.fraction())
                bar.set_postfix(step=row["step"], reward=f"{row['reward_mean']:.3f}", len=f"{row['length_mean']:.1f}")
                if c.eval.every and row["step"] % c.eval.every == 0 and self.meter.exhausted() is None:
                    self.meter.pause()
                    self.evaluate(point=evals_done)
                    evals_done += 1
                    self.meter.start()
                if c.checkpoint_every and row["step"] % c.checkpoint_every == 0:
                    self.save_state(evals_done)
            self.meter.pause()
            self.evaluate(point=evals_done, final=True)
            # inside the try: a Ctrl-C while the model is written still leaves an "interrupted" summary
            checkpoint = self.save_checkpoint()
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
            with _interrupts_deferred():  # a second Ctrl-C waits until the summary is on disk
                summary = self._summary(status, stop_reason, read_jsonl(self.out / EVALS), time.time() - self._started)
                if status == "completed":
                    summary["checkpoint"] = str(checkpoint)
                try:
                    write_json(self.out / SUMMARY, summary)
                except RunFileError:
                    if status != "failed":
                        raise
                    # the run is already failing, most likely on this same full disk: report its first error
            if status == "completed":
                shutil.rmtree(self.out / STATE, ignore_errors=True)  # only once the summary says completed
        if status == "interrupted":
            raise KeyboardInterrupt
        return summary

    def _summary(self, status: str, stop_reason: str | None, evals: list[dict], wall: float) -> dict[str, Any]:
        def acc(row: dict | None, kind: str) -> float | None:
            return row[kind]["accuracy"] if row and kind in row else None

        first = evals[0] if evals else None
        last = evals[-1] if status == "completed" else None
        scored = evals[1:][-self.config.eval.final_mean_of:] if status == "completed" else []
        return {
            "status": status,
            "stop_reason": stop_reason,
            "algo": self.config.algo_name,
            "task": self.config.task_name,
            "model": self.config.model,
            "model_path": self.model_path,
            "seed": self.config.seed,
            "usage": self.meter.snapshot(),
            "budget": dataclasses.asdict(self.config.budget),
            "wall_seconds": round(wall, 1),
            "eval_problems": len(self.eval_examples),
            "initial": {"greedy": acc(first, "greedy"), "sampled": acc(first, "sampled")},
            "final": {"greedy": acc(last, "greedy"), "sampled": acc(last, "sampled")},
            # the run's score: the mean over its last K evaluations (eval.final_mean_of), the paper's estimand
            "score": {kind: _mean_or_none([acc(row, kind) for row in scored]) for kind in ("greedy", "sampled")},
            "score_steps": [row["step"] for row in scored],
            "final_length": last["sampled"]["length_mean"] if last and "sampled" in last else None,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
        }


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes) in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def record_fingerprint(path: Path, fingerprint: dict[str, Any]) -> None:
    """Write the run's fingerprint, or check it against the one already there (a resumed run must be the same run)."""
    if path.exists():
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: unreadable ({exc}); the run cannot be proven to be the same run") from None
        for key in sorted(set(before) | set(fingerprint)):
            if before.get(key) != fingerprint.get(key):
                raise ConfigError(f"{path}: {key} differs from the run being resumed ({before.get(key)!r} there, "
                                  f"{fingerprint.get(key)!r} now)")
        return
    write_json(path, fingerprint)


def check_run_dir(out: Path, config: RunConfig, resume: bool) -> None:
    """Refuse to overwrite a finished or different run: results already on disk are never lost."""
    saved = out / CONFIG
    if not saved.exists() or not any((out / name).exists() for name in (METRICS, EVALS, SUMMARY)):
        return
    if not resume:
        raise ConfigError(f"out={str(out)!r}: the run directory already holds a run; pass --resume or choose another --out")
    mismatch = saved_config_mismatch(saved, config)
    if mismatch:
        raise ConfigError(f"{saved}: the run being resumed differs: {mismatch}")


def save_state_dir(path: Path, state: dict[str, Any]) -> None:
    """Write to ``path.tmp``, then swap it in, so a kill at any moment leaves one complete state on disk."""
    write_dir_atomic(path, lambda folder: _torch_save(state, folder / STATE_FILE))


def load_state_dir(path: Path) -> dict[str, Any] | None:
    """The last state (or the one a kill mid-swap left in ``path.old``); None if there is none.

    Loaded with ``weights_only=True``: a state holds tensors and plain values only, so a crafted file cannot run
    code. An unreadable one raises :class:`RunFileError` naming it (nothing is deleted).
    """
    for candidate in (path, path.with_name(path.name + ".old")):
        file = candidate / STATE_FILE
        if file.exists():
            try:
                return torch.load(file, weights_only=True)
            except Exception as exc:  # torch raises EOFError, OSError, RuntimeError or UnpicklingError here
                raise _unloadable(file, exc) from None
    return None


def _unloadable(file: Path, exc: Exception) -> RunFileError:
    hostile = re.search(r"unsupported GLOBAL (\S+)", str(exc))
    if hostile:  # weights_only refused a pickled global: a file rlbench never writes
        why = f"refused: it holds {hostile.group(1)}, not only tensors and plain values, and loading that could run code"
    elif isinstance(exc, OSError) and exc.errno not in (None, errno.EINVAL):
        why = f"cannot read ({exc.strerror})"
    else:
        why = "empty file" if file.stat().st_size == 0 else "corrupt or truncated"
    return RunFileError(f"{file}: cannot load the run's state: {why}")


class _RecordingFile:
    """A file that remembers the OSError of a failed write: torch.save reports it as a RuntimeError without errno."""

    def __init__(self, handle: Any) -> None:
        self.handle, self.error = handle, None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def _torch_save(obj: Any, file: Path) -> None:
    """``torch.save`` whose failures (a full disk) raise the OSError, naming ``file``."""
    recorder = None
    try:
        with open(file, "wb") as handle:
            recorder = _RecordingFile(handle)
            torch.save(obj, recorder)
    except (OSError, RuntimeError) as exc:
        error = exc if isinstance(exc, OSError) else recorder.error if recorder else None
        if error is None:
            raise
        error.filename = str(file)
        raise error from None


def _mean_or_none(values: list[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return statistics.fmean(found) if found else None


def _live_rows(rows: torch.Tensor, inert: torch.Tensor | None) -> tuple[torch.Tensor, float]:
    """The rows of a minibatch that carry gradient, and the factor on their loss.

    When every row is inert, one row runs at weight 0: the optimiser must still step with zero gradients on the
    same parameters (AdamW moves on its momentum), exactly as when the inert rows are not left out.
    """
    if inert is None:
        return rows, 1.0
    live = rows[~inert[rows]]
    return (live, 1.0) if len(live) else (rows[:1], 0.0)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C / SIGTERM until the block ends, then raise it, so the block's writes are never half done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if any(previous[sig] is not signal.SIG_IGN for sig in caught):
        raise KeyboardInterrupt


def _options(section: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k != "name"}


def train(config: RunConfig, progress: bool = True, resume: bool = False) -> dict[str, Any]:
    """Run one training job end to end; returns its summary (also written to ``summary.json``).

    With ``resume``, a finished run is returned as it is and an unfinished one continues from its last state.
    The run folder is locked throughout: a second writer is refused, naming this one's PID.
    """
    refuse_several_ranks()
    out = run_dir(config)
    refuse_foreign(out, "run", is_run_folder(out))
    with hold(out, "run", wait=lock_wait()):
        if resume and (out / SUMMARY).exists():
            summary = json.loads((out / SUMMARY).read_text())
            if summary.get("status") == "completed":
                return summary
        return Trainer(config, progress=progress).run(resume=resume)


def run_dir(config: RunConfig) -> Path:
    return Path(config.out or f"runs/{config.task_name}-{config.algo_name}-s{config.seed}")
