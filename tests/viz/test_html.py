"""HTML heatmaps: hostile text is escaped everywhere (text, titles, tooltips), colours match the colour
functions, the legend shows the scale, results render themselves, show() prints or displays."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

from attrib.results import PatchingResult
from attrib.results import Attribution
from attrib.viz import HeatmapOptions, colours, grid_html, legend_html, matrix_html, token_html

HOSTILE = ["<script>alert(1)</script>", ' " onmouseover="alert(2)', "AT&T", "'quoted'", "\n",
           " <img src=x onerror=alert(3)>"]
HOSTILE_TARGET = '"><script>alert(4)</script>'


class Parsed(HTMLParser):
    """Every start tag with its (decoded) attributes, and the decoded text."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.cells: list[tuple[str, str]] = []      # (th | td, text) of table cells, in order
        self._cell: str | None = None
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("th", "td"):
            self._cell = tag
            self.cells.append((tag, ""))

    def handle_endtag(self, tag):
        if tag in ("th", "td"):
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self.cells[-1] = (self._cell, self.cells[-1][1] + data)

    def titles(self) -> list[str]:
        return [a["title"] for _, a in self.tags if "title" in a]


def assert_inert(page: str) -> Parsed:
    """No script or img tag and no event-handler attribute made it into the markup."""
    parsed = Parsed(page)
    assert {tag for tag, _ in parsed.tags} <= {"div", "span", "br", "table", "tr", "th", "td", "b"}
    assert not [name for _, attrs in parsed.tags for name in attrs if name.startswith("on")]
    assert "<script" not in page and "<img" not in page
    return parsed


def test_hostile_tokens_and_title_are_escaped():
    scores = np.linspace(-1, 1, len(HOSTILE))
    page = token_html(HOSTILE, scores, title=HOSTILE_TARGET)
    parsed = assert_inert(page)
    text = "".join(parsed.text)
    assert "<script>alert(1)</script>" in text and "AT&T" in text and HOSTILE_TARGET in text
    assert "AT&amp;T" in page and "&lt;script&gt;" in page
    # each token's tooltip survives intact (quotes escaped inside the attribute) and carries its value
    tooltips = [t for t in parsed.titles() if not t.startswith("colour scale")]
    assert tooltips == [f"{tok!r}: {s:.2f}" for tok, s in zip(HOSTILE, scores)]


def test_token_boxes_colours_values_and_line_breaks():
    tokens, scores = ["The", " cat", "\n", "sat"], np.array([0.5, -2.0, 0.0, 1.0])
    parsed = Parsed(token_html(tokens, scores, decimals=1))
    boxes = [a for tag, a in parsed.tags if a.get("class") == "attrib-token"]
    assert len(boxes) == 4
    backgrounds = [re.search(r"background:(#[0-9a-f]{6})", b["style"]).group(1) for b in boxes]
    assert backgrounds == colours(scores)
    assert backgrounds[2] == "#ffffff"
    text = "".join(parsed.text)
    for shown in ("0.5", "-2.0", "0.0", "1.0", "␣", "cat", "⏎"):
        assert shown in text
    page = token_html(tokens, scores)
    assert page.count("<br>") == 4 + 1           # one value line per box, one line break after the newline token
    assert "0.50" not in "".join(Parsed(token_html(tokens, scores, show_values=False)).text)


def test_legend_shows_the_scale_and_units():
    page = token_html(["a", "b"], np.array([0.25, -3.0]), units="Δ <metric>")
    text = "".join(Parsed(page).text)
    assert "−3" in text and "+3" in text and "Δ <metric>" in text and "&lt;metric&gt;" in page
    scaled = "".join(Parsed(token_html(["a"], np.array([0.25]), scale=10.0)).text)
    assert "−10" in scaled and "+10" in scaled
    stops = re.search(r"linear-gradient\(to right, ([^)]*)\)", legend_html(1.0)).group(1).split(", ")
    assert stops == colours(np.linspace(-1, 1, 9), HeatmapOptions(scale=1.0))


def test_grid_and_matrix_tables():
    values = np.array([[1.0, -1.0, 0.0], [0.5, 0.25, -0.5]])
    page = matrix_html(values, ["<out>", " o2"], HOSTILE[:3], title="m")
    parsed = assert_inert(page)
    assert page.count("<tr>") == 3 and page.count("<td") == 6
    cells = [a for tag, a in parsed.tags if tag == "td"]
    assert [re.search(r"background:(#[0-9a-f]{6})", c["style"]).group(1) for c in cells] == colours(values)
    assert cells[0]["title"] == "<out> · <script>alert(1)</script>: 1.00"
    headers = [text for tag, text in parsed.cells if tag == "th"]
    assert headers == ["output \\ input", "<script>alert(1)</script>", '␣" onmouseover="alert(2)', "AT&T",
                       "<out>", "␣o2"]
    with pytest.raises(ValueError, match="rows × 3 columns"):
        grid_html(values, ["a"], ["x", "y", "z"])


def attribution(scores: torch.Tensor, **kw) -> Attribution:
    tokens = kw.pop("tokens", HOSTILE[: scores.shape[-1]])
    return Attribution(tokens=tokens, scores=scores, values=scores[..., None], delta=kw.pop("delta", None),
                       target=HOSTILE_TARGET, method="integrated_gradients", **kw)


