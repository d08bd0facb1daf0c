"""``rlbench eval``: evaluate a saved model on a task, or cross-check the numbers with lm-evaluation-harness.

    rlbench eval --model DIR --task gsm8k --data test.jsonl --k 8 --limit 200 --out eval.json [--records recs.jsonl]
    rlbench eval --harness lm-eval --model DIR --task gsm8k --data test.jsonl --limit 200 --out lm.json

The rlbench harness decodes greedily once (pass@1) and samples k completions per problem (mean@k, unbiased pass@1..k,
maj@k), with a progress bar over problems. Bad input exits with code 2 and one line naming the option or file,
before the model is loaded.

Over 400 lines on purpose: the two harnesses share one command, its option checks and its output file; the
lm-evaluation-harness half (about 140 lines) only formats that harness's result and would leave a module of two
functions if moved out.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from rlbench.cli.errors import fail
from rlbench.core import registry
from rlbench.core.config import ConfigError, RunConfig
from rlbench.core.configure import build_task, merge_overrides, resolve
from rlbench.core.provenance import package_versions
from rlbench.tasks.base import Example, Task

if TYPE_CHECKING:
    from rlbench.engine.policy import Policy

DEFAULT_K = 4
DEFAULT_BATCH = 64
SET_KEYS = ("task", "sampling", "tiny", "precision", "threads")


def build_config(
    model: str,
    task: str,
    data: str | None,
    overrides: tuple[str, ...],
    max_new_tokens: int | None,
    device: str,
    seed: int,
) -> RunConfig:
    """A RunConfig, so ``--model tiny`` finds the same warm-start a training run with these settings uses."""
    tree = merge_overrides({}, list(overrides))
    for key in tree:
        if key not in SET_KEYS:
            raise ConfigError(
                f"--set {key}...: eval accepts only {', '.join(k + ('.*' if k in ('task', 'sampling', 'tiny') else '') for k in SET_KEYS)}"
            )
    if isinstance(tree.get("task"), dict) and "name" in tree["task"]:
        raise ConfigError("--set task.name: use --task to choose the task")
    try:
        registry.get_task(task)
    except registry.UnknownNameError as exc:
        raise ConfigError(f"--task: {exc}") from None
    shorthands = {
        "model": model,
        "task": task,
        "task.data": data,
        "sampling.max_new_tokens": max_new_tokens,
        "device": device,
        "seed": seed,
    }
    return resolve(None, list(overrides), shorthands)


def check_model(model: str) -> None:
    """A path that does not exist would otherwise reach the hub client and fail there with a message about repo ids."""
    if model != "tiny" and model.startswith(("/", ".", "~")) and not Path(model).expanduser().exists():
        raise ConfigError(f"--model {model}: no such directory")


def check_writable(path: Path, option: str) -> None:
    """Fail before hours of decoding, not after."""
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot create its folder ({exc.strerror})") from None
    if not os.access(path.parent, os.W_OK):
        raise ConfigError(f"{option} {path}: folder is not writable")


def load_policy(config: RunConfig, task: Task, progress: bool) -> tuple[Policy, str]:
    """(Policy, resolved model path); ``tiny`` resolves to the tiny lab's cached warm-start (built if missing)."""
    import torch

    from rlbench.engine.policy import Policy, load_model, pick_device
    from rlbench.run.training import resolve_model_path

    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        path = resolve_model_path(config, task, progress)
    except ValueError as exc:  # a task that cannot warm-start the tiny lab
        raise ConfigError(f"--model {config.model}: {exc}") from None
    device = pick_device(config.device)
    try:
        model, tokenizer = load_model(path, config.precision, device)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    except (OSError, ValueError) as exc:  # unknown hub id, offline hub, broken checkpoint
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--model {config.model}: cannot load ({first})") from None
    return Policy(model, tokenizer, device, config.precision), path


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    from rlbench.core.results import write_text_atomic

    write_text_atomic(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def format_table(result: dict[str, Any]) -> str:
    """A few lines a person reads; the JSON file has everything."""
    s = result["settings"]
    lines = [
        f"{result['task']}/{result['split']}: {result['problems']} problems, model {result['model']}, "
        f"max_new_tokens {s['max_new_tokens']}, seed {s['seed']}"
    ]
    greedy, sampled = result.get("greedy"), result.get("sampled")
    if greedy:
        lines.append(
            f"  greedy pass@1   {greedy['accuracy']:.4f}   length {greedy['length_mean']}   "
            f"truncated {greedy['truncated_frac']}"
        )
    if sampled:
        k = sampled["k"]
        lines.append(
            f"  mean@{k:<10} {sampled['accuracy']:.4f}   length {sampled['length_mean']}   "
            f"truncated {sampled['truncated_frac']}   (T={sampled['temperature']}, top_p={sampled['top_p']})"
        )
        passes = "  ".join(
            f"pass@{j} {sampled[f'pass@{j}']:.4f}" for j in result["settings"]["ks"] if f"pass@{j}" in sampled
        )
        lines.append(f"  {passes}")
        if f"maj@{k}" in sampled:
            lines.append(f"  maj@{k:<11} {sampled[f'maj@{k}']:.4f}")
    lines.append(
        f"  {result['tokens_total']} tokens in {result['elapsed_seconds']} s: {result['tokens_per_second']} tokens/s "
        f"end to end"
    )
    return "\n".join(lines)


def run_rlbench(
    config: RunConfig,
    task: Task,
    examples: list[Example],
    *,
    split: str,
    k: int,
    batch_size: int,
    chunk_size: int,
    limit: int | None,
    progress: bool,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    import torch

    from rlbench.engine.build import build_generator
    from rlbench.run.eval.evaluate import evaluate

    start = time.perf_counter()
    policy, path = load_policy(config, task, progress)
    loaded = time.perf_counter()
    ks = list(range(1, k + 1))
    torch.manual_seed(config.seed)
    metrics = evaluate(
        build_generator(config, policy, path, batch_size),
        task,
        examples,
        chunk_size=chunk_size,
        max_new_tokens=config.sampling.max_new_tokens,
        temperature=config.sampling.temperature,
        top_p=config.sampling.top_p,
        greedy=True,
        samples=k,
        ks=ks,
        seed=config.seed,
        progress=progress,
        keep_records=True,
    )
    records = metrics.pop("records")
    elapsed = time.perf_counter() - loaded
    tokens = sum(metrics["tokens"].values())
    result = {
        "harness": "rlbench",
        "model": config.model,
        "model_path": path,
        "task": config.task_name,
        "task_options": {k_: v for k_, v in config.task.items() if k_ != "name"},
        "split": split,
        "problems": len(examples),
        "settings": {
            "k": k,
            "ks": ks,
            "temperature": config.sampling.temperature,
            "top_p": config.sampling.top_p,
            "max_new_tokens": config.sampling.max_new_tokens,
            "seed": config.seed,
            "limit": limit,
            "batch_size": batch_size,
            "chunk_size": chunk_size,
            "device": str(policy.device),
            "precision": config.precision,
            "threads": torch.get_num_threads(),
        },
        "greedy": metrics.get("greedy"),
        **({"sampled": metrics["sampled"]} if "sampled" in metrics else {}),
        "generation_seconds": metrics["generation_seconds"],
        "tokens": metrics["tokens"],
        "tokens_total": tokens,
        # wall time of the evaluation (decoding and grading), model loading excluded
        "elapsed_seconds": round(elapsed, 2),
        "tokens_per_second": round(tokens / elapsed, 1) if elapsed > 0 else None,
        "load_seconds": round(loaded - start, 2),
        "versions": package_versions(),
    }
    return result, records


def run_lm_eval_harness(
    config: RunConfig,
    task: Task,
    examples: list[Example],
    *,
    split: str,
    batch_size: int,
    chunk_size: int,
    limit: int | None,
    progress: bool,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from rlbench.engine.build import build_generator
    from rlbench.engine.generation import encode_prompt
    from rlbench.run.eval import lm_eval_bridge as bridge
    from rlbench.run.eval.evaluate import evaluate

    path_data = bridge.data_file(task, split)  # type: ignore[arg-type]
    policy, path = load_policy(config, task, progress)
    tokenizer = policy.tokenizer
    max_new = config.sampling.max_new_tokens
    first = encode_prompt(tokenizer, task.prompt(examples[0]))
    add_bos = tokenizer.bos_token_id is not None and first[:1] == [tokenizer.bos_token_id]
    longest = max(len(encode_prompt(tokenizer, task.prompt(e))) for e in examples)
    args = bridge.model_args(path, config.precision, add_bos, longest + max_new)
    start = time.perf_counter()
    greedy = evaluate(
        build_generator(config, policy, path, batch_size),
        task,
        examples,
        chunk_size=chunk_size,
        max_new_tokens=max_new,
        greedy=True,
        samples=0,
        ks=(),
        seed=config.seed,
        progress=progress,
        keep_records=True,
    )
    records = greedy.pop("records")
    rlbench_seconds = time.perf_counter() - start
    policy_device = policy.device
    del policy  # lm-eval loads its own copy of the saved model
    start = time.perf_counter()
    output = bridge.run_lm_eval(
        "hf",
        args,
        path=path_data,
        split=split,
        limit=len(examples),
        max_new_tokens=max_new,
        batch_size=batch_size,
        device=str(policy_device),
    )
    lm_eval_seconds = time.perf_counter() - start
    summary, per_problem = bridge.compare(bridge.lm_eval_rows(output), examples, task, records)  # type: ignore[arg-type]
    result = {
        "harness": "lm-eval",
        "model": config.model,
        "model_path": path,
        "task": config.task_name,
        "data": str(path_data),
        "split": split,
        "problems": len(examples),
        "settings": {
            "max_new_tokens": max_new,
            "limit": limit,
            "batch_size": batch_size,
            "seed": config.seed,
            "precision": config.precision,
            "lm_eval_task": bridge.task_config(path_data, split, max_new),
            "lm_eval_model_args": args,
        },
        **summary,
        "lm_eval_results": output["results"][bridge.TASK_NAME],
        "rlbench_greedy": greedy["greedy"],
        "seconds": {"rlbench_greedy": round(rlbench_seconds, 2), "lm_eval": round(lm_eval_seconds, 2)},
        "versions": package_versions(),
    }
    return result, per_problem


def format_lm_eval(result: dict[str, Any]) -> str:
    em, ours, agree = result["lm_eval_exact_match"], result["rlbench_on_lm_eval_completions"], result["agreement"]
    lines = [
        f"{result['task']}/{result['split']}: {result['problems']} problems, model {result['model']}, "
        f"max_new_tokens {result['settings']['max_new_tokens']}, greedy",
        f"  {'':<10} {'lm-eval exact_match':>20} {'rlbench grader':>15} {'agree':>7}   (same lm-eval completions)",
    ]
    for mode in ("strict", "flexible"):
        lines.append(f"  {mode:<10} {em[mode]:>20.4f} {ours[mode]:>15.4f} {agree[mode]:>7.3f}")
    lines.append(
        f"  rlbench greedy pass@1 {result['rlbench_greedy']['accuracy']:.4f}; same prompt "
        f"{result['same_prompt']:.3f}, same completion {result['same_completion']:.3f} of problems"
    )
    return "\n".join(lines)


@click.command(
    "eval",
    epilog="""\b
Examples:
  rlbench eval --model tiny --task arith --split validation --out /tmp/eval.json
  rlbench eval --model runs/em-pg-s1/checkpoint --task arith --k 8 --out /tmp/ck.json
  rlbench eval --model Qwen/Qwen2.5-1.5B-Instruct --task gsm8k --data data/gsm8k --out gsm8k.json""",
)
@click.option("--model", required=True, help="'tiny' (the tiny lab's warm-start), a hub id, or a local model directory")
@click.option("--task", "task_name", required=True, help="registered task name, e.g. gsm8k, math-hard, arith")
@click.option("--data", default=None, help="task data (sets task.data): a local file or directory, or a hub id")
@click.option(
    "--split", default="test", show_default=True, help="train, validation or test (validation: what tuning reads)"
)
@click.option(
    "--k", "k", type=int, default=None, help=f"sampled completions per problem (default {DEFAULT_K}; 0 = greedy only)"
)
@click.option("--limit", type=int, default=None, help="first N problems of the split (default: all)")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="task.*, sampling.* (temperature, top_p, max_new_tokens), tiny.*, precision, threads; repeatable",
)
@click.option("--max-new-tokens", type=int, default=None, help="completion length cap (sets sampling.max_new_tokens)")
@click.option("--batch-size", type=int, default=DEFAULT_BATCH, show_default=True, help="rows decoded at once")
@click.option(
    "--chunk-size",
    type=int,
    default=None,
    help="problems per progress step (default: --batch-size, so greedy decoding fills a batch); "
    "each chunk samples from its own seed",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--harness",
    type=click.Choice(["rlbench", "lm-eval"]),
    default="rlbench",
    show_default=True,
    help="lm-eval: run lm-evaluation-harness's GSM8K-style task on the same data and model, and compare",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="result JSON file")
@click.option("--records", type=click.Path(path_type=Path), default=None, help="per-problem JSONL file")
@click.option("--quiet", is_flag=True, help="no progress bar, no table")
def eval_(
    model: str,
    task_name: str,
    data: str | None,
    split: str,
    k: int | None,
    limit: int | None,
    overrides: tuple[str, ...],
    max_new_tokens: int | None,
    batch_size: int,
    chunk_size: int | None,
    device: str,
    seed: int,
    harness: str,
    out: Path,
    records: Path | None,
    quiet: bool,
) -> None:
    """Evaluate a model: greedy pass@1, and k samples per problem for mean@k, pass@1..k and maj@k."""
    try:
        if k is not None and k < 0:
            raise ConfigError(f"--k {k}: must be >= 0")
        if harness == "lm-eval":
            if k:
                raise ConfigError(f"--k {k}: the lm-eval harness decodes greedily only")
            if task_name != "gsm8k":
                raise ConfigError(f"--task {task_name}: the lm-eval harness supports gsm8k")
        if limit is not None and limit < 1:
            raise ConfigError(f"--limit {limit}: must be >= 1")
        if batch_size < 1:
            raise ConfigError(f"--batch-size {batch_size}: must be >= 1")
        if chunk_size is None:
            chunk_size = batch_size
        if chunk_size < 1:
            raise ConfigError(f"--chunk-size {chunk_size}: must be >= 1")
        if max_new_tokens is not None and max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens {max_new_tokens}: must be >= 1")
        if not (device in ("auto", "cpu") or device.startswith("cuda")):
            raise ConfigError(f"--device {device}: must be auto, cpu, cuda or cuda:N")
        check_model(model)
        config = build_config(model, task_name, data, overrides, max_new_tokens, device, seed)
        task = build_task(config.task)
        if model == "tiny" and not hasattr(task, "fresh_train_examples"):
            # checked here too so that nothing is written to the warm-start cache for a task that cannot have one
            raise ConfigError(f"--model tiny: the tiny lab warm-starts on a generated task (arith), not {task_name}")
        if harness == "lm-eval":
            from rlbench.run.eval import lm_eval_bridge

            if getattr(task.config, "prompt_style", "paper") != "paper":
                raise ConfigError("--set task.prompt_style: the lm-eval harness uses the 'paper' prompt")
            lm_eval_bridge.data_file(task, split)  # type: ignore[arg-type]
            lm_eval_bridge.require_lm_eval()
        examples = task.load(split)[:limit]
        check_writable(out, "--out")
        if records is not None:
            check_writable(records, "--records")
        if harness == "lm-eval":
            result, per_problem = run_lm_eval_harness(
                config,
                task,
                examples,
                split=split,
                batch_size=batch_size,
                chunk_size=chunk_size,
                limit=limit,
                progress=not quiet,
            )
        else:
            result, per_problem = run_rlbench(
                config,
                task,
                examples,
                split=split,
                k=DEFAULT_K if k is None else k,
                batch_size=batch_size,
                chunk_size=chunk_size,
                limit=limit,
                progress=not quiet,
            )
    except ConfigError as exc:
        fail(str(exc))
    from rlbench.core.results import write_json

    write_json(out, result)
    if records is not None:
        write_records(records, per_problem)
    if not quiet:
        click.echo(format_lm_eval(result) if harness == "lm-eval" else format_table(result))
        click.echo(f"wrote {out}" + (f" and {records}" if records is not None else ""))
