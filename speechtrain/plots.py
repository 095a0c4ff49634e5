"""Pictures people look at rather than read: spectrograms, alignments, durations against their targets, sweeps.

Drawn with matplotlib's object API on its Agg canvas (no pyplot: a notebook's backend and pyplot's figure list are
left alone). matplotlib is the optional `plots` extra: without it `plotting_available(what)` is False and warns once
per `what`, and callers log what they can without the pictures.

Images are RGB `uint8 [height, width, 3]`. A matrix image has one pixel per cell with row 0 at the *bottom* (as
spectrograms and alignments are drawn: the lowest mel bin and the first token at the bottom), so
`matrix_image(m)[::-1]` reads in the order of `m`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

_skipped: set[str] = set()  # what a run without matplotlib has already said it skips


def plotting_available(skipped: str) -> bool:
    """Whether matplotlib imports; if not, warns once per `skipped` (what the caller leaves out)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if skipped not in _skipped:
            _skipped.add(skipped)
            log.warning("matplotlib is not installed: skipping %s (pip install 'speechtrain[plots]')", skipped)
        return False
    return True


def matrix_image(matrix: torch.Tensor | np.ndarray, vmin: float | None = None, vmax: float | None = None,
                 cmap: str = "viridis") -> np.ndarray:
    """`[rows, cols]` -> `uint8 [rows, cols, 3]`, one pixel per cell, row 0 at the bottom, through `cmap` from
    `vmin` (darkest) to `vmax` (brightest; both default to the matrix's range)."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    values = torch.as_tensor(matrix).detach().float().cpu().numpy()
    if values.ndim != 2:
        raise ValueError(f"matrix_image needs a [rows, cols] matrix, got shape {values.shape}")
    rgba = colormaps[cmap](Normalize(vmin, vmax)(values[::-1]), bytes=True)  # [rows, cols, 4]
    return np.ascontiguousarray(rgba[..., :3])


def figure_image(figure: Any) -> np.ndarray:
    """A matplotlib `Figure` rendered on the Agg canvas: `uint8 [height, width, 3]` (size in inches x dpi)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def write_png(path: Path, image: np.ndarray) -> None:
    """An RGB image as a PNG file (its folder made if missing)."""
    from matplotlib.image import imsave

    path.parent.mkdir(parents=True, exist_ok=True)
    imsave(path, image, format="png")


def _figure(width: float, height: float, dpi: int = 100) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=dpi, layout="constrained")


def durations_image(aligned: Sequence[float], predicted: Sequence[float], title: str = "") -> np.ndarray:
    """Frames per token, the alignment's (the duration predictor's target) beside the predictor's, as bars:
    `uint8 [320, 640, 3]`."""
    figure = _figure(6.4, 3.2)
    axes = figure.add_subplot()
    positions = np.arange(len(aligned))
    axes.bar(positions - 0.2, aligned, width=0.4, label="aligned (target)")
    axes.bar(positions + 0.2, predicted, width=0.4, label="predicted")
    axes.set(xlabel="token", ylabel="frames", title=title)
    axes.legend(loc="upper right", fontsize="small")
    return figure_image(figure)


def _numeric(values: Sequence[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def sweep_image(points: dict[str, list[tuple[str, float]]], metric: str,
                best: tuple[dict[str, str], float] | None = None) -> np.ndarray:
    """The metric against each swept key's values, one panel per key (`points[key]` = (value, metric) of each
    finished job); `best` (the best job's values by key, its metric) is ringed. Numeric values on a linear axis, or
    a log one when positive and spanning a factor of 10 or more; other values as categories.
    `uint8 [320, 400 x keys, 3]`."""
    figure = _figure(4.0 * len(points), 3.2)
    for index, (key, pairs) in enumerate(points.items()):
        axes = figure.add_subplot(1, len(points), index + 1)
        values, metrics = [v for v, _ in pairs], [m for _, m in pairs]
        numbers = _numeric(values)
        if numbers is None:
            categories = list(dict.fromkeys(values))
            positions = [categories.index(v) for v in values]
            axes.set_xticks(range(len(categories)), categories)
        else:
            positions = numbers
            if min(numbers) > 0 and max(numbers) >= 10 * min(numbers):
                axes.set_xscale("log")
        axes.scatter(positions, metrics, zorder=2)
        if best is not None:
            best_values, best_metric = best
            best_position = positions[values.index(best_values[key])]
            axes.scatter([best_position], [best_metric], s=160, facecolors="none", edgecolors="red", label="best")
            axes.legend(loc="best", fontsize="small")
        axes.set(xlabel=key, ylabel=metric if index == 0 else None)
        axes.grid(alpha=0.3)
    return figure_image(figure)


def history_image(values: Sequence[tuple[int, float]], metric: str, direction: str) -> np.ndarray:
    """An optimisation history: each trial's metric by trial number and the best so far (`direction` is
    "minimize" or "maximize"), as Optuna's `plot_optimization_history` draws it. `uint8 [320, 640, 3]`."""
    figure = _figure(6.4, 3.2)
    axes = figure.add_subplot()
    trials, metrics = [t for t, _ in values], [m for _, m in values]
    running = np.minimum.accumulate(metrics) if direction == "minimize" else np.maximum.accumulate(metrics)
    axes.scatter(trials, metrics, label=metric, zorder=2)
    axes.step(trials, running, where="post", color="red", label="best so far")
    axes.xaxis.get_major_locator().set_params(integer=True)  # trial numbers
    axes.set(xlabel="trial", ylabel=metric, title="optimisation history")
    axes.legend(loc="best", fontsize="small")
    axes.grid(alpha=0.3)
    return figure_image(figure)
