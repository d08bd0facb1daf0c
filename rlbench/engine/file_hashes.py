"""The sha256 of every file of a finished run folder, which ``summary.json`` records so that a later edit is seen.

Left out: ``summary.json`` itself (it holds the hashes), the resumable state (deleted once the run completes), the
folder's lock, temporary files, and the trackers' folders (TensorBoard, W&B), which their libraries still write after
the summary and which are views of the run's own files, not its record.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from rlbench.core.locks import LOCK
from rlbench.core.results import CHECKPOINT, STATE, SUMMARY, TENSORBOARD_DIR, WANDB_DIR

UNHASHED = frozenset({SUMMARY, STATE, f"{STATE}.old", f"{STATE}.tmp", LOCK, TENSORBOARD_DIR, WANDB_DIR})
_BLOCK = 1 << 20


def is_weights(name: str) -> bool:
    """A file of a saved model (``checkpoint/``, ``checkpoint-N/``): published results usually leave these out."""
    top = name.split("/", 1)[0]
    return top == CHECKPOINT or top.startswith(f"{CHECKPOINT}-")


def file_hashes(folder: Path, weights: bool = True) -> dict[str, str]:
    """Relative POSIX path -> sha256 of each file under ``folder`` (without the model's files unless ``weights``)."""
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        name = path.relative_to(folder).as_posix()
        parts = name.split("/")
        if parts[0] in UNHASHED or any(p.startswith(".") for p in parts) or not path.is_file():
            continue
        if weights or not is_weights(name):
            out[name] = sha256_file(path)
    return out


def finished_run_hashes(folder: Path) -> dict[str, str] | None:
    """What summary.json records: :func:`file_hashes`, or None where a file cannot be read back, since the summary
    must be written all the same (the audit then says the run has no hashes)."""
    try:
        return file_hashes(folder)
    except OSError:
        return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()
