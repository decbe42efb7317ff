"""Figures without a display: matplotlib's object API, never pyplot's global state.

Every stage that draws (training metrics, the features map) makes a figure
with `new_figure` and turns it into PNG bytes with `figure_png`; threads and
servers can draw at once because no figure is registered anywhere.
"""

from __future__ import annotations

import io


def new_figure(width: float, height: float):
    """A matplotlib Figure that needs no display (no pyplot, no global state)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def figure_png(fig, dpi: int = 80) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
