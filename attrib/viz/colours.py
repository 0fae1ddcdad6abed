"""Pure functions from arrays of values to colours; the HTML and the matplotlib heatmaps both use them.

>>> import numpy as np
>>> from attrib.viz.colours import colours
>>> colours(np.array([-1.0, 0.0, 0.5, 1.0]))
['#2a1ccc', '#ffffff', '#e68e95', '#cc1c2a']

Zero is white; +v and −v are mirror images (red and blue channels swapped); colours saturate at
``|v| = scale`` (``options.scale``, or the largest finite |value|). NaN is a light grey.
"""

from __future__ import annotations

import numpy as np

from .options import BUILTIN_CMAP, HeatmapOptions

__all__ = ["POSITIVE", "NEUTRAL", "MISSING", "scale_of", "normalise", "rgba", "colours", "css",
           "text_colours", "colour_table"]

POSITIVE = np.array([0.80, 0.11, 0.165])   # the built-in map's colour at +scale; −scale swaps red and blue
NEUTRAL = np.array([1.0, 1.0, 1.0])        # at zero
MISSING = np.array([0.87, 0.87, 0.87])     # NaN


def scale_of(values: np.ndarray, options: HeatmapOptions | None = None) -> float:
    """``options.scale`` if set, else the largest finite |value| (1.0 when there is none or it is 0).

    >>> scale_of(np.array([0.5, -2.0, np.nan])), scale_of(np.zeros(3))
    (2.0, 1.0)
    """
    if options is not None and options.scale is not None:
        return float(options.scale)
    finite = np.abs(np.asarray(values, dtype=float))
    finite = finite[np.isfinite(finite)]
    top = float(finite.max()) if finite.size else 0.0
    return top if top > 0 else 1.0


def normalise(values: np.ndarray, scale: float) -> np.ndarray:
    """``values / scale`` clipped to [−1, 1] (±inf to ±1); NaN stays NaN.

    >>> normalise(np.array([-4.0, 1.0, np.inf]), 2.0).tolist()
    [-1.0, 0.5, 1.0]
    """
    return np.clip(np.asarray(values, dtype=float) / float(scale), -1.0, 1.0)


def _builtin(x: np.ndarray) -> np.ndarray:
    """RGB for x in [−1, 1]: a straight line from white to POSITIVE (x > 0) or its mirror (x < 0)."""
    t = np.abs(x)[..., None]
    end = np.where((x > 0)[..., None], POSITIVE, POSITIVE[::-1])
    return NEUTRAL + t * (end - NEUTRAL)


def rgba(values: np.ndarray, options: HeatmapOptions | None = None) -> np.ndarray:
    """RGBA in [0, 1], shape ``values.shape + (4,)``, on a range symmetric around zero.

    >>> rgba(np.array([0.0, 2.0]), HeatmapOptions(scale=4.0))[:, :3].round(3).tolist()
    [[1.0, 1.0, 1.0], [0.9, 0.555, 0.582]]
    """
    options = options or HeatmapOptions()
    x = normalise(values, scale_of(values, options))
    missing = np.isnan(x)
    x = np.where(missing, 0.0, x)
    if options.cmap == BUILTIN_CMAP:
        rgb = _builtin(x)
    else:
        import matplotlib

        rgb = np.asarray(matplotlib.colormaps[options.cmap]((x + 1.0) / 2.0))[..., :3]
    rgb = np.where(missing[..., None], MISSING, rgb)
    return np.concatenate([rgb, np.ones(x.shape + (1,))], axis=-1)


def css(colour: np.ndarray) -> str:
    """One RGB(A) colour in [0, 1] as ``#rrggbb``.

    >>> css(np.array([1.0, 0.5, 0.0, 1.0]))
    '#ff8000'
    """
    r, g, b = (int(round(255 * float(c))) for c in np.clip(np.asarray(colour)[:3], 0.0, 1.0))
    return f"#{r:02x}{g:02x}{b:02x}"


def colours(values: np.ndarray, options: HeatmapOptions | None = None) -> list[str]:
    """One ``#rrggbb`` colour per value, in row-major (flattened) order.

    >>> colours(np.array([[0.0, 3.0]]), HeatmapOptions(scale=3.0))
    ['#ffffff', '#cc1c2a']
    """
    return [css(c) for c in rgba(values, options).reshape(-1, 4)]


def text_colours(colour: np.ndarray) -> list[str]:
    """Black or white text for each RGB(A) background (an ``(..., 3|4)`` array), whichever reads better.

    >>> text_colours(np.array([[1.0, 1.0, 1.0], [0.8, 0.11, 0.165]]))
    ['#000000', '#ffffff']
    """
    rgb = np.asarray(colour, dtype=float).reshape(-1, np.shape(colour)[-1])[:, :3]
    luminance = rgb @ np.array([0.2126, 0.7152, 0.0722])
    return ["#ffffff" if v < 0.45 else "#000000" for v in luminance]


def colour_table(options: HeatmapOptions | None = None, n: int = 257) -> np.ndarray:
    """``n`` RGBA rows from −scale to +scale (odd ``n``: the middle row is the colour of zero), e.g. for a
    colour bar or a CSS gradient.

    >>> css(colour_table(n=3)[1])
    '#ffffff'
    """
    return rgba(np.linspace(-1.0, 1.0, n), HeatmapOptions(cmap=(options or HeatmapOptions()).cmap, scale=1.0))
