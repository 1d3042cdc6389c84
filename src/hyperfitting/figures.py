"""Figures without pyplot: the analyses' and the report's plots, written like every other output."""

from __future__ import annotations

from pathlib import Path


def new_figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6, 4)):
    """(figure, axes) outside pyplot: no global backend switch and no figure registry to close."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    return figure, figure.subplots(nrows, ncols)


def savefig(figure, path: Path) -> None:
    """Write a PNG atomically (process 0 only, like every other output)."""
    from hyperfitting.rundir import atomic_path, is_main_process

    if not is_main_process():
        return

    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
