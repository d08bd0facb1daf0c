"""Boxed final answers (MATH's convention): the reference (and level) of a record, and grading by equivalence.

A completion's answer is the content of its last ``\\boxed{}`` (``grading.last_boxed``); an unboxed answer is never
credited (reason ``no_answer``). A boxed one is credited when math-verify finds it equivalent to the reference, in a
worker process killed at the per-grade limit (``grading.EquivalenceChecker``).
"""

from __future__ import annotations

from collections.abc import Sequence

from rlbench.core.config import ConfigError

from .base import Grade
from .data import DataError, Record
from .grading import MAX_ANSWER_CHARS, EquivalenceChecker, last_boxed


def level_of(record: Record) -> int | None:
    """MATH's "Level 3" strings and MATH-500's integer 3 alike; None for "Level ?"."""
    if "level" not in record.fields:
        raise DataError(f"{record.where}: field 'level' is missing (needed to select the preset's levels)")
    value = record.fields["level"]
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        digits = value.removeprefix("Level").strip()
        return int(digits) if digits.isascii() and digits.isdigit() else None
    raise DataError(f"{record.where}: field 'level' must be like 'Level 5' or 5, got {value!r}")


def equivalence_checker(timeout: float, workers: int) -> EquivalenceChecker:
    """The checker for options ``task.grade_timeout`` (seconds per grade) and ``task.grade_workers`` (0 = automatic)."""
    if not timeout > 0:
        raise ConfigError(f"task.grade_timeout={timeout!r}: must be > 0 seconds")
    if workers < 0:
        raise ConfigError(f"task.grade_workers={workers!r}: must be >= 0 (0 = automatic)")
    return EquivalenceChecker(timeout, workers)


def reference_answer(record: Record) -> str:
    """The ``answer`` field where the data has one, else the last ``\\boxed{}`` of ``solution``; stripped."""
    solution = record.text("solution", required=False)
    answer = record.text("answer", required=False)
    if answer is None:
        if solution is None:
            raise DataError(
                f"{record.where}: fields 'answer' and 'solution' are both missing; one must give the final answer"
            )
        answer = last_boxed(solution)
        # An empty box (one MATH train problem has "\boxed{}") is kept, so split sizes match the literature;
        # the checker cannot read it, so it never pays. No box at all is a broken record.
        if answer is None:
            raise DataError(f"{record.where}: no field 'answer' and field 'solution' has no \\boxed{{}} final answer")
    return answer.strip()


def grade_boxed(checker: EquivalenceChecker, completions: Sequence[str], references: Sequence[str]) -> list[Grade]:
    """Grade each completion's last ``\\boxed{}`` against its reference; one batch of checks for the whole list."""
    if len(completions) != len(references):
        raise ValueError(f"{len(completions)} completions for {len(references)} examples")
    boxed = [last_boxed(c) for c in completions]
    reasons = iter(checker.check_many([(ref, b) for ref, b in zip(references, boxed) if b is not None]))
    grades = []
    for answer in boxed:
        if answer is None:
            grades.append(Grade.fail("no_answer"))  # an unboxed answer is never credited
            continue
        reason = next(reasons)
        shown = answer if len(answer) <= MAX_ANSWER_CHARS else answer[:MAX_ANSWER_CHARS] + "..."
        grades.append(Grade.right(shown) if reason == "correct" else Grade.fail(reason, shown))
    return grades
