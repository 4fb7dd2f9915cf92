"""Matplotlib without pyplot: figures drawn on the Agg canvas and returned as PNG bytes.

No global figure registry (nothing to close, nothing leaks between reports) and no GUI backend, so the
reports draw the same on a headless node as on a laptop. Imported only by the code that writes reports:
plan mode never loads matplotlib.
"""

from __future__ import annotations

import io
from typing import Any

DPI = 100
"""Pixels per inch of every PNG (a 7 x 4.2 inch figure is 700 x 420 pixels)."""


def new_figure(width: float = 7.0, height: float = 4.2) -> tuple[Any, Any]:
    """A fresh ``(figure, axes)`` pair of ``width`` x ``height`` inches on the Agg canvas."""
    fig, axes = new_figure_row(1, width, height)
    return fig, axes[0]


def new_figure_row(n: int, width: float, height: float) -> tuple[Any, list]:
    """A fresh figure of ``width`` x ``height`` inches on the Agg canvas with ``n`` axes side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(1, n, squeeze=False)[0])


def png_bytes(fig: Any) -> bytes:
    """The figure as PNG bytes (tight layout)."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()
