"""Shared grading helpers: numbers, \\boxed{} extraction, the kill-on-timeout worker pool, symbolic equivalence."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from rlbench.tasks.grading import (
    MAX_ANSWER_CHARS,
    EquivalenceChecker,
    find_numbers,
    last_boxed,
    normalize_number,
    screen_answer,
)
from rlbench.tasks.worker_pool import WorkerPool

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("42", "42"),
        (" 1,234 ", "1234"),
        ("1,234,567.50", "1234567.5"),
        ("18.0", "18"),
        ("18.000", "18"),
        ("0.50", "0.5"),
        ("$18", "18"),
        ("-$5", "-5"),
        ("$-5", "-5"),
        ("50%", "50"),
        ("12.", "12"),
        ("-0", "0"),
        ("-0.0", "0"),
        ("007", "7"),
        ("1e5", None),
        ("nan", None),
        ("Infinity", None),
        ("1,23", None),
        ("12,34,567", None),
        ("", None),
        (".", None),
        ("abc", None),
        ("4 2", None),
        ("９", None),  # fullwidth digit: int("９") == 9, but it is not credited
        ("٤٢", None),  # Arabic-Indic digits
        ("4\u0662", None),  # mixed ASCII and Arabic-Indic
        ("1" * 65, None),  # longer than any answer anyone writes
    ],
)
def test_normalize_number(text: str, expected: str | None) -> None:
    assert normalize_number(text) == expected


def test_find_numbers_reads_only_ascii_digits() -> None:
    assert find_numbers("I had 3 apples, then 1,200 and -4.5 but not ٤٢ or ４２") == ["3", "1,200", "-4.5"]


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{5}.", "5"),
        (r"\boxed{1} then \boxed{2}", "2"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\fbox{7}", "7"),
        (r"\boxed {x^{2}}", "x^{2}"),
        (r"answer $\boxed 2$.", "2"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces are text, not nesting
        (r"\boxed{3} and a truncated \boxed{\frac{1}{", "3"),  # an unclosed box is skipped
        (r"} stray close \boxed{4}", "4"),
        ("no box here", None),
        (r"\boxed{", None),
        (r"\boxed", None),
    ],
)
def test_last_boxed(text: str, expected: str | None) -> None:
    assert last_boxed(text) == expected


def test_last_boxed_deep_nesting_is_iterative_and_fast() -> None:
    depth = 10_000
    text = r"\boxed{" + "{" * depth + "1" + "}" * depth + "}"
    start = time.perf_counter()
    assert last_boxed(text) == "{" * depth + "1" + "}" * depth
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    "text",
    ["x" * (1 << 20), "{" * (1 << 19) + "}" * (1 << 19), r"\boxed{" * 150_000, (r"\boxed{1}" + "{" * 1000) * 100],
    ids=["plain", "braces", "open-boxes", "boxes-and-braces"],
)
def test_last_boxed_megabyte_inputs_are_linear(text: str) -> None:
    start = time.perf_counter()
    last_boxed(text)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(
    "answer, refused",
    [
        ("42", None),
        (r"\frac{1}{2}", None),
        ("", "unparsable"),
        ("   ", "unparsable"),
        ("x" * (MAX_ANSWER_CHARS + 1), "unparsable"),
        ("４２", "unparsable"),
        ("x²", "unparsable"),  # superscript two is a Unicode digit too
        ("9**9**9**9", "unparsable"),
    ],
)
def test_screen_answer(answer: str, refused: str | None) -> None:
    assert screen_answer(answer) == refused


# ------------------------------------------------------------------------------------------------ worker pool


@pytest.fixture(scope="module")
def pool():
    p = WorkerPool(2, memory_limit=None)
    p.warm_up()
    yield p
    p.close()


def test_pool_runs_a_call(pool: WorkerPool) -> None:
    outcome = pool.call("math", "factorial", (5,), timeout=30)
    assert (outcome.status, outcome.value) == ("ok", 120)


def test_pool_reports_exceptions(pool: WorkerPool) -> None:
    outcome = pool.call("math", "sqrt", (-1,), timeout=30)
    assert outcome.status == "error" and outcome.value.startswith("ValueError")


def test_pool_kills_on_timeout_and_recovers(pool: WorkerPool) -> None:
    start = time.perf_counter()
    outcome = pool.call("time", "sleep", (60,), timeout=0.5)
    assert outcome.status == "timeout"
    assert time.perf_counter() - start < 3.0
    # The killed worker was replaced: the pool still answers, with both workers busy at once.
    pool.warm_up()
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(pool.call("math", "factorial", (6,), 30))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.value for r in results] == [720] * 4


def test_pool_timeout_works_from_a_non_main_thread(pool: WorkerPool) -> None:
    box: dict[str, object] = {}

    def run() -> None:
        start = time.perf_counter()
        box["outcome"] = pool.call("time", "sleep", (60,), timeout=0.5)
        box["seconds"] = time.perf_counter() - start

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert box["outcome"].status == "timeout" and box["seconds"] < 3.0


def test_pool_survives_a_worker_dying(pool: WorkerPool) -> None:
    assert pool.call("os", "_exit", (3,), timeout=30).status == "crashed"
    assert pool.call("math", "factorial", (4,), timeout=30).value == 24


# ------------------------------------------------------------------------------------------------ equivalence


@pytest.fixture(scope="module")
def checker() -> EquivalenceChecker:
    c = EquivalenceChecker(timeout=2.0, workers=2)
    c.warm_up()
    return c


@pytest.mark.parametrize(
    "reference, answer, reason",
    [
        (r"\frac{1}{2}", "0.5", "correct"),
        (r"\frac{1}{2}", r"\dfrac12", "correct"),
        (r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt3}{2}", "correct"),
        ("(1,2)", "(1, 2)", "correct"),
        (r"x^2+1", r"1+x^{2}", "correct"),
        (r"\frac{1}{2}", r"\frac{1}{3}", "wrong"),
        ("5", "6", "wrong"),
        ("5", "}{", "unparsable"),
        ("2^{2^{3}}", "256", "correct"),  # a small tower is fine
        ("5", r"10^{10^{10}}", "timeout"),  # a big one is refused by the size bound, not computed
        ("5", r"(10^{10})!", "timeout"),
        ("5", r"\exp(\exp(100))", "timeout"),
    ],
)
def test_equivalence(checker: EquivalenceChecker, reference: str, answer: str, reason: str) -> None:
    assert checker.check(reference, answer) == reason


def test_unparsable_reference_never_pays(checker: EquivalenceChecker) -> None:
    # math-verify falls back to comparing raw strings when LaTeX does not parse; an identical copy must not pass.
    reference = r"\frac \pi4 + 2 - \sqrt2"
    assert checker.check(reference, reference) == "unparsable"
    assert checker.check("}{", "}{") == "unparsable"


def test_check_many_matches_check(checker: EquivalenceChecker) -> None:
    pairs = [("3", "3"), ("3", "4"), (r"\frac{2}{4}", "0.5"), ("3", "3")] * 3
    assert checker.check_many(pairs) == [checker.check(*p) for p in pairs]


def test_math_verify_parse_does_not_evaluate_python(tmp_path: Path) -> None:
    from rlbench.tasks import math_equiv

    target = tmp_path / "PWNED"
    assert math_equiv._parse(f"__import__('os').system('touch {target}')") == []
    assert math_equiv.check("5", f"__import__('os').system('touch {target}')") == "unparsable"
    assert not target.exists()


def test_magnitude_bound() -> None:
    import sympy
    from rlbench.tasks.math_equiv import MAX_LOG10, magnitude_log10

    assert magnitude_log10(sympy.Integer(10) ** 100) < 200
    tower = sympy.Pow(10, sympy.Pow(10, sympy.Pow(10, 10, evaluate=False), evaluate=False), evaluate=False)
    assert magnitude_log10(tower) > MAX_LOG10
    assert magnitude_log10(sympy.factorial(sympy.Integer(10) ** 15, evaluate=False)) > MAX_LOG10
    assert magnitude_log10(sympy.Symbol("x") ** 2 + 1) < 10


def test_no_evaluation_of_model_text_in_the_sources() -> None:
    # math-verify's ExprExtractionConfig would hand text to sympy's parse_expr, which calls eval.
    forbidden = re.compile(r"\b(eval|exec|sympify|parse_expr|ExprExtractionConfig)\s*\(")
    sources = [*sorted((ROOT / "tasks").glob("*.py")), ROOT / "rlbench" / "cli" / "grade.py"]
    hits = [
        f"{p.name}:{n}"
        for p in sources
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if forbidden.search(line)
    ]
    assert hits == []


def test_orphaned_worker_is_stopped_by_the_cpu_limit() -> None:
    # Safety net for a worker whose parent died mid-job: the kernel ends it after its CPU allowance.
    import signal
    import subprocess
    import sys

    code = (
        "import resource; from rlbench.tasks.worker_pool import _limit_cpu; _limit_cpu(resource, 1); sum(range(10**12))"
    )
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -signal.SIGXCPU
