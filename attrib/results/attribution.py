"""The result of an attribution method: one score per input token, and the full values behind it.

>>> import torch
>>> from attrib.results import Attribution
>>> a = Attribution(tokens=["The", " cat"], scores=torch.tensor([0.5, -1.0]), values=torch.ones(2, 3),
...                 delta=torch.tensor(0.01), target=" sat", method="integrated_gradients")
>>> a.top(1)
[(' cat', -1.0)]
>>> print(a)
integrated_gradients for ' sat' (delta 0.01): 'The' +0.500  ' cat' -1.000
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..viz.labels import quoted
from .base import Result, check_k

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..viz.options import HeatmapOptions

__all__ = ["Attribution"]


@dataclass(frozen=True)
class Attribution(Result):
    """Attributions of a target score to input tokens (or to the elements of a generic input).

    - ``scores``: one number per input token (attributions summed over the hidden dimension), or an
      outputs × inputs matrix when ``per_token=True`` (one row per target token).
    - ``values``: the full attribution tensor (``scores`` before the sum).
    - ``delta``: completeness, Σ attributions − (f(x) − f(baseline)); ``None`` when it does not apply.
    """

    KIND = "attribution"

    tokens: list[str]
    scores: torch.Tensor
    values: torch.Tensor
    delta: torch.Tensor | None
    target: str
    method: str
    output_tokens: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` largest-|score| entries as ``(label, score)``: tokens (a matrix's rows summed per input
        token), a plain model's features, or for inputs of more dimensions the element's index."""
        k = check_k(k)
        matrix = self.output_tokens is not None and self.scores.dim() == 2
        flat = self.scores.sum(0) if matrix else self.scores.flatten()
        if len(self.tokens) == flat.numel():
            labels = list(self.tokens)
        else:
            shape = self.scores.shape[1:] if matrix else self.scores.shape
            labels = [str(tuple(int(i) for i in torch.unravel_index(torch.tensor(j), shape)))
                      if len(shape) > 1 else str(j) for j in range(flat.numel())]
        order = flat.abs().argsort(descending=True)[:k].tolist()
        return [(labels[i], float(flat[i])) for i in order]

    def _tensors(self) -> dict[str, torch.Tensor]:
        found = {"scores": self.scores, "values": self.values}
        return found if self.delta is None else {**found, "delta": self.delta}

    def _meta(self) -> dict[str, Any]:
        return {"tokens": list(self.tokens), "target": self.target, "method": self.method,
                "output_tokens": self.output_tokens, "info": self.info}

    @classmethod
    def _build(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> "Attribution":
        return cls(tokens=meta["tokens"], scores=tensors["scores"], values=tensors["values"],
                   delta=tensors.get("delta"), target=meta["target"], method=meta["method"],
                   output_tokens=meta["output_tokens"], info=meta["info"])

    def __str__(self) -> str:
        delta = "" if self.delta is None or self.delta.dim() else f" (delta {float(self.delta):.3g})"
        if self.scores.dim() == 1 and len(self.tokens) == self.scores.numel():
            body = "  ".join(f"{t!r} {float(s):+.3f}" for t, s in zip(self.tokens, self.scores))
            return f"{self.method} for {quoted(self.target)}{delta}: {body}"
        if self.output_tokens is None:
            body = "  ".join(f"{label} {value:+.3f}" for label, value in self.top(5))
            return f"{self.method} for {quoted(self.target)}{delta}, {tuple(self.scores.shape)} values; top: {body}"
        rows = [f"{self.method} for {quoted(self.target)}: {len(self.output_tokens or [])} × {len(self.tokens)} matrix"]
        for name, row in zip(self.output_tokens or [], self.scores):
            rows.append(f"  {name!r}: " + "  ".join(f"{float(s):+.2f}" for s in row))
        return "\n".join(rows)

    def _repr_html_(self) -> str:
        """Jupyter's rendering: one token heatmap row, or for a matrix a table with one row per output
        token on a shared scale; all text HTML-escaped."""
        from ..viz.results import attribution_html

        return attribution_html(self)

    def show(self, options: HeatmapOptions | None = None, **overrides: Any) -> None:
        """An HTML heatmap in a notebook kernel (``options``: an ``attrib.viz.HeatmapOptions`` and/or its
        fields as keywords), a line of text in a terminal."""
        from ..viz.backend import display_html
        from ..viz.results import attribution_html

        if not display_html(attribution_html(self, options, **overrides)):
            print(self)

    def plot(self, options: HeatmapOptions | None = None, **overrides: Any) -> Figure:
        """A matplotlib Figure: a token heatmap wrapped into rows of ``wrap`` tokens (or an outputs × inputs
        matrix), diverging around zero, with a colour bar. ``options``: an ``attrib.viz.HeatmapOptions``;
        ``overrides``: its fields, e.g. ``plot(scale=1.0, wrap=20, cmap="PuOr_r")``."""
        from ..viz.results import attribution_figure

        return attribution_figure(self, options, **overrides)
