"""PathProfile: hand-made profiles with known answers; save / load, to_dict, steepest, trapezoid, plot, text."""

from __future__ import annotations

import json
import math

import pytest
import torch

import attrib
from attrib.results import PathProfile


def profile(alphas, rate, f=None, f_x=1.0, f_baseline=0.0, target=" Paris", info=None) -> PathProfile:
    f = [0.0] * len(alphas) if f is None else f
    return PathProfile(tokens=["The", " cat"], target=target, alphas=alphas, f=f, rate=rate, f_x=f_x,
                       f_baseline=f_baseline, info=info or {"baseline": "pad", "layer": "embeddings",
                                                            "score": "logit", "n_points": len(alphas)})


@pytest.fixture
def plt():
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def test_save_and_load_round_trip(tmp_path):
    p = profile([0.0, 0.25, 1.0], [float("nan"), -3.5, 2.0], f=[0.0, 0.5, 1.0], f_x=1.0, f_baseline=-0.125)
    path = tmp_path / "p.safetensors"
    p.save(path)
    for back in (attrib.load(path), PathProfile.load(path)):
        assert type(back) is PathProfile
        assert back.tokens == ["The", " cat"] and back.target == " Paris" and back.info == p.info
        assert back.f_x == 1.0 and back.f_baseline == -0.125
        assert back.alphas.tolist() == [0.0, 0.25, 1.0] and back.f.tolist() == [0.0, 0.5, 1.0]
        assert math.isnan(back.rate[0]) and back.rate[1:].tolist() == [-3.5, 2.0]
        assert back.alphas.dtype == back.f.dtype == back.rate.dtype == torch.float64
    with pytest.raises(attrib.ResultFileError, match="holds a path_profile result, not an attribution"):
        attrib.Attribution.load(path)


def test_to_dict():
    d = profile([0.0, 1.0], [2.0, 3.0], f=[0.5, 1.5], f_x=1.5, f_baseline=0.5).to_dict()
    assert d == {"kind": "path_profile", "tokens": ["The", " cat"], "target": " Paris", "f_x": 1.5,
                 "f_baseline": 0.5, "info": {"baseline": "pad", "layer": "embeddings", "score": "logit",
                                             "n_points": 2},
                 "alphas": [0.0, 1.0], "f": [0.5, 1.5], "rate": [2.0, 3.0]}
    assert json.loads(json.dumps(d)) == d


def test_steepest_orders_by_magnitude_and_skips_nan():
    p = profile([0.0, 0.1, 0.2, 0.3, 0.4], [float("nan"), 1.0, -5.0, 3.0, 0.5])
    assert p.steepest(2) == [(0.2, -5.0), (0.3, 3.0)]
    assert p.steepest(10) == [(0.2, -5.0), (0.3, 3.0), (0.1, 1.0), (0.4, 0.5)]
    assert p.steepest() == p.top()
    with pytest.raises(attrib.InputError, match="positive int k"):
        p.steepest(0)


def test_trapezoid_of_hand_made_profiles():
    # df/dα = 2α on three points: the trapezoid rule is exact for a linear integrand, ∫ = 1
    exact = profile([0.0, 0.5, 1.0], [0.0, 1.0, 2.0], f_x=1.0, f_baseline=0.0)
    assert exact.integral() == pytest.approx(1.0, abs=1e-15) and exact.trapezoid() == pytest.approx(0.0, abs=1e-15)
    assert profile([0.0, 0.5, 1.0], [0.0, 1.0, 2.0], f_x=3.0, f_baseline=1.0).trapezoid() == pytest.approx(0.5)
    # the points in any order
    assert profile([1.0, 0.0, 0.5], [2.0, 0.0, 1.0]).trapezoid() == pytest.approx(0.0, abs=1e-15)
    # df/dα = 3α² (f = α³): trapezoid 0.5·(0 + 0.75)/2 + 0.5·(0.75 + 3)/2 = 1.125 against f(x) − f(b) = 1
    cubic = profile([0.0, 0.5, 1.0], [0.0, 0.75, 3.0])
    assert cubic.integral() == pytest.approx(1.125) and cubic.trapezoid() == pytest.approx(0.125)
    # a NaN point is left out: ∫ over [0.5, 1] of 1 = 0.5, so the gap is 0.5 of 1
    assert profile([0.0, 0.5, 1.0], [float("nan"), 1.0, 1.0]).trapezoid() == pytest.approx(0.5)
    assert profile([0.0, 1.0], [0.0, 0.0], f_x=2.0, f_baseline=2.0).trapezoid() == 0.0
    assert profile([0.0, 1.0], [1.0, 1.0], f_x=2.0, f_baseline=2.0).trapezoid() == math.inf


