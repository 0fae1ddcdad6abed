"""How much of a behaviour circuits of growing size recover: the faithfulness curve of a graph.

>>> import torch
>>> from attrib.results import Faithfulness
>>> f = Faithfulness([0, 10, 100], torch.tensor([0.0, 0.6, 0.97]), torch.tensor([-2.0, 0.4, 1.88]), 2.0, -2.0,
...                  "eap-ig", 500)
>>> f.smallest(0.9)
100
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from .base import Result

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Faithfulness"]


@dataclass(frozen=True)
class Faithfulness(Result):
    """``recovered[i]``: (m(circuit of ``sizes[i]`` edges) − m(corrupted)) / (m(clean) − m(corrupted)), the
    circuit run on the clean prompts with every other edge fed its corrupted value; ``metrics`` the raw metric."""

    KIND = "faithfulness"

    sizes: list[int]
    recovered: torch.Tensor
    metrics: torch.Tensor
    metric_clean: float
    metric_corrupted: float
    method: str
    n_edges: int
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.sizes)
        for name in ("recovered", "metrics"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != (n,):
                raise InputError(f"Faithfulness {name} must be a tensor of shape ({n},), one per size.")

    def smallest(self, share: float) -> int | None:
        """The smallest size whose circuit recovers at least ``share`` of the behaviour (None if none does)."""
        enough = [k for k, r in zip(self.sizes, self.recovered.tolist()) if r >= share]
        return min(enough) if enough else None

    def top(self, k: int = 5) -> list[tuple[int, float]]:
        """``(size, recovered)`` for the first ``k`` sizes."""
        return list(zip(self.sizes, self.recovered.tolist()))[:k]

    def plot(self, **overrides: Any) -> "Figure":
        """The curve: share recovered against circuit size (edges, log scale when the sizes span a decade)."""
        from ..viz.graph import faithfulness_figure

        return faithfulness_figure(self.sizes, self.recovered.tolist(), self.method, self.n_edges, **overrides)

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {"recovered": self.recovered, "metrics": self.metrics}

    def _meta(self) -> dict[str, Any]:
        return {"sizes": list(self.sizes), "metric_clean": self.metric_clean, "metric_corrupted": self.metric_corrupted,
                "method": self.method, "n_edges": self.n_edges, "info": self.info}

    @classmethod
    def _build(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> "Faithfulness":
        return cls(meta["sizes"], tensors["recovered"], tensors["metrics"], meta["metric_clean"],
                   meta["metric_corrupted"], meta["method"], meta["n_edges"], meta["info"])

    def __str__(self) -> str:
        points = ", ".join(f"{k}: {r:.2f}" for k, r in self.top(len(self.sizes)))
        return f"faithfulness of {self.method} circuits (of {self.n_edges} edges), share recovered by size: {points}"

    def _repr_html_(self) -> str:
        from html import escape

        return f"<pre>{escape(str(self))}</pre>"
