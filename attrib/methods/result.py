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

import html
from dataclasses import dataclass, field
from typing import Any

import torch

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
            return f"{self.method} for {self.target!r}{delta}: {body}"
        rows = [f"{self.method} for {self.target!r}: {len(self.output_tokens or [])} × {len(self.tokens)} matrix"]
        for name, row in zip(self.output_tokens or [], self.scores):
            rows.append(f"  {name!r}: " + "  ".join(f"{float(s):+.2f}" for s in row))
        return "\n".join(rows)

    def _repr_html_(self) -> str:
        from ..viz.tokens import token_html

        if self.scores.dim() == 1:
            return token_html(self.tokens, self.scores.detach().cpu().float().numpy(),
                              title=f"{self.method} → {html.escape(repr(self.target))}")
        return "<br>".join(
            token_html(self.tokens, row.detach().cpu().float().numpy(), title=f"→ {html.escape(repr(name))}")
            for name, row in zip(self.output_tokens or [], self.scores))

    def show(self) -> None:
        """An HTML heatmap in Jupyter, a line of text in a terminal."""
        try:
            from IPython import get_ipython
            from IPython.display import HTML, display

            if get_ipython() is not None and getattr(get_ipython(), "kernel", None) is not None:
                display(HTML(self._repr_html_()))
                return
        except ImportError:
            pass
        print(self)

    def plot(self, **options: Any):
        """A matplotlib Figure: a token heatmap (or an outputs × inputs matrix)."""
        from ..viz.tokens import token_figure, matrix_figure

        scores = self.scores.detach().cpu().float().numpy()
        if scores.ndim == 1:
            return token_figure(self.tokens, scores, title=f"{self.method} → {self.target!r}", **options)
        return matrix_figure(scores, self.output_tokens or [], self.tokens,
                             title=f"{self.method} → {self.target!r}", **options)
