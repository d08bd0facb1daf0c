"""The report's figures as base64 PNG, drawn with matplotlib's Agg canvas (no display, no pyplot global state).

The curves during training are small multiples, one panel per row (rlbench.study.report.panels); the rest are here.
"""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import Patch

from rlbench.study.report import panels
from rlbench.study.report.canvas import DPI, Plot, colours
from rlbench.study.report.canvas import png as _png
from rlbench.study.report.runs import STAGES

__all__ = ["DPI", "Plot", "colours", "task_plots"]

STAGE_COLOURS = {
    "generate": "#4c72b0",
    "grade": "#dd8452",
    "logprobs": "#55a868",
    "update": "#c44e52",
    "sync": "#8172b3",
    "other": "#bbbbbb",
}


def task_plots(task: dict[str, Any], data: dict[str, Any]) -> list[Plot]:
    metric, level = data["metric"], data["intervals"]["level"]
    col = colours(data["summary"]["algos"])
    rows = [r for r in task["algorithms"] if r["complete"]]
    if not rows:
        return []
    ref = task["reference"]
    panel = "One panel per row; thin lines are single seeds, the thick line their mean"
    plots = [
        Plot(
            f"{metric.capitalize()} accuracy during training",
            f"Held-out {metric} accuracy at each evaluation point against training samples consumed, completion "
            f"tokens generated in training, and training-loop seconds (evaluation time excluded). {panel}, the band "
            f"its {level:.0%} CI ({data['intervals']['method']}); grey dashed: the reference ({ref}) mean, for "
            "comparison.",
            panels.accuracy(rows, ref, metric, col),
        ),
        Plot(
            "Run scores",
            f"Each run's score (held-out accuracy, mean of its last {task['final_mean_of']} "
            f"evaluation(s)), mean over seeds with {level:.0%} CI bars; dots are single seeds.",
            _final(rows, col),
        ),
        Plot(
            f"Difference from {ref}",
            f"Δ = row − {ref} in run score, paired on seeds: mean with its {level:.0%} paired-t interval; "
            "dots are single seeds. Grey: the A/A control, the gap chance alone produced.",
            _deltas(task, col),
        ),
    ]
    for key, label, image in panels.training(rows, ref, col):
        width = max((r.get("training") or {}).get("bin") or 1 for r in rows)
        binned = f", each point the mean of {width} consecutive steps" if width > 1 else ""
        plots.append(
            Plot(
                f"Training curve: {label}",
                f"metrics.jsonl `{key}` per optimiser step{binned}. {panel}; the same y-axis in every panel.",
                image,
            )
        )
    plots.append(
        Plot(
            "Where the training time goes",
            "Share of training-loop time per stage (mean over seeds); the label gives generated tokens per "
            "second of generation and seconds per optimiser step.",
            _time_split(rows),
        )
    )
    return [p for p in plots if p.png_base64]  # a figure with nothing to draw is left out, not drawn empty


def _final(rows: list[dict[str, Any]], col: dict[str, str]) -> str:
    if not any(r["accuracy"][m] for r in rows for m in ("greedy", "sampled")):
        return ""
    fig = Figure(figsize=(12, 4), dpi=DPI)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.97, bottom=0.08)
    ax = fig.subplots()
    width = 0.38
    for i, r in enumerate(rows):
        for j, (metric, hatch) in enumerate((("greedy", ""), ("sampled", "//"))):
            cell = r["accuracy"][metric]
            if not cell:
                continue
            x = i + (j - 0.5) * width
            err = None
            if cell["lo"] is not None:
                err = [[100 * (cell["mean"] - cell["lo"])], [100 * (cell["hi"] - cell["mean"])]]
            ax.bar(
                x,
                100 * cell["mean"],
                width * 0.9,
                yerr=err,
                capsize=4,
                color=col[r["algo"]],
                hatch=hatch,
                edgecolor="white" if not hatch else "black",
                alpha=0.85,
            )
            ax.scatter([x] * len(cell["values"]), [100 * v for v in cell["values"]], s=12, color="black", zorder=3)
    ax.set_xticks(range(len(rows)), [r["algo"] for r in rows])
    ax.set_ylabel("run score: accuracy (%)")
    keys = [
        Patch(facecolor="white", edgecolor="black", label="greedy"),
        Patch(facecolor="white", edgecolor="black", hatch="//", label="sampled"),
    ]
    ax.legend(handles=keys, loc="upper right", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _deltas(task: dict[str, Any], col: dict[str, str]) -> str:
    rows = [r for r in task["algorithms"] if r.get("test")]
    if not rows:
        return ""
    height = 1.0 + 0.45 * len(rows)
    fig = Figure(figsize=(12, height), dpi=DPI)
    fig.subplots_adjust(left=0.2, right=0.99, top=1 - 0.15 / height, bottom=0.55 / height)
    ax = fig.subplots()
    for i, r in enumerate(rows):
        t = r["test"]
        colour = "grey" if r["control"] else col.get(r["algo"], "C0")
        ax.scatter([100 * d for d in t["differences"]], [i] * len(t["differences"]), s=14, color=colour, alpha=0.6)
        if t["lo"] is not None:
            ax.plot([100 * t["lo"], 100 * t["hi"]], [i, i], color=colour, lw=2)
        ax.plot([100 * t["delta"]], [i], marker="D", color=colour, ms=7)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), [r["algo"] for r in rows], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel(f"Δ run score vs {task['reference']} (pp)")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _time_split(rows: list[dict[str, Any]]) -> str:
    if all(r["cost"]["generate_pct"] is None for r in rows):
        return ""
    height = 1.3 + 0.5 * len(rows)
    fig = Figure(figsize=(12, height), dpi=DPI)
    # fixed margins in inches (legend above, axis label below) rather than a layout engine: it halves drawing time
    fig.subplots_adjust(left=0.13, right=0.99, top=1 - 0.45 / height, bottom=0.5 / height)
    ax = fig.subplots()
    labels = []
    for i, r in enumerate(rows):
        c = r["cost"]
        left = 0.0
        for stage in (*STAGES, "other"):
            share = c[f"{stage}_pct"] or 0.0
            ax.barh(i, share, left=left, color=STAGE_COLOURS[stage], label=stage if i == 0 else None)
            left += share
        tps = "–" if c["gen_tokens_per_s"] is None else f"{c['gen_tokens_per_s']:,.0f} tok/s"
        sps = "–" if c["seconds_per_step"] is None else f"{c['seconds_per_step']:.2f} s/step"
        labels.append(f"{r['algo']}\n{tps}, {sps}")
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of training-loop time (%)")
    ax.legend(ncols=len(STAGES) + 1, loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=8, frameon=False)
    return _png(fig)
