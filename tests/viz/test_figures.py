"""Matplotlib figures: token rows (labels with markers, wrapping), matrices, layer × position / layer × head
grids from hand-built and real patching results, colours equal to the colour functions, saving."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import attrib
from attrib.results import PatchingResult
from attrib.results import Attribution
from attrib.viz import (HeatmapOptions, layer_head_figure, layer_position_figure, matrix_figure, rgba, token_figure,
                        token_label)
from tests.conftest import tiny_hf


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def ticks(ax) -> list[str]:
    return [t.get_text() for t in ax.get_xticklabels()]


def colour_bar_ticks(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[-1].get_yticklabels()]


def test_token_figure_labels_values_colours_and_legend():
    tokens, scores = ["The", " cat", "\n", "\tx", "  "], np.array([0.5, -2.0, 0.0, 1.0, 0.25])
    fig = token_figure(tokens, scores, title="t")
    ax = fig.axes[0]
    assert len(fig.axes) == 2                                   # one row + the colour bar
    assert ticks(ax) == ["The", "␣cat", "⏎", "⇥x", "␣␣"]
    assert ax.get_title() == "t"
    assert [t.get_text() for t in ax.texts] == ["0.50", "-2.00", "0.00", "1.00", "0.25"]
    np.testing.assert_allclose(ax.images[0].get_array(), rgba(scores[None]))
    assert list(fig.axes[-1].get_yticks()) == [-2.0, 0.0, 2.0]
    assert colour_bar_ticks(fig) == ["−2", "0", "+2"]


def test_scale_and_value_options_reach_the_figure():
    scores = np.array([1.0, -0.5])
    fig = token_figure(["a", "b"], scores, HeatmapOptions(scale=4.0, decimals=3), units="Δ")
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), rgba(scores[None], HeatmapOptions(scale=4.0)))
    assert [t.get_text() for t in fig.axes[0].texts] == ["1.000", "-0.500"]
    assert colour_bar_ticks(fig) == ["−4", "0", "+4"] and fig.axes[-1].get_ylabel() == "Δ"
    assert fig.axes[0].texts[0].get_color() == "#000000"
    assert len(token_figure(["a", "b"], scores, show_values=False).axes[0].texts) == 0
    assert len(token_figure(["a"] * 500, np.ones(500)).axes[0].texts) == 0      # too many to print by default
    assert tuple(token_figure(["a"], np.ones(1), figsize=(3.0, 2.0)).get_size_inches()) == (3.0, 2.0)


@pytest.mark.parametrize("wrap, n_rows", [(16, 7), (20, 5), (100, 1)])
def test_long_prompts_wrap_into_rows(wrap, n_rows):
    tokens = [f" w{i}" if i % 7 else "\n" for i in range(100)]
    fig = token_figure(tokens, np.sin(np.arange(100.0)), wrap=wrap)
    rows = fig.axes[:-1]
    assert len(rows) == n_rows
    labels = [token_label(t) for t in tokens]
    for r, ax in enumerate(rows):
        assert ticks(ax) == labels[r * wrap:(r + 1) * wrap]
        assert ax.get_xlim() == (-0.5, min(wrap, 100) - 0.5)      # equal cell widths in every row
        if n_rows > 1:
            assert ax.get_ylabel() == str(r * wrap)                # the row's first position
    assert sum(len(ax.texts) for ax in rows) == 100


def test_dollar_signs_are_drawn_literally(tmp_path):
    """Without escaping, '$\\frac{$' would be parsed as mathtext and fail to draw."""
    fig = token_figure([" $\\frac{$", "$x$"], np.array([1.0, -1.0]), title="cost $\\frac{$")
    assert ticks(fig.axes[0]) == ["␣\\$\\frac{\\$", "\\$x\\$"]
    assert fig.axes[0].get_title() == "cost \\$\\frac{\\$"
    fig.savefig(tmp_path / "dollars.png")
    matrix_figure(np.eye(1), ["$\\frac{$"], ["$\\frac{$"], title="$\\frac{$").savefig(tmp_path / "matrix.png")


def test_matrix_figure_shape_and_labels():
    scores = np.arange(12.0).reshape(3, 4) - 6
    fig = matrix_figure(scores, [" Paris", " is", "\n"], ["The", " capital", " of", " France"], title="m")
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape == (3, 4, 4)
    np.testing.assert_allclose(ax.images[0].get_array(), rgba(scores))
    assert ticks(ax) == ["The", "␣capital", "␣of", "␣France"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["␣Paris", "␣is", "⏎"]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("input token", "output token", "m")
    assert colour_bar_ticks(fig) == ["−6", "0", "+6"]
    with pytest.raises(ValueError, match="3 rows × 2 columns"):
        matrix_figure(scores, ["a", "b", "c"], ["x", "y"])


def test_attribution_plot():
    a = Attribution(tokens=["The", " cat"], scores=torch.tensor([0.5, -1.0]), values=torch.ones(2, 3),
                    delta=torch.tensor(0.01), target=" $at", method="integrated_gradients")
    fig = a.plot()
    assert isinstance(fig, plt.Figure)
    assert fig.axes[0].get_title() == "integrated_gradients → ' \\$at' (delta 0.01)"
    assert ticks(fig.axes[0]) == ["The", "␣cat"]
    assert a.plot(title="", wrap=1).axes[0].get_title() == "" and len(a.plot(wrap=1).axes) == 3
    assert colour_bar_ticks(a.plot(HeatmapOptions(scale=2.0))) == ["−2", "0", "+2"]
    with pytest.raises(TypeError, match="unknown heatmap option"):
        a.plot(colour="red")
    m = Attribution(tokens=["a", "b", "c"], scores=torch.ones(2, 3), values=torch.ones(2, 3, 1), delta=None,
                    target=" x y", method="integrated_gradients", output_tokens=[" x", " y"])
    assert m.plot().axes[0].images[0].get_array().shape == (2, 3, 4)


def test_real_per_token_matrix_plots_and_renders():
    model = attrib.LanguageModel(tiny_hf("neox"), None)
    ids = torch.tensor([3, 14, 15, 9])
    matrix = attrib.integrated_gradients(model, ids, target=[7, 12], n_steps=4, per_token=True)
    fig = matrix.plot()
    assert fig.axes[0].images[0].get_array().shape == (2, 4, 4)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["7", "12"]
    assert matrix._repr_html_().count("<tr>") == 3


def test_layer_position_figure_keeps_the_demo_signature():
    values = np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    fig = layer_position_figure(values, ["a", " b", "\n"], colorbar_label="‖grad‖", title="norms")
    ax = fig.axes[0]
    assert ticks(ax) == ["a", "␣b", "⏎"] and ax.get_title() == "norms"
    assert fig.axes[-1].get_ylabel() == "‖grad‖"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("position", "layer")
    assert ax.images[0].origin == "lower"                       # layer 0 at the bottom
    assert colour_bar_ticks(fig) == ["−5", "0", "+5"]           # symmetric around zero even for norms
    many = layer_position_figure(np.ones((30, 2)), ["a", "b"])
    assert len(many.axes[0].get_yticks()) < 30                  # deep models label every few layers


def hand_built() -> PatchingResult:
    torch.manual_seed(0)
    tokens = ["When", " Mary", " and", " John", "\n", " to"]
    return PatchingResult({"resid": torch.randn(3, 6), "attn": torch.randn(3, 6), "heads": torch.randn(3, 4, 6)},
                          tokens, list(range(6)), "activation_patching", "denoise", 2.0, -1.0, " Mary")


def test_patching_plot_layer_position():
    r = hand_built()
    fig = r.plot("attn")
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape == (3, 6, 4)
    np.testing.assert_allclose(ax.images[0].get_array(), rgba(r.scores["attn"].double().numpy()))
    assert ticks(ax) == ["When", "␣Mary", "␣and", "␣John", "⏎", "␣to"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2"]
    assert ax.get_title() == "activation_patching (denoise): attn → ' Mary'"
    bound = float(r.scores["attn"].abs().max())
    assert fig.axes[-1].get_yticks() == pytest.approx([-bound, 0.0, bound])
    assert fig.axes[-1].get_ylabel() == "Δ metric"


def test_patching_plot_layer_head():
    r = hand_built()
    summed = r.plot("heads")
    assert summed.axes[0].images[0].get_array().shape == (3, 4, 4)
    np.testing.assert_allclose(summed.axes[0].images[0].get_array(), rgba(r.scores["heads"].double().sum(-1).numpy()))
    assert ticks(summed.axes[0]) == ["0", "1", "2", "3"] and summed.axes[0].get_xlabel() == "head"
    assert summed.axes[0].get_title().endswith("summed over positions")
    at = r.plot("heads", position=-2)
    np.testing.assert_allclose(at.axes[0].images[0].get_array(), rgba(r.scores["heads"][:, :, 4].double().numpy()))
    assert at.axes[0].get_title().endswith("at position 4 ('\\n')")
    purple = HeatmapOptions(cmap="PuOr_r", scale=10.0)
    np.testing.assert_allclose(r.plot("heads", options=purple).axes[0].images[0].get_array(),
                               rgba(r.scores["heads"].double().sum(-1).numpy(), purple))
    with pytest.raises(attrib.PlotError, match="no scores for 'mlp'"):
        r.plot("mlp")


def test_patching_plot_subset_positions_are_labelled_with_their_position():
    r = PatchingResult({"resid": torch.ones(2, 2)}, ["a", " b", "c"], [0, 2], "attribution_patching", "noise",
                       0.0, 1.0, "x")
    assert ticks(r.plot().axes[0]) == ["0:a", "2:c"]


def test_real_attribution_patching_plots_and_renders(tmp_path):
    model = attrib.Model(tiny_hf("gpt2"))
    clean, corrupted = torch.tensor([[3, 14, 15, 9, 26, 5]]), torch.tensor([[3, 14, 40, 9, 26, 7]])
    r = attrib.attribution_patching(model, clean, corrupted, target=7, contrast=8)
    for comp in ("resid", "attn", "mlp"):
        fig = r.plot(comp)
        assert fig.axes[0].images[0].get_array().shape == (2, 6, 4)
        assert ticks(fig.axes[0]) == ["3", "14", "15", "9", "26", "5"]
        np.testing.assert_allclose(fig.axes[0].images[0].get_array(), rgba(r.scores[comp].double().numpy()))
    heads = r.plot("heads", position=-1)
    assert heads.axes[0].images[0].get_array().shape == (2, 4, 4)
    heads.savefig(tmp_path / "heads.svg")
    page = r._repr_html_()
    assert "<b>attribution_patching</b> (denoise)" in page
    assert page.count("<tr>") == (1 + 5) + (1 + 2)            # the top 5, then resid's 2 layers


def test_save_png_and_svg(tmp_path):
    figures = {
        "tokens": token_figure(["<script>", " a", "\n"], np.array([1.0, 0.0, -1.0])),
        "matrix": matrix_figure(np.eye(2), ["a", "b"], ["c", "d"]),
        "layers": layer_position_figure(np.eye(2), ["x", "y"]),
        "heads": layer_head_figure(np.eye(3)),
    }
    for name, fig in figures.items():
        fig.savefig(tmp_path / f"{name}.png", dpi=50)
        fig.savefig(tmp_path / f"{name}.svg")
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        svg = (tmp_path / f"{name}.svg").read_text()
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "<image" in svg
