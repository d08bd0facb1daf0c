"""Grading helpers shared by tasks: number normalisation, ``\\boxed{}`` extraction, time-limited symbolic equivalence.

Rules every grader here follows:
- Model text is never evaluated: no ``eval``/``exec``/``sympify``/``parse_expr``. Numbers are read by a regex and
  ``decimal.Decimal``; LaTeX by math-verify's LaTeX grammar only (see math_equiv.py).
- Only ASCII digits are digits. ``int()`` and ``Decimal()`` accept any Unicode decimal digit ("٤٢", "４２" read as
  42); a grader that allowed that would credit answers the reference format never uses, so non-ASCII digits make a
  number unreadable (reward 0, reason ``unparsable``) rather than being normalised.
- Every scan is linear in the text and iterative, so 1 MB completions and 10,000 nested braces cost milliseconds.
- The symbolic check runs in a worker process that is killed when the per-grade limit passes (reason ``timeout``).
"""

from __future__ import annotations

import collections
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation

from .base import GradeReason
from .worker_pool import default_workers, shared_pool

# A number as people write it: optional sign, digits with optional comma thousands groups, optional decimals.
# [0-9] rather than \d: \d matches every Unicode digit.
NUMBER = r"-?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?"
_NUMBER_RE = re.compile(NUMBER)
_NUMBER_FULL = re.compile(r"(-?)([0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.([0-9]+))?")
#: Longest number string (after stripping) that is read at all; longer ones are not answers anyone writes.
MAX_NUMBER_CHARS = 64
#: Longest boxed answer handed to the symbolic checker; MATH answers are at most ~60 characters.
MAX_ANSWER_CHARS = 1000


def normalize_number(text: str) -> str | None:
    """Canonical decimal string for a written number, or None when it is not one.

    ``"$1,234.50"`` -> ``"1234.5"``, ``"18.0"`` -> ``"18"``, ``"50%"`` -> ``"50"``, ``"-0"`` -> ``"0"``;
    ``"1e5"``, ``"nan"``, ``"1,23"`` and anything with a non-ASCII digit -> None. Exact (no float rounding).
    """
    s = text.strip()
    if len(s) > MAX_NUMBER_CHARS or not s.isascii():
        return None
    s = s.rstrip(".").strip()  # sentence-final period: "#### 12."
    if s.endswith("%"):
        s = s[:-1].strip()
    sign = ""
    if s.startswith("-"):
        sign, s = "-", s[1:].strip()
    if s.startswith("$"):
        s = s[1:].strip()
    match = _NUMBER_FULL.fullmatch(sign + s)
    if match is None:
        return None
    try:
        value = Decimal(
            match.group(1) + match.group(2).replace(",", "") + ("." + match.group(3) if match.group(3) else "")
        )
    except InvalidOperation:  # pragma: no cover - the regex admits only valid literals
        return None
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def find_numbers(text: str) -> list[str]:
    """Every number-looking token of ``text`` (ASCII digits only), in order."""
    return _NUMBER_RE.findall(text)


# ------------------------------------------------------------------------------------------------ \boxed{...}

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_BARE = re.compile(r"\\boxed[ \t]+([^\s${}]+)")  # MATH's "\boxed 2$" form
_BRACES = re.compile(r"(?<!\\)[{}]")


def last_boxed(text: str) -> str | None:
    """Content of the last balanced ``\\boxed{...}`` / ``\\fbox{...}`` (or ``\\boxed X``), else None.

    One left-to-right pass with an explicit stack: escaped braces (``\\{``) do not count, an unclosed box (a
    truncated completion) is skipped in favour of the last closed one, and nothing recurses.
    """
    opens = {m.end() - 1: m.end() for m in _BOX_OPEN.finditer(text)}  # position of "{" -> content start
    best: tuple[int, int] | None = None  # (content start, content end) of the box that starts last
    if opens:
        stack: list[int | None] = []  # content start for a box's brace, None for any other brace
        for match in _BRACES.finditer(text):
            pos = match.start()
            if text[pos] == "{":
                stack.append(opens.get(pos))
            elif stack:
                start = stack.pop()
                if start is not None and (best is None or start > best[0]):
                    best = (start, pos)
    bare = None
    for bare in _BOX_BARE.finditer(text):  # noqa: B007 -- keeps the last match
        pass
    if bare is not None and (best is None or bare.start(1) > best[0]):
        return bare.group(1)
    return text[best[0] : best[1]] if best is not None else None


