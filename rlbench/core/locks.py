"""One writer per folder: an exclusive OS lock on a run or comparison folder, and refusals of folders rlbench did not make.

The lock is ``fcntl.flock`` on ``.rlbench.lock`` inside the folder. The kernel drops it when the holder dies, however it
dies, so a crash never leaves a stale lock behind. The file itself stays: deleting it would let two processes lock two
different files of the same name. It holds the last holder's PID (named when someone else is refused) and the folder's
kind, which also marks the folder as rlbench's own.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rlbench.core.config import ConfigError
from rlbench.core.results import CONFIG, EVALS, METRICS, SUMMARY

LOCK = ".rlbench.lock"
REQUEST = "request.yaml"  # written by ``compare`` into a run folder before it starts the run
RANK_VARS = ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK", "LOCAL_RANK")


@contextmanager
def hold(folder: Path, kind: str, wait: float = 0.0) -> Iterator[None]:
    """Hold ``folder``'s lock for the block (creating the folder); another holder -> ConfigError naming its PID.

    ``wait`` seconds are granted to a holder that is on its way out (a run whose compare was just killed).
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    pid = holder(folder)
                    raise ConfigError(
                        f"{folder}: another rlbench {kind} is writing this folder (pid {pid or 'unknown'}); "
                        "wait for it to finish or stop it"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{kind}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def holder(folder: Path) -> int | None:
    """The PID written by the lock's last holder (the current one while it is held)."""
    try:
        return int((folder / LOCK).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def lock_kind(folder: Path) -> str | None:
    try:
        lines = (folder / LOCK).read_text().split()
    except OSError:
        return None
    return lines[1] if len(lines) > 1 else None


def is_run_folder(folder: Path) -> bool:
    """A folder an rlbench run wrote (or ``compare`` prepared): only then may ``train`` write into it."""
    if lock_kind(folder) == "run":
        return True
    return (folder / CONFIG).exists() and any((folder / name).exists() for name in (METRICS, EVALS, SUMMARY, REQUEST))


def refuse_foreign(folder: Path, kind: str, ours: bool, flag: str = "--out") -> None:
    """A non-empty folder that rlbench did not write is never written into: its files are someone else's."""
    if ours or not folder.exists():
        return
    if folder.is_dir() and not any(folder.iterdir()):
        return
    raise ConfigError(
        f"{flag} {folder}: not empty and not an rlbench {kind} folder; nothing was written, choose another {flag}"
    )


def refuse_several_ranks() -> None:
    """Under torchrun / accelerate launch every rank of a comparison would start every run into the same folders."""
    for name in RANK_VARS:
        value = os.environ.get(name, "").strip()
        if not value.isdigit():
            continue
        several = int(value) > 1 if name.endswith("WORLD_SIZE") else int(value) > 0
        if several:
            raise ConfigError(
                f"{name}={value}: rlbench compare starts its runs itself, run it as one process "
                "(a single run trains in several with `rlbench train --processes N`)"
            )
