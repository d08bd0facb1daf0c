"""A run started by ``compare`` ends when that compare ends, however it ends (SIGKILL included).

Otherwise an orphaned run keeps writing its folder while the documented rerun starts a second writer there. The run is
ended with SIGTERM, which the trainer turns into a clean ``interrupted`` summary that a rerun resumes from.
Linux's PR_SET_PDEATHSIG fires when the *thread* that started the run ends; ``compare`` starts runs from its main
thread, whose end is the process's end.

``RLBENCH_PARENT_PID`` names the process to follow, and a process that follows it names itself for its own children:
a lifeline is a chain. A run in K processes (``rlbench train --processes K``) keeps the chain unbroken by becoming
``accelerate launch`` (:func:`exec_launcher`): the launcher is then the process ``compare`` started, its death signal
still armed (it survives ``exec``), and the ranks it starts follow it as their parent. ``compare`` gone, the launcher
gets SIGTERM and passes it to every rank; the launcher gone, each rank gets SIGTERM itself.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from typing import NoReturn

PARENT_ENV = "RLBENCH_PARENT_PID"
PR_SET_PDEATHSIG = 1
ORPHAN_GRACE_S = 60.0  # how long a rerun's run waits for the lock of a run whose compare was just killed
POLL_S = 0.5


def child_env() -> dict[str, str]:
    """Environment entries for a run started by this process."""
    return {PARENT_ENV: str(os.getpid())}


def lock_wait() -> float:
    """Seconds a run waits for its folder's lock: a rerun's run may find the previous run still shutting down."""
    return ORPHAN_GRACE_S if os.environ.get(PARENT_ENV) else 0.0


def follow_parent() -> None:
    """When started by a compare (or by a process that follows one), get SIGTERM as soon as that parent is gone;
    the processes this one starts then follow this one."""
    raw = os.environ.get(PARENT_ENV, "")
    if not raw.isdigit():
        return
    parent = int(raw)
    if not _pdeathsig(signal.SIGTERM):
        # no PR_SET_PDEATHSIG here (not Linux): poll instead; on Linux a second SIGTERM could cut the shutdown short
        threading.Thread(target=watch, args=(parent,), daemon=True, name="rlbench-parent-watch").start()
    if os.getppid() != parent:  # it died before the death signal was armed
        os.kill(os.getpid(), signal.SIGTERM)
    os.environ[PARENT_ENV] = str(os.getpid())  # the next link: what this process starts follows this process


def exec_launcher(command: list[str]) -> NoReturn:
    """Become ``command``, a launcher whose children are the run's processes (``accelerate launch``).

    The launcher keeps this pid, so it is what this process's starter started, and the death signal armed here stays
    armed through ``exec``; the ranks it starts follow it (their parent), as :envvar:`RLBENCH_PARENT_PID` now says.
    Where there is no death signal (not Linux) the polling thread does not survive ``exec``: the launcher then does
    not follow its starter, though its ranks still follow it.
    """
    follow_parent()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)


def watch(parent: int, poll: float = POLL_S) -> None:
    """Send this process SIGTERM once its parent is no longer ``parent`` (an orphan is re-parented)."""
    while os.getppid() == parent:
        time.sleep(poll)
    os.kill(os.getpid(), signal.SIGTERM)


def _pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
