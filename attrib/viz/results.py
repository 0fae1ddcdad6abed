"""Renderers for attrib's results: ``Attribution`` and ``PatchingResult`` call these from ``plot`` / ``show`` /
``_repr_html_``. Results are read by attribute (duck typing), so this module imports no method code.

>>> import torch
>>> from attrib.results import Attribution
>>> from attrib.viz.results import attribution_html
>>> a = Attribution(tokens=["<b>", " x"], scores=torch.tensor([0.5, -1.0]), values=torch.ones(2, 3),
...                 delta=None, target="</div>", method="saliency")
>>> page = attribution_html(a)
>>> "&lt;/div&gt;" in page and "</div>'" not in page
True
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from .colours import scale_of
from .images import image_figure, image_html, image_panels
from .heatmap import layer_head_figure, layer_position_figure, layer_position_html
from ..errors import PlotError
from .labels import position_index, quoted, token_label
from .markup import escape, grid_html, matrix_html, token_html
from .options import HeatmapOptions, resolve, with_defaults
from .tokens import matrix_figure, token_figure

__all__ = ["attribution_title", "attribution_arrays", "attribution_html", "attribution_figure",
           "patching_title", "patching_html", "patching_figure", "MAX_CELLS"]

MAX_CELLS = 2000     # the largest table that a result renders inline (HTML) or draws cell by cell




def attribution_title(result: Any) -> str:
    """``method → 'target'``, with the completeness delta when it is one number."""
    delta = getattr(result, "delta", None)
    delta = None if delta is None else np.asarray(delta.detach().cpu() if hasattr(delta, "detach") else delta)
    extra = f" (delta {float(delta):.3g})" if delta is not None and delta.size == 1 else ""
    return f"{result.method} → {quoted(result.target)}{extra}"


def attribution_arrays(result: Any) -> tuple[np.ndarray, list[str] | None, list[str]]:
    """The scores as a 1-D array (row labels ``None``) or a 2-D rows × columns array with its labels: output
    tokens × input tokens for ``per_token`` results, batch rows × input elements for generic models."""
    scores = result.scores.detach().cpu().double().numpy()
    if scores.ndim <= 1:
        scores = scores.reshape(-1)
        cols = list(result.tokens) if len(result.tokens) == scores.size else [str(i) for i in range(scores.size)]
        return scores, None, cols
    scores = scores.reshape(scores.shape[0], -1)
    outputs = result.output_tokens
    rows = list(outputs) if outputs is not None and len(outputs) == scores.shape[0] else \
        [str(i) for i in range(scores.shape[0])]
    cols = list(result.tokens) if len(result.tokens) == scores.shape[1] else [str(i) for i in range(scores.shape[1])]
    return scores, rows, cols


def attribution_html(result: Any, options: HeatmapOptions | None = None, **overrides: Any) -> str:
    """One token heatmap row, or for a matrix a table with one row per output token on a shared scale."""
    options = with_defaults(resolve(options, **overrides), title=attribution_title(result))
    if image_panels(result) is not None:
        return image_html(result, options, MAX_CELLS)
    scores, rows, cols = attribution_arrays(result)
    if scores.size > MAX_CELLS:
        return (f"<div class='tex2jax_ignore mathjax_ignore'>{escape(attribution_title(result))}: "
                f"{scores.size} values, too many for an inline heatmap; draw them yourself from "
                "<code>.scores</code>.</div>")
    if rows is None:
        return token_html(cols, scores, options)
    return matrix_html(scores, rows, cols, options)


def attribution_figure(result: Any, options: HeatmapOptions | None = None, **overrides: Any) -> Any:
    """A matplotlib Figure: the token heatmap (wrapped into rows) or the outputs × inputs matrix."""
    options = with_defaults(resolve(options, **overrides), title=attribution_title(result))
    if image_panels(result) is not None:
        return image_figure(result, options)
    scores, rows, cols = attribution_arrays(result)
    if scores.size > MAX_CELLS:
        raise PlotError(
            f"this result has {scores.size} values (scores of shape {tuple(result.scores.shape)}), more than a "
            f"heatmap of cells shows readably ({MAX_CELLS}); plot .scores yourself, e.g. with plt.imshow."
        )
    if rows is None:
        return token_figure(cols, scores, options)
    return matrix_figure(scores, rows, cols, options)


def patching_figure(result: Any, component: str = "resid", position: int | None = None,
                    options: HeatmapOptions | None = None, **overrides: Any) -> Any:
    """A patching result's heatmap: layer × position for resid/attn/mlp; layer × head for heads, summed over
    positions or at prompt position ``position`` (negative counts from the end)."""
    if not isinstance(component, str) or component not in result.scores:
        raise PlotError(f"no scores for {component!r:.40} (the component argument) in this result; pass one of "
                        f"{', '.join(map(repr, result.scores))}.")
    values = result.scores[component].detach().cpu().double().numpy()
    headed = values.ndim == 3                   # heads, q, k, v: (layers, heads, positions)
    if position is not None and not headed:
        raise PlotError(f"position={position!r:.20} applies to per-head components only (layer × head at one "
                        f"position); {component!r} is drawn layer × position, so leave position out.")
    opts = with_defaults(resolve(options, **overrides), units="Δ metric")
    title = patching_title(result, component)
    if not headed:
        return layer_position_figure(values, result.tokens, with_defaults(opts, title=title),
                                     positions=result.positions)
    if position is None:
        values, where = values.sum(-1), "summed over positions"
    else:
        p = position_index(position, len(result.tokens))
        if p not in result.positions:
            raise PlotError(f"position={position} (prompt position {p}) was not patched; pass one of the patched "
                            f"positions {result.positions}.")
        values, where = values[:, :, result.positions.index(p)], f"at position {p} ({result.tokens[p]!r})"
    return layer_head_figure(values, with_defaults(opts, title=f"{title}\n{where}"))


def patching_title(result: Any, component: str) -> str:
    """``method (direction): component → 'target'``."""
    return f"{result.method} ({result.direction}): {component} → {quoted(result.target)}"


def _top_table(result: Any, k: int, options: HeatmapOptions, legend: bool) -> str:
    entries = result.top(k)
    if not entries:
        return ""
    rows, values = [], np.array([[v] for _, _, v in entries])
    for comp, index, _ in entries:
        head = f" H{index[1]}" if len(index) == 3 else ""
        rows.append(f"{comp} L{index[0]}{head} @{index[-1]} {token_label(result.tokens[index[-1]])}")
    return grid_html(values, rows, ["score"], options, corner=f"top {len(entries)}", legend=legend, title="")


def patching_html(result: Any, options: HeatmapOptions | None = None, *, k: int = 5, **overrides: Any) -> str:
    """A summary line, the ``k`` largest-|score| entries and one table (up to 2000 cells): layer × position of
    resid (else attn or mlp), or with heads only, layer × head summed over positions. One scale
    (``options.scale``, else the largest |value| of any component) and one legend."""
    options = with_defaults(resolve(options, **overrides), units="Δ metric", title="")
    arrays = {c: v.detach().cpu().double().numpy() for c, v in result.scores.items()}
    comp = next((c for c in ("resid", "attn", "mlp") if c in arrays), None)
    grid = arrays[comp] if comp is not None else arrays["heads"].sum(-1) if "heads" in arrays else None
    if options.scale is None:
        shown = [np.zeros(0), *arrays.values()] + ([grid] if grid is not None else [])
        options = replace(options, scale=scale_of(np.concatenate([v.ravel() for v in shown])))
    shapes = ", ".join(f"{c} {' × '.join(map(str, v.shape))}" for c, v in arrays.items())
    head = f'<div style="font-weight:600">{escape(options.title)}</div>' if options.title else ""
    summary = (f"{head}<div><b>{escape(result.method)}</b> ({escape(result.direction)}) → "
               f"{escape(quoted(result.target))}: metric clean {result.metric_clean:.4g}, corrupted "
               f"{result.metric_corrupted:.4g}; scores {escape(shapes)}</div>")
    fits = grid is not None and grid.size <= MAX_CELLS
    parts = [summary, _top_table(result, k, options, legend=not fits)]
    if grid is not None and not fits:
        what = f"{comp}: layer × position" if comp is not None else "heads: layer × head"
        parts.append(f"<div>{what} table left out ({grid.size} cells); see .plot()</div>")
    elif comp is not None:
        parts.append(layer_position_html(grid, result.tokens, options, positions=result.positions,
                                         title=f"{comp}: layer × position"))
    elif grid is not None:
        layers = [str(i) for i in reversed(range(grid.shape[0]))]
        parts.append(grid_html(grid[::-1], layers, [str(h) for h in range(grid.shape[1])], options,
                               corner="layer \\ head", title="heads: layer × head, summed over positions"))
    return f'<div class="attrib-patching tex2jax_ignore mathjax_ignore">{"".join(parts)}</div>'
