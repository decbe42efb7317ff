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


def confusion_png(m, labels: list[str]) -> bytes:
    """A confusion matrix (rows true, columns predicted) with class names on both axes and counts in the cells."""
    import numpy as np

    m = np.asarray(m)
    size = 2.5 + 0.45 * len(labels)
    fig = new_figure(size, size)
    ax = fig.subplots()
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(labels) <= 30:
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="black" if v < m.max() / 2 else "white")
    return figure_png(fig)
