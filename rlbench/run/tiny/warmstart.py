"""The tiny lab's starting model: a pinned reference warm-start, or an SFT build of it.

``tiny.warmstart: reference`` (the default) is one exact set of weights that ships with rlbench
(``rlbench/run/tiny/reference/``), checked against :data:`REFERENCE_SHA256` whenever it is used: every machine starts the
main job from the same bits, whatever its float rounding. ``tiny.warmstart: build`` runs the recipe below and caches
the result; ``rlbench warmstart --rebuild`` makes a new one (and says how it compares with the reference).

The recipe: supervised fine-tuning on fresh training problems for a fixed ``tiny.sft_steps``, the learning rate
annealed to 0 by a cosine after ``tiny.sft_warmup`` linear steps. There is no stop rule: a rule that stops at the first
noisy check above a target turns float rounding into hundreds of steps of difference (it did, between two machines),
while a fixed, annealed schedule ends wherever the trajectory goes in the same small neighbourhood. Validation checks
every ``tiny.check_every`` steps only draw the learning curve. The result is an ordinary Hugging Face checkpoint,
loaded by the same code as any hub model.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from rlbench.core.bars import tqdm
from rlbench.core.config import ConfigError, SamplingConfig, TinyConfig
from rlbench.core.results import write_json
from rlbench.engine.file_hashes import sha256_file
from rlbench.engine.generation import encode_prompt, make_generator
from rlbench.engine.policy import Policy
from rlbench.run.eval.evaluate import evaluate
from rlbench.run.tiny.model import build_tiny_model
from rlbench.run.tiny.tokenizer import build_char_tokenizer
from rlbench.tasks.base import Task

# bump when the warm-start recipe changes, so stale caches are not reused
# 2: the stop rule reads the validation split (1 read test), and the SFT stream avoids validation problems too
# 3: a fixed number of steps with a cosine-annealed learning rate, no stop rule
FORMAT_VERSION = 3
CHECK_PROBLEMS = 200
WEIGHTS_FILE = "model.safetensors"
REPORT_FILE = "warmstart.json"
REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
# sha256 of REFERENCE_DIR/model.safetensors: the content address of the main job's starting weights
REFERENCE_SHA256 = "1434621ad383dbf98a4df681397635919765ea5aeb30f962f2ffb94e65b88ae6"
# the settings that define a warm-start (the rest of TinyConfig says how to get or watch it)
_NOT_RECIPE = ("warmstart", "check_every")


def recipe(tiny: TinyConfig, task: Task) -> dict[str, Any]:
    """What a warm-start is made from: the model shape, the SFT settings, the seed and the task's data settings."""
    own = {k: v for k, v in dataclasses.asdict(tiny).items() if k not in _NOT_RECIPE}
    return {"v": FORMAT_VERSION, "tiny": own, "task": task.name, "task_config": dataclasses.asdict(task.config)}


def reference_warmstart(tiny: TinyConfig, task: Task) -> Path:
    """The shipped reference, after checking that it is what these settings ask for and that its bytes are intact."""
    report_file = REFERENCE_DIR / REPORT_FILE
    if not report_file.exists():
        raise ConfigError(
            f"tiny.warmstart=reference: {report_file} is missing (a broken install?); "
            "set tiny.warmstart=build to build a warm-start instead"
        )
    pinned = json.loads(report_file.read_text())["recipe"]
    wanted = recipe(tiny, task)
    if wanted != pinned:
        key = _first_difference(wanted, pinned)
        raise ConfigError(
            f"tiny.warmstart=reference: {key} differs from the shipped reference warm-start's "
            f"({_at(pinned, key)!r}); set tiny.warmstart=build to build one for these settings"
        )
    got = sha256_file(REFERENCE_DIR / WEIGHTS_FILE)
    if got != REFERENCE_SHA256:
        raise ConfigError(
            f"{REFERENCE_DIR / WEIGHTS_FILE}: sha256 {got} is not the pinned {REFERENCE_SHA256}: "
            "the reference weights were changed; restore them (git checkout) or set tiny.warmstart=build"
        )
    return REFERENCE_DIR


