"""Colour maps and labels: white at zero, mirror symmetry, monotone saturation, the scale, options, markers."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import rgb_to_hsv

from attrib.viz import HeatmapOptions, colours, css, rgba, resolve, scale_of, text_colours, token_label
from attrib.viz.colours import POSITIVE, colour_table
from attrib.viz.labels import chunks, mpl_text, number, position_labels

GRID = np.linspace(0.0, 1.0, 41)


def test_zero_is_white_and_the_sides_mirror():
    values = np.concatenate([-GRID[::-1], GRID])
    colour = rgba(values, HeatmapOptions(scale=1.0))
    assert colours(np.array([0.0]), HeatmapOptions(scale=1.0)) == ["#ffffff"]
    for v in GRID:
        pos, neg = rgba(np.array([v, -v]), HeatmapOptions(scale=1.0))[:, :3]
        np.testing.assert_allclose(pos, neg[::-1], atol=1e-12)     # red ↔ blue swapped, green equal
    assert (colour[:, 3] == 1).all()
    assert colour[-1, 0] > colour[-1, 2] and colour[0, 2] > colour[0, 0]   # + is red, − is blue


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_saturation_grows_with_magnitude(sign):
    hsv = rgb_to_hsv(rgba(sign * GRID, HeatmapOptions(scale=1.0))[:, :3])
    assert hsv[0, 1] == 0.0                                   # grey at zero
    assert (np.diff(hsv[:, 1]) > 0).all()                     # saturation strictly increasing in |v|
    assert (np.diff(hsv[:, 2]) <= 1e-12).all()                # never brighter
    distance = np.linalg.norm(rgba(sign * GRID, HeatmapOptions(scale=1.0))[:, :3] - 1.0, axis=1)
    assert (np.diff(distance) > 0).all()


def test_scale_option_and_default_scale():
    half = rgba(np.array([1.0]), HeatmapOptions(scale=2.0))
    np.testing.assert_allclose(half, rgba(np.array([0.5]), HeatmapOptions(scale=1.0)))
    # beyond the scale the colour saturates at the end colour
    np.testing.assert_allclose(rgba(np.array([5.0, 2.0]), HeatmapOptions(scale=2.0))[:, :3], [POSITIVE, POSITIVE])
    # without a scale the largest |value| saturates, whichever its sign
    got = rgba(np.array([1.0, -4.0]))
    np.testing.assert_allclose(got[1, :3], POSITIVE[::-1])
    np.testing.assert_allclose(got[0], rgba(np.array([0.25]), HeatmapOptions(scale=1.0))[0])
    assert scale_of(np.array([np.nan, -3.0, np.inf, 1.0])) == 3.0
    assert scale_of(np.zeros(4)) == 1.0 and colours(np.zeros(2)) == ["#ffffff", "#ffffff"]
    assert scale_of(np.array([100.0]), HeatmapOptions(scale=0.5)) == 0.5


def test_nan_is_grey_and_shapes_are_kept():
    got = rgba(np.array([[np.nan, 1.0], [0.0, -1.0]]))
    assert got.shape == (2, 2, 4)
    assert css(got[0, 0]) == "#dedede"
    assert colours(np.array([[0.0, 1.0], [-1.0, 0.0]])) == ["#ffffff", "#cc1c2a", "#2a1ccc", "#ffffff"]


def test_matplotlib_cmap_is_centred_on_zero():
    import matplotlib

    cmap = matplotlib.colormaps["PuOr_r"]
    opts = HeatmapOptions(cmap="PuOr_r", scale=2.0)
    got = rgba(np.array([-2.0, -1.0, 0.0, 1.0, 2.0]), opts)
    np.testing.assert_allclose(got, cmap(np.array([0.0, 0.25, 0.5, 0.75, 1.0])))


def test_colour_table_runs_from_minus_to_plus_scale():
    table = colour_table(n=5)
    assert [css(c) for c in table] == colours(np.array([-1.0, -0.5, 0.0, 0.5, 1.0]), HeatmapOptions(scale=1.0))


def test_text_colour_follows_the_background():
    assert text_colours(rgba(np.array([0.0, 0.1, 1.0, -1.0]), HeatmapOptions(scale=1.0))) == \
        ["#000000", "#000000", "#ffffff", "#ffffff"]


def test_options_are_validated():
    with pytest.raises(ValueError, match="neither 'diverging' nor a matplotlib colour map"):
        HeatmapOptions(cmap="no-such-map")
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale"):
            HeatmapOptions(scale=bad)
    with pytest.raises(ValueError, match="wrap"):
        HeatmapOptions(wrap=0)
    with pytest.raises(TypeError, match="unknown heatmap option.*colour.*the options are cmap"):
        resolve(colour="red")
    with pytest.raises(TypeError, match="HeatmapOptions"):
        resolve({"scale": 1.0})
    base = HeatmapOptions(scale=2.0)
    assert resolve(base) is base and resolve(base, decimals=4) == HeatmapOptions(scale=2.0, decimals=4)
    with pytest.raises(Exception):
        base.scale = 3.0                                      # frozen


@pytest.mark.parametrize("token, label", [
    (" cat", "␣cat"), ("  two", "␣␣two"), ("\n", "⏎"), ("\n\n", "⏎⏎"), ("\tx", "⇥x"), ("end ", "end␣"),
    ("a b", "a b"), ("", "∅"), ("   ", "␣␣␣"), ("\r\n", "\\r⏎"), ("a\x00", "a\\x00"), ("<b>", "<b>"),
])
def test_token_labels(token, label):
    assert token_label(token) == label


def test_label_helpers():
    assert mpl_text("$x$") == "\\$x\\$"
    assert [list(r) for r in chunks(35, 16)] == [list(range(16)), list(range(16, 32)), [32, 33, 34]]
    assert position_labels([" a", "b", "\n"]) == ["␣a", "b", "⏎"]
    assert position_labels([" a", "b", "\n"], [1, 2]) == ["1:b", "2:⏎"]
    assert number(-0.004, 2) == "0.00" and number(-0.006, 2) == "-0.01" and number(3, 0) == "3"
