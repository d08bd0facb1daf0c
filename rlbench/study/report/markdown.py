"""``leaderboard.md``: the report dict as markdown (header facts, then per task: tables, audit)."""

from __future__ import annotations

import re
from typing import Any

from rlbench.study.report.tables import Table, summary, task_tables
from rlbench.study.report.text import Fact, method_facts, task_facts


def render_markdown(data: dict[str, Any]) -> str:
    lines = ["# RL algorithm leaderboard", ""]
    lines += _facts(method_facts(data))
    if len(data["tasks"]) > 1:
        lines += _table(summary(data), "##")
    for task in data["tasks"]:
        lines += [f"## Task: {_text(task['label'])}", ""]
        lines += _facts(task_facts(task))
        if task["audit"]["problems"]:
            lines += ["Audit problems:", ""] + [f"- {_cell(p)}" for p in task["audit"]["problems"]] + [""]
        if task["audit"].get("unchecked"):
            lines += ["Not checked:", ""] + [f"- {_cell(p)}" for p in task["audit"]["unchecked"]] + [""]
        for table in task_tables(task, data):
            lines += _table(table, "###")
    return "\n".join(lines).rstrip() + "\n"


def _facts(facts: list[Fact]) -> list[str]:
    return [f"- **{_text(label)}**: {_text(value)}" for label, value in facts] + [""]


def _table(table: Table, level: str) -> list[str]:
    lines = [f"{level} {_text(table.title)}", ""]
    lines.append("| " + " | ".join(_cell(c) for c in table.columns) + " |")
    lines.append("|" + "|".join("---" for _ in table.columns) + "|")
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
    if not table.rows:
        lines.append("| " + " | ".join(["–"] * len(table.columns)) + " |")
    lines.append("")
    lines += [f"{_text(note)}  " for note in table.notes]
    return lines + [""]


def _cell(text: str) -> str:
    """Keep a cell on one table row: escape pipes, flatten newlines; and HTML, as everywhere."""
    return _text(text.replace("\n", " ")).replace("|", "\\|")


_BACKTICKS = re.compile(r"`+")


def _text(text: str) -> str:
    """Escape ``&``, ``<`` and ``>`` as HTML entities, so a manifest value (a command, a label) cannot inject HTML.

    Code spans stay as they are: markdown shows their content literally (an entity there would show as ``&lt;``).
    They are found as CommonMark finds them: a run of N backticks up to the next run of exactly N; a run without
    such a match is plain text. Backslashes outside them are doubled (shown the same), so that no backslash can
    turn a backtick into plain text and leave the HTML after it outside a code span.
    """
    out, i = [], 0
    while (opening := _BACKTICKS.search(text, i)) is not None:
        out.append(_escape(text[i : opening.start()]))
        closing = next(
            (m for m in _BACKTICKS.finditer(text, opening.end()) if len(m.group()) == len(opening.group())), None
        )
        end = closing.end() if closing else opening.end()
        out.append(text[opening.start() : end])
        i = end
    out.append(_escape(text[i:]))
    return "".join(out)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