def test_plot_has_two_panels_on_one_alpha_axis(plt):
    from matplotlib.figure import Figure

    p = profile([0.0, 0.5, 1.0], [1.0, 2.0, 1.5], f=[0.0, 0.4, 1.0], target="<$x$>")
    fig = p.plot()
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    top, bottom = fig.axes
    assert top.get_shared_x_axes().joined(top, bottom)
    assert top.lines[0].get_ydata().tolist() == [0.0, 0.4, 1.0]
    assert bottom.lines[0].get_ydata().tolist() == [1.0, 2.0, 1.5]
    assert bottom.get_yscale() == "linear"
    assert "<\\$x\\$>" in top.get_title()                       # the target, its $ not read as mathtext
    fig.savefig(__import__("io").BytesIO(), format="png")


def test_plot_switches_to_symlog_beyond_three_decades(plt):
    spike = profile([0.0, 0.25, 0.5, 0.75, 1.0], [1.0, -2.0, 5e6, 1.5, 1.0])
    bottom = spike.plot().axes[1]
    assert bottom.get_yscale() == "symlog"
    assert bottom.yaxis.get_transform().linthresh == pytest.approx(1.0)    # the 10th percentile of |df/dα|
    below = profile([0.0, 0.25, 0.5, 0.75, 1.0], [1.0, -2.0, 900.0, 1.5, 1.0])   # under 3 decades: linear
    assert below.plot().axes[1].get_yscale() == "linear"
    # a smooth integrand crossing zero has a tiny |df/dα| near the crossing: no switch for that
    grid = [i / 100 for i in range(101)]
    crossing = profile(grid, [a - 0.5 + 1e-9 for a in grid])
    assert crossing.plot().axes[1].get_yscale() == "linear"
    unsorted = profile([1.0, 0.0, 0.5], [1.0, 2.0, 3.0])
    assert unsorted.plot().axes[1].lines[0].get_xdata().tolist() == [0.0, 0.5, 1.0]


def test_plot_into_given_axes(plt):
    fig, axes = plt.subplots(2, 1)
    assert profile([0.0, 1.0], [1.0, 1.0]).plot(axes) is fig
    assert axes[0].lines and axes[1].lines
    with pytest.raises(attrib.PlotError, match="is not two matplotlib axes"):
        profile([0.0, 1.0], [1.0, 1.0]).plot(axes[0])


def test_text_and_html():
    p = profile([0.0, 0.5, 1.0], [0.0, 1.0, 2.0], target="<b>")
    assert str(p) == ("path_profile for '<b>': 3 points, f(b) 0 → f(x) 1, trapezoid gap 0; steepest df/dα +2 at "
                      "α = 1")
    page = p._repr_html_()
    assert "&lt;b&gt;" in page and "<b>'" not in page and "+2" in page


def test_fields_are_checked():
    with pytest.raises(attrib.InputError, match="one value per point, got lengths"):
        profile([0.0, 1.0], [1.0])
    with pytest.raises(attrib.InputError, match="alphas has shape \\(1, 2\\); pass a 1-D tensor"):
        profile([[0.0, 1.0]], [1.0, 2.0])
