"""What every figure of the report shares: the :class:`Plot` record, one colour per row, and PNG encoding with
matplotlib's Agg canvas (no display, no pyplot global state).

Figures are stored as 256-colour palette PNGs (median cut, no dithering): line plots use few colours, and the
palette makes the page about a third of the size with no difference a reader can see.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

DPI = 100


@dataclass
class Plot:
    title: str
    caption: str
    png_base64: str


def colours(algos: list[str]) -> dict[str, str]:
    """One colour per algorithm, the same in every task's figures."""
    palette = [f"C{i}" for i in range(10)]
    return {a: palette[i % len(palette)] for i, a in enumerate(algos)}


def png(fig: Figure) -> str:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")
    palette = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    # no metadata (software, date): the same data gives byte-identical images
    palette.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")
