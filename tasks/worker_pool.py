"""A few persistent worker processes that run one call each under a hard wall-clock limit.

Why processes: symbolic checks (sympy, math-verify) can run for minutes inside C code or allocate gigabytes, and no
thread-side mechanism can stop that; killing the process can. math-verify's own limit is ``signal.alarm``, which only
works in a main thread and only between bytecodes. Here the caller (any thread) waits on a pipe with a deadline and
SIGKILLs the worker when it passes; a replacement starts in the background and joins the pool once it has imported.

Workers are fresh interpreters (``python -c ...worker_pool._serve``), not multiprocessing children: spawn and
forkserver would re-import the caller's ``__main__`` in every worker (a training script, torch and all, or a crash
for a script without a ``__name__`` guard). Jobs name their function as ``(module, function)`` strings, so the
parent never imports what the workers run.
"""

from __future__ import annotations

import atexit
import importlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Literal

#: How long a fresh worker may take to import its modules; not part of any job's limit.
STARTUP_SECONDS = 120.0
#: CPU seconds one job may use before the kernel kills the worker (SIGXCPU). The parent's wall-clock kill is the
#: real limit; this one only matters when the parent died mid-job and nobody is left to kill a runaway worker.
JOB_CPU_SECONDS = 120
#: Address-space cap per worker, so a runaway big-integer computation fails with MemoryError instead of swapping.
MEMORY_LIMIT_BYTES = 3 << 30

Status = Literal["ok", "timeout", "error", "crashed"]


@dataclass(frozen=True)
class Outcome:
    """``ok`` (value is the result), ``timeout`` (killed), ``error`` (value is the exception text), ``crashed``."""

    status: Status
    value: Any = None


class _Worker:
    def __init__(self, preload: Sequence[str], memory_limit: int | None) -> None:
        job_r, job_w = os.pipe()
        res_r, res_w = os.pipe()
        env = dict(os.environ)
        # The parent's import path, so the worker finds rlbench however the parent found it.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        code = f"import sys; from {__name__} import _serve; _serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])"
        argv = [sys.executable, "-c", code, str(job_r), str(res_w), str(memory_limit or 0), *preload]
        try:
            self.process = subprocess.Popen(argv, pass_fds=(job_r, res_w), stdin=subprocess.DEVNULL, env=env)
        finally:
            os.close(job_r)
            os.close(res_w)
        self.jobs = Connection(job_w, readable=False)
        self.results = Connection(res_r, writable=False)
        self.ready = False

    def poll_ready(self, timeout: float) -> bool:
        """True once the worker has said it finished importing; raises if it died instead."""
        if self.ready:
            return True
        if not self.results.poll(timeout):
            return False
        try:
            tag = self.results.recv()
        except (EOFError, OSError):
            raise RuntimeError(
                f"a grading worker exited during start-up (code {self.process.poll()}); see its stderr"
            ) from None
        if tag != "ready":
            raise RuntimeError(f"a grading worker sent {tag!r} instead of 'ready'")
        self.ready = True
        return True

    def kill(self) -> None:
        try:
            self.process.kill()
            self.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            self.jobs.close()
            self.results.close()


