"""One Attribution per input item from a method's per-item values: the shared last step of the gradient methods.

>>> import torch, attrib
>>> from attrib.methods.inputs import prepare
>>> prep = prepare(attrib.Model(torch.nn.Linear(2, 1)), torch.ones(1, 2), target=0)
>>> attributions(prep, torch.tensor([[0.5, -1.0]]), "demo").scores.tolist()
[0.5, -1.0]
"""

from __future__ import annotations

from typing import Any

import torch

from ..results import Attribution
from .inputs import Inputs

__all__ = ["attributions"]


def attributions(prep: Inputs, values: torch.Tensor, method: str, *, totals: torch.Tensor | None = None,
                 norm: bool = False, info: dict[str, Any] | None = None) -> Attribution | list[Attribution]:
    """``values`` (items, …) as results: a language model's prompt positions only, ``.scores`` their sum over the
    hidden dimension (or norm, ``norm=True``); a plain model's values element by element. ``totals`` (items,):
    what the values should sum to, making ``.delta`` = Σ values − total."""
    language = prep.site.name == "embed"
    results = []
    for i in range(prep.n_items):
        v = values[i, prep.keep[i].to(values.device)] if language else values[i]
        scores = (v.norm(dim=-1) if norm else v.sum(-1)) if language else v
        delta = None if totals is None else (values[i].sum() - totals[i].to(values.dtype)).detach()
        results.append(Attribution(tokens=list(prep.labels[i]), scores=scores, values=v, delta=delta,
                                   target=prep.describe(i), method=method, info=dict(info or {})))
    return results[0] if prep.single else results
