"""``index.html``: one self-contained page (inline CSS, base64 PNG figures, no script, no external resource)."""

from __future__ import annotations

import re
from html import escape
from typing import Any

from rlbench.study.report.plots import Plot, task_plots
from rlbench.study.report.tables import Table, summary, task_tables
from rlbench.study.report.text import Fact, method_facts, task_facts

NUMERIC = re.compile(r"^(?:[-+–]?\d|–$|reference$)")
CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1320px;
       padding: 0 16px; color: #1d1d1f; }
h1 { font-size: 26px; } h2 { margin-top: 36px; border-bottom: 2px solid #ddd; padding-bottom: 4px; }
h3 { margin-top: 24px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
code { background: #f3f3f3; padding: 1px 4px; border-radius: 3px; word-break: break-all; }
table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d0d0; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { background: #f5f5f7; } td.text, td.long { text-align: left; } td.long { white-space: normal; }
p.note { color: #555; margin: 2px 0; font-size: 13px; }
.bad { color: #b00020; font-weight: 600; } .good { color: #1b7f3b; font-weight: 600; }
figure { margin: 16px 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; }
td.pre { text-align: left; white-space: pre-wrap; font: 12px/1.35 ui-monospace, Menlo, Consolas, monospace;
         min-width: 220px; max-width: 520px; overflow-wrap: anywhere; }
"""


def render_html(data: dict[str, Any]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # an empty data: icon stops the browser from requesting /favicon.ico
        '<link rel="icon" href="data:,">',
        f"<title>RL leaderboard: {escape(', '.join(t['label'] for t in data['tasks']))}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        "<h1>RL algorithm leaderboard</h1>",
        _facts(method_facts(data)),
    ]
    if len(data["tasks"]) > 1:
        parts.append(_table(summary(data), "h2"))
    for task in data["tasks"]:
        parts.append(f"<h2>Task: {escape(task['label'])}</h2>")
        parts.append(_facts(task_facts(task)))
        if task["audit"]["problems"]:
            items = "".join(f"<li>{escape(p)}</li>" for p in task["audit"]["problems"])
            parts.append(f'<p class="bad">Audit problems:</p><ul>{items}</ul>')
        if task["audit"].get("unchecked"):
            items = "".join(f"<li>{escape(p)}</li>" for p in task["audit"]["unchecked"])
            parts.append(f"<p>Not checked:</p><ul>{items}</ul>")
        tables = task_tables(task, data)
        parts.append(_table(tables[0], "h3"))
        parts.extend(_figure(p) for p in task_plots(task, data))
        parts.extend(_table(t, "h3") for t in tables[1:])
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _facts(facts: list[Fact]) -> str:
    items = "".join(f"<dt>{escape(label)}</dt><dd>{_inline(value)}</dd>" for label, value in facts)
    return f'<dl class="facts">{items}</dl>'


def _inline(text: str) -> str:
    """Escape, then turn markdown `code` spans into <code> and colour the audit verdict."""
    html = re.sub(r"`([^`]*)`", r"<code>\1</code>", escape(text))
    html = re.sub(r"^NOT matched", '<span class="bad">NOT matched</span>', html)
    return re.sub(r"^matched", '<span class="good">matched</span>', html)


def _table(table: Table, heading: str) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="pre">{escape(c)}</td>' if i in table.pre else _td(c) for i, c in enumerate(row))
        + "</tr>"
        for row in table.rows
    )
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in table.notes)
    return f"<{heading}>{escape(table.title)}</{heading}><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}"


def _td(cell: str) -> str:
    # numbers align right; words align left, and long free text (audit reasons) may wrap
    if NUMERIC.match(cell):
        return f"<td>{escape(cell)}</td>"
    cls = "long" if len(cell) > 40 else "text"
    return f'<td class="{cls}">{escape(cell)}</td>'


def _figure(plot: Plot) -> str:
    return (
        f'<figure><h3>{escape(plot.title)}</h3><img alt="{escape(plot.title)}" '
        f'src="data:image/png;base64,{plot.png_base64}"><figcaption>{_inline(plot.caption)}</figcaption></figure>'
    )