class WorkerPool:
    """``size`` workers; :meth:`call` is safe from any thread and returns within ``timeout`` once a worker is free."""

    def __init__(self, size: int, preload: Sequence[str] = (), memory_limit: int | None = MEMORY_LIMIT_BYTES) -> None:
        if size < 1:
            raise ValueError(f"pool size must be >= 1, got {size}")
        self._preload = tuple(preload)
        self._memory_limit = memory_limit
        self._owner = os.getpid()
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._closed = False
        self.size = 0
        self.grow(size)

    @property
    def owner_pid(self) -> int:
        return self._owner

    def grow(self, size: int) -> None:
        """Add workers until there are ``size``; never shrinks (other callers may be using them)."""
        with self._cond:
            while self.size < size:
                self._add_locked()
                self.size += 1
            self._cond.notify_all()

    def warm_up(self) -> None:
        """Wait until every idle worker has started, so a timed call does not pay for interpreter start-up."""
        with self._cond:
            workers = list(self._idle)
            self._idle.clear()
        try:
            for worker in workers:
                if not worker.poll_ready(STARTUP_SECONDS):
                    raise RuntimeError(f"a grading worker did not start within {STARTUP_SECONDS:.0f}s")
        finally:
            with self._cond:
                self._idle.extend(workers)
                self._cond.notify_all()

    def call(self, module: str, function: str, args: tuple, timeout: float) -> Outcome:
        """Run ``module.function(*args)`` in a worker; kill it if no reply comes within ``timeout`` seconds."""
        worker = self._acquire()
        try:
            if not worker.poll_ready(STARTUP_SECONDS):
                raise RuntimeError(f"a grading worker did not start within {STARTUP_SECONDS:.0f}s")
            worker.jobs.send((module, function, args))
            if not worker.results.poll(timeout):
                self._replace(worker)
                return Outcome("timeout")
            status, value = worker.results.recv()
        except (EOFError, OSError):
            self._replace(worker)
            return Outcome("crashed")
        except BaseException:
            # Interrupted mid-call (KeyboardInterrupt) or failed start: the worker's state is unknown, so drop it.
            self._replace(worker)
            raise
        self._release(worker)
        return Outcome(status, value)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            workers = list(self._all)
            self._all.clear()
            self._idle.clear()
            self._cond.notify_all()
        for worker in workers:
            worker.kill()

    # ------------------------------------------------------------------------------------------------ internals

    def _add_locked(self) -> None:
        worker = _Worker(self._preload, self._memory_limit)
        self._all.add(worker)
        self._idle.append(worker)

    def _acquire(self) -> _Worker:
        with self._cond:
            while not self._idle:
                if self._closed:
                    raise RuntimeError("the grading pool is closed")
                self._cond.wait()
            if self._closed:
                raise RuntimeError("the grading pool is closed")
            # Prefer a worker that has finished starting over a fresh replacement still importing.
            for position, worker in enumerate(self._idle):
                if worker.ready or worker.poll_ready(0):
                    return self._idle.pop(position)
            return self._idle.pop()

    def _release(self, worker: _Worker) -> None:
        with self._cond:
            if self._closed:
                return
            self._idle.append(worker)
            self._cond.notify()

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        with self._cond:
            self._all.discard(worker)
            if self._closed:
                return
            self._add_locked()
            self._cond.notify()


_shared: WorkerPool | None = None
_shared_lock = threading.Lock()


def shared_pool(size: int, preload: Sequence[str] = ()) -> WorkerPool:
    """The process-wide pool, created on first use and grown to ``size``; a forked child gets its own."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared.owner_pid != os.getpid():
            _shared = WorkerPool(size, preload)
        else:
            _shared.grow(size)
        return _shared


def default_workers() -> int:
    """Enough to keep grading off the critical path without crowding the trainer: up to 4, at most the CPUs."""
    return max(1, min(4, os.cpu_count() or 1))


@atexit.register
def _close_shared() -> None:
    if _shared is not None and _shared.owner_pid == os.getpid():
        _shared.close()


# ------------------------------------------------------------------------------------------------ worker side


def _serve(job_fd: int, result_fd: int, memory_limit: int, preload: Sequence[str]) -> None:
    # Ctrl-C reaches the whole process group; the parent decides what happens to its workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Anything a library prints must not reach the parent's stdout (a CLI's output); stderr is shared as is.
    os.dup2(2, 1)
    try:
        import resource
    except ImportError:  # not on Windows
        resource = None  # type: ignore[assignment]
    if memory_limit and resource is not None:
        try:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
        except (ValueError, OSError):  # macOS refuses RLIMIT_AS
            pass
    jobs = Connection(job_fd, writable=False)
    results = Connection(result_fd, readable=False)
    for module in preload:
        importlib.import_module(module)
    results.send("ready")
    functions: dict[tuple[str, str], Any] = {}
    while True:
        try:
            job = jobs.recv()
        except (EOFError, OSError):
            return  # the parent has gone
        module, name, args = job
        if resource is not None:
            _limit_cpu(resource, JOB_CPU_SECONDS)
        try:
            fn = functions.get((module, name))
            if fn is None:
                fn = functions[(module, name)] = getattr(importlib.import_module(module), name)
            reply: tuple[str, Any] = ("ok", fn(*args))
        except BaseException as exc:  # noqa: BLE001 - MemoryError / RecursionError from sympy must not end the loop
            reply = ("error", f"{type(exc).__name__}: {str(exc)[:200]}")
        try:
            results.send(reply)
        except (OSError, EOFError):
            return
        except Exception as exc:  # an unpicklable result: report it rather than leave the parent waiting
            results.send(("error", f"unpicklable result: {type(exc).__name__}"))


def _limit_cpu(resource: Any, seconds: int) -> None:
    """Let the kernel end this worker once the current job has used ``seconds`` of CPU."""
    import time

    _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(time.process_time()) + seconds
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    try:
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    except (ValueError, OSError):
        pass
