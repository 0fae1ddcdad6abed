"""How faithful attribution methods are on a model: deletion and insertion curves, their areas, comprehensiveness
and sufficiency, per method, against a random order.

>>> import torch
>>> from attrib.results import Evaluation
>>> grid = torch.linspace(0, 1, 3)
>>> e = Evaluation(["ig", "random"], grid, torch.tensor([[0.0, -2.0, -3.0], [0.0, -1.0, -3.0]]),
...                torch.tensor([[-3.0, -0.5, 0.0], [-3.0, -2.0, 0.0]]), torch.tensor([2.5, 2.0]),
...                torch.tensor([2.6, 1.0]), torch.tensor([2.0, 1.0]), torch.tensor([0.5, 1.5]), 10, "logit")
>>> e.top(1)
[('ig', 2.5)]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from .base import Result, check_k

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Evaluation"]

COLUMNS = ("AOPC deletion ↑", "AOPC insertion ↑", "comprehensiveness ↑", "sufficiency ↓")


@dataclass(frozen=True)
class Evaluation(Result):
    """Per method (rows, the random order last): the mean curves on ``grid`` (the share of tokens deleted or
    inserted, most relevant first) of the score's change from the full prompt (deletion) or from the fully
    replaced one (insertion), and four numbers averaged over the prompts (``columns``)."""

    KIND = "evaluation"

    methods: list[str]
    grid: torch.Tensor
    deletion: torch.Tensor
    insertion: torch.Tensor
    aopc_deletion: torch.Tensor
    aopc_insertion: torch.Tensor
    comprehensiveness: torch.Tensor
    sufficiency: torch.Tensor
    n_prompts: int
    score: str
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        m, g = len(self.methods), len(self.grid)
        for name, shape in (("deletion", (m, g)), ("insertion", (m, g)), ("aopc_deletion", (m,)),
                            ("aopc_insertion", (m,)), ("comprehensiveness", (m,)), ("sufficiency", (m,))):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                raise InputError(f"Evaluation {name} must be a tensor of shape {shape}.")

    def row(self, method: str) -> dict[str, float]:
        """The four numbers of one method."""
        if method not in self.methods:
            raise InputError(f"no method {method!r:.40} in this evaluation; it has {', '.join(self.methods)}.")
        i = self.methods.index(method)
        return {c: float(t[i]) for c, t in zip(COLUMNS, (self.aopc_deletion, self.aopc_insertion,
                                                          self.comprehensiveness, self.sufficiency))}

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """``(method, AOPC of deletion)``, most faithful first."""
        k = check_k(k)
        order = torch.argsort(self.aopc_deletion, descending=True).tolist()
        return [(self.methods[i], float(self.aopc_deletion[i])) for i in order[:k]]

    def table(self) -> str:
        """A text table: one row per method, sorted by AOPC of deletion."""
        rows = [(name, *(f"{v:.3f}" for v in self.row(name).values())) for name, _ in self.top(len(self.methods))]
        header = ("method", *COLUMNS)
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def plot(self, **overrides: Any) -> "Figure":
        """Deletion and insertion curves side by side, one line per method."""
        from ..viz.curves import evaluation_figure

        return evaluation_figure(self.methods, self.grid.tolist(), self.deletion.tolist(), self.insertion.tolist(),
                                 self.score, **overrides)

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in ("grid", "deletion", "insertion", "aopc_deletion", "aopc_insertion",
                                               "comprehensiveness", "sufficiency")}

    def _meta(self) -> dict[str, Any]:
        return {"methods": list(self.methods), "n_prompts": self.n_prompts, "score": self.score, "info": self.info}

    @classmethod
    def _build(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> "Evaluation":
        return cls(meta["methods"], tensors["grid"], tensors["deletion"], tensors["insertion"],
                   tensors["aopc_deletion"], tensors["aopc_insertion"], tensors["comprehensiveness"],
                   tensors["sufficiency"], meta["n_prompts"], meta["score"], meta["info"])

    def __str__(self) -> str:
        return f"faithfulness of {len(self.methods)} methods over {self.n_prompts} prompts ({self.score}):\n" + \
            self.table()

    def _repr_html_(self) -> str:
        from html import escape

        return f"<pre>{escape(str(self))}</pre>"