def test_attribution_repr_html_one_row():
    a = attribution(torch.tensor([0.5, -1.0, 0.25]), delta=torch.tensor(0.01))
    page = a._repr_html_()
    parsed = assert_inert(page)
    text = "".join(parsed.text)
    assert f"integrated_gradients → {HOSTILE_TARGET!r} (delta 0.01)" in text
    assert len([a for _, a in parsed.tags if a.get("class") == "attrib-token"]) == 3
    assert "mathjax_ignore" in page


def test_attribution_repr_html_matrix_has_one_row_per_output_token_on_a_shared_scale():
    scores = torch.tensor([[0.5, -1.0, 0.25], [4.0, 0.0, -2.0]])
    a = attribution(scores, output_tokens=[" Paris", "<b>"])
    page = a._repr_html_()
    parsed = assert_inert(page)
    assert page.count("<tr>") == 3                       # header + one per output token
    assert [text for tag, text in parsed.cells if tag == "th"][-2:] == ["␣Paris", "<b>"]
    cells = [re.search(r"background:(#[0-9a-f]{6})", a["style"]).group(1) for t, a in parsed.tags if t == "td"]
    assert cells == colours(scores.numpy())            # one scale for both rows (4.0 saturates, not 1.0)
    assert cells[1] != colours(np.array([-1.0]))[0]
    assert "+4" in "".join(parsed.text)


def test_generic_attribution_without_token_labels_renders():
    a = Attribution(tokens=["0", "1"], scores=torch.ones(3, 2), values=torch.ones(3, 2), delta=None,
                    target="[1]", method="saliency")
    headers = [text for tag, text in Parsed(a._repr_html_()).cells if tag == "th"]
    assert headers == ["output \\ input", "0", "1", "0", "1", "2"]     # rows (batch items) labelled by index


def patching_result(target: str = HOSTILE_TARGET) -> PatchingResult:
    torch.manual_seed(0)
    tokens = HOSTILE[:4]
    return PatchingResult({"resid": torch.randn(3, 2), "heads": torch.randn(3, 4, 2)}, tokens, [1, 3],
                          "activation_patching", "denoise", 2.5, -1.0, target)


def test_patching_repr_html():
    r = patching_result()
    page = r._repr_html_()
    parsed = assert_inert(page)
    text = "".join(parsed.text)
    assert f"activation_patching (denoise) → {HOSTILE_TARGET!r}" in text
    assert "metric clean 2.5, corrupted -1" in text and "resid 3 × 2" in text and "heads 3 × 4 × 2" in text
    top = r.top(5)
    comp, index, value = top[0]
    assert f"{value:.2f}" in text
    # the layer × position table: last layer first, columns are the patched positions with their tokens
    headers = [text for tag, text in parsed.cells if tag == "th"]
    grid = headers[headers.index("layer \\ position"):]
    assert grid == ["layer \\ position", '1:␣" onmouseover="alert(2)', "3:'quoted'", "2", "1", "0"]
    assert [text for tag, text in parsed.cells if tag == "td"][-6:] == \
        [f"{v:.2f}" for v in r.scores["resid"].flip(0).flatten().tolist()]
    assert page.count("attrib-legend") == 1
    heads_only = PatchingResult({"heads": torch.randn(2, 3, 2)}, ["a", "b"], [0, 1], "attribution_patching",
                                "noise", 0.0, 1.0, "x")
    assert "layer × head, summed over positions" in "".join(Parsed(heads_only._repr_html_()).text)


def test_show_prints_in_a_terminal(capsys):
    a = attribution(torch.tensor([0.5, -1.0]))
    assert a.show() is None
    assert capsys.readouterr().out.strip() == str(a)


def test_show_displays_html_in_a_notebook(monkeypatch, capsys):
    import IPython.display

    import attrib.viz.backend as backend

    shown = []
    monkeypatch.setattr(backend, "in_notebook", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    a = attribution(torch.tensor([0.5, -1.0]))
    a.show(decimals=3)
    assert capsys.readouterr().out == ""
    assert len(shown) == 1 and isinstance(shown[0], IPython.display.HTML)
    assert "-1.000" in shown[0].data and "&lt;script&gt;" in shown[0].data


def test_patching_repr_html_stays_modest_for_long_prompts():
    torch.manual_seed(0)
    tokens = [f" t{i}" for i in range(100)]
    r = PatchingResult({"resid": torch.randn(30, 100)}, tokens, list(range(100)), "attribution_patching",
                       "denoise", 1.0, 0.0, "x")
    page = r._repr_html_()
    assert "table left out (3000 cells)" in page
    assert page.count("<tr>") == 1 + 5 and page.count("attrib-legend") == 1 and len(page) < 20_000


def test_results_too_large_for_a_heatmap_say_so():
    import attrib

    net = attrib.Model(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 2)))
    a = attrib.integrated_gradients(net, torch.rand(1, 3, 32, 32), target=0, n_steps=2)
    page = a._repr_html_()
    assert len(page) < 1000 and "3072 values" in page
    assert len(a.plot().axes) == 3 + 1          # an image is drawn as one panel per channel and a colour bar
    many = attrib.Model(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(17 * 4 * 4, 2)))
    b = attrib.saliency(many, torch.rand(1, 17, 4, 4), target=0)
    with pytest.raises(attrib.PlotError, match=r"17 panels .* plt\.imshow"):
        b.plot()
