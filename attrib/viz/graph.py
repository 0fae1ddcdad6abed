"""A layered drawing of a circuit's edges: the embeddings at the bottom, a row per layer's heads and its MLP,
the logits at the top.

>>> from attrib.viz.graph import graph_figure, place
>>> place("L2H1"), place("M2"), place("embed"), place("L3H0.q"), place("L3KV1.v")
((1.0, 2.0), ('mlp', 2.5), ('embed', -1.0), (0.0, 3.0), ('kv1', 2.7))
>>> fig = graph_figure([("embed", "L1H0.q", 0.5), ("L1H0", "logits", -1.0)], ["embed", "L1H0"], ["L1H0.q", "logits"])
>>> fig.axes[0].get_title()
'2 edges'
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from .backend import pyplot

__all__ = ["graph_figure", "place"]

_HEAD = re.compile(r"^L(\d+)H(\d+)(?:\.[qkv])?$")
_KV = re.compile(r"^L(\d+)KV(\d+)(?:\.[kv])?$")   # a key/value head under grouped-query attention
_MLP = re.compile(r"^M(\d+)$")


def place(name: str) -> tuple[Any, float]:
    """(column, height) of a node: a head at (head, layer); an MLP at ("mlp", layer + ½); the embeddings at
    ("embed", −1); the logits at ("logits", +inf, resolved when drawn). A receiver ``L3H0.q`` is head L3H0."""
    head = _HEAD.match(name)
    if head:
        return float(head.group(2)), float(head.group(1))
    kv = _KV.match(name)
    if kv:
        return f"kv{kv.group(2)}", float(kv.group(1)) - 0.3
    mlp = _MLP.match(name)
    if mlp:
        return "mlp", float(mlp.group(1)) + 0.5
    return (name, -1.0) if name == "embed" else (name, float("inf"))


def graph_figure(edges: Sequence[tuple[str, str, float]], senders: Sequence[str], receivers: Sequence[str],
                 *, title: str | None = None, figsize: tuple[float, float] | None = None) -> Any:
    """The edges as lines between node positions; width by |score|, blue for +, red for −. Only nodes that an
    edge touches are drawn, so a large graph stays legible when ``edges`` are its top ones."""
    plt = pyplot()
    names = {n for s, r, _ in edges for n in (s, r)}
    heads = [place(n)[0] for n in list(senders) + list(receivers) if isinstance(place(n)[0], float)]
    n_heads = int(max(heads, default=0.0)) + 1
    layers = [place(n)[1] for n in list(senders) + list(receivers) if place(n)[1] not in (float("inf"), -1.0)]
    top = max(layers, default=0.0) + 1.0

    kv_groups = {place(n)[0] for n in receivers if str(place(n)[0]).startswith("kv")}
    group = n_heads / max(1, len(kv_groups))

    def xy(name: str) -> tuple[float, float]:
        column, height = place(name)
        if isinstance(column, float):
            x = column
        elif column.startswith("kv"):                  # centred under the query heads it serves
            x = (int(column[2:]) + 0.5) * group - 0.5
        else:
            x = n_heads if column == "mlp" else (n_heads - 1) / 2
        return x, (top if height == float("inf") else height)

    fig, ax = plt.subplots(figsize=figsize or (max(6.0, 0.6 * n_heads + 2), max(4.0, 0.35 * top + 2)),
                           layout="constrained")
    biggest = max((abs(v) for _, _, v in edges), default=1.0) or 1.0
    for sender, receiver, value in sorted(edges, key=lambda e: abs(e[2])):
        (x0, y0), (x1, y1) = xy(sender), xy(receiver)
        ax.plot([x0, x1], [y0, y1], color="#2166ac" if value >= 0 else "#b2182b",
                linewidth=0.4 + 4.0 * abs(value) / biggest, alpha=0.8, zorder=1)
    for name in sorted({n.split(".")[0] for n in names}):
        x, y = xy(name)
        ax.scatter([x], [y], s=60, color="white", edgecolors="black", zorder=2)
        below = _KV.match(name) is not None               # key/value heads sit just under their layer's heads
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(0, -11 if below else 6), ha="center",
                    fontsize=7)
    ax.set_xlabel("head (MLP on the right)")
    ax.set_ylabel("layer")
    ax.set_title(title if title is not None else f"{len(edges)} edges")
    return fig


def faithfulness_figure(sizes: Sequence[int], recovered: Sequence[float], method: str, n_edges: int, *,
                        title: str | None = None, figsize: tuple[float, float] | None = None) -> Any:
    """Share of the behaviour recovered against circuit size (edges)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=figsize or (6.0, 4.0), layout="constrained")
    ax.plot(list(sizes), list(recovered), marker="o", label=method)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    positive = [k for k in sizes if k > 0]
    if positive and max(positive) >= 10 * min(positive):
        ax.set_xscale("symlog", linthresh=max(1, min(positive)))
    ax.set_xlabel(f"circuit size (edges of {n_edges})")
    ax.set_ylabel("share of the metric recovered")
    ax.set_title(title if title is not None else f"faithfulness of {method} circuits")
    ax.legend()
    return fig
