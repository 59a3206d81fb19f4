"""Figures: the NIAH heat map (MaskKV Fig. 6/8, ``niah_ruler.md`` 5) and score-vs-budget curves (MaskKV Fig. 3).

matplotlib is a dependency of maskkv, imported lazily and used through the object API with the Agg canvas
(no pyplot, no global backend switch, no display needed). The numbers behind every figure are always written
as JSON/CSV next to it first; if matplotlib cannot be imported (a broken install), every function here raises
:class:`EvalError` saying so before drawing anything, and the callers print it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .common import EvalError

#: DuoAttention's three-stop map, red -> yellow -> green (greener = better, as in MaskKV Figure 8).
HEATMAP_COLORS = ("#F0496E", "#EBB839", "#0CD79F")


MISSING_MATPLOTLIB = ("matplotlib, a dependency of maskkv, cannot be imported ({error}): no {what}; "
                      "`pip install matplotlib` (or rerun `bash scripts/install.sh`) and rerun the command, which "
                      "reuses the saved results")


def figure_api(what: str) -> tuple[object, object]:
    """matplotlib's ``Figure`` and Agg canvas, or an :class:`EvalError` naming the missing figure ``what``."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise EvalError(MISSING_MATPLOTLIB.format(error=err, what=what)) from err
    return Figure, FigureCanvasAgg


def length_label(length: int) -> str:
    """Figure 8's tick labels: thousands truncated ("4K" for 4333); plain numbers below 1000."""
    return f"{length // 1000}K" if length >= 1000 else str(length)


@dataclass
class HeatmapPanel:
    """One method's grid: ``scores[d][l]`` for depth ``depths[d]`` and length ``lengths[l]`` (None = missing)."""

    label: str
    lengths: Sequence[int]
    depths: Sequence[int]
    scores: Sequence[Sequence[float | None]]

    @property
    def overall(self) -> float:
        values = [v for row in self.scores for v in row if v is not None]
        return sum(values) / len(values) if values else float("nan")


def niah_heatmap(panels: Sequence[HeatmapPanel], path: Path, *, title: str | None = None,
                 trained_length: int | None = None) -> Path:
    """One heat-map panel per method in a row, fixed colour range 0-1, one shared colour bar labelled "Score".

    Rows are depth percent (0 at the top), columns context length; ticks on every second cell; each panel's title
    is "Overall Score: x.xxx" and its method name is written under it. ``trained_length`` draws a dashed line.
    """
    import numpy as np

    Figure, Canvas = figure_api(f"heat map {path.name}")
    from matplotlib.colors import LinearSegmentedColormap

    if not panels:
        raise EvalError("no NIAH results to plot")
    cmap = LinearSegmentedColormap.from_list("duo_niah", list(HEATMAP_COLORS))
    width = 1.0 + 3.6 * len(panels)
    fig = Figure(figsize=(width, 3.6))
    Canvas(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    mesh = None
    for ax, panel in zip(axes, panels):
        grid = np.array([[np.nan if v is None else v for v in row] for row in panel.scores], dtype=float)
        mesh = ax.pcolormesh(grid, cmap=cmap, vmin=0.0, vmax=1.0, edgecolors="#bbbbbb", linewidth=0.4)
        ax.set_xlim(0, len(panel.lengths))
        ax.set_ylim(len(panel.depths), 0)  # depth 0 at the top
        ax.set_xticks([i + 0.5 for i in range(0, len(panel.lengths), 2)])
        ax.set_xticklabels([length_label(panel.lengths[i]) for i in range(0, len(panel.lengths), 2)], fontsize=7)
        ax.set_yticks([i + 0.5 for i in range(0, len(panel.depths), 2)])
        ax.set_yticklabels([f"{float(panel.depths[i]):.1f}" for i in range(0, len(panel.depths), 2)], fontsize=7)
        ax.set_xlabel("Token Limit", fontsize=8)
        ax.set_ylabel("Depth Percent", fontsize=8)
        ax.set_title(f"Overall Score: {panel.overall:.3f}", fontsize=9)
        ax.text(0.5, -0.3, panel.label, transform=ax.transAxes, ha="center", va="top", fontsize=10,
                fontweight="bold")
        if trained_length is not None and panel.lengths:
            below = sum(1 for n in panel.lengths if n <= trained_length)
            if 0 < below < len(panel.lengths):
                ax.axvline(below, color="black", linestyle="--", linewidth=1.0)
    if title:
        fig.suptitle(title, fontsize=11)
    left, right, bottom, top = 0.9 / width, 1 - 0.9 / width, 0.3, 0.82 if title else 0.88
    fig.subplots_adjust(bottom=bottom, top=top, wspace=0.35, left=left, right=right)
    cax = fig.add_axes((right + 0.25 / width, bottom, 0.12 / width, top - bottom))
    fig.colorbar(mesh, cax=cax, label="Score")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def budget_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], full: dict[str, float], path: Path, *,
                  title: str | None = None) -> Path:
    """Score-vs-budget curves like MaskKV Figure 3: one panel per task, one line per method, the full-cache score
    as a dashed horizontal line. ``curves[task][method] = [(budget, score), ...]``."""
    Figure, Canvas = figure_api(f"curves {path.name}")
    if not curves:
        raise EvalError("no sweep results to plot")
    tasks = list(curves)
    cols = min(4, len(tasks))
    rows = -(-len(tasks) // cols)
    fig_width = 3.6 * cols + 1.5
    fig = Figure(figsize=(fig_width, 3.0 * rows))
    Canvas(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    markers = "osD^v<>ph*"
    handles: dict[str, object] = {}
    for i, task in enumerate(tasks):
        ax = axes[i // cols][i % cols]
        for j, (method, points) in enumerate(curves[task].items()):
            points = sorted(points)
            (line,) = ax.plot([p[0] for p in points], [p[1] for p in points], marker=markers[j % len(markers)],
                              markersize=4, linewidth=1.4, label=method)
            handles.setdefault(method, line)
        if task in full and full[task] is not None:
            ref = ax.axhline(full[task], color="black", linestyle="--", linewidth=1.0, label="Full cache")
            handles.setdefault("Full cache", ref)
        budgets = sorted({p[0] for pts in curves[task].values() for p in pts})
        if len(budgets) > 1 and budgets[0] > 0:
            ax.set_xscale("log", base=2)
        ax.set_xticks(budgets)
        ax.set_xticklabels([str(b) for b in budgets], fontsize=7)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("KV budget", fontsize=8)
        ax.set_ylabel("Score", fontsize=8)
        ax.grid(True, alpha=0.3)
    for k in range(len(tasks), rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    fig.legend(list(handles.values()), list(handles), loc="center right", fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.6 / fig_width, right=1 - 1.4 / fig_width, hspace=0.5, wspace=0.35)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
