"""Progress bars: tqdm's own on a terminal; written to a file or a CI log, a status line every INTERVAL_S seconds and
one at the end, however many updates the bar gets. And every bar in rlbench is that one."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rlbench.core import bars

ROOT = Path(__file__).resolve().parents[1]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _long_bar(stream, monkeypatch) -> None:
    """1,000 steps over 1,000 s, the postfix set at each, as the training bar does (which redraws it each time)."""
    clock = [0.0]
    monkeypatch.setattr(bars, "_now", lambda: clock[0])
    with bars.tqdm(total=1000, desc="grpo on arith", file=stream, unit="step") as bar:
        for step in range(1, 1001):
            clock[0] += 1.0
            bar.update(1)
            bar.set_postfix(step=step, reward="0.500")


def test_off_a_terminal_a_long_bar_writes_a_status_line_every_interval_and_one_at_the_end(monkeypatch):
    log = io.StringIO()
    _long_bar(log, monkeypatch)
    text = log.getvalue()
    lines = text.splitlines()
    # at 30 s, 60 s, ... 990 s, then the end at 1,000 s
    assert len(lines) == int(1000 // bars.INTERVAL_S) + 1, text
    assert "\r" not in text and all(line.startswith("grpo on arith: ") for line in lines)
    assert re.search(r" 30/1000 .*step=30\b", lines[0]), lines[0]
    assert "1000/1000" in lines[-1] and "step=1000" in lines[-1]


def test_on_a_terminal_the_bar_is_redrawn_in_place(monkeypatch):
    screen = Terminal()
    _long_bar(screen, monkeypatch)
    assert screen.getvalue().count("\r") > 100  # tqdm's own redraws, left alone


def test_a_short_bar_off_a_terminal_leaves_its_last_state_and_messages_pass_through(monkeypatch):
    log = io.StringIO()
    with bars.tqdm(total=8, desc="evaluating", unit="completion", leave=False, file=log) as bar:
        bar.update(4)
        bars.tqdm.write("a message", file=log)
        bar.update(4)
    assert log.getvalue().splitlines()[0] == "a message"
    assert [line.split("|")[0] for line in log.getvalue().splitlines()[1:]] == ["evaluating: 100%"]
    assert "8/8" in log.getvalue() and "\r" not in log.getvalue()
    quiet = io.StringIO()
    for _ in bars.tqdm(range(3), file=quiet, disable=True):
        pass
    assert quiet.getvalue() == ""


def test_every_progress_bar_in_rlbench_is_the_one_in_rlbench_bars():
    sources = [p for folder in ("rlbench", "algorithms", "tasks") for p in (ROOT / folder).rglob("*.py")]
    direct = [
        f"{p.relative_to(ROOT)}: {line.strip()}"
        for p in sources
        if p.name != "bars.py"
        for line in p.read_text().splitlines()
        if re.match(r"\s*(from tqdm\b|import tqdm\b)", line)
    ]
    assert not direct, "import tqdm through rlbench.core.bars:\n" + "\n".join(direct)
