"""The result of an attribution method: one score per input token, and the full values behind it.

>>> import torch
>>> from attrib.methods.result import Attribution
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

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..viz.options import HeatmapOptions

__all__ = ["Attribution"]


@dataclass(frozen=True)
class Attribution:
    """Attributions of a target score to input tokens (or to the elements of a generic input).

    - ``scores``: one number per input token (attributions summed over the hidden dimension), or an
      outputs × inputs matrix when ``per_token=True`` (one row per target token).
    - ``values``: the full attribution tensor (``scores`` before the sum).
    - ``delta``: completeness, Σ attributions − (f(x) − f(baseline)); ``None`` when it does not apply.
    """

    tokens: list[str]
    scores: torch.Tensor
    values: torch.Tensor
    delta: torch.Tensor | None
    target: str
    method: str
    output_tokens: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` tokens with the largest absolute score (rows summed for a matrix)."""
        flat = self.scores if self.scores.dim() == 1 else self.scores.sum(0)
        order = flat.abs().argsort(descending=True)[:k].tolist()
        return [(self.tokens[i], float(flat[i])) for i in order]

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists and floats), e.g. for JSON."""
        return {
            "method": self.method,
            "target": self.target,
            "tokens": list(self.tokens),
            "output_tokens": self.output_tokens,
            "scores": self.scores.detach().cpu().tolist(),
            "delta": None if self.delta is None else self.delta.detach().cpu().tolist(),
            **{k: v for k, v in self.info.items() if isinstance(v, (int, float, str))},
        }

    def __str__(self) -> str:
        delta = "" if self.delta is None or self.delta.dim() else f" (delta {float(self.delta):.3g})"
        if self.scores.dim() == 1:
            body = "  ".join(f"{t!r} {float(s):+.3f}" for t, s in zip(self.tokens, self.scores))
            return f"{self.method} for {quoted(self.target)}{delta}: {body}"
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
