"""``leaderboard.md``: the report dict as markdown (header facts, then per task: tables, audit)."""
from __future__ import annotations

from typing import Any

from rlbench.report_tables import Table, summary, task_tables
from rlbench.report_text import Fact, method_facts, task_facts


def render_markdown(data: dict[str, Any]) -> str:
    lines = ["# RL algorithm leaderboard", ""]
    lines += _facts(method_facts(data))
    if len(data["tasks"]) > 1:
        lines += _table(summary(data), "##")
    for task in data["tasks"]:
        lines += [f"## Task: {task['label']}", ""]
        lines += _facts(task_facts(task))
        if task["audit"]["problems"]:
            lines += ["Audit problems:", ""] + [f"- {_cell(p)}" for p in task["audit"]["problems"]] + [""]
        for table in task_tables(task, data):
            lines += _table(table, "###")
    return "\n".join(lines).rstrip() + "\n"


def _facts(facts: list[Fact]) -> list[str]:
    return [f"- **{label}**: {value}" for label, value in facts] + [""]


def _table(table: Table, level: str) -> list[str]:
    lines = [f"{level} {table.title}", ""]
    lines.append("| " + " | ".join(table.columns) + " |")
    lines.append("|" + "|".join("---" for _ in table.columns) + "|")
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
    if not table.rows:
        lines.append("| " + " | ".join(["–"] * len(table.columns)) + " |")
    lines.append("")
    lines += [f"{note}  " for note in table.notes]
    return lines + [""]


def _cell(text: str) -> str:
    """Keep a cell on one table row: escape pipes, flatten newlines."""
    return text.replace("|", "\\|").replace("\n", " ")
