"""Options shared by every heatmap (HTML and matplotlib): one small frozen dataclass instead of long argument lists.

>>> from attrib.viz.options import HeatmapOptions, resolve
>>> opts = resolve(HeatmapOptions(scale=2.0), decimals=3)
>>> opts.scale, opts.decimals, opts.cmap
(2.0, 3, 'diverging')
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from ..errors import OptionError

__all__ = ["HeatmapOptions", "resolve", "with_defaults", "shows_values", "BUILTIN_CMAP", "MAX_VALUES"]

BUILTIN_CMAP = "diverging"
MAX_VALUES = 400


def _number(value: Any) -> bool:
    """A real number (numpy's too), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class HeatmapOptions:
    """How a heatmap looks; every renderer (token rows, matrices, layer grids, HTML and figures) reads these.

    >>> HeatmapOptions(wrap=20).wrap
    20

    - ``cmap``: ``"diverging"`` (white at zero, red for positive, blue for negative, the two sides exact
      mirror images) or the name of a matplotlib colour map, whose middle colour then sits at zero.
    - ``scale``: the |value| at which colours saturate; ``None``: the largest finite |value| shown. The colour
      range is always ``[-scale, +scale]``, symmetric around zero.
    - ``decimals``: digits after the point of printed values. ``show_values``: print each value in its
      cell (``None``: only when at most 400 values are shown).
    - ``wrap``: tokens per row of a matplotlib token heatmap (HTML wraps by itself).
    - ``figsize``: (width, height) in inches; ``None``: sized from the data.
    - ``title`` and ``units`` (the legend's label): ``None`` lets the caller choose; ``""`` shows none.
    """

    cmap: str = BUILTIN_CMAP
    scale: float | None = None
    decimals: int = 2
    wrap: int = 16
    show_values: bool | None = None
    figsize: tuple[float, float] | None = None
    title: str | None = None
    units: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.cmap, str):
            raise OptionError(f"cmap must be a colour map name, got {type(self.cmap).__name__}.")
        if self.cmap != BUILTIN_CMAP:
            import matplotlib

            if self.cmap not in matplotlib.colormaps:
                raise OptionError(f"cmap={self.cmap!r} is neither {BUILTIN_CMAP!r} nor a matplotlib colour map "
                                 "(e.g. 'RdBu_r', 'PuOr_r', 'coolwarm').")
        if self.scale is not None and not (_number(self.scale) and math.isfinite(self.scale) and self.scale > 0):
            raise OptionError(f"scale must be a positive finite number or None, got {self.scale!r:.40}.")
        if isinstance(self.decimals, bool) or not isinstance(self.decimals, int) or not 0 <= self.decimals <= 12:
            raise OptionError(f"decimals must be an int from 0 to 12, got {self.decimals!r:.40}.")
        if isinstance(self.wrap, bool) or not isinstance(self.wrap, int) or self.wrap < 1:
            raise OptionError(f"wrap must be a positive int (tokens per row), got {self.wrap!r:.40}.")
        if self.show_values is not None and not isinstance(self.show_values, (bool, np.bool_)):
            raise OptionError(f"show_values must be True, False or None (print values when at most {MAX_VALUES} are "
                              f"shown), got {self.show_values!r:.40}.")
        if self.show_values is not None:
            object.__setattr__(self, "show_values", bool(self.show_values))
        if self.figsize is not None:
            size = tuple(self.figsize) if isinstance(self.figsize, (tuple, list, np.ndarray)) else ()
            if len(size) != 2 or not all(_number(v) and math.isfinite(v) and v > 0 for v in size):
                raise OptionError(f"figsize must be (width, height) in inches, two positive numbers, got "
                                  f"{self.figsize!r:.40}; pass e.g. figsize=(8, 3).")
            object.__setattr__(self, "figsize", (float(size[0]), float(size[1])))
        for name in ("title", "units"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise OptionError(f"{name} must be a string or None, got {type(value).__name__} {value!r:.40}; pass "
                                  f"{name}=str(...) to show a value.")


_FIELDS = tuple(f.name for f in fields(HeatmapOptions))


def resolve(options: HeatmapOptions | None = None, /, **overrides: Any) -> HeatmapOptions:
    """``options`` (default: ``HeatmapOptions()``) with ``overrides`` applied; unknown names raise TypeError.

    >>> resolve(cmap="PuOr_r").cmap
    'PuOr_r'
    """
    if options is not None and not isinstance(options, HeatmapOptions):
        raise OptionError(f"options must be a HeatmapOptions, got {type(options).__name__}.")
    unknown = sorted(set(overrides) - set(_FIELDS))
    if unknown:
        raise OptionError(f"unknown heatmap option(s) {', '.join(unknown)}; the options are {', '.join(_FIELDS)}.")
    base = options if options is not None else HeatmapOptions()
    return replace(base, **overrides) if overrides else base


def with_defaults(options: HeatmapOptions, **defaults: Any) -> HeatmapOptions:
    """Fill the fields of ``options`` that are ``None`` from ``defaults`` (e.g. a result's own title).

    >>> with_defaults(HeatmapOptions(title=""), title="ig", units="Δ").units
    'Δ'
    """
    missing = {k: v for k, v in defaults.items() if getattr(options, k) is None}
    return replace(options, **missing) if missing else options



def shows_values(options: HeatmapOptions, n_values: int) -> bool:
    """Whether to print the values: ``options.show_values``, or when ``None``, at most 400 of them.

    >>> shows_values(HeatmapOptions(), 400), shows_values(HeatmapOptions(), 401)
    (True, False)
    >>> shows_values(HeatmapOptions(show_values=True), 1000)
    True
    """
    return options.show_values if options.show_values is not None else n_values <= MAX_VALUES
