"""Token heatmaps: HTML for notebooks, matplotlib figures for files. Colours diverge around zero.

>>> import numpy as np
>>> from attrib.viz.tokens import token_html, colour
>>> "&lt;script&gt;" in token_html(["<script>", " ok"], np.array([1.0, -0.5]))
True
>>> colour(0.0, 1.0)
'rgb(255,255,255)'
"""

from __future__ import annotations

import html
from typing import Sequence

import numpy as np

from .heatmap import token_label

__all__ = ["colour", "token_html", "token_figure", "matrix_figure"]


def colour(value: float, scale: float) -> str:
    """White at zero, red for positive, blue for negative, saturated at ``|value| = scale``."""
    x = 0.0 if scale == 0 else max(-1.0, min(1.0, value / scale))
    fade = int(round(255 * (1 - abs(x))))
    return f"rgb(255,{fade},{fade})" if x >= 0 else f"rgb({fade},{fade},255)"


def token_html(tokens: Sequence[str], scores: np.ndarray, title: str = "") -> str:
    """Tokens as coloured spans (text escaped), with a small legend."""
    scale = float(np.abs(scores).max()) if len(scores) else 0.0
    spans = "".join(
        f'<span title="{float(s):+.4f}" style="background:{colour(float(s), scale)};padding:1px 2px;'
        f'border-radius:3px;white-space:pre">{html.escape(token_label(t))}</span>'
        for t, s in zip(tokens, scores))
    legend = (f'<span style="font-size:80%;color:#555"> scale ±{scale:.3g} '
              f'(<span style="background:{colour(-1, 1)}">−</span>'
              f'<span style="background:{colour(1, 1)}">+</span>)</span>')
    head = f"<div style='font-size:85%;color:#333'>{title}</div>" if title else ""
    return f"<div>{head}<div style='line-height:1.9'>{spans}</div>{legend}</div>"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def token_figure(tokens: Sequence[str], scores: np.ndarray, title: str = "", cmap: str = "RdBu_r"):
    """One row of coloured cells, one per token, colour scale symmetric around zero."""
    plt = _pyplot()
    scale = float(np.abs(scores).max()) or 1.0
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(tokens) + 1.5), 2.0), layout="constrained")
    image = ax.imshow(np.asarray(scores, dtype=float)[None, :], cmap=cmap, vmin=-scale, vmax=scale, aspect="auto")
    ax.set_xticks(range(len(tokens)), [token_label(t) for t in tokens], rotation=45, ha="right")
    ax.set_yticks([])
    for i, s in enumerate(scores):
        ax.text(i, 0, f"{float(s):.2f}", ha="center", va="center", fontsize=8)
    if title:
        ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.05)
    return fig


def matrix_figure(scores: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str = "",
                  cmap: str = "RdBu_r"):
    """Outputs × inputs matrix, colour scale symmetric around zero."""
    plt = _pyplot()
    scores = np.asarray(scores, dtype=float)
    scale = float(np.abs(scores).max()) or 1.0
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(cols) + 2), max(3.0, 0.4 * len(rows) + 1.5)),
                           layout="constrained")
    image = ax.imshow(scores, cmap=cmap, vmin=-scale, vmax=scale, aspect="auto")
    ax.set_xticks(range(len(cols)), [token_label(t) for t in cols], rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), [token_label(t) for t in rows])
    ax.set_xlabel("input token")
    ax.set_ylabel("output token")
    if title:
        ax.set_title(title)
    fig.colorbar(image, ax=ax)
    return fig
