"""rlbench's progress bars: tqdm on a terminal, a periodic one-line status anywhere else (a log file, CI).

tqdm redraws a bar in place with carriage returns; written to a file, every redraw is a line of its own (a bar whose
postfix is set each step, as the training bar's is, writes one per step). Off a terminal, :class:`tqdm` here writes
the same status text as a line of its own at most every :data:`INTERVAL_S` seconds, and a last one when the bar
closes: a bar of any length adds about ``seconds / INTERVAL_S + 1`` lines. Every bar in rlbench is this one
(``from rlbench.core.bars import tqdm``), so that it is decided in one place.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm.std import tqdm as _tqdm

INTERVAL_S = 30.0  # seconds between two status lines of a bar written to a file
_now = time.monotonic  # the clock of those lines (a test's to replace)


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class tqdm(_tqdm):  # noqa: N801 - a drop-in for tqdm's own class, under its name
    """``tqdm.std.tqdm`` on a terminal; otherwise a status line at most every :data:`INTERVAL_S` seconds and one at
    the end (whatever ``leave`` says: a log keeps the last state of every bar)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # decided before tqdm's own __init__, which draws the bar once already
        self._periodic = not is_terminal(kwargs.get("file") or sys.stderr)
        self._line_t = _now()
        self._line_n: float | None = None  # the count the last status line showed
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if not self._periodic:
            return super().display(msg, pos)
        if msg == "":  # tqdm clearing the bar: a written line stays
            return False
        if _now() - self._line_t >= INTERVAL_S:
            self._say()
        return True

    def clear(self, nolock: bool = False) -> None:
        if not self._periodic:
            super().clear(nolock)

    def close(self) -> None:
        if self._periodic and not self.disable:
            if self._line_n != self.n:  # the end, unless the last line already showed it
                self._say()
            self.leave = False  # tqdm's close then only "clears", which writes nothing here
        super().close()

    def _say(self) -> None:
        self.fp.write(f"{self}\n")
        self.fp.flush()
        self._line_t, self._line_n = _now(), self.n
