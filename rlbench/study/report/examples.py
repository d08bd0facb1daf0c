"""Example completions of a row, for a reader to see what the numbers count: a few correct, a few wrong.

From the training rollouts the trainer logs (samples.jsonl: step, id, prompt, completion, reward, reason), the
latest step that has each kind; runs without that file (older ones) fall back to the greedy completions of their
final evaluation (eval_records.jsonl, which has no prompt). Fields a file lacks are None, never guessed.
"""

from __future__ import annotations

from typing import Any

from rlbench.study.report.inputs import RunFiles
from rlbench.study.report.runs import correct, number

PER_KIND = 2  # correct and wrong examples shown per row
TEXT_CHARS = 600  # longer prompts and completions are cut in the middle


def examples(runs: list[RunFiles]) -> list[dict[str, Any]]:
    """Up to :data:`PER_KIND` correct then up to :data:`PER_KIND` wrong completions (seeds in order)."""
    logged = [(r, row) for r in runs for row in r.samples if isinstance(row.get("completion"), str)]
    if logged:
        return _pick([_training(r, row) for r, row in logged], latest=True)
    finals = [
        (r, rec)
        for r in runs
        for rec in r.records
        if isinstance(rec.get("greedy"), dict) and isinstance(rec["greedy"].get("completion"), str)
    ]
    return _pick([_final(r, rec) for r, rec in finals], latest=False)


def _training(run: RunFiles, row: dict[str, Any]) -> dict[str, Any]:
    reward = number(row.get("reward"))
    reason = row.get("reason") if isinstance(row.get("reason"), str) else None
    ok = reason == "correct" if reason is not None else (reward > 0 if reward is not None else None)
    return {
        "source": "training",
        "seed": run.seed,
        "step": number(row.get("step")),
        "id": _text(row.get("id")),
        "prompt": _clip(row.get("prompt")),
        "completion": _clip(row["completion"]),
        "reward": reward,
        "reason": reason,
        "correct": ok,
    }


def _final(run: RunFiles, rec: dict[str, Any]) -> dict[str, Any]:
    greedy = rec["greedy"]
    reason = greedy.get("reason") if isinstance(greedy.get("reason"), str) else None
    return {
        "source": "final evaluation (greedy)",
        "seed": run.seed,
        "step": None,
        "id": _text(rec.get("id")),
        "prompt": None,
        "completion": _clip(greedy["completion"]),
        "reward": number(greedy.get("reward")),
        "reason": reason,
        "correct": correct(greedy),
    }


def _pick(items: list[dict[str, Any]], latest: bool) -> list[dict[str, Any]]:
    out = []
    for kind in (True, False, None):  # None: neither reason nor reward logged; shown only when nothing else is
        if kind is None and out:
            break
        found = [i for i in items if i["correct"] is kind]
        if latest and found:
            top = max(i["step"] or 0 for i in found)
            found = [i for i in found if (i["step"] or 0) == top]
        out += found[:PER_KIND]
    return out


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _clip(value: Any) -> str | None:
    """The text, or its start and end around "…" when it is longer than :data:`TEXT_CHARS`."""
    if not isinstance(value, str):
        return None
    if len(value) <= TEXT_CHARS:
        return value
    head = TEXT_CHARS // 3
    return value[:head] + " … " + value[-(TEXT_CHARS - head) :]
