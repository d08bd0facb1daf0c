"""Gold check of the graders on the real data: each reference solution, fed back as the completion, must score
correct; the same solution with its final answer replaced by a wrong one must not.

    python benchmarks/gold_check.py [--data ../shared/data] [--only gsm8k|math500|lvl5] [--limit N] [--timeout S]

Prints, per set: items, correct rate of the gold completions, correct rate of the corrupted ones (should be ~0),
the failure reasons, and the wall time. Exits 1 when a set misses its threshold (GSM8K >= 99.5%, MATH >= 99%,
corrupted <= 1%). Reads local files only; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlbench.tasks.base import Example, Task  # noqa: E402
from rlbench.tasks.grading import normalize_number  # noqa: E402

from rlbench.core.configure import build_task

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def wrong_number(answer: str) -> str | None:
    """The reference plus one, when the reference is a plain number."""
    number = normalize_number(answer)
    return None if number is None else format(Decimal(number) + 1, "f")


def gsm8k_corrupt(example: Example, _others: list[Example]) -> str:
    body = (example.solution or "").rsplit("####", 1)[0]
    return f"{body}#### {wrong_number(example.answer)}"


def math_corrupt(example: Example, others: list[Example]) -> str:
    """Numbers get +1; any other answer is swapped for the next problem's (different) reference."""
    wrong = wrong_number(example.answer)
    if wrong is None:
        position = others.index(example)
        wrong = next(o.answer for o in others[position + 1 :] + others[:position] if o.answer != example.answer)
    return f"{example.solution}\nSo the final answer is $\\boxed{{{wrong}}}$."


def run_set(label: str, task: Task, corrupt: Callable[[Example, list[Example]], str], limit: int | None) -> dict:
    examples = task.load("test")[:limit]
    start = time.perf_counter()
    gold = task.grade_many([e.solution or "" for e in examples], examples)
    bad = task.grade_many([corrupt(e, examples) for e in examples], examples)
    seconds = time.perf_counter() - start
    n = len(examples)
    result = {
        "set": label,
        "items": n,
        "gold_correct": sum(g.correct for g in gold) / n,
        "corrupt_correct": sum(g.correct for g in bad) / n,
        "gold_failures": dict(collections.Counter(g.reason for g in gold if not g.correct)),
        "corrupt_reasons": dict(collections.Counter(g.reason for g in bad)),
        "seconds": round(seconds, 1),
        "misses": [(e.id, e.answer, g.reason, g.extracted) for e, g in zip(examples, gold) if not g.correct][:10],
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--only", choices=("gsm8k", "math500", "lvl5"), action="append")
    parser.add_argument("--limit", type=int, default=None, help="first N items of each set")
    parser.add_argument("--timeout", type=float, default=None, help="math-hard grade_timeout (default: the task's)")
    args = parser.parse_args()
    math_options = {} if args.timeout is None else {"grade_timeout": args.timeout}
    sets = {
        "gsm8k": (lambda: build_task({"name": "gsm8k", "data": str(args.data / "gsm8k")}), gsm8k_corrupt, 0.995),
        "math500": (
            lambda: build_task({"name": "math-hard", "data": str(args.data / "math"), **math_options}),
            math_corrupt,
            0.99,
        ),
        "lvl5": (
            lambda: build_task(
                {"name": "math-hard", "data": str(args.data / "math"), "preset": "lvl5", **math_options}
            ),
            math_corrupt,
            0.99,
        ),
    }
    ok = True
    for label in args.only or list(sets):
        build, corrupt, threshold = sets[label]
        result = run_set(label, build(), corrupt, args.limit)
        passed = result["gold_correct"] >= threshold and result["corrupt_correct"] <= 0.01
        ok &= passed
        print(
            f"{label:8s} items={result['items']:5d} gold_correct={result['gold_correct']:.4f} "
            f"corrupt_correct={result['corrupt_correct']:.4f} seconds={result['seconds']} {'PASS' if passed else 'FAIL'}"
        )
        print(
            f"         gold failures: {result['gold_failures'] or 'none'}; corrupt reasons: {result['corrupt_reasons']}"
        )
        for miss in result["misses"]:
            print(f"         miss: {miss}")
        sys.stdout.flush()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
