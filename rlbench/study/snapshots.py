"""A comparison's progress, read from its files alone: what the live display of ``compare`` and ``rlbench status``
show (:mod:`rlbench.study.progress` draws it).

Nothing here listens to a run's output. A run's numbers come from its folder (the last line of ``metrics.jsonl`` and
``eval.jsonl``, ``summary.json``, ``request.yaml`` / ``config.yaml`` for its budget); where it runs from the
comparison's ``placements.jsonl`` (written by :mod:`rlbench.study.executors`); whether it runs now from its folder lock
(the kernel's lock table, ``/proc/locks``, when the run is on this machine) or, for a run on another machine, from
its start line and how recently its files changed.

Total steps come from the budget: ``steps``, or ``samples // rollout.batch_size`` (the smaller when both are set).
A ``tokens`` or ``seconds`` budget has no step count known in advance: the share of it used is shown instead.
An ETA is the remaining share of the budget at the rate the run has moved (wall clock, evaluations included, while
a display watches it; from the training-loop seconds in ``usage`` otherwise). The comparison's ETA places the
queued runs on the slots (GPU slices, CPU jobs, Ray resources) as the running ones free them.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import yaml

from rlbench.core.config import RolloutConfig
from rlbench.core.locks import LOCK, REQUEST
from rlbench.core.results import CONFIG, EVALS, MANIFEST, METRICS, RUNS, SAMPLES, SUMMARY, read_jsonl, run_name
from rlbench.study.executors import PLACEMENTS

STATES = ("running", "queued", "done", "failed")
FRESH_S = 600.0  # a run on another machine counts as running while its files changed this recently
UNITS = ("samples", "tokens", "steps", "seconds")


@dataclasses.dataclass
class RunView:
    name: str
    label: str
    seed: int
    state: str = "queued"
    step: int = 0
    total: int | None = None  # steps the budget allows; None for tokens / seconds budgets
    fraction: float = 0.0  # share of the budget used
    reward: float | None = None  # reward_mean of the last step
    score: float | None = None  # the last evaluation's greedy accuracy (sampled when there is no greedy pass)
    eta: float | None = None  # seconds until it ends (running runs)
    wall: float | None = None  # seconds a finished run took
    devices: str | None = None
    host: str | None = None
    note: str = ""


@dataclasses.dataclass
class Snapshot:
    folder: Path
    runs: list[RunView]
    slots: int | None
    eta: float | None  # seconds until every run has ended
    driver: str  # who runs the comparison, and whether it is running

    def count(self, state: str) -> int:
        return sum(r.state == state for r in self.runs)


# ---------------------------------------------------------------------------------------------- reading files


def total_steps(budget: dict[str, Any], batch_size: int) -> int | None:
    """Optimiser steps a budget allows: ``steps``, or ``samples // batch_size``; None when tokens / seconds bound it."""
    limits = [int(budget["steps"])] if budget.get("steps") else []
    if budget.get("samples"):
        limits.append(int(budget["samples"]) // max(1, batch_size))
    if budget.get("tokens") or budget.get("seconds"):
        return None
    return min(limits) if limits else None


def budget_fraction(usage: dict[str, Any], budget: dict[str, Any], batch_size: int) -> float:
    """The share of the budget ``usage`` has spent: that of the limit nearest to stopping the run, in [0, 1]."""
    parts = []
    for unit in UNITS:
        limit = budget.get(unit)
        if not limit:
            continue
        if unit == "samples":  # a run stops before a step that would overrun: its last step is the whole budget
            limit = max(1, int(limit) // max(1, batch_size)) * max(1, batch_size)
        parts.append(float(usage.get(unit) or 0) / float(limit))
    return min(1.0, max(parts)) if parts else 0.0


def last_row(path: Path, tail: int = 1 << 16) -> dict[str, Any] | None:
    """The last complete JSON line of a (possibly large, possibly being written) JSONL file."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - tail))
            data = f.read()
    except OSError:
        return None
    for line in reversed(data.split(b"\n")):
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a torn last line, or the cut first one
        if isinstance(row, dict):
            return row
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_yaml(path: Path) -> dict[str, Any] | None:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def lock_held(folder: Path) -> bool | None:
    """Whether a process on this machine holds ``folder``'s lock, from the kernel's lock table (the lock untouched).

    None where there is no ``/proc/locks`` to read. A holder on another machine (a shared filesystem) is not seen.
    """
    try:
        st = (folder / LOCK).stat()
    except OSError:
        return False
    try:
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in table.splitlines():
        fields = line.split()
        if "->" not in fields and len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == ident:
            return True
    return False


def read_placements(folder: Path) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """The last ``executor`` line, and each run's last ``submit`` / ``start`` / ``end`` line (with the last start's
    devices and host merged in)."""
    executor, runs = None, {}
    try:
        rows = read_jsonl(folder / PLACEMENTS)
    except (OSError, ValueError):
        rows = []
    for row in rows:
        if row.get("event") == "executor":
            executor = row
        elif row.get("run"):
            previous = runs.get(row["run"], {})
            merged = {**row}
            if row.get("event") != "start":  # where it last started stays known after it ends
                for key in ("devices", "host"):
                    if merged.get(key) is None and previous.get(key) is not None:
                        merged[key] = previous[key]
            runs[row["run"]] = merged
    return executor, runs


def _newest_change(run: Path) -> float:
    times = []
    for name in (METRICS, EVALS, SAMPLES, CONFIG):
        try:
            times.append((run / name).stat().st_mtime)
        except OSError:
            pass
    return max(times, default=0.0)


# ---------------------------------------------------------------------------------------------- the tracker


class Tracker:
    """Reads one comparison's progress; kept across refreshes, it times each run's rate as it watches."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        manifest = _read_json(self.folder / MANIFEST) or {}
        self.manifest = manifest
        rows = manifest.get("rows") or [{"label": a, "slug": a} for a in manifest.get("algos", [])]
        self.order = [
            (run_name(r["slug"], int(seed)), r["label"], int(seed)) for seed in manifest.get("seeds", []) for r in rows
        ]
        self.budget: dict[str, Any] = manifest.get("budget") or {}
        self.seen: dict[str, tuple[float, float]] = {}  # name -> (time, fraction) when first seen moving
        self.took: dict[str, float] = {}  # whole-run wall seconds of the runs that ended while watched
        self.configs: dict[str, tuple[int | None, dict[str, Any], int]] = {}

    def snapshot(self, live: dict[str, str] | None = None, now: float | None = None) -> Snapshot:
        """``live``: what the running ``compare`` itself knows of its runs (``running``, ``submitted``, ``failed``,
        ``done``); without it (``rlbench status``) everything is read from the files."""
        now = time.time() if now is None else now
        executor, events = read_placements(self.folder)
        driver_live = None if live is None else True
        if live is None:
            driver_live = self._driver_live(executor)
        views = [
            self._view(name, label, seed, live, events.get(name, {}), driver_live, now)
            for name, label, seed in self.order
        ]
        slots = executor.get("slots") if executor else None
        return Snapshot(self.folder, views, slots, self._overall_eta(views, slots), self._driver(executor, driver_live))

    def _driver_live(self, executor: dict[str, Any] | None) -> bool | None:
        held = lock_held(self.folder)
        if held:
            return True
        if executor and executor.get("host") not in (None, socket.gethostname()):
            return None  # started on another machine: its lock is not in this machine's table
        return False if held is False else None

    def _driver(self, executor: dict[str, Any] | None, live: bool | None) -> str:
        where = (
            f"{executor.get('executor', '?')} executor on {executor.get('host', '?')} (pid {executor.get('pid')})"
            if executor
            else "no executor recorded"
        )
        state = {True: "running", False: "not running", None: "running? (another machine: judged by file times)"}
        return f"{where}: {state[live]}"

    def _view(
        self,
        name: str,
        label: str,
        seed: int,
        live: dict[str, str] | None,
        event: dict[str, Any],
        driver_live: bool | None,
        now: float,
    ) -> RunView:
        run = self.folder / RUNS / name
        view = RunView(name, label, seed, devices=event.get("devices"), host=event.get("host"))
        budget, batch = self._budget(run)
        view.total = total_steps(budget, batch)
        summary = _read_json(run / SUMMARY) if (run / SUMMARY).exists() else None
        row = last_row(run / METRICS)
        if row:
            view.step = int(row.get("step") or 0)
            view.reward = row.get("reward_mean")
            view.fraction = budget_fraction(row.get("usage") or {}, budget, batch)
        evaluation = last_row(run / EVALS)
        if evaluation:
            view.score = (evaluation.get("greedy") or evaluation.get("sampled") or {}).get("accuracy")
        status = (summary or {}).get("status")
        view.state = self._state(name, run, status, live, event, driver_live, now)
        if view.state == "done":
            view.fraction = 1.0
            view.wall = (summary or {}).get("wall_seconds")
            if summary and summary.get("usage"):
                view.step = int(summary["usage"].get("steps") or view.step)
        elif view.state == "failed":
            view.note = status or (f"exit {event.get('returncode')}" if event.get("event") == "end" else "")
        elif view.state == "running":
            view.eta = self._eta(name, view, row, now)
        elif status == "interrupted" or row:
            view.note = f"stopped at step {view.step}; resumes"
        if view.state != "running":
            self.seen.pop(name, None)
        return view

    def _budget(self, run: Path) -> tuple[dict[str, Any], int]:
        """The run's budget and batch size, from its request (or config) file; read again only when it changes."""
        path = run / REQUEST if (run / REQUEST).exists() else run / CONFIG
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            stamp = None
        cached = self.configs.get(run.name)
        if cached is None or cached[0] != stamp:
            config = (_read_yaml(path) if stamp is not None else None) or {}
            budget = config.get("budget") or self.budget
            batch = int((config.get("rollout") or {}).get("batch_size") or RolloutConfig().batch_size)
            cached = self.configs[run.name] = (stamp, budget, batch)
        return cached[1], cached[2]

    def _state(
        self,
        name: str,
        run: Path,
        status: str | None,
        live: dict[str, str] | None,
        event: dict[str, Any],
        driver_live: bool | None,
        now: float,
    ) -> str:
        if status == "completed":
            return "done"
        said = (live or {}).get(name)
        if said in ("running", "failed", "done"):
            return said
        if said == "submitted":  # a Ray task: running once its start line is in
            return "running" if event.get("event") == "start" else "queued"
        if live is not None:
            return "queued"
        if lock_held(run):
            return "running"
        if event.get("event") == "start" and driver_live is not False:
            if driver_live or now - _newest_change(run) < FRESH_S:
                return "running"
        if status in ("diverged", "failed"):
            return "failed"
        if (event.get("event") == "end" and event.get("returncode") not in (0, None)) or event.get("error"):
            return "failed"
        return "queued"

    def _eta(self, name: str, view: RunView, row: dict[str, Any] | None, now: float) -> float | None:
        first = self.seen.setdefault(name, (now, view.fraction))
        if view.fraction >= 1.0:
            return 0.0
        moved, elapsed = view.fraction - first[1], now - first[0]
        if moved > 0 and elapsed > 0:
            return elapsed / moved * (1.0 - view.fraction)
        seconds = float(((row or {}).get("usage") or {}).get("seconds") or 0.0)
        if view.fraction > 0 and seconds > 0:
            return seconds / view.fraction * (1.0 - view.fraction)
        return None

    def ended(self, name: str, seconds: float) -> None:
        """A run ended after ``seconds`` of this session: its whole duration, scaled up by the share of the budget it
        had already spent when the session started, is the estimate for the runs still queued."""
        start = self.seen.get(name, (0.0, 0.0))[1]
        self.took[name] = seconds / max(1.0 - start, 0.05)

    def _overall_eta(self, views: list[RunView], slots: int | None) -> float | None:
        running = [v for v in views if v.state == "running"]
        queued = [v for v in views if v.state == "queued"]
        if not running and not queued:
            return 0.0
        durations = list(self.took.values()) or [v.wall for v in views if v.state == "done" and v.wall]
        if not durations:  # no run has ended yet: the running ones' projected whole durations
            durations = [v.eta / (1 - v.fraction) for v in running if v.eta is not None and 0 < v.fraction < 1]
        per_run = sum(durations) / len(durations) if durations else None
        if per_run is None and (queued or any(v.eta is None for v in running)):
            return None
        left = [v.eta if v.eta is not None else per_run * (1.0 - v.fraction) for v in running]
        width = max(slots or 1, len(running))
        free = sorted(left + [0.0] * (width - len(running)))
        for v in queued:
            heapq.heappush(free, heapq.heappop(free) + per_run * (1.0 - v.fraction))
        return max(free)
