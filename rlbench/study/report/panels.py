"""Small multiples: one panel per row of the comparison, so that no row's curves hide another's.

* **Accuracy during training** against samples consumed, tokens generated and training-loop seconds (a line of
  panels per axis): each seed a thin line, the mean over seeds thick with its interval as a band, and the reference
  row's mean drawn faintly (grey, dashed) in every other panel to compare against.
* **Training curves**: one figure per quantity of :data:`rlbench.study.report.curves.QUANTITIES` that some run logged and
  that changes over some run's steps; each seed a thin line, the mean over seeds thick, the same y-axis in every
  panel of a quantity. A row that did not log it says so in its panel.
* The same y-axis in every panel of a figure, and the same x-range in every panel of one x-axis.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator

from rlbench.study.report.canvas import DPI, png
from rlbench.study.report.curves import EVAL_AXES, QUANTITIES, plotted_quantities

MAX_COLUMNS = 5
PANEL_HEIGHT = 1.9  # inches per line of panels
WIDTH = 12.0
REFERENCE_STYLE = {"color": "grey", "ls": "--", "lw": 1.1, "alpha": 0.7}


def accuracy(rows: list[dict[str, Any]], reference: str, metric: str, col: dict[str, str]) -> str:
    """The accuracy small multiples as base64 PNG; "" when no row has an evaluation curve."""
    if not any(r["curves"]["eval"] for r in rows):
        return ""
    axes_kinds = [k for k in EVAL_AXES if any(p.get(k) is not None for r in rows for p in r["curves"]["eval"])]
    ref = next((r for r in rows if r["algo"] == reference and not r["control"]), None)

    def draw(ax: Axes, row: dict[str, Any], kind: str) -> None:
        pts = [p for p in row["curves"]["eval"] if p.get(kind) is not None]
        colour = col[row["algo"]]
        if ref is not None and ref is not row:
            ref_pts = [p for p in ref["curves"]["eval"] if p.get(kind) is not None]
            ax.plot([p[kind] for p in ref_pts], [100 * p["mean"] for p in ref_pts], **REFERENCE_STYLE)
        for seed in (row["curves"].get("eval_seeds") or {}).values():
            xy = [(x, y) for x, y in zip(seed.get(kind) or [], seed["accuracy"]) if x is not None and y is not None]
            ax.plot([x for x, _ in xy], [100 * y for _, y in xy], color=colour, lw=0.7, alpha=0.35)
        x = [p[kind] for p in pts]
        if pts and all(p["lo"] is not None for p in pts):
            ax.fill_between(
                x, [100 * p["lo"] for p in pts], [100 * p["hi"] for p in pts], color=colour, alpha=0.15, linewidth=0
            )
        ax.plot(x, [100 * p["mean"] for p in pts], color=colour, lw=1.8, marker="o", ms=3)
        ax.set_xlabel(EVAL_AXES[kind], fontsize=8)

    return _grid(rows, axes_kinds, draw, f"{metric} accuracy (%)", reference)


def training(rows: list[dict[str, Any]], reference: str, col: dict[str, str]) -> list[tuple[str, str, str]]:
    """(quantity, label, base64 PNG) per quantity worth a figure (:func:`rlbench.study.report.curves.plotted_quantities`)."""
    out = []
    for key in plotted_quantities(rows):

        def draw(ax: Axes, row: dict[str, Any], _: str, key: str = key) -> None:
            curves = row.get("training") or {}
            found = (curves.get("quantities") or {}).get(key)
            if not found:
                ax.text(
                    0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", va="center", color="grey", fontsize=9
                )
                ax.tick_params(axis="x", bottom=False, labelbottom=False)
                return
            colour = col[row["algo"]]
            for values in found["seeds"].values():
                xy = [(x, y) for x, y in zip(curves["step"], values) if y is not None]
                ax.plot([x for x, _ in xy], [y for _, y in xy], color=colour, lw=0.7, alpha=0.4)
            xy = [(x, y) for x, y in zip(curves["step"], found["mean"]) if y is not None]
            ax.plot([x for x, _ in xy], [y for _, y in xy], color=colour, lw=1.7)
            ax.set_xlabel("optimiser step", fontsize=8)

        out.append((key, QUANTITIES[key], _grid(rows, [key], draw, QUANTITIES[key], reference)))
    return out


def _grid(
    rows: list[dict[str, Any]],
    kinds: list[str],
    draw: Callable[[Axes, dict[str, Any], str], None],
    ylabel: str,
    reference: str,
) -> str:
    """A figure of len(rows) panels per kind (wrapped at :data:`MAX_COLUMNS`), one y-axis for all of them."""
    cols = min(len(rows), MAX_COLUMNS)
    lines = math.ceil(len(rows) / cols) * len(kinds)
    height = 0.35 + PANEL_HEIGHT * lines
    fig = Figure(figsize=(WIDTH, height), dpi=DPI)
    # fixed margins in inches rather than a layout engine: it is much faster, and the panels line up
    fig.subplots_adjust(left=0.065, right=0.99, top=1 - 0.3 / height, bottom=0.45 / height, wspace=0.08, hspace=0.75)
    grid = fig.subplots(lines, cols, sharey=True, squeeze=False)
    for k, kind in enumerate(kinds):
        drawn = []
        for i, row in enumerate(rows):
            ax = grid[(i // cols) * len(kinds) + k][i % cols]
            draw(ax, row, kind)
            drawn.append(ax)
            name = row["algo"] + (" (ref)" if row["algo"] == reference and not row["control"] else "")
            ax.set_title(
                name + (" (A/A control)" if row["control"] and "control" not in name else ""), fontsize=9, loc="left"
            )
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
            if i % cols == 0:
                ax.set_ylabel("\n".join(textwrap.wrap(ylabel, 22)), fontsize=8)
        limits = [ax.get_xlim() for ax in drawn if ax.lines]  # one x-range per kind too: a slow row looks slow
        if limits:
            for ax in drawn:
                ax.set_xlim(min(lo for lo, _ in limits), max(hi for _, hi in limits))
        for i in range(len(rows), math.ceil(len(rows) / cols) * cols):  # the empty places of a last short line
            grid[(i // cols) * len(kinds) + k][i % cols].set_visible(False)
    return png(fig)
