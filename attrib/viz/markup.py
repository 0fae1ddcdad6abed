"""HTML heatmaps for notebooks: token rows that wrap like text, grids as tables, and a colour legend.

>>> import numpy as np
>>> from attrib.viz.markup import token_html
>>> page = token_html(["<script>", " ok"], np.array([1.0, -0.5]), title="a & b")
>>> "&lt;script&gt;" in page and "<script>" not in page and "a &amp; b" in page
True

Every piece of text (tokens, titles, labels, tooltips) is HTML-escaped, quotes included; styles are
inline so that the markup renders anywhere (Jupyter, VS Code, a saved page), and containers carry the classes
that tell notebook MathJax to leave ``$`` in tokens alone.
"""

from __future__ import annotations

import html
from typing import Any, Sequence

import numpy as np

from .colours import colour_table, css, rgba, scale_of, text_colours
from .labels import MARKERS, number, token_label
from ..errors import PlotError
from .options import HeatmapOptions, resolve, shows_values

__all__ = ["escape", "label_html", "legend_html", "token_html", "grid_html", "matrix_html"]

_FONT = "font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace"
# the ignore classes keep notebook MathJax from typesetting tokens such as "$x$"
_CONTAINER = 'class="attrib-heatmap tex2jax_ignore mathjax_ignore"'


def escape(text: Any) -> str:
    """``str(text)`` escaped for HTML text and attribute values (``& < > " '``)."""
    return html.escape(str(text), quote=True)


def label_html(token: str) -> str:
    """A token's readable label, escaped, with its whitespace markers dimmed.

    >>> label_html(" <b>")
    '<span style="opacity:0.45">␣</span>&lt;b&gt;'
    """
    text = escape(token_label(token))
    for marker in MARKERS:
        text = text.replace(marker, f'<span style="opacity:0.45">{marker}</span>')
    return text


def _title(title: str | None) -> str:
    return f'<div style="font-weight:600;margin:2px 0 4px 0">{escape(title)}</div>' if title else ""


def legend_html(scale: float, options: HeatmapOptions | None = None) -> str:
    """A colour bar from −scale to +scale with its three numbers (and ``options.units`` below).

    >>> "−2" in legend_html(2.0) and "+2" in legend_html(2.0)
    True
    """
    options = options or HeatmapOptions()
    stops = ", ".join(css(c) for c in colour_table(options, n=9))
    units = f"<div>{escape(options.units)}</div>" if options.units else ""
    return (f'<div class="attrib-legend" title="colour scale ±{scale:.4g}" style="display:inline-block;'
            f'font-size:11px;color:#444;margin-top:6px">'
            f'<div style="width:160px;height:10px;border:1px solid #bbb;background:linear-gradient(to right, {stops})">'
            f'</div><div style="display:flex;justify-content:space-between;width:162px">'
            f'<span>−{scale:.3g}</span><span>0</span><span>+{scale:.3g}</span></div>{units}</div>')


def token_html(tokens: Sequence[str], scores: np.ndarray, options: HeatmapOptions | None = None,
               **overrides: Any) -> str:
    """Tokens as coloured boxes that wrap like text (a line break after each newline token), each with its
    value below (``show_values``) and in its tooltip, then the legend."""
    options = resolve(options, **overrides)
    scores = np.asarray(scores, dtype=float).reshape(-1)
    if len(tokens) != len(scores):
        raise PlotError(f"{len(tokens)} tokens but {len(scores)} scores.")
    fills = rgba(scores, options)
    inks = text_colours(fills)
    values = shows_values(options, len(scores))
    boxes = []
    for token, value, fill, ink in zip(tokens, scores, fills, inks):
        shown = number(value, options.decimals)
        below = f'<br><span style="font-size:9px">{shown}</span>' if values else ""
        boxes.append(f'<span class="attrib-token" title="{escape(repr(token))}: {shown}" style="display:inline-block;'
                     f'vertical-align:top;text-align:center;white-space:pre;padding:1px 3px;margin:1px;'
                     f'border-radius:3px;background:{css(fill)};color:{ink}">{label_html(token)}{below}</span>')
        if "\n" in token:
            boxes.append("<br>")
    return (f'<div {_CONTAINER}>{_title(options.title)}<div style="line-height:1.6;{_FONT}">{"".join(boxes)}'
            f'</div>{legend_html(scale_of(scores, options), options)}</div>')


def grid_html(values: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str],
              options: HeatmapOptions | None = None, *, corner: str = "", legend: bool = True,
              **overrides: Any) -> str:
    """A table of coloured cells (rows × columns) on one shared scale, with the legend (unless ``legend`` is
    False). Labels are shown as given (escaped); tooltips name the row, the column and the value."""
    options = resolve(options, **overrides)
    values = np.asarray(values, dtype=float)
    if values.shape != (len(row_labels), len(col_labels)):
        raise PlotError(f"values of shape {values.shape} for {len(row_labels)} rows × {len(col_labels)} columns.")
    fills = rgba(values, options)
    inks = np.array(text_colours(fills), dtype=object).reshape(values.shape)
    printed = shows_values(options, values.size)
    cell = "padding:2px 4px;min-width:1.2em;text-align:center;border:1px solid #fff"
    head = "".join(f'<th style="{cell};font-weight:500;white-space:pre">{escape(c)}</th>' for c in col_labels)
    rows = []
    for i, name in enumerate(row_labels):
        cells = "".join(
            f'<td title="{escape(name)} · {escape(col)}: {number(v, options.decimals)}" style="{cell};'
            f'background:{css(fills[i, j])};color:{inks[i, j]}">{number(v, options.decimals) if printed else ""}</td>'
            for j, (col, v) in enumerate(zip(col_labels, values[i])))
        rows.append(f'<tr><th style="{cell};text-align:right;white-space:pre">{escape(name)}</th>{cells}</tr>')
    table = (f'<table style="border-collapse:collapse;font-size:11px;{_FONT}">'
             f'<tr><th style="{cell};color:#666">{escape(corner)}</th>{head}</tr>{"".join(rows)}</table>')
    key = legend_html(scale_of(values, options), options) if legend else ""
    return f'<div {_CONTAINER}>{_title(options.title)}<div style="overflow-x:auto">{table}</div>{key}</div>'


def matrix_html(scores: np.ndarray, rows: Sequence[str], cols: Sequence[str], options: HeatmapOptions | None = None,
                **overrides: Any) -> str:
    """An outputs × inputs matrix: one row per output token, one column per input token, one shared scale.

    >>> page = matrix_html(np.eye(2), ["<a>", "b"], ["x", "\\n"])
    >>> page.count("<tr>"), "&lt;a&gt;" in page, "⏎" in page
    (3, True, True)
    """
    return grid_html(scores, [token_label(t) for t in rows], [token_label(t) for t in cols],
                     options, corner="output \\ input", **overrides)
