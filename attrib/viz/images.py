"""Attributions to inputs of two or more dimensions (an image's channels × height × width, a sequence ×
features): one heatmap panel per leading index, all on one scale symmetric around zero.

>>> import torch
>>> from attrib.results import Attribution
>>> from attrib.viz.images import image_panels, image_figure
>>> a = Attribution([], torch.ones(3, 4, 5), torch.ones(3, 4, 5), None, "1", "saliency")
>>> panels, names = image_panels(a)
>>> panels.shape, names
((3, 4, 5), ['[0, :, :]', '[1, :, :]', '[2, :, :]'])
>>> fig = image_figure(a)
>>> len(fig.axes), fig.axes[0].get_title()       # three panels and the colour bar
(4, '[0, :, :]')

A result is drawn this way when it has no token labels and its scores have two or more dimensions (per
output token, when ``per_token`` gave a leading output axis); tokens and tabular features stay token rows.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import Any

import numpy as np

from .draw import colour_bar, new_figure, paint, settle
from .labels import mpl_text, token_label
from .markup import escape, grid_html, legend_html
from ..errors import PlotError
from .options import HeatmapOptions, resolve
from .colours import scale_of

__all__ = ["image_panels", "image_figure", "image_html", "MAX_PANELS"]

MAX_PANELS = 16          # panels in one figure (channels, say); more are refused with a pointer to .scores


def image_panels(result: Any) -> tuple[np.ndarray, list[str]] | None:
    """(panels (P, H, W), one name per panel) when ``result`` attributes to a multi-dimensional input — no
    token labels, scores of two or more dimensions besides an output axis — else None."""
    scores = result.scores.detach().cpu().double().numpy()
    outputs = getattr(result, "output_tokens", None)
    lead = 1 if outputs is not None and scores.ndim >= 1 and len(outputs) == scores.shape[0] else 0
    if len(result.tokens) or scores.ndim - lead < 2:
        return None
    names = []
    for index in itertools.product(*(range(n) for n in scores.shape[:-2])):
        inner = "".join(f"{i}, " for i in index[lead:])
        prefix = f"{token_label(outputs[index[0]])} " if lead else ""
        names.append(f"{prefix}[{inner}:, :]")
    return scores.reshape(-1, *scores.shape[-2:]), names


def _checked(result: Any) -> tuple[np.ndarray, list[str]]:
    found = image_panels(result)
    if found is None:
        raise PlotError("this result has token labels or one-dimensional scores; draw it with .plot().")
    panels, names = found
    if len(panels) > MAX_PANELS:
        raise PlotError(f"scores of shape {tuple(result.scores.shape)} make {len(panels)} panels of "
                        f"{panels.shape[1]} × {panels.shape[2]}, more than one figure shows readably ({MAX_PANELS}); "
                        "plot a reduction yourself, e.g. plt.imshow(result.scores.sum(0)).")
    return panels, names


def image_figure(result: Any, options: HeatmapOptions | None = None, **overrides: Any) -> Any:
    """One heatmap per panel (up to four a row), values printed when few, one colour bar; the Figure."""
    options = resolve(options, **overrides)
    panels, names = _checked(result)
    options = settle(panels, options)
    n, (h, w) = len(panels), panels.shape[1:]
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    side = min(3.0, max(1.2, 0.32 * max(h, w)))
    fig, _ = new_figure((0.8 + cols * side * max(1.0, w / max(h, 1)) ** 0.5, 0.6 + rows * (side + 0.4)), options)
    fig.clear()
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, panel, name in zip(axes, panels, names):
        paint(ax, panel, options, fontsize=6 if max(h, w) > 6 else 8)
        ax.set_title(mpl_text(name), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[n:]:
        ax.set_visible(False)
    if options.title:
        fig.suptitle(mpl_text(options.title))
    colour_bar(fig, list(axes[:n]), options)
    return fig


def image_html(result: Any, options: HeatmapOptions | None = None, max_cells: int = 2000, **overrides: Any) -> str:
    """The panels as HTML tables side by side with one legend, or a line saying they are too many to show."""
    options = resolve(options, **overrides)
    panels, names = _checked(result)
    title = f'<div style="font-weight:600">{escape(options.title)}</div>' if options.title else ""
    if panels.size > max_cells:
        return (f"<div class='tex2jax_ignore mathjax_ignore'>{title}{panels.size} values in {len(panels)} panels of "
                f"{panels.shape[1]} × {panels.shape[2]}, too many for an inline heatmap; see .plot().</div>")
    scale = scale_of(panels, options)
    fixed = replace(options, scale=scale, title=None)
    rows, cols = [str(i) for i in range(panels.shape[1])], [str(j) for j in range(panels.shape[2])]
    tables = "".join(f'<div style="display:inline-block;vertical-align:top;margin-right:8px">'
                     f'{grid_html(p, rows, cols, fixed, corner=name, legend=False)}</div>'
                     for p, name in zip(panels, names))
    return f'<div class="tex2jax_ignore mathjax_ignore">{title}{tables}{legend_html(scale, fixed)}</div>'
