"""Drawing a path profile (``attrib.PathProfile``, from :func:`attrib.path_profile`): the score f(α) and the
integrand df/dα of integrated gradients (Sundararajan et al. 2017) on one α axis. Results are read by attribute,
so this module imports no method code.

>>> import numpy as np
>>> from attrib.viz.profile import symlog_threshold
>>> symlog_threshold(np.array([1.0, 2.0, 1.5])) is None               # a smooth integrand: a linear axis
True
>>> symlog_threshold(np.array([1.0, 1.0, 1.0, 5e6, np.nan]))         # a spike: symlog, linear below 1
1.0

A spike (the score nearly jumps within a hundredth of α) shows as one tall narrow peak of df/dα; a chaotic
region (a zero baseline's first thousandth of the path on a Llama-family model) as df/dα swinging between
large values of both signs. Either way the trapezoid gap in the title is large.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import PlotError
from .backend import pyplot
from .labels import mpl_text, quoted
from .markup import escape

__all__ = ["symlog_threshold", "profile_figure", "profile_html", "SPIKE_RATIO", "LOW_PERCENTILE"]

SPIKE_RATIO = 1e3        # df/dα spanning more than this (3 decades) is drawn on a symlog axis
LOW_PERCENTILE = 10      # where the span starts: the few |df/dα| near a zero crossing do not count


def symlog_threshold(rate: Any) -> float | None:
    """The linear range of a symlog axis for ``rate`` when its finite non-zero |values| span more than 3 decades
    (:data:`SPIKE_RATIO`), else None (a linear axis). The span runs from the 10th percentile of those |values|
    (a smooth integrand crossing zero has a few tiny values, which should not switch the axis) to the largest;
    that percentile, rounded up to a power of ten (ticks at whole decades), is the returned linear range."""
    values = np.abs(np.asarray(rate, dtype=float).reshape(-1))
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return None
    low = float(np.percentile(values, LOW_PERCENTILE))
    if float(values.max()) <= SPIKE_RATIO * low:
        return None
    return float(10.0 ** np.ceil(np.log10(low)))


def _title(result: Any) -> str:
    gap = result.trapezoid()
    return (f"path of {quoted(result.target)}: f(b) = {result.f_baseline:.4g} → f(x) = {result.f_x:.4g}, "
            f"trapezoid gap {gap:.3g} of |f(x) − f(b)|")


def profile_figure(result: Any, axes: Sequence[Any] | None = None) -> Any:
    """Two panels sharing the α axis: f(α) with f(b) and f(x) marked, and df/dα with its steepest point marked
    (on a symlog y axis when :func:`symlog_threshold` says so). ``axes``: two matplotlib axes to draw into,
    else a new figure. Returns the Figure."""
    alphas = result.alphas.detach().cpu().double().numpy()
    f = result.f.detach().cpu().double().numpy()
    rate = result.rate.detach().cpu().double().numpy()
    if alphas.size == 0:
        raise PlotError("this profile has no points to plot; compute one with attrib.path_profile(..., n_points=101).")
    order = np.argsort(alphas, kind="stable")
    alphas, f, rate = alphas[order], f[order], rate[order]
    if axes is None:
        fig = pyplot().figure(figsize=(7.0, 5.0), layout="constrained")
        top, bottom = fig.subplots(2, 1, sharex=True)
    else:
        try:
            top, bottom = axes
            fig = top.get_figure()
        except (TypeError, ValueError, AttributeError):
            raise PlotError(f"ax={axes!r:.60} is not two matplotlib axes; pass ax=(ax_f, ax_rate), e.g. from "
                            "plt.subplots(2, 1, sharex=True)[1], or leave it out.") from None
    marker = "." if alphas.size <= 400 else None
    top.plot(alphas, f, marker=marker, color="#1f4e9c", lw=1.2)
    top.axhline(result.f_baseline, color="#999", lw=0.8, ls=":")
    top.axhline(result.f_x, color="#999", lw=0.8, ls="--")
    top.set_ylabel("f(α)")
    top.set_title(mpl_text(_title(result)), fontsize=10)
    bottom.plot(alphas, rate, marker=marker, color="#b5302a", lw=1.2)
    bottom.axhline(0.0, color="#999", lw=0.8)
    steep = result.steepest(1)
    if steep:
        bottom.plot([steep[0][0]], [steep[0][1]], "o", mfc="none", mec="black", ms=9,
                    label=f"steepest: {steep[0][1]:+.3g} at α = {steep[0][0]:.3g}")
    bad = alphas[~np.isfinite(rate)]
    for i, a in enumerate(bad):
        bottom.axvline(a, color="#e08a00", lw=0.8, alpha=0.6,
                       label=f"NaN/inf df/dα ({bad.size} point{'s' if bad.size > 1 else ''})" if i == 0 else None)
    if steep or bad.size:
        bottom.legend(loc="best", fontsize=8, frameon=False)
    threshold = symlog_threshold(rate)
    if threshold is not None:
        bottom.set_yscale("symlog", linthresh=threshold)
        bottom.margins(y=0.08)
    bottom.set_ylabel("df/dα" + (" (symlog)" if threshold is not None else ""))
    bottom.set_xlabel("α   (0: baseline, 1: input)")
    return fig


def profile_html(result: Any, k: int = 5) -> str:
    """A summary line and the ``k`` steepest points as a small table; every piece of text escaped."""
    rows = "".join(f"<tr><td>{a:.4g}</td><td>{r:+.4g}</td></tr>" for a, r in result.steepest(k))
    table = (f'<table style="font-size:90%"><tr><th>α</th><th>df/dα</th></tr>{rows}</table>' if rows else
             "<div>every df/dα is NaN</div>")
    return (f'<div class="attrib-profile tex2jax_ignore mathjax_ignore"><div><b>path_profile</b> '
            f"({len(result.alphas)} points): {escape(_title(result))}</div>"
            f"<div>steepest points (see .plot()):</div>{table}</div>")
