"""Where a comparison's runs execute: child processes on this machine (each on its own GPU slice), or Ray tasks.

Every run is the same command, ``python -m rlbench.cli train --config DIR/runs/NAME/request.yaml --resume --quiet``
(``--processes K`` added for a run given K GPUs), whichever executor starts it: a killed or retried run continues from
its last state, and rerunning the comparison finishes what is left. An executor only decides where and when:

- :class:`LocalExecutor`: child processes, at most ``jobs`` at once; with GPUs, each run gets its own
  ``CUDA_VISIBLE_DEVICES`` slice of K devices, and a run waits until a slice is free.
- :class:`RayExecutor`: one Ray task per run (``num_gpus=K``, ``num_cpus=threads``), retried by Ray when its worker
  dies or the run is killed; the comparison folder must be on a filesystem every Ray node sees at the same path.

Both write ``DIR/placements.jsonl``: which executor ran the comparison with how many slots, and a ``start`` line per
run start (host, pid, devices) and an ``end`` line per finish; ``rlbench status`` and the live progress read it.

A run, in one process or K, ends when the process that started it (``compare``, or the Ray worker) ends: see
:mod:`rlbench.core.lifeline`.

Over 400 lines on purpose: the two executors are read side by side (same protocol, same placement log, same
GPU-slice rules), and the Ray one is about 150 lines of it; apart they would share the base class and the
placement helpers through a third module.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rlbench.core.config import ConfigError
from rlbench.core.lifeline import ORPHAN_GRACE_S, child_env
from rlbench.core.locks import hold
from rlbench.core.results import RUNS_LOG, append_jsonl

PLACEMENTS = "placements.jsonl"
FAKE_GPUS_ENV = "RLBENCH_FAKE_GPUS"  # tests only: pretend this many GPUs are visible (device discovery reads it)
EXECUTORS = ("local", "ray")
INTERRUPTED_EXIT = 130  # what `rlbench train` exits with when it is stopped (SIGTERM / Ctrl-C)


@dataclasses.dataclass(frozen=True)
class Job:
    """One run to execute: its folder, the request file ``compare`` wrote there, and what it needs."""

    name: str
    out: Path  # the run folder
    request: Path
    threads: int = 1  # torch CPU threads per process
    gpus: int = 0  # devices the run trains on (K); K > 1 trains data-parallel in K processes

    @property
    def processes(self) -> int:
        return max(1, self.gpus)


@dataclasses.dataclass(frozen=True)
class Finished:
    job: Job
    returncode: int | None  # None: the executor lost the run (Ray gave up on it); ``error`` says why
    seconds: float
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class Placement:
    """How a comparison's runs are placed (the ``compare`` flags --executor, --jobs, --devices, --gpus-per-run, ...)."""

    executor: str = "local"
    jobs: int | None = None  # at most this many runs at once (local default: one per slice, else 1)
    devices: str | None = None  # local: "auto" or "0,1,2,3"; None = no device slices
    gpus_per_run: int | None = None  # K; None = 1 with devices, else 0 (Ray: 1 if the cluster has GPUs)
    ray_address: str | None = None  # None = a local Ray instance (or the one this process already joined)
    max_retries: int = 3  # Ray: restarts of a run whose worker died or that was killed


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------- the command


def train_command(request: Path, processes: int = 1) -> list[str]:
    """The command every executor runs for a run (tests replace it with a stand-in child)."""
    cmd = [sys.executable, "-m", "rlbench.cli", "train", "--config", str(request), "--resume", "--quiet"]
    return cmd + (["--processes", str(processes)] if processes > 1 else [])


# ---------------------------------------------------------------------------------------------- devices


def visible_gpus() -> list[str]:
    """The GPUs torch sees, as the ``CUDA_VISIBLE_DEVICES`` entries that name them to a child process.

    ``RLBENCH_FAKE_GPUS=N`` (tests only) pretends N GPUs ``0..N-1`` are visible without asking torch.
    """
    fake = os.environ.get(FAKE_GPUS_ENV, "").strip()
    if fake:
        return [str(i) for i in range(int(fake))]
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    inherited = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if inherited and len(inherited) >= count:
        return inherited[:count]  # torch's device i is the inherited entry i
    return [str(i) for i in range(count)]


