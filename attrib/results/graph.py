"""The result of edge attribution: a score for every edge from a sender to a receiver of a transformer.

>>> import torch
>>> from attrib.results import Graph
>>> g = Graph(["embed", "L0H0"], ["L0H0.q", "L1H0.v", "logits"], torch.tensor([[0.5, 0.1, -2.0], [0.0, 0.3, 0.2]]),
...           torch.tensor([[True, True, True], [False, True, True]]), "eap", "' x'", 1.0, -1.0)
>>> g.top(2)
[('embed', 'logits', -2.0), ('embed', 'L0H0.q', 0.5)]
>>> [e[:2] for e in g.circuit(threshold=0.25)]
[('embed', 'logits'), ('embed', 'L0H0.q'), ('L0H0', 'L1H0.v')]

Senders are the input embeddings (``embed``), every attention head's output (``L{layer}H{head}``) and every
MLP's output (``M{layer}``); receivers are every head's query, key and value input (``L{layer}H{head}.q`` …),
every MLP's input (``M{layer}``) and the logits. ``scores[s, r]`` is the score of the edge from sender ``s``
to receiver ``r`` (``per_position[s, r, t]`` by position when asked); ``edges[s, r]`` says whether that edge exists (the receiver reads the sender's output:
it comes later in the model). A score estimates metric(corrupted run with that edge's sender value restored
to the clean one, for that receiver only) − metric(corrupted run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from .base import Result, check_k

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Graph"]

Edge = tuple[str, str, float]


@dataclass(frozen=True)
class Graph(Result):
    """Edge scores between ``senders`` and ``receivers`` (see the module docstring)."""

    KIND = "graph"

    senders: list[str]
    receivers: list[str]
    scores: torch.Tensor              # (senders, receivers); 0 where there is no edge
    edges: torch.Tensor               # (senders, receivers) bool: which edges exist
    method: str
    target: str
    metric_clean: float
    metric_corrupted: float
    info: dict[str, Any] = field(default_factory=dict)
    per_position: torch.Tensor | None = None   # (senders, receivers, positions) when asked; they sum to scores
    tokens: list[str] | None = None            # the positions' labels (the longest prompt's)

    def __post_init__(self) -> None:
        want = (len(self.senders), len(self.receivers))
        if self.per_position is not None and (self.tokens is None or tuple(self.per_position.shape) !=
                                              (*want, len(self.tokens))):
            raise InputError(f"Graph per_position must be a tensor of shape {(*want, 'positions')} with one token "
                             "label per position in tokens.")
        for name, t in (("scores", self.scores), ("edges", self.edges)):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != want:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise InputError(f"Graph {name} must be a tensor of shape {want} (senders, receivers), got {got}.")
        if self.edges.dtype != torch.bool:
            raise InputError(f"Graph edges must be a bool tensor, got {self.edges.dtype}.")

    @property
    def n_edges(self) -> int:
        return int(self.edges.sum())

    def _ranked(self) -> list[Edge]:
        s, r = self.edges.nonzero(as_tuple=True)
        values = self.scores[s, r]
        order = values.abs().argsort(descending=True, stable=True)
        return [(self.senders[int(s[i])], self.receivers[int(r[i])], float(values[i])) for i in order.tolist()]

    def top(self, k: int = 10) -> list[Edge]:
        """The ``k`` edges of largest |score| as ``(sender, receiver, score)``."""
        return self._ranked()[:check_k(k)]

    def circuit(self, k: int | None = None, *, threshold: float | None = None) -> list[Edge]:
        """The edges of a circuit: the ``k`` of largest |score|, or every edge with |score| ≥ ``threshold``
        (exactly one of the two)."""
        if (k is None) == (threshold is None):
            raise InputError("circuit() takes k=... (the number of edges) or threshold=... (the least |score|), one "
                             "of the two.")
        if k is not None:
            return self._ranked()[:check_k(k)]
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold < 0:
            raise InputError(f"threshold must be a number ≥ 0 (the least |score| kept), got {threshold!r:.40}.")
        return [e for e in self._ranked() if abs(e[2]) >= threshold]

    def score(self, sender: str, receiver: str) -> float:
        """One edge's score, by names."""
        for what, name, names in (("sender", sender, self.senders), ("receiver", receiver, self.receivers)):
            if name not in names:
                raise InputError(f"no {what} named {name!r} in this graph; {what}s look like {names[:3]} … "
                                 f"{names[-1:]}.")
        s, r = self.senders.index(sender), self.receivers.index(receiver)
        if not bool(self.edges[s, r]):
            raise InputError(f"there is no edge from {sender!r} to {receiver!r}: the receiver does not read that "
                             "sender's output (it is not later in the model).")
        return float(self.scores[s, r])

    def to_dot(self, k: int = 50) -> str:
        """The ``k`` edges of largest |score| in Graphviz's dot language (width by |score|, blue +, red −)."""
        edges = self.top(k)
        biggest = max((abs(v) for _, _, v in edges), default=1.0) or 1.0
        lines = ["digraph circuit {", "  rankdir=BT;"]
        for sender, receiver, value in edges:
            colour = "#2166ac" if value >= 0 else "#b2182b"
            width = 0.5 + 4.5 * abs(value) / biggest
            lines.append(f'  "{sender}" -> "{receiver}" [penwidth={width:.2f}, color="{colour}", '
                         f'label="{value:+.3g}"];')
        lines.append("}")
        return "\n".join(lines)

    def plot(self, k: int = 50, **overrides: Any) -> "Figure":
        """A layered drawing of the ``k`` edges of largest |score| (matplotlib): nodes by layer from the embeddings
        at the bottom to the logits at the top; edge width by |score|, colour by sign."""
        from ..viz.graph import graph_figure

        return graph_figure(self.top(k), self.senders, self.receivers, **overrides)

    def _tensors(self) -> dict[str, torch.Tensor]:
        extra = {} if self.per_position is None else {"per_position": self.per_position}
        return {"scores": self.scores, "edges": self.edges, **extra}

    def _meta(self) -> dict[str, Any]:
        return {"senders": list(self.senders), "receivers": list(self.receivers), "method": self.method,
                "target": self.target, "metric_clean": self.metric_clean,
                "metric_corrupted": self.metric_corrupted, "info": self.info, "tokens": self.tokens}

    @classmethod
    def _build(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> "Graph":
        return cls(meta["senders"], meta["receivers"], tensors["scores"], tensors["edges"].bool(), meta["method"],
                   meta["target"], meta["metric_clean"], meta["metric_corrupted"], meta["info"],
                   tensors.get("per_position"), meta.get("tokens"))

    def __str__(self) -> str:
        top = "  ".join(f"{s}→{r} {v:+.3f}" for s, r, v in self.top(3))
        return (f"{self.method} graph of {len(self.senders)} senders × {len(self.receivers)} receivers "
                f"({self.n_edges} edges) for {self.target}: top {top}")

    def _repr_html_(self) -> str:
        from html import escape

        rows = "".join(f"<tr><td>{escape(s)}</td><td>{escape(r)}</td><td>{v:+.4g}</td></tr>" for s, r, v in self.top(10))
        return (f"<div><b>{escape(self.method)}</b>: {self.n_edges} edges, {escape(self.target)}; metric clean "
                f"{self.metric_clean:.4g}, corrupted {self.metric_corrupted:.4g}</div>"
                f"<table><tr><th>sender</th><th>receiver</th><th>score</th></tr>{rows}</table>")
