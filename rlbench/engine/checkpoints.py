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

from rlbench.engine.budget import Usage
from rlbench.engine.export import save_hf
from rlbench.engine.policy import Policy
from rlbench.engine.run_state import torch_save
from rlbench.results import (
    CHECKPOINT, EVAL_RECORDS, EVALS, METRICS, SAMPLES, RunFileError, read_jsonl, truncate_jsonl, write_dir_atomic,
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
    found = [(int(p.name.rpartition("-")[2]), p) for p in out.glob(f"{CHECKPOINT}-*")
             if p.is_dir() and p.name.rpartition("-")[2].isdigit()]
    return [p for _, p in sorted(found)]


def prune_checkpoints(out: Path, keep: int) -> None:
    for old in periodic_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def training_state(policy: Policy, optimizer: torch.optim.Optimizer, scheduler: Any, usage: Usage, evals_done: int,
                   wall_seconds: float) -> dict[str, Any]:
    return {
        "model": policy.model.state_dict(),
        "value_head": policy.value_head.state_dict() if policy.value_head is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "usage": dataclasses.asdict(usage),
        "evals_done": int(evals_done),
        "wall_seconds": float(wall_seconds),
    }


def restore_state(state: dict[str, Any], policy: Policy, optimizer: torch.optim.Optimizer, scheduler: Any,
                  file: Path) -> tuple[Usage, float, int]:
    """Load ``state`` into the live objects; (usage, wall seconds so far, evaluations done). A state of another model,
    or a dict missing keys, raises :class:`RunFileError` naming ``file`` before anything is changed on disk."""
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


def drop_logs(out: Path) -> None:
    """A resumed run with no state starts over: its log files go."""
    for name in (METRICS, SAMPLES, EVALS, EVAL_RECORDS):
        (out / name).unlink(missing_ok=True)


def truncate_logs(out: Path, steps: int, evals_done: int) -> None:
    """Drop every log row written after the state a run resumes from."""
    for name in (METRICS, SAMPLES):
        truncate_jsonl(out / name, [r for r in read_jsonl(out / name) if r["step"] <= steps])
    truncate_jsonl(out / EVALS, [r for r in read_jsonl(out / EVALS) if r["point"] < evals_done])
    (out / EVAL_RECORDS).unlink(missing_ok=True)
