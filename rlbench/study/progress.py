"""The live display of a running comparison (``compare``) and the table of ``rlbench status``, drawn with rich.

What they show is read from the comparison's files by :mod:`rlbench.study.snapshots`: per run its state, step, last
reward, last evaluation and ETA (or the time a finished run took), and the comparison's overall ETA.
"""

from __future__ import annotations

import io
import socket
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live as RichLive
from rich.table import Table
from rich.text import Text

from rlbench.study.snapshots import STATES, RunView, Snapshot, Tracker


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def _step(view: RunView) -> str:
    if view.total is not None:
        return f"{view.step}/{view.total}"
    return f"{view.step} ({view.fraction:.0%})"


def _where(view: RunView) -> str:
    host = f"{view.host}:" if view.host and view.host != socket.gethostname() else ""
    return host + (view.devices or "-")


def rows(snapshot: Snapshot, states: tuple[str, ...] = STATES, with_state: bool = True) -> list[tuple[str, ...]]:
    """The cells of the table: a header, then one row per run in ``states`` (in the comparison's order).

    Columns: algorithm, seed, [state], step, reward, eval, ETA (or, with states, the time a finished run took),
    then devices where any run has some, and, with states, a note where any run has one."""
    views = [v for v in snapshot.runs if v.state in states]
    devices = any(v.devices for v in views)
    notes = with_state and any(v.note for v in views)
    header = [
        "algorithm",
        "seed",
        *(["state"] if with_state else []),
        "step",
        "reward",
        "eval",
        "ETA/took" if with_state else "ETA",
        *(["devices"] if devices else []),
        *(["note"] if notes else []),
    ]
    out = [tuple(header)]
    for v in views:
        eta = duration(v.eta) if v.state == "running" else (duration(v.wall) if v.state == "done" else "")
        out.append(
            (
                v.label,
                str(v.seed),
                *([v.state] if with_state else []),
                _step(v),
                _num(v.reward),
                _num(v.score),
                eta,
                *([_where(v)] if devices else []),
                *([f"({v.note})" if v.note else ""] if notes else []),
            )
        )
    return out


def table(cells: list[tuple[str, ...]]) -> Table:
    """``cells`` (from :func:`rows`) as a borderless rich table: text columns left, numbers right."""
    header, *body = cells
    grid = Table(box=None, padding=(0, 1), pad_edge=False, header_style="bold")
    for name in header:
        grid.add_column(
            name, justify="left" if name in ("algorithm", "state", "devices", "note") else "right", no_wrap=True
        )
    for row in body:
        grid.add_row(*map(Text, row))  # Text, not str: a label such as em-pg[baseline=mean] is not rich markup
    return grid


def overall(snapshot: Snapshot) -> str:
    counts = ", ".join(f"{snapshot.count(s)} {s}" for s in STATES)
    if not snapshot.count("running") and not snapshot.count("queued"):
        eta = "; all ended"
    elif snapshot.eta is None and not snapshot.count("running"):
        eta = ""
    else:
        eta = f"; ETA {duration(snapshot.eta)}"
    return f"comparison: {len(snapshot.runs)} runs: {counts}{eta}"


def one_line(view: RunView) -> str:
    """A run's state on one line (the display's form when its output is not a terminal)."""
    where = f" on {view.devices}" if view.devices else ""
    if view.state == "running":
        return (
            f"{view.name}: step {_step(view)}, reward {_num(view.reward)}, eval {_num(view.score)}, "
            f"ETA {duration(view.eta)}{where}"
        )
    return f"{view.name}: {view.state}" + (f" ({view.note})" if view.note else "")


def plain_lines(renderable: Any) -> list[str]:
    """``renderable`` as plain text lines (no colour, no wrapping, no trailing spaces)."""
    console = Console(file=io.StringIO(), width=10_000, color_system=None, force_terminal=False, highlight=False)
    console.print(renderable)
    return [line.rstrip() for line in console.file.getvalue().splitlines()]


def status_text(folder: Path) -> list[str]:
    """``rlbench status DIR``: the comparison's table, once."""
    snapshot = Tracker(folder).snapshot()
    return [f"{folder}: {snapshot.driver}", *plain_lines(table(rows(snapshot))), overall(snapshot)]


class Live:
    """The live display of a running comparison: its running runs and the overall ETA, redrawn in place on a
    terminal (rich's :class:`rich.live.Live`) at most about every ``interval`` seconds; elsewhere (a log file, CI)
    one line per change."""

    def __init__(
        self, folder: Path, stream: TextIO | None = None, interval: float = 1.0, terminal: bool | None = None
    ) -> None:
        self.tracker = Tracker(folder)
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.interval = interval
        self.last = 0.0
        self.said: dict[str, str] = {}  # the last line printed per run (not a terminal)
        self.counts: tuple[int, ...] | None = None
        self.shown: tuple[list[tuple[str, ...]], str] | None = None  # what the live region shows (a terminal)
        self.screen: RichLive | None = None  # rich's live region, once drawn
        if self.terminal:
            # no highlighter colouring the numbers of a message (cells and messages are Text: no markup either)
            self.console = Console(file=self.stream, force_terminal=True, highlight=False)

    def refresh(self, live: dict[str, str], force: bool = False) -> None:
        now = time.time()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        snapshot = self.tracker.snapshot(live, now)
        if self.terminal:
            self._draw(
                rows(snapshot, ("running",), with_state=False) if snapshot.count("running") else [], overall(snapshot)
            )
            return
        for view in snapshot.runs:
            key = f"{view.state}:{view.step}"
            if view.state in ("running", "failed") and self.said.get(view.name) != key:
                self.said[view.name] = key
                self._print(one_line(view))
        counts = tuple(snapshot.count(s) for s in STATES)
        if counts != self.counts:
            self.counts = counts
            self._print(overall(snapshot))

    def write(self, message: str) -> None:
        """A message above the live lines (a run that ended), which are drawn again below it at once."""
        if self.terminal:
            self.console.print(Text(message))  # while live, rich prints it above the live region and redraws that
        else:
            self._print(message)

    def close(self) -> None:
        """Leave the last table on screen, below it the cursor (shown again)."""
        if self.screen is not None:
            self.screen.stop()
            self.screen = None

    def _draw(self, cells: list[tuple[str, ...]], summary: str) -> None:
        if (cells, summary) == self.shown:
            return  # the same lines: nothing to redraw
        self.shown = (cells, summary)
        region = Group(table(cells), Text(summary)) if cells else Text(summary)
        if self.screen is None:
            # refreshed by this loop (no thread); the process's own stdout / stderr are left as they are
            self.screen = RichLive(
                region, console=self.console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False
            )
            self.screen.start(refresh=True)
        else:
            self.screen.update(region, refresh=True)

    def _print(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()
