"""Matplotlib building blocks shared by the figures: coloured cells, printed values, the colour bar, a grid.

>>> import numpy as np
>>> from attrib.viz.draw import grid_figure
>>> from attrib.viz.options import HeatmapOptions
>>> fig = grid_figure(np.array([[1.0, -1.0]]), ["a", "b"], ["row"], HeatmapOptions(title="t"))
>>> fig.axes[0].get_title(), [t.get_text() for t in fig.axes[0].get_xticklabels()]
('t', ['a', 'b'])

Cells are drawn as an RGBA image from :func:`attrib.viz.colours.rgba`, so a figure shows exactly the
colours of the HTML heatmap; the colour bar samples the same function from −scale to +scale.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from .backend import pyplot
from .colours import colour_table, rgba, scale_of, text_colours
from .labels import mpl_text, number
from ..errors import PlotError
from .options import HeatmapOptions, shows_values

__all__ = ["settle", "new_figure", "paint", "colour_bar", "tick_style", "grid_figure"]


def settle(values: np.ndarray, options: HeatmapOptions) -> HeatmapOptions:
    """``options`` with ``scale`` and ``show_values`` decided from all of ``values``, so that every part of
    a figure (each row of a wrapped token heatmap) shares them."""
    return replace(options, scale=scale_of(values, options), show_values=shows_values(options, np.size(values)))


def new_figure(figsize: tuple[float, float], options: HeatmapOptions, nrows: int = 1) -> tuple[Any, list[Any]]:
    """A constrained-layout pyplot figure with ``nrows`` stacked axes, ``figsize`` widened to fit the title
    (``options.figsize`` wins)."""
    plt = pyplot()
    longest = max((len(line) for line in (options.title or "").splitlines()), default=0)
    figsize = (max(figsize[0], 1.2 + 0.1 * longest), figsize[1])
    fig = plt.figure(figsize=options.figsize or figsize, layout="constrained")
    axes = fig.subplots(nrows, 1, squeeze=False)[:, 0]
    return fig, list(axes)


def paint(ax: Any, values: np.ndarray, options: HeatmapOptions, *, origin: str = "upper",
          fontsize: float = 8.0) -> Any:
    """Draw the 2-D ``values`` as coloured cells (``options.scale`` must be set), with the values printed in
    them when :func:`~attrib.viz.options.shows_values` says so; returns the image."""
    values = np.asarray(values, dtype=float)
    fills = rgba(values, options)
    image = ax.imshow(fills, aspect="auto", interpolation="nearest", origin=origin)
    if shows_values(options, values.size):
        inks = np.array(text_colours(fills), dtype=object).reshape(values.shape)
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, number(v, options.decimals), ha="center", va="center", fontsize=fontsize,
                    color=inks[i, j])
    return image


def colour_bar(fig: Any, axes: Sequence[Any], options: HeatmapOptions) -> Any:
    """A colour bar beside ``axes`` from −scale to +scale, ticks at −scale, 0 and +scale."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize

    s = float(options.scale or 1.0)
    mappable = ScalarMappable(Normalize(-s, s), ListedColormap(colour_table(options)))
    bar = fig.colorbar(mappable, ax=list(axes), fraction=0.04, pad=0.02, aspect=max(4, 8 * len(axes)))
    bar.set_ticks([-s, 0.0, s], labels=[f"−{s:.3g}", "0", f"+{s:.3g}"])
    if options.units:
        bar.set_label(mpl_text(options.units))
    return bar


def tick_style(labels: Sequence[str]) -> dict[str, Any]:
    """Rotation and size of x tick labels: flat for short labels, slanted for longer, upright for many."""
    longest = max((len(t) for t in labels), default=0)
    if len(labels) > 40:
        return {"rotation": 90, "fontsize": 7}
    if longest <= 4:
        return {"rotation": 0}
    return {"rotation": 45, "ha": "right", "rotation_mode": "anchor"}


def _label_height(labels: Sequence[str], style: dict[str, Any]) -> float:
    longest = max((len(t) for t in labels), default=1)
    if style.get("rotation") == 0:
        return 0.3
    return min(2.0, 0.25 + 0.07 * longest * (1.0 if style["rotation"] == 90 else 0.75))


def grid_figure(values: np.ndarray, xlabels: Sequence[str], ylabels: Sequence[str], options: HeatmapOptions, *,
                xlabel: str = "", ylabel: str = "", origin: str = "upper", ystep: int = 1) -> Any:
    """A rows × columns heatmap on one axes with tick labels (every ``ystep``-th row labelled), axis labels,
    the title (``options.title``) and a colour bar."""
    values = np.asarray(values, dtype=float)
    rows, cols = values.shape
    if (len(ylabels), len(xlabels)) != (rows, cols):
        raise PlotError(f"values of shape {values.shape} for {len(ylabels)} rows × {len(xlabels)} columns.")
    options = settle(values, options)
    style = tick_style(xlabels)
    cell_w = 0.55 if cols <= 30 else 0.3
    cell_h = 0.32 if rows <= 16 else 0.22
    size = (min(60.0, 2.4 + cell_w * cols), min(40.0, 1.2 + cell_h * rows + _label_height(xlabels, style)))
    fig, (ax,) = new_figure(size, options)
    paint(ax, values, options, origin=origin, fontsize=8 if cols <= 30 else 6)
    ax.set_xticks(range(cols), [mpl_text(t) for t in xlabels], **style)
    ax.set_yticks(range(0, rows, ystep), [mpl_text(ylabels[i]) for i in range(0, rows, ystep)])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if options.title:
        ax.set_title(mpl_text(options.title))
    colour_bar(fig, [ax], options)
    return fig
