"""What every figure module shares: the Agg backend, the family colours, atomic PNG and PDF writes, the grid
of panels and the figure that says a table had no rows."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from cmt.methods.registry import FAMILIES
from cmt.runtime.io import atomic_path

FORMATS = ("png", "pdf")
# No creation date in a PDF, so that the same tables draw the same bytes.
_METADATA = {"pdf": {"CreationDate": None}}
FAMILY_COLOURS = dict(zip(FAMILIES, ("tab:blue", "tab:orange", "tab:gray", "tab:green"), strict=True))


def save_figure(fig, out_stem: str | Path) -> list[Path]:
    """Write `fig` to out_stem.png and out_stem.pdf atomically; close it; return the paths."""
    paths = []
    for fmt in FORMATS:
        path = Path(f"{out_stem}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight", metadata=_METADATA.get(fmt))
        paths.append(path)
    plt.close(fig)
    return paths


def no_data(title: str, why: str):
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, f"{title}\n(no data: {why})", ha="center", va="center")
    return fig


def grid(n: int, ncols: int, width: float, height: float, min_width=9.0, min_height=3.6, **kwargs):
    """n panels in rows of `ncols` (constrained layout, so titles never run into the row above), the figure at
    least `min_width` × `min_height` inches so that its title and legend fit; the unused cells are removed.
    Returns the figure and the n axes in reading order."""
    ncols = max(1, min(n, ncols))
    nrows = math.ceil(n / ncols)
    size = (max(width * ncols, min_width), max(height * nrows, min_height))
    fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False, layout="constrained", **kwargs)
    axes = list(axes.flat)
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n]
