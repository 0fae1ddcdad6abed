"""Token heatmaps as matplotlib figures: one score per token (wrapped into rows) or an outputs × inputs matrix.

>>> import numpy as np
>>> from attrib.viz.tokens import token_figure, matrix_figure
>>> fig = token_figure(["The", " cat", "\\n"], np.array([0.5, -1.0, 0.1]), title="demo")
>>> [t.get_text() for t in fig.axes[0].get_xticklabels()], fig.axes[0].get_title()
(['The', '␣cat', '⏎'], 'demo')
>>> fig.savefig(__import__("io").BytesIO(), format="svg")

The HTML versions are :func:`attrib.viz.markup.token_html` and :func:`~attrib.viz.markup.matrix_html`
(re-exported here); both paths take their colours from :mod:`attrib.viz.colours`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .draw import colour_bar, grid_figure, new_figure, paint, settle, tick_style
from .labels import chunks, mpl_text, token_label
from .markup import matrix_html, token_html
from ..errors import PlotError
from .options import HeatmapOptions, resolve

__all__ = ["token_figure", "matrix_figure", "token_html", "matrix_html"]


def token_figure(tokens: Sequence[str], scores: np.ndarray, options: HeatmapOptions | None = None,
                 **overrides: Any) -> Any:
    """One row of coloured cells per ``options.wrap`` tokens (a 100-token prompt at ``wrap=16`` is 7 rows of
    axes, each labelled with its tokens and its first position), values printed in the cells, one colour bar.
    Returns the matplotlib Figure."""
    options = resolve(options, **overrides)
    scores = np.asarray(scores, dtype=float).reshape(-1)
    if len(tokens) != len(scores):
        raise PlotError(f"{len(tokens)} tokens but {len(scores)} scores.")
    if len(tokens) == 0:
        raise PlotError("no tokens to plot.")
    options = settle(scores, options)
    labels = [token_label(t) for t in tokens]
    rows = chunks(len(tokens), options.wrap)
    width = len(rows[0])
    style = tick_style(labels[:width]) | {"fontsize": 9}
    longest = max(len(t) for t in labels)
    row_height = 0.55 + (0.3 if style["rotation"] == 0 else min(1.4, 0.15 + 0.05 * longest))
    fig, axes = new_figure((1.6 + 0.62 * width, 0.5 + row_height * len(rows)), options, nrows=len(rows))
    for ax, span in zip(axes, rows):
        paint(ax, scores[None, span.start:span.stop], options)
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_xticks(range(len(span)), [mpl_text(labels[i]) for i in span], **style)
        ax.set_yticks([])
        if len(rows) > 1:
            ax.set_ylabel(str(span.start), rotation=0, ha="right", va="center", fontsize=8, color="#666")
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
    if options.title:
        axes[0].set_title(mpl_text(options.title))
    colour_bar(fig, axes, options)
    return fig


def matrix_figure(scores: np.ndarray, rows: Sequence[str], cols: Sequence[str], options: HeatmapOptions | None = None,
                  **overrides: Any) -> Any:
    """An outputs × inputs matrix (one row per output token, one column per input token) on one shared scale,
    symmetric around zero. Returns the matplotlib Figure.

    >>> fig = matrix_figure(np.ones((2, 3)), ["a", "b"], ["x", "y", "z"])
    >>> fig.axes[0].images[0].get_array().shape
    (2, 3, 4)
    """
    options = resolve(options, **overrides)
    return grid_figure(scores, [token_label(t) for t in cols], [token_label(t) for t in rows], options,
                       xlabel="input token", ylabel="output token")
