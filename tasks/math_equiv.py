"""Symbolic answer equivalence with math-verify; runs inside a grading worker process (see worker_pool.py).

Only the LaTeX extractor of math-verify is used: its other extractor (``ExprExtractionConfig``) hands text to sympy's
``parse_expr``, which calls ``eval`` and would run ``__import__('os').system(...)`` written by a model. The LaTeX
parser (latex2sympy2_extended, an ANTLR grammar) builds sympy trees without evaluating any Python.

math-verify's own timeouts are switched off (they use ``signal.alarm``); the worker pool's kill is the limit. Before
comparing, a cheap size bound on the parsed trees rejects power towers and huge factorials, which sympy would try to
expand digit by digit, so they cost milliseconds instead of a killed worker.
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache
from typing import Any, Literal

import sympy
from math_verify import LatexExtractionConfig, parse, verify
from sympy.matrices import MatrixBase

# "Timeout is disabled" is logged once per process by design here; sympy failures are logged at debug level.
logging.getLogger("math_verify").setLevel(logging.ERROR)

Verdict = Literal["correct", "wrong", "unparsable", "ref_unparsable", "too_large", "ref_too_large"]

#: Reject any subexpression whose magnitude may exceed 10**MAX_LOG10 (100,000 digits): sympy would build it exactly.
MAX_LOG10 = 1e5

_CONFIG = (LatexExtractionConfig(boxed_match_priority=0),)


def _parse(answer: str) -> list[Any]:
    """The sympy forms of one boxed answer; [] when the LaTeX does not parse (a bare string never counts)."""
    parsed = parse(
        "\\boxed{" + answer + "}", extraction_config=_CONFIG, fallback_mode="no_fallback", parsing_timeout=None
    )
    return [p for p in parsed if isinstance(p, (sympy.Basic, MatrixBase))]


@lru_cache(maxsize=4096)
def _parse_reference(reference: str) -> tuple[Any, ...]:
    # The same reference is graded once per sample (N per prompt), so its parse is worth keeping.
    return tuple(_parse(reference))


def magnitude_log10(expr: Any) -> float:
    """An upper bound on log10 of the largest number met while evaluating ``expr``; inf for towers.

    Iterative post-order walk (deep trees must not hit the recursion limit). Symbols and functions whose size is
    not a concern (sin, log, ...) count as magnitude 1 or the largest of their arguments.
    """
    if isinstance(expr, MatrixBase):
        return max((magnitude_log10(e) for e in expr), default=0.0)
    if not isinstance(expr, sympy.Basic):
        return 0.0
    bound: dict[int, float] = {}
    stack: list[tuple[Any, bool]] = [(expr, False)]
    while stack:
        node, expanded = stack.pop()
        if id(node) in bound:
            continue
        if not expanded and node.args:
            stack.append((node, True))
            stack.extend((arg, False) for arg in node.args if isinstance(arg, sympy.Basic))
            continue
        bound[id(node)] = _node_bound(node, [bound.get(id(a), 0.0) for a in node.args if isinstance(a, sympy.Basic)])
        if bound[id(node)] > MAX_LOG10:
            return math.inf
    return bound[id(expr)]


def _node_bound(node: Any, args: list[float]) -> float:
    if isinstance(node, sympy.Integer):
        return abs(int(node.p)).bit_length() * 0.30103
    if isinstance(node, sympy.Rational):
        return max(abs(int(node.p)).bit_length(), abs(int(node.q)).bit_length()) * 0.30103
    if isinstance(node, sympy.Float):
        _sign, mantissa, exponent, bits = node._mpf_
        return abs(exponent + bits) * 0.30103 if mantissa else 0.0
    if isinstance(node, sympy.Mul):
        return sum(args)
    if isinstance(node, sympy.Add):
        return max(args, default=0.0) + 1
    if isinstance(node, sympy.Pow):
        base, exponent = args[0], args[1]
        # |b^e| <= 10^(|e| * log10|b|); the exponent's own value is at most 10^exponent-bound.
        return math.inf if exponent > 15 else max(base, 1.0) * 10**exponent
    if isinstance(node, sympy.exp):
        return math.inf if args[0] > 15 else 10 ** args[0] / math.log(10)
    if isinstance(node, (sympy.factorial, sympy.gamma, sympy.factorial2, sympy.binomial, sympy.subfactorial)):
        n = 10 ** max(args, default=0.0)
        return math.inf if n > 1e12 else n * max(math.log10(max(n, 1.0)), 1.0)
    return max(args, default=0.0)


def check(reference: str, answer: str) -> Verdict:
    """Compare a boxed ``answer`` with the ``reference`` answer (both LaTeX, without the ``\\boxed{}``)."""
    gold = _parse_reference(reference)
    if not gold:
        return "ref_unparsable"
    if any(magnitude_log10(g) > MAX_LOG10 for g in gold):
        return "ref_too_large"
    target = _parse(answer)
    if not target:
        return "unparsable"
    if any(magnitude_log10(t) > MAX_LOG10 for t in target):
        return "too_large"
    return "correct" if verify(list(gold), target, timeout_seconds=None) else "wrong"
