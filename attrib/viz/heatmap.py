"""Layer × position and layer × head heatmaps (patching scores, gradient norms), symmetric around zero.

>>> import numpy as np
>>> from attrib.viz.heatmap import layer_position_figure, layer_head_figure
>>> fig = layer_position_figure(np.arange(6.0).reshape(2, 3) - 2, ["a", " b", "\\n"], title="demo")
>>> fig.axes[0].get_title(), [t.get_text() for t in fig.axes[0].get_xticklabels()]
('demo', ['a', '␣b', '⏎'])
>>> layer_head_figure(np.ones((2, 4))).axes[0].get_xlabel()
'head'

Layer 0 is at the bottom. The HTML counterpart is :func:`layer_position_html`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .draw import grid_figure
from .labels import position_index, position_labels, token_label
from .markup import grid_html
from ..errors import PlotError
from .options import HeatmapOptions, resolve, with_defaults

__all__ = ["layer_position_figure", "layer_head_figure", "layer_position_html", "token_label"]


def _layer_step(layers: int) -> int:
    return 1 if layers <= 16 else -(-layers // 12)


def layer_position_figure(values: np.ndarray, tokens: Sequence[str], options: HeatmapOptions | None = None, *,
                          positions: Sequence[int] | None = None, colorbar_label: str | None = None,
                          **overrides: Any) -> Any:
    """A (layers × positions) heatmap: token labels on the x axis (``positions``: the prompt positions of the
    columns, when they are a subset of ``tokens``), layers on the y axis. ``colorbar_label`` is the same as
    the ``units`` option. Returns the matplotlib Figure."""
    if colorbar_label is not None:
        overrides.setdefault("units", colorbar_label)
    options = resolve(options, **overrides)
    values = np.asarray(values, dtype=float)
    if values.ndim != 2:
        raise PlotError(f"values must be (layers, positions), got shape {values.shape}.")
    cols = [tokens[position_index(p, len(tokens), "positions")] for p in positions] if positions is not None else \
        list(tokens)
    if len(cols) != values.shape[1]:
        raise PlotError(f"{values.shape[1]} positions in values but {len(cols)} tokens.")
    layers = values.shape[0]
    return grid_figure(values, position_labels(tokens, positions), [str(i) for i in range(layers)], options,
                       xlabel="position", ylabel="layer", origin="lower", ystep=_layer_step(layers))


def layer_head_figure(values: np.ndarray, options: HeatmapOptions | None = None, **overrides: Any) -> Any:
    """A (layers × heads) heatmap, layer 0 at the bottom. Returns the matplotlib Figure."""
    options = resolve(options, **overrides)
    values = np.asarray(values, dtype=float)
    if values.ndim != 2:
        raise PlotError(f"values must be (layers, heads), got shape {values.shape}.")
    layers, heads = values.shape
    return grid_figure(values, [str(h) for h in range(heads)], [str(i) for i in range(layers)], options,
                       xlabel="head", ylabel="layer", origin="lower", ystep=_layer_step(layers))


def layer_position_html(values: np.ndarray, tokens: Sequence[str], options: HeatmapOptions | None = None, *,
                        positions: Sequence[int] | None = None, **overrides: Any) -> str:
    """The HTML table of :func:`layer_position_figure`: one row per layer, the last layer on top.

    >>> page = layer_position_html(np.array([[1.0, -1.0], [0.0, 2.0]]), ["<s>", " x"])
    >>> page.index(">1</th>") < page.index(">0</th>")
    True
    """
    options = with_defaults(resolve(options, **overrides), units="")
    values = np.asarray(values, dtype=float)
    layers = values.shape[0]
    return grid_html(values[::-1], [str(i) for i in reversed(range(layers))], position_labels(tokens, positions),
                     options, corner="layer \\ position")
