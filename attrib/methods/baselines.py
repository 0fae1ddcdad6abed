"""Baselines for path methods: what "absent" means at the attributed site.

>>> import torch, attrib
>>> from attrib.methods.inputs import prepare
>>> from attrib.methods.baselines import baseline_for
>>> prep = prepare(attrib.Model(torch.nn.Linear(3, 1)), torch.ones(2, 3), target=0)
>>> baseline_for(prep, 0.5).tolist()
[[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]

- Language models (values at the input embeddings): ``"auto"`` (the default of the path methods: ``"pad"`` at
  every prompt position but the first, which keeps its own embedding), ``"zeros"``, ``"pad"`` (the pad token's
  embedding, else end-of-text's), a token id (its embedding), or a tensor of the prompt embeddings' shape,
  ``(T, d)`` or ``(N, T, d)``. Only the prompt's own tokens move: padding and the target's teacher-forced
  continuation keep their embeddings.
- Plain models: ``"auto"`` and ``"zeros"`` (zeros), a number (every element), or a tensor that broadcasts to
  the input.

Why ``"auto"`` holds the first position: a decoder's first position is its attention sink (every later
position attends to it, and its hidden state is thousands of times larger than the others'). Moving that
position's embedding along the path switches the sink off and on, which makes the score jump within a
hundredth of α; no quadrature rule integrates that, and the completeness error of 50 Gauss–Legendre steps on
SmolLM2 is then typically several times |f(x) − f(b)|. With the first position held the path is smooth enough
for adaptive steps on every prompt measured (docs/methods.md, "Adaptive steps"). The first token then gets
no attribution, like a BOS token that Captum's and Inseq's users skip (a one-token prompt moves its token).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import MethodError
from ..models.ids import as_int
from ..models.language import LanguageModel
from ..models.sites import first_tensor
from .inputs import Inputs, nonfinite

__all__ = ["baseline_for", "AUTO_BASELINE"]

AUTO_BASELINE = "auto"


def _prompt_mask(prep: Inputs) -> torch.Tensor:
    """(items, positions) True at each item's own prompt tokens."""
    mask = torch.zeros(prep.x.shape[:2], dtype=torch.bool, device=prep.x.device)
    for i, keep in enumerate(prep.keep):
        mask[i, keep.to(mask.device)] = True
    return mask


def baseline_for(prep: Inputs, baseline: Any, layer: str | None = None) -> torch.Tensor:
    """The baseline's values at ``prep.site``, of ``prep.x``'s shape, all finite. ``layer``: the site that
    layer IG attributes to (messages say that the baseline is still an input)."""
    b = _baseline(prep, baseline, "" if layer is None else f" (with layer={layer!r} the baseline is still given at "
                                                        "the inputs)")
    if isinstance(baseline, torch.Tensor):
        given, found = f"baseline (a tensor of shape {tuple(baseline.shape)})", nonfinite(baseline)
    else:
        given = f"baseline={baseline!r} (the embedding the model gives it)" if isinstance(prep.model, LanguageModel) \
            else f"baseline={baseline!r}"
        found = nonfinite(b[_prompt_mask(prep)] if isinstance(prep.model, LanguageModel) else b)
    if found is not None:
        raise MethodError(f"{given} contains {found}, which makes every attribution NaN; pass a finite baseline.")
    return b


def _baseline(prep: Inputs, baseline: Any, note: str) -> torch.Tensor:
    x, model = prep.x, prep.model
    token = as_int(baseline)            # Python, numpy and 0-d tensor ints (never a bool)
    is_number = token is not None or (isinstance(baseline, float) and not isinstance(baseline, bool))
    auto = isinstance(baseline, str) and baseline == AUTO_BASELINE
    if not isinstance(model, LanguageModel):
        if auto or (isinstance(baseline, str) and baseline == "zeros"):
            return torch.zeros_like(x)
        if is_number:
            return torch.full_like(x, float(baseline if token is None else token))
        if isinstance(baseline, torch.Tensor):
            try:
                return baseline.to(device=x.device, dtype=x.dtype).expand_as(x).clone()
            except RuntimeError:
                raise MethodError(f"baseline has shape {tuple(baseline.shape)}; expected the inputs' shape "
                                  f"{tuple(x.shape)} or one that broadcasts to it{note}.") from None
        raise MethodError(f"baseline={baseline!r:.60} is not 'auto', 'zeros', a number or a tensor of the inputs' "
                          f"shape{note}; pass one of those.")
    if isinstance(baseline, str) and baseline == "zeros":
        fill = torch.zeros_like(x)
    elif (isinstance(baseline, str) and baseline in ("pad", AUTO_BASELINE)) or token is not None:
        token = model.pad_id if token is None else token
        embedding = prep.site.envoy(model).module
        size = embedding.weight.shape[0]
        if not 0 <= int(token) < size:
            raise MethodError(f"baseline token id {token} is outside the vocabulary of size {size}.")
        with torch.no_grad():       # the module's own output (Gemma's embedding scales its rows, say)
            row = first_tensor(embedding(torch.tensor([[int(token)]], device=x.device)))[0, 0]
        fill = row.detach().to(x.dtype).expand_as(x)
    elif isinstance(baseline, torch.Tensor):
        n = prep.n_prompt
        b = baseline.to(device=x.device, dtype=x.dtype)
        b = b.unsqueeze(0) if b.dim() == 2 else b
        if b.dim() != 3 or b.shape[1:] != (n, x.shape[2]) or b.shape[0] not in (1, x.shape[0]):
            raise MethodError(f"baseline has shape {tuple(baseline.shape)}; expected the prompt embeddings' shape "
                              f"{(x.shape[0], n, x.shape[2])} (or {(n, x.shape[2])}){note}.")
        fill = x.clone()
        fill[:, :n] = b
    else:
        raise MethodError(f"baseline={baseline!r:.60} is not 'auto', 'zeros', 'pad', a token id or a tensor of the prompt "
                          f"embeddings' shape{note}; pass one of those.")
    mask = _prompt_mask(prep)
    if auto:            # hold each item's first prompt position (the attention sink) at its own embedding
        rows = torch.nonzero(mask.sum(dim=1) > 1).flatten()     # a one-token prompt moves its only token
        mask[rows, mask.int().argmax(dim=1)[rows]] = False
    return torch.where(mask.unsqueeze(-1), fill, x)
