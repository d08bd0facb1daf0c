"""Lexical markers of reasoning behaviours, counted in final-evaluation completions.

Three behaviours, each a list of case-insensitive regular expressions (the only place they are defined):

* ``self_verification`` -- the model checks its own work: "let me check", "verify", "double-check", "sanity check",
  "plug it back in".
* ``backtracking`` -- the model abandons or corrects a line of reasoning: "wait", "actually", "that's wrong",
  "I made a mistake", "let me redo / recompute / try again", "on second thought", "oops".
* ``decomposition`` -- the model splits the problem into sub-steps: "first", "step 1", "next", "then", "finally",
  "sub-problem", "break it down", "let's start by".

A response *shows* a behaviour when at least one of its patterns matches. The report gives, per algorithm, how many
responses per 100 show each behaviour (a rate in [0, 100], so one rambling answer cannot dominate it) and the total
number of matches per 100 responses.

These are surface cues, not a classifier: "then" in a plain sentence counts as decomposition, and a model can verify
without saying so. Compare algorithms with them; do not read them as absolute measurements. On the tiny arithmetic
lab, whose completions look like ``" 94+2=96 96-39=57 #### 57"``, every count is 0 -- which is the true answer.

>>> show = behaviours_in("Wait, that's wrong. Let me double-check: first 3+4=7.")
>>> sorted(name for name, hits in show.items() if hits)
['backtracking', 'decomposition', 'self_verification']
>>> rates(["Step 1: 2+2=4", "4 #### 4"])["decomposition"]
{'per_100': 50.0, 'matches_per_100': 50.0, 'responses': 2}
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: behaviour -> case-insensitive patterns; ``\b`` keeps "then" from matching "strengthen" and "wait" "awaited".
PATTERNS: dict[str, tuple[str, ...]] = {
    "self_verification": (
        r"\blet(?:'s| me| us) (?:double[- ]?)?check\b",
        r"\bdouble[- ]?check",
        r"\bverif(?:y|ies|ied|ying|ication)\b",
        r"\bcheck(?:ing)? (?:my|the|our|this|that) (?:answer|work|result|solution|calculation|math)s?\b",
        r"\bsanity[- ]check",
        r"\b(?:plug|substitut)\w*\b.{0,30}?\bback\b",
        r"\bconfirm(?:s|ed|ing)?\b",
    ),
    "backtracking": (
        r"\bwait\b",
        r"\bactually\b",
        r"\bthat(?:'s| is| was) (?:wrong|incorrect|not (?:right|correct))\b",
        r"\bi made an? (?:mistake|error)\b",
        r"\blet(?:'s| me| us) (?:redo|recompute|recalculate|reconsider|re-?evaluate|try again|start over)\b",
        r"\bon second thought\b",
        r"\boops\b",
        r"\bhmm+\b",
    ),
    "decomposition": (
        r"\bfirst(?:ly)?\b",
        r"\bstep\s*\d+\b",
        r"\bnext\b",
        r"\bthen\b",
        r"\bfinally\b",
        r"\bsub-?(?:problem|goal|task)s?\b",
        r"\bbreak (?:it|this|the problem) (?:down|into)\b",
        r"\blet(?:'s| me| us) start (?:by|with)\b",
    ),
}

BEHAVIOURS: tuple[str, ...] = tuple(PATTERNS)
_COMPILED = {name: [re.compile(p, re.IGNORECASE) for p in pats] for name, pats in PATTERNS.items()}


def behaviours_in(text: str) -> dict[str, int]:
    """Number of pattern matches of each behaviour in one response."""
    return {name: sum(len(p.findall(text)) for p in pats) for name, pats in _COMPILED.items()}


def rates(texts: Iterable[str]) -> dict[str, dict[str, float | int | None]]:
    """Per behaviour: responses showing it per 100 responses, matches per 100 responses, and the response count.

    With no responses the rates are None (unknown), not 0.
    """
    shown = dict.fromkeys(BEHAVIOURS, 0)
    matches = dict.fromkeys(BEHAVIOURS, 0)
    n = 0
    for text in texts:
        n += 1
        for name, hits in behaviours_in(text).items():
            matches[name] += hits
            shown[name] += hits > 0
    return {
        name: {
            "per_100": round(100.0 * shown[name] / n, 2) if n else None,
            "matches_per_100": round(100.0 * matches[name] / n, 2) if n else None,
            "responses": n,
        }
        for name in BEHAVIOURS
    }