def device_slices(devices: str | None, gpus_per_run: int | None) -> list[list[str]] | None:
    """``--devices`` / ``--gpus-per-run`` -> the disjoint device slices runs take turns on (None: no slices)."""
    if devices is None and gpus_per_run is None:
        return None
    flag = "--devices" if devices is not None else "--gpus-per-run"
    per_run = 1 if gpus_per_run is None else gpus_per_run
    if per_run < 1:
        raise ConfigError(f"--gpus-per-run {gpus_per_run}: must be >= 1")
    gpus = visible_gpus()
    if not gpus:
        raise ConfigError(
            f"{flag} {devices if devices is not None else gpus_per_run}: no GPU is visible here "
            "(torch sees none); leave it out to run on the CPU (--jobs sets how many runs at once)"
        )
    if devices is None or devices.strip() == "auto":
        chosen = gpus
    else:
        chosen = []
        for part in filter(None, (p.strip() for p in devices.split(","))):
            if not part.isdigit() or int(part) >= len(gpus):
                raise ConfigError(
                    f"--devices {devices}: {part!r} is not a visible GPU (0..{len(gpus) - 1}, as torch "
                    "numbers them here)"
                )
            if gpus[int(part)] in chosen:
                raise ConfigError(f"--devices {devices}: GPU {part} is named twice")
            chosen.append(gpus[int(part)])
        if not chosen:
            raise ConfigError(f"--devices {devices!r}: expected 'auto' or comma-separated GPU indices")
    if per_run > len(chosen):
        raise ConfigError(f"--gpus-per-run {per_run}: only {len(chosen)} GPU(s) to place runs on")
    return [chosen[i : i + per_run] for i in range(0, len(chosen) - len(chosen) % per_run, per_run)]


def placement_from_flags(
    executor: str = "local",
    jobs: int | None = None,
    devices: str | None = None,
    gpus_per_run: int | None = None,
    ray_address: str | None = None,
    max_retries: int = 3,
) -> Placement:
    """``compare``'s flags -> a placement, refusing impossible ones (exit 2 naming the flag) before any work.

    Without --devices / --gpus-per-run: one run per GPU where there are GPUs and no --jobs; otherwise --jobs CPU runs
    (default one per core, at most 2)."""
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs {jobs}: must be >= 1")
    if executor == "ray":
        if importlib.util.find_spec("ray") is None:
            raise ConfigError("--executor ray: Ray is not installed here; pip install 'rlbench[ray]'")
        if devices is not None:
            raise ConfigError(
                f"--devices {devices}: not with --executor ray (Ray gives each run its GPUs; set how "
                "many with --gpus-per-run)"
            )
        if max_retries < 0:
            raise ConfigError(f"--max-retries {max_retries}: must be >= 0")
        return Placement("ray", jobs, None, gpus_per_run, ray_address, max_retries)
    if executor != "local":
        raise ConfigError(f"--executor {executor}: expected one of {', '.join(EXECUTORS)}")
    if ray_address is not None:
        raise ConfigError(f"--ray-address {ray_address}: only with --executor ray")
    if devices is not None or gpus_per_run is not None:
        device_slices(devices, gpus_per_run)  # no GPU here, a bad index, K too large: refused now
        return Placement("local", jobs, devices, gpus_per_run)
    if jobs is None and visible_gpus():
        return Placement("local", None, "auto", 1)
    return Placement("local", jobs or max(1, min(2, os.cpu_count() or 1)))


# ---------------------------------------------------------------------------------------------- executors


