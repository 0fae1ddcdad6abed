"""``attrib report DIR``: one self-contained HTML page for a finished run: the tokens most attributed across the
dataset, and a table of the examples with their heatmaps.

>>> from attrib.runs.report import token_totals
>>> records = [{"kind": "attribution", "tokens": ["a", " b"], "scores": [1.0, -3.0]},
...            {"kind": "attribution", "tokens": [" b", "c"], "scores": [1.0, 0.5]}]
>>> token_totals(records)                    # (token, total, mean, count), largest |total| first
[(' b', -2.0, -1.0, 2), ('a', 1.0, 1.0, 1), ('c', 0.5, 0.5, 1)]

The page links to nothing (inline styles, no script, no font or image from elsewhere), so it opens offline and
can be mailed as one file. Heatmaps are the results' own HTML (:mod:`attrib.viz.results`); tokens are grouped by
their exact string, a ``per_token`` matrix counting each input token's column sum.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from ..errors import RunError
from ..viz.colours import css, rgba, scale_of, text_colours
from ..viz.markup import escape, label_html, legend_html
from ..viz.options import HeatmapOptions
from .disk import write_atomic
from .runfile import RUN_FILE
from .store import load_results, read_index

__all__ = ["write_report", "report_html", "token_totals", "REPORT"]

REPORT = "report.html"
_STYLE = ("body{font-family:system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse}"
          "th,td{border:1px solid #ddd;padding:4px 8px;vertical-align:top;text-align:left}"
          "th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}"
          "h2{margin-top:28px}.note{color:#666;font-size:13px}")


def token_totals(records: Sequence[dict[str, Any]]) -> list[tuple[str, float, float, int]]:
    """Per token string, over every token attribution of ``records``: (token, total, mean, count), sorted by
    |total|, largest first. Patching results (no per-token scores) are left out."""
    totals: dict[str, list[float]] = {}
    for record in records:
        if record.get("kind") != "attribution":
            continue
        scores = np.asarray(record["scores"], dtype=float)
        scores = scores.sum(0) if scores.ndim == 2 else scores
        if scores.ndim != 1 or len(scores) != len(record["tokens"]):
            continue
        for token, value in zip(record["tokens"], scores.tolist()):
            entry = totals.setdefault(token, [0.0, 0])
            entry[0] += value
            entry[1] += 1
    rows = [(token, total, total / count, int(count)) for token, (total, count) in totals.items()]
    return sorted(rows, key=lambda row: -abs(row[1]))


def _tokens_table(rows: list[tuple[str, float, float, int]]) -> str:
    if not rows:
        return "<p class='note'>No per-token attributions in this run (patching scores layers × positions).</p>"
    note = f"<p class='note'>Token strings by |total attribution|, the {len(rows)} largest.</p>"
    options = HeatmapOptions()
    cells = []
    for column in (1, 2):
        values = np.array([row[column] for row in rows])
        fills = rgba(values, options)
        cells.append([f"background:{css(f)};color:{ink}" for f, ink in zip(fills, text_colours(fills))])
    body = "".join(
        f"<tr><td style='white-space:pre'>{label_html(token)}</td><td class='num'>{count}</td>"
        f"<td class='num' style='{cells[0][i]}'>{total:+.4g}</td><td class='num' style='{cells[1][i]}'>{mean:+.4g}"
        "</td></tr>" for i, (token, total, mean, count) in enumerate(rows))
    totals = np.array([row[1] for row in rows])
    return (f"{note}<table id='tokens'><tr><th>token</th><th>count</th><th>total</th><th>mean</th></tr>{body}</table>"
            f"{legend_html(scale_of(totals, options), options)}")


def _examples_table(folder: str, records: Sequence[dict[str, Any]]) -> str:
    rows = []
    for record, result in load_results(folder, records):
        delta = record.get("delta")
        shown = f"{delta:.3g}" if isinstance(delta, float) else "—" if delta is None else "…"
        rows.append(f"<tr><td>{escape(record['id'])}</td><td style='white-space:pre'>{escape(record['target'])}</td>"
                    f"<td class='num'>{shown}</td><td>{result._repr_html_()}</td></tr>")
    return ("<table id='examples'><tr><th>id</th><th>target</th><th>delta</th><th>attribution</th></tr>"
            f"{''.join(rows)}</table>")


def _run_settings(folder: str) -> dict[str, Any]:
    try:
        with open(os.path.join(folder, RUN_FILE), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def report_html(folder: str | os.PathLike, *, examples: int = 200, top: int = 30) -> str:
    """The report's page for the finished run in ``folder``: the ``top`` tokens by |total attribution|, then the
    first ``examples`` examples with their heatmaps."""
    for name, value in (("examples", examples), ("top", top)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RunError(f"{name}={value!r:.20} must be a positive int (how many rows the report shows).")
    folder = os.fspath(folder)
    records = read_index(folder)
    settings = _run_settings(folder)
    method = settings.get("method", records[0].get("method") if records else "?")
    head = (f"<p>{escape(method)} on {len(records)} prompts; model {escape(settings.get('model', '?'))}; options "
            f"{escape(json.dumps(settings.get('options', {})))}; folder {escape(os.path.abspath(folder))}.</p>")
    shown = f"the first {examples} of {len(records)}" if len(records) > examples else f"all {len(records)}"
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>attrib run: {escape(method)}"
            f"</title><style>{_STYLE}</style></head><body><h1>attrib run: {escape(method)}</h1>{head}"
            f"<h2>Tokens most attributed across the dataset</h2>{_tokens_table(token_totals(records)[:top])}"
            f"<h2>Examples</h2><p class='note'>{shown}, in dataset order.</p>"
            f"{_examples_table(folder, records[:examples])}</body></html>\n")


def write_report(folder: str | os.PathLike, path: str | os.PathLike | None = None, *, examples: int = 200,
                 top: int = 30) -> str:
    """Write :func:`report_html` to ``path`` (default ``folder/report.html``); returns the path written."""
    page = report_html(folder, examples=examples, top=top)
    target = os.fspath(path) if path is not None else os.path.join(os.fspath(folder), REPORT)
    if not os.path.isdir(os.path.dirname(os.path.abspath(target))):
        raise RunError(f"cannot write the report to {target!r}: its folder does not exist; create it or pass "
                       "another path.")
    write_atomic(target, page.encode())
    return target