def _first_difference(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> str:
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            found = _first_difference(x, y, f"{prefix}{key}.")
            if found:
                return found
        elif x != y:
            return f"{prefix}{key}"
    return ""


def _at(tree: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def cache_root() -> Path:
    return Path(os.environ.get("RLBENCH_CACHE", Path.home() / ".cache" / "rlbench"))


def cache_key(tiny: TinyConfig, task: Task, sampling: SamplingConfig) -> str:
    blob = json.dumps(
        {**recipe(tiny, task), "max_new_tokens": sampling.max_new_tokens, "torch": torch.__version__.split("+")[0]},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Runs of a comparison may start side by side: one builds, the others wait and reuse."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_warmstart(
    tiny: TinyConfig, task: Task, sampling: SamplingConfig, progress: bool = True, rebuild: bool = False
) -> Path:
    """The starting model's directory: the pinned reference, or the cached build for these settings (built first if
    missing, or again with ``rebuild``)."""
    if tiny.warmstart == "reference" and not rebuild:
        return reference_warmstart(tiny, task)
    key = cache_key(tiny, task, sampling)
    target = cache_root() / "tiny" / f"{task.name}-{key}"
    with _locked(target.with_suffix(".lock")):
        if (target / REPORT_FILE).exists() and not rebuild:
            return target
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)  # left by a build that was killed
        report = run_sft(tiny, task, sampling, tmp, progress=progress)
        write_json(tmp / REPORT_FILE, report)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


def sft_lr_factor(step: int, tiny: TinyConfig) -> float:
    """The learning rate of SFT step ``step`` (0-based) over ``tiny.sft_lr``: linear warm-up, then constant or a
    cosine to 0 (``tiny.sft_schedule``)."""
    if step < tiny.sft_warmup:
        return (step + 1) / tiny.sft_warmup
    if tiny.sft_schedule == "constant":
        return 1.0
    span = max((tiny.sft_horizon or tiny.sft_steps) - tiny.sft_warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * (step - tiny.sft_warmup) / span))


def _sft_batch(tokenizer, task: Task, examples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prompt + solution + EOS; the loss covers the solution and EOS only."""
    rows, loss_masks = [], []
    for ex in examples:
        prompt = encode_prompt(tokenizer, task.prompt(ex))
        answer = list(tokenizer(ex.solution, add_special_tokens=False).input_ids) + [tokenizer.eos_token_id]
        rows.append(prompt + answer)
        loss_masks.append([0] * len(prompt) + [1] * len(answer))
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), tokenizer.pad_token_id, dtype=torch.long)
    attn = torch.zeros((len(rows), L), dtype=torch.long)
    lmask = torch.zeros((len(rows), L), dtype=torch.float)
    for i, (r, m) in enumerate(zip(rows, loss_masks)):
        ids[i, : len(r)] = torch.tensor(r)
        attn[i, : len(r)] = 1
        lmask[i, : len(m)] = torch.tensor(m, dtype=torch.float)
    return ids, attn, lmask


def _check(generator, task: Task, problems, sampling: SamplingConfig, seed: int) -> dict[str, float]:
    res = evaluate(
        generator,
        task,
        problems,
        max_new_tokens=sampling.max_new_tokens,
        greedy=True,
        samples=4,
        temperature=1.0,
        seed=seed,
    )
    return {"greedy": res["greedy"]["accuracy"], "sampled": res["sampled"]["accuracy"]}


def run_sft(tiny: TinyConfig, task: Task, sampling: SamplingConfig, out: Path, progress: bool = True) -> dict:
    if not hasattr(task, "fresh_train_examples"):
        raise ValueError(f"task {task.name!r} cannot warm-start the tiny lab: it has no fresh_train_examples stream")
    torch.manual_seed(tiny.seed)
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tiny, tokenizer)
    policy = Policy(model, tokenizer, torch.device("cpu"), precision="fp32")  # bf16 autocast measured 10x slower here
    generator = make_generator("rlbench", policy)
    held_out = task.load("validation")[:CHECK_PROBLEMS]  # the learning curve reads validation, never test
    stream = task.fresh_train_examples(tiny.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=tiny.sft_lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: sft_lr_factor(s, tiny))
    history, start = [], time.perf_counter()
    model.train()
    for step in tqdm(range(1, tiny.sft_steps + 1), desc="tiny-lab SFT warm-start", disable=not progress, unit="step"):
        ids, attn, lmask = _sft_batch(tokenizer, task, islice(stream, tiny.sft_batch))
        with policy.autocast():
            logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        loss = (nll * lmask[:, 1:]).sum() / lmask[:, 1:].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % tiny.check_every == 0 or step == tiny.sft_steps:
            # decoding reads no training randomness (the SFT stream is its own generator): checks never move the run
            history.append(
                {
                    "step": step,
                    "loss": round(loss.item(), 4),
                    "lr": opt.param_groups[0]["lr"],
                    **_check(generator, task, held_out, sampling, tiny.seed),
                    "seconds": round(time.perf_counter() - start, 1),
                }
            )
            model.train()
    model.eval()
    # reported only: how the model does on the test split the leaderboard uses
    test_problems = task.load("test")[:CHECK_PROBLEMS]
    test = _check(generator, task, test_problems, sampling, tiny.seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    last = history[-1]
    return {
        "recipe": recipe(tiny, task),
        "sha256": sha256_file(out / WEIGHTS_FILE),
        "steps": tiny.sft_steps,
        "seconds": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "held_out_split": "validation",
        "held_out_problems": len(held_out),
        "greedy_accuracy": last["greedy"],
        "sampled_accuracy": last["sampled"],  # 4 samples per problem at T = 1
        "test": {
            "problems": len(test_problems),
            "greedy_accuracy": test["greedy"],
            "sampled_accuracy": test["sampled"],
        },
        "history": history,
    }
