"""What a run saves besides its logs: the model as a Hugging Face folder, and the resumable training state.

The resumable state holds only tensors, plain containers and numbers, so a resume loads it with
``torch.load(weights_only=True)``; both are written to a temporary folder and swapped in whole.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import torch

from rlbench.core.results import (
    CHECKPOINT,
    EVAL_RECORDS,
    EVALS,
    METRICS,
    RECORDS_DIR,
    SAMPLES,
    RunFileError,
    read_jsonl,
    record_points,
    truncate_jsonl,
    write_dir_atomic,
)
from rlbench.engine.budget import Usage
from rlbench.engine.distributed import Ranks
from rlbench.engine.export import save_hf
from rlbench.engine.policy import Policy
from rlbench.engine.run_state import torch_save
from rlbench.engine.sharding import (
    full_optimizer_state,
    full_state_dict,
    load_full_optimizer_state,
    load_full_state_dict,
)


def save_model(path: Path, policy: Policy) -> Path:
    """The model, loadable with ``from_pretrained`` like any hub model (LoRA merged), and a PPO value head beside it."""

    def write(folder: Path) -> None:
        save_hf(policy.model, policy.tokenizer, folder)
        if policy.value_head is not None:
            torch_save(policy.value_head.state_dict(), folder / "value_head.pt")

    write_dir_atomic(path, write)
    return path


def periodic_checkpoints(out: Path) -> list[Path]:
    """The run's ``checkpoint-N/`` folders, oldest step first."""
    found = [
        (int(p.name.rpartition("-")[2]), p)
        for p in out.glob(f"{CHECKPOINT}-*")
        if p.is_dir() and p.name.rpartition("-")[2].isdigit()
    ]
    return [p for _, p in sorted(found)]


def prune_checkpoints(out: Path, keep: int) -> None:
    for old in periodic_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def training_state(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    usage: Usage,
    evals_done: int,
    wall_seconds: float,
    sharded: bool = False,
    main: bool = True,
) -> dict[str, Any]:
    """The resumable state. ``sharded`` (FSDP): every rank calls this, the shards are gathered one tensor at a time
    and rank 0 (``main``) gets the state in a one-process run's format (a state resumes under either layout)."""
    if sharded:
        model = full_state_dict(policy.model, main)
        head = full_state_dict(policy.value_head, main) if policy.value_head is not None else None
        optim = full_optimizer_state(optimizer, main)
    else:
        model = policy.model.state_dict()
        head = policy.value_head.state_dict() if policy.value_head is not None else None
        optim = optimizer.state_dict()
    return {
        "model": model,
        "value_head": head,
        "optimizer": optim,
        "scheduler": scheduler.state_dict(),
        "usage": dataclasses.asdict(usage),
        "evals_done": int(evals_done),
        "wall_seconds": float(wall_seconds),
    }


def restore_state(
    state: dict[str, Any],
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    file: Path,
    ranks: Ranks | None = None,
) -> tuple[Usage, float, int]:
    """Load ``state`` into the live objects; (usage, wall seconds so far, evaluations done). A state of another model,
    or a dict missing keys, raises :class:`RunFileError` naming ``file`` before anything is changed on disk.

    With ``ranks`` (FSDP), rank 0 holds the state and every other rank passes ``{}``: each receives its shards."""
    if ranks is not None:
        return _restore_sharded(state, policy, optimizer, scheduler, file, ranks)
    try:
        policy.model.load_state_dict(state["model"])
        if policy.value_head is not None:
            policy.value_head.load_state_dict(state["value_head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        return Usage(**state["usage"]), float(state["wall_seconds"]), int(state["evals_done"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().split("\n")[0].rstrip(":") or type(exc).__name__
        raise RunFileError(f"{file}: not a state of this run ({first})") from None


def _restore_sharded(
    state: dict[str, Any], policy: Policy, optimizer: torch.optim.Optimizer, scheduler: Any, file: Path, ranks: Ranks
) -> tuple[Usage, float, int]:
    problem = None
    if ranks.main:  # the checks first, on rank 0, so that no rank is left waiting in a collective
        try:
            expected = {"model": set(policy.model.state_dict())}
            if policy.value_head is not None:
                expected["value_head"] = set(policy.value_head.state_dict())
            for key, names in expected.items():
                if set(state[key]) != names:
                    raise KeyError(f"{key}: other tensors than this run's")
            small = (state["scheduler"], state["usage"], state["wall_seconds"], state["evals_done"])
        except (KeyError, TypeError) as exc:
            problem = str(exc).strip().split("\n")[0].rstrip(":") or type(exc).__name__
    problem = ranks.broadcast(problem)
    if problem is not None:
        raise RunFileError(f"{file}: not a state of this run ({problem})")
    scheduler_state, usage, wall, evals_done = ranks.broadcast(small if ranks.main else None)
    main = ranks.main
    load_full_state_dict(policy.model, state["model"] if main else None)
    if policy.value_head is not None:
        load_full_state_dict(policy.value_head, state["value_head"] if main else None)
    load_full_optimizer_state(optimizer, state["optimizer"] if main else None)
    scheduler.load_state_dict(scheduler_state)
    return Usage(**usage), float(wall), int(evals_done)


def drop_logs(out: Path) -> None:
    """A resumed run with no state starts over: its log files go."""
    for name in (METRICS, SAMPLES, EVALS, EVAL_RECORDS):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / RECORDS_DIR, ignore_errors=True)


def truncate_logs(out: Path, steps: int, evals_done: int) -> None:
    """Drop every log row (and evaluation's records) written after the state a run resumes from."""
    for name in (METRICS, SAMPLES):
        truncate_jsonl(out / name, [r for r in read_jsonl(out / name) if r["step"] <= steps])
    truncate_jsonl(out / EVALS, [r for r in read_jsonl(out / EVALS) if r["point"] < evals_done])
    (out / EVAL_RECORDS).unlink(missing_ok=True)
    for point, path in record_points(out).items():
        if point >= evals_done:
            path.unlink()