class Executor:
    """Starts runs, reports the ones that ended, stops the rest. Subclasses decide where runs execute."""

    kind = "?"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.placements = folder / PLACEMENTS
        self.log = folder / RUNS_LOG

    def has_room(self) -> bool:
        """Whether another run may be submitted now (otherwise it waits, queued)."""
        raise NotImplementedError

    def submit(self, job: Job) -> None:
        raise NotImplementedError

    def poll(self, timeout: float) -> list[Finished]:
        """Wait up to ``timeout`` seconds; the runs that ended since the last poll."""
        raise NotImplementedError

    def in_flight(self) -> dict[str, str]:
        """Submitted runs that have not ended, by name: ``running``, or ``submitted`` where the executor cannot tell
        a started run from one waiting for resources (the run's ``start`` line in placements.jsonl tells)."""
        raise NotImplementedError

    def cancel(self) -> None:
        """Stop every run (each ends ``interrupted``, resumable) and wait for them."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def record(self, event: str, **fields: Any) -> None:
        append_jsonl(self.placements, {"event": event, **fields, "time": now()})

    def describe(self) -> dict[str, Any]:
        """The ``executor`` line of placements.jsonl: what ran the comparison, from where, with how many slots."""
        return {"executor": self.kind, "host": socket.gethostname(), "pid": os.getpid(), "slots": self.slots()}

    def slots(self) -> int | None:
        return None


class LocalExecutor(Executor):
    """Child processes of this one, at most one per slot; a slot is a GPU slice, or a CPU job when there are none."""

    kind = "local"

    def __init__(self, folder: Path, jobs: int | None = None, slices: list[list[str]] | None = None) -> None:
        super().__init__(folder)
        if jobs is not None and jobs < 1:
            raise ConfigError(f"--jobs {jobs}: must be >= 1")
        self.slices = slices
        if slices is None:
            self.free: list[list[str] | None] = [None] * (jobs or 1)
        else:
            self.free = list(slices[: jobs or len(slices)])
        self.running: dict[str, tuple[Job, subprocess.Popen, list[str] | None, float]] = {}

    def slots(self) -> int:
        return len(self.free) + len(self.running)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "devices": self.slices}

    def has_room(self) -> bool:
        return bool(self.free)

    def submit(self, job: Job) -> None:
        devices = self.free.pop(0)
        job = dataclasses.replace(job, gpus=len(devices) if devices is not None else 0)
        env = {**os.environ, "OMP_NUM_THREADS": str(job.threads), **child_env()}
        if devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        try:
            with open(self.log, "a") as log:
                proc = subprocess.Popen(
                    train_command(job.request, job.processes), stdout=log, stderr=subprocess.STDOUT, env=env
                )
        except BaseException:
            self.free.insert(0, devices)
            raise
        self.running[job.name] = (job, proc, devices, time.time())
        self.record(
            "start",
            run=job.name,
            executor=self.kind,
            host=socket.gethostname(),
            pid=proc.pid,
            devices=",".join(devices) if devices is not None else None,
        )

    def poll(self, timeout: float) -> list[Finished]:
        time.sleep(timeout)
        done = []
        for name, (job, proc, devices, started) in list(self.running.items()):
            if proc.poll() is None:
                continue
            del self.running[name]
            self.free.append(devices)
            if self.slices is not None:  # slices in their original order: a run lands on the lowest free one
                self.free.sort(key=self.slices.index)
            seconds = time.time() - started
            self.record("end", run=name, returncode=proc.returncode, seconds=round(seconds, 1))
            done.append(Finished(job, proc.returncode, seconds))
        return done

    def in_flight(self) -> dict[str, str]:
        return {name: "running" for name in self.running}

    def devices_of(self, name: str) -> list[str] | None:
        return self.running[name][2] if name in self.running else None

    def cancel(self) -> None:
        for _, proc, _, _ in self.running.values():
            proc.terminate()
        for _, proc, _, _ in self.running.values():
            proc.wait()


class RunCrashed(RuntimeError):
    """A run that a signal ended (its worker killed, its process killed): Ray runs the task again, which resumes."""


def ray_task(request: str, gpus: int, threads: int, cwd: str, log: str, placements: str, name: str) -> dict[str, Any]:
    """One run, in a Ray worker: the same ``rlbench train ... --resume`` a local run is, following this worker."""
    job = Job(name, Path(cwd, request).parent, Path(request), threads, gpus)
    # a previous attempt's run may still be writing its interrupted summary: it ends within the grace period
    with hold(job.out, "run", wait=ORPHAN_GRACE_S):
        pass
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), **child_env()}  # the run ends if this worker dies
    devices = os.environ.get("CUDA_VISIBLE_DEVICES") if gpus else None  # Ray's choice of this node's GPUs
    started = time.time()
    with open(log, "a") as out:
        proc = subprocess.Popen(
            train_command(job.request, job.processes), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd
        )
        append_jsonl(
            Path(placements),
            {
                "event": "start",
                "run": name,
                "executor": "ray",
                "host": socket.gethostname(),
                "pid": proc.pid,
                "devices": devices,
                "time": now(),
            },
        )
        try:
            returncode = proc.wait()
        except BaseException:  # ray.cancel: stop the run cleanly (interrupted, resumable), then give up the task
            proc.terminate()
            proc.wait()
            raise
    if returncode < 0 or returncode == INTERRUPTED_EXIT:
        raise RunCrashed(f"{name}: the run was stopped (exit {returncode}); retrying resumes it")
    return {
        "returncode": returncode,
        "host": socket.gethostname(),
        "devices": devices,
        "seconds": round(time.time() - started, 1),
    }


class RayExecutor(Executor):
    """Each run a Ray task on whichever node has its resources; Ray queues runs the cluster cannot hold yet."""

    kind = "ray"

    def __init__(
        self,
        folder: Path,
        address: str | None = None,
        jobs: int | None = None,
        gpus_per_run: int | None = None,
        max_retries: int = 3,
        threads: int = 1,
    ) -> None:
        super().__init__(folder)
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray: Ray is not installed here; pip install 'rlbench[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            options: dict[str, Any] = {"log_to_driver": False}
            if address is None:
                options["include_dashboard"] = False
            ray.init(address=address, **options)
        self.resources = ray.cluster_resources()
        gpus = int(self.resources.get("GPU", 0))
        if gpus_per_run is None:
            gpus_per_run = 1 if gpus else 0
        if gpus_per_run < 0 or gpus_per_run > gpus:
            raise ConfigError(f"--gpus-per-run {gpus_per_run}: the Ray cluster has {gpus} GPU(s)")
        self.jobs, self.gpus, self.max_retries, self.threads = jobs, gpus_per_run, max_retries, threads
        self.remote = ray.remote(ray_task)
        self.refs: dict[Any, tuple[Job, float]] = {}

    @property
    def cpus_per_run(self) -> int:
        return self.threads * max(1, self.gpus)

    def slots(self) -> int:
        """Runs the cluster holds at once (as it is now; a cluster that grows takes more)."""
        slots = int(self.resources.get("CPU", 0)) // self.cpus_per_run
        if self.gpus:
            slots = min(slots, int(self.resources.get("GPU", 0)) // self.gpus)
        return max(1, min(slots, self.jobs) if self.jobs else slots)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "gpus_per_run": self.gpus, "max_retries": self.max_retries}

    def has_room(self) -> bool:
        return self.jobs is None or len(self.refs) < self.jobs

    def submit(self, job: Job) -> None:
        job = dataclasses.replace(job, gpus=self.gpus)
        options = dict(
            num_cpus=self.cpus_per_run,
            num_gpus=self.gpus,
            max_retries=self.max_retries,
            retry_exceptions=[RunCrashed],
            name=f"rlbench:{job.name}",
        )
        ref = self.remote.options(**options).remote(
            str(job.request.resolve()),
            job.gpus,
            job.threads,
            os.getcwd(),
            str(self.log.resolve()),
            str(self.placements.resolve()),
            job.name,
        )
        self.refs[ref] = (job, time.time())
        self.record("submit", run=job.name, executor=self.kind, gpus=self.gpus, cpus=self.cpus_per_run)

    def poll(self, timeout: float) -> list[Finished]:
        if not self.refs:
            time.sleep(timeout)
            return []
        ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=timeout)
        done = []
        for ref in ready:
            job, submitted = self.refs.pop(ref)
            seconds = time.time() - submitted
            try:
                info = self.ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - retries used up, or the task could not run: the run failed
                error = _first_line(exc)
                self.record("end", run=job.name, returncode=None, error=error, seconds=round(seconds, 1))
                done.append(Finished(job, None, seconds, error))
                continue
            self.record("end", run=job.name, **info)
            done.append(Finished(job, info["returncode"], info.get("seconds", seconds)))  # its run, not its wait
        return done

    def in_flight(self) -> dict[str, str]:
        return {job.name: "submitted" for job, _ in self.refs.values()}

    def cancel(self) -> None:
        refs = list(self.refs)
        for ref in refs:
            self.ray.cancel(ref)  # a KeyboardInterrupt in the task: it stops its run cleanly
        if refs:
            _, left = self.ray.wait(refs, num_returns=len(refs), timeout=ORPHAN_GRACE_S)
            for ref in left:
                self.ray.cancel(ref, force=True)  # kills the worker; the run follows it (SIGTERM)


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(cause).__name__)[:300]


def make_executor(placement: Placement, folder: Path, threads: int = 1) -> Executor:
    """The one place an executor is chosen (``threads``: each run's torch CPU threads per process)."""
    if placement.executor == "ray":
        return RayExecutor(
            folder, placement.ray_address, placement.jobs, placement.gpus_per_run, placement.max_retries, threads
        )
    return LocalExecutor(folder, placement.jobs, device_slices(placement.devices, placement.gpus_per_run))
