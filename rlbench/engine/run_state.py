"""A run folder's durable state: the resumable training state, the fingerprint, and the checks that keep a run's
files from ever being overwritten by a different run."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import platform
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rlbench.core.config import EXECUTION_KEYS, ConfigError, RunConfig
from rlbench.core.configure import saved_config_mismatch
from rlbench.core.provenance import code_version, package_versions
from rlbench.core.results import CONFIG, EVALS, METRICS, SUMMARY, RunFileError, token_hash, write_dir_atomic, write_json

STATE_FILE = "trainer.pt"  # in the run's state/ folder


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
                raise ConfigError(
                    f"{path}: {key} differs from the run being resumed ({before.get(key)!r} there, "
                    f"{fingerprint.get(key)!r} now)"
                )
        return
    write_json(path, fingerprint)


def check_run_dir(out: Path, config: RunConfig, resume: bool) -> None:
    """Refuse to overwrite a finished or different run: results already on disk are never lost."""
    saved = out / CONFIG
    if not saved.exists() or not any((out / name).exists() for name in (METRICS, EVALS, SUMMARY)):
        return
    if not resume:
        raise ConfigError(
            f"out={str(out)!r}: the run directory already holds a run; pass --resume or choose another --out"
        )
    mismatch = saved_config_mismatch(saved, config)
    if mismatch:
        raise ConfigError(f"{saved}: the run being resumed differs: {mismatch}")


def save_state_dir(path: Path, state: dict[str, Any]) -> None:
    """Write to ``path.tmp``, then swap it in, so a kill at any moment leaves one complete state on disk."""
    write_dir_atomic(path, lambda folder: torch_save(state, folder / STATE_FILE))


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
        why = (
            f"refused: it holds {hostile.group(1)}, not only tensors and plain values, and loading that could run code"
        )
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
        except (OSError, KeyboardInterrupt) as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def torch_save(obj: Any, file: Path) -> None:
    """``torch.save`` whose failures (a full disk) raise the OSError, naming ``file``; a Ctrl-C during the write
    stays a KeyboardInterrupt (torch would report it as a RuntimeError)."""
    recorder = None
    try:
        with open(file, "wb") as handle:
            recorder = _RecordingFile(handle)
            torch.save(obj, recorder)
    except (OSError, RuntimeError) as exc:
        error = exc if isinstance(exc, OSError) else recorder.error if recorder else None
        if error is None:
            raise
        if isinstance(error, KeyboardInterrupt):
            raise error from None
        error.filename = str(file)
        raise error from None


def run_fingerprint(
    config: RunConfig, init_weights: str, eval_examples: Sequence[Any], eval_prompts: list[list[int]]
) -> dict[str, Any]:
    """What makes a run comparable with another: its settings, initial weights and evaluation set."""
    c = config.to_dict()
    return {
        "config": {
            k: v for k, v in c.items() if k not in ("algo", "seed", "out", *EXECUTION_KEYS)
        },  # trackers: not the run
        "algo": c["algo"],
        "seed": c["seed"],
        "init_weights": init_weights,
        "eval_set": {
            "count": len(eval_examples),
            "ids_sha256": token_hash([str(e.id) for e in eval_examples], 64),
            "prompts_sha256": token_hash(eval_prompts, 64),
        },
    }


def run_summary(
    config: RunConfig,
    model_path: str,
    status: str,
    stop_reason: str | None,
    evals: list[dict],
    *,
    usage: dict[str, Any],
    wall: float,
    eval_problems: int,
) -> dict[str, Any]:
    """``summary.json``: how the run ended, what it used, and its score (the mean of its last K evaluations)."""

    def acc(row: dict | None, kind: str) -> float | None:
        return row[kind]["accuracy"] if row and kind in row else None

    first = evals[0] if evals else None
    last = evals[-1] if status == "completed" else None
    scored = evals[1:][-config.eval.final_mean_of :] if status == "completed" else []
    return {
        "status": status,
        "stop_reason": stop_reason,
        "algo": config.algo_name,
        "task": config.task_name,
        "model": config.model,
        "model_path": model_path,
        "seed": config.seed,
        "usage": usage,
        "budget": dataclasses.asdict(config.budget),
        "wall_seconds": round(wall, 1),
        "eval_problems": eval_problems,
        "initial": {"greedy": acc(first, "greedy"), "sampled": acc(first, "sampled")},
        "final": {"greedy": acc(last, "greedy"), "sampled": acc(last, "sampled")},
        # the run's score: the mean over its last K evaluations (eval.final_mean_of), the paper's estimand
        "score": {kind: _mean_or_none([acc(row, kind) for row in scored]) for kind in ("greedy", "sampled")},
        "score_steps": [row["step"] for row in scored],
        "final_length": last["sampled"]["length_mean"] if last and "sampled" in last else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        # the exact code and packages this run ran with: a reproduction or a pooled report compares them
        "code_version": code_version(),
        "packages": package_versions(),
    }


def _mean_or_none(values: list[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return statistics.fmean(found) if found else None