def screen_answer(answer: str) -> GradeReason | None:
    """A reason to refuse a boxed answer without parsing it, or None when it may go to the symbolic checker."""
    if not answer.strip():
        return "unparsable"
    if len(answer) > MAX_ANSWER_CHARS:
        return "unparsable"
    if any(ch.isdigit() and not ch.isascii() for ch in answer):
        return "unparsable"  # see the module docstring: Unicode digits are not credited
    if "**" in answer:
        return "unparsable"  # Python power syntax is not LaTeX; math-verify would not read it as a power anyway
    return None


# ------------------------------------------------------------------------------------------------ equivalence

_WORKER_MODULE = "rlbench.tasks.math_equiv"
_VERDICT_REASON: dict[str, GradeReason] = {
    "correct": "correct",
    "wrong": "wrong",
    "unparsable": "unparsable",
    # A reference the checker cannot read must never pay out, whatever the completion says.
    "ref_unparsable": "unparsable",
    # Too large to compute exactly: the check would not finish in time, so it is reported as one that did not.
    "too_large": "timeout",
    "ref_too_large": "timeout",
}


class _LRU:
    """A small thread-safe LRU of (reference, answer) -> reason."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: collections.OrderedDict[tuple[str, str], tuple[GradeReason, float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str], timeout: float) -> GradeReason | None:
        with self._lock:
            hit = self._data.get(key)
            if hit is None:
                return None
            reason, limit = hit
            if reason == "timeout" and timeout > limit:
                return None  # a longer limit might finish where a shorter one did not
            self._data.move_to_end(key)
            return reason

    def put(self, key: tuple[str, str], reason: GradeReason, timeout: float) -> None:
        with self._lock:
            self._data[key] = (reason, timeout)
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)


_CACHE = _LRU(50_000)


class EquivalenceChecker:
    """Symbolic equivalence of boxed answers under a hard per-check time limit, callable from any thread.

    ``timeout`` is wall seconds per check once a worker is free; ``workers`` sizes the shared process pool
    (0 = :func:`default_workers`). Results are cached process-wide, since RL samples repeat answers a lot.
    """

    def __init__(self, timeout: float = 2.0, workers: int = 0) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.timeout = timeout
        self.workers = workers or default_workers()

    def _pool(self):
        return shared_pool(self.workers, preload=(_WORKER_MODULE,))

    def warm_up(self) -> None:
        """Start the worker processes now (seconds on first use) rather than inside the first timed grade."""
        self._pool().warm_up()

    def check(self, reference: str, answer: str) -> GradeReason:
        """``correct``, ``wrong``, ``unparsable`` or ``timeout`` for a boxed ``answer`` against ``reference``."""
        refused = screen_answer(answer)
        if refused is not None:
            return refused
        key = (reference, answer)
        cached = _CACHE.get(key, self.timeout)
        if cached is not None:
            return cached
        outcome = self._pool().call(_WORKER_MODULE, "check", (reference, answer), self.timeout)
        if outcome.status == "ok":
            reason = _VERDICT_REASON[outcome.value]
        elif outcome.status == "timeout":
            reason = "timeout"
        else:
            # sympy raised (MemoryError, RecursionError, ...) or the worker died: unreadable, never credited.
            reason = "unparsable"
        _CACHE.put(key, reason, self.timeout)
        return reason

    def check_many(self, pairs: Sequence[tuple[str, str]]) -> list[GradeReason]:
        """:meth:`check` for many pairs, one thread per worker so the pool runs them in parallel."""
        unique = list(dict.fromkeys(pairs))
        if len(unique) <= 1:
            results = {pair: self.check(*pair) for pair in unique}
        else:
            with ThreadPoolExecutor(max_workers=min(self.workers, len(unique)), thread_name_prefix="grade") as ex:
                results = dict(zip(unique, ex.map(lambda pair: self.check(*pair), unique)))
        return [results[pair] for pair in pairs]
