"""``attrib report``: the tokens most attributed across the dataset (checked against direct calls), a table of
examples with heatmaps, a page that loads nothing from elsewhere, rendered by headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from html.parser import HTMLParser

import numpy as np
import pytest

import attrib
from attrib.runs import report_html, token_totals, write_report

from .conftest import ROWS


@pytest.fixture(scope="module")
def saliency_run(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    attrib.run_dataset(tiny_model, ROWS, method="saliency", out=out, chunk=5, progress=False, mode="grad_x_input")
    return out


def test_token_totals_equal_sums_of_direct_calls(saliency_run, tiny_model):
    want: dict[str, list[float]] = defaultdict(list)
    for row in ROWS:
        target = row.get("target")
        result = attrib.saliency(tiny_model, row["prompt"], target=target[0] if isinstance(target, list) else target,
                                 contrast=row.get("contrast"), mode="grad_x_input")
        for token, score in zip(result.tokens, result.scores.tolist()):
            want[token].append(score)
    got = token_totals(attrib.runs.read_index(saliency_run))
    assert sorted(token for token, *_ in got) == sorted(want)
    for token, total, mean, count in got:
        assert count == len(want[token])
        assert total == pytest.approx(sum(want[token]), rel=1e-9, abs=1e-12)
        assert mean == pytest.approx(np.mean(want[token]), rel=1e-9, abs=1e-12)
    assert [abs(t) for _, t, _, _ in got] == sorted((abs(t) for _, t, _, _ in got), reverse=True)


class Page(HTMLParser):
    """Tables by id (their rows), token boxes, and every attribute that could load something."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.rows: dict[str, int] = {}
        self.table: str | None = None
        self.tokens = 0
        self.loads: list[str] = []
        self.tags: set[str] = set()
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag == "table" and attrs.get("id"):
            self.table = attrs["id"]
            self.rows[self.table] = 0
        if tag == "tr" and self.table:
            self.rows[self.table] += 1
        if "attrib-token" in (attrs.get("class") or ""):
            self.tokens += 1
        self.loads += [v for k, v in attrs.items() if k in ("src", "href") and v]


def test_the_page_holds_both_tables_and_loads_nothing(saliency_run):
    text = report_html(saliency_run, top=5)
    page = Page(text)
    assert page.rows["tokens"] == 1 + 5                   # the header and the top five tokens
    assert page.rows["examples"] >= 1 + len(ROWS)
    assert page.tokens == sum(len(row["prompt"].split()) for row in ROWS)     # one box per prompt token
    assert page.loads == [] and not page.tags & {"script", "link", "img", "iframe"} and "url(" not in text
    assert "&lt;b&gt;&amp;" in text and "<b>&" not in text                  # the id "<b>&" is escaped
    assert "the first" not in text and "all 12, in dataset order" in text


def test_a_patching_run_shows_its_layer_by_position_grids(tiny_model, tmp_path):
    rows = [{"prompt": "w3 w14 w15", "corrupted": "w3 w20 w15", "target": " w26"}]
    attrib.run_dataset(tiny_model, rows, method="atp", out=tmp_path / "run", progress=False, components="resid")
    text = report_html(tmp_path / "run")
    assert "No per-token attributions in this run" in text and "resid: layer × position" in text


def test_bad_report_arguments(saliency_run, tmp_path):
    with pytest.raises(attrib.RunError, match=r"examples=0 must be a positive int"):
        report_html(saliency_run, examples=0)
    with pytest.raises(attrib.RunError, match=r"cannot write the report to .*: its folder does not exist"):
        write_report(saliency_run, tmp_path / "no" / "page.html")


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_the_page_renders_in_a_browser(saliency_run, tmp_path):
    from PIL import Image

    path = write_report(saliency_run)
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,900"]
    url = f"file://{path}"
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (900, 1200)
    assert (pixels.min(-1) < 200).mean() > 0.02, "the page rendered (nearly) blank"
    reds, blues = (pixels[..., 0] > pixels[..., 2] + 60).sum(), (pixels[..., 2] > pixels[..., 0] + 60).sum()
    assert reds > 200 and blues > 200, "no heatmap colours on the page"
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    assert re.search(r"<table id=\"tokens\">", dom) and re.search(r"<table id=\"examples\">", dom)
    assert dom.count('class="attrib-token"') == sum(len(row["prompt"].split()) for row in ROWS)
