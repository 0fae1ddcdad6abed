"""Matplotlib heatmaps of layer × position values (e.g. gradient norms of the residual stream).

>>> import numpy as np
>>> from attrib.viz.heatmap import layer_position_figure
>>> fig = layer_position_figure(np.arange(6.0).reshape(2, 3), ["a", " b", "\\n"], title="demo")
>>> fig.axes[0].get_title()
'demo'
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["layer_position_figure", "token_label"]


def token_label(token: str) -> str:
    """Readable tick label: leading spaces show as '␣' and newlines as '⏎'."""
    body = token.lstrip(" ")
    return "␣" * (len(token) - len(body)) + body.replace("\n", "⏎")


def layer_position_figure(values: np.ndarray, tokens: Sequence[str], *, title: str = "",
                          cmap: str = "viridis", colorbar_label: str = ""):
    """A (layers × positions) heatmap with token labels on the x axis and layer numbers on the y axis."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    values = np.asarray(values, dtype=float)
    layers, positions = values.shape
    fig, ax = plt.subplots(figsize=(max(6.5, 1.5 + 0.7 * positions), 1.5 + 0.2 * layers), layout="constrained")
    image = ax.imshow(values, aspect="auto", cmap=cmap, origin="lower", interpolation="nearest")
    ax.set_xticks(range(positions), [token_label(t) for t in tokens], rotation=45, ha="right")
    step = max(1, layers // 15)
    ax.set_yticks(range(0, layers, step))
    ax.set_ylabel("layer")
    ax.set_xlabel("position")
    if title:
        ax.set_title(title)
    fig.colorbar(image, ax=ax, label=colorbar_label)
    return fig
