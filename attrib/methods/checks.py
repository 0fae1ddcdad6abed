"""Checks every method makes before its passes: the batch size, gradient mode, finite inputs, dropout.

>>> import torch
>>> from attrib.methods.checks import check_batch_size, nonfinite
>>> check_batch_size(8), nonfinite(torch.ones(2))
(8, None)
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import torch

from ..core.model import Model
from ..core.walk import parameters
from ..errors import InputError, MethodError, NoGradError
from ..models.language import LanguageModel

if TYPE_CHECKING:
    from .inputs import Inputs

__all__ = ["check_batch_size", "check_grad_mode", "nonfinite", "check_finite_inputs", "check_finite_values",
           "has_dropout"]


def check_batch_size(batch_size: Any) -> int | None:
    """``batch_size`` as a positive int (numpy and 0-d tensor ints too) or None, else one clear error."""
    if batch_size is None:
        return None
    try:
        if isinstance(batch_size, bool):
            raise TypeError
        size = operator.index(batch_size)
    except TypeError:
        size = 0
    if size < 1:
        raise MethodError(f"batch_size must be a positive int or None (as many rows as fit), got {batch_size!r:.40}; "
                          "pass e.g. batch_size=32, or leave it out.")
    return size


def check_grad_mode(method: str, model: Any) -> None:
    """Gradients are possible here: not under ``torch.inference_mode()``, and the model's parameters are not
    inference tensors (``torch.no_grad()`` is fine: the passes turn gradients on themselves)."""
    if torch.is_inference_mode_enabled():
        raise NoGradError(f"attrib.{method}() was called under torch.inference_mode(), where no gradients can be "
                          "computed; call it outside that block (torch.no_grad() is fine: the method turns gradients "
                          "on where it needs them).")
    if isinstance(model, Model) and any(p.is_inference() for p in parameters(model.module)):
        for name, param in model.module.named_parameters():
            if param.is_inference():
                raise NoGradError(f"attrib.{method}() needs gradients through the model, but its parameter {name} is "
                                  "an inference tensor (the model was built or loaded under torch.inference_mode()); "
                                  "load the model outside that block (torch.no_grad() is fine).")


def nonfinite(t: torch.Tensor) -> str | None:
    """A short account of ``t``'s inf/NaN values (count, shape, first index), or None when all are finite.

    >>> nonfinite(torch.tensor([[0.0, float("nan")], [float("nan"), 1.0]]))
    '2 NaN of 4 values, the first at index (0, 1)'
    """
    if not t.is_floating_point() and not t.is_complex():
        return None
    bad = ~torch.isfinite(t)
    count = int(bad.sum())
    if not count:
        return None
    n_nan = int(torch.isnan(t).sum())
    kind = "NaN" if n_nan == count else "inf" if n_nan == 0 else "NaN/inf"
    first = tuple(int(i) for i in bad.nonzero()[0].tolist())
    return f"{count} {kind} of {t.numel()} values, the first at index {first}"


def check_finite_inputs(prep: "Inputs") -> None:
    """Refuse inputs whose attributed values are not finite (every attribution would be NaN): on a language
    model the embeddings of some tokens (the model's weights), on a plain model the input tensor."""
    found = nonfinite(prep.x)
    if found is None:
        return
    if not isinstance(prep.model, LanguageModel):
        raise InputError(f"the inputs (shape {tuple(prep.x.shape)}) contain {found}, so every attribution would be "
                         "NaN; replace them first, e.g. with torch.nan_to_num(inputs).")
    bad = ~torch.isfinite(prep.x.flatten(2)).all(-1)                       # (items, positions)
    item = int(bad.any(1).nonzero()[0])
    keep = prep.keep[item].tolist()
    at = [keep.index(p) for p in bad[item].nonzero().flatten().tolist() if p in keep]
    what = f"positions {at} (tokens {[prep.labels[item][p] for p in at]})" if at else \
        f"the target's teacher-forced tokens {prep.output_labels[item]}"
    kind = "NaN" if torch.isnan(prep.x).any() else "inf"
    of = f" of input {item}" if prep.n_items > 1 else ""
    raise InputError(f"the input embeddings{of} contain {kind} at {what}, so every attribution would be {kind}; the "
                     "model's embedding weights are not finite for those token ids, fix or reload its weights.")


def check_finite_values(method: str, values: torch.Tensor, prep: "Inputs") -> None:
    """Refuse inf/NaN attributions of finite inputs (the model's own forward or backward went non-finite): name the
    item, and for a left-padded batch on eager attention the likely cause (a fully masked query row)."""
    found = nonfinite(values)
    if found is None:
        return
    from ..errors import NonFiniteAttributionError

    bad = [i for i in range(values.shape[0]) if not torch.isfinite(values[i]).all()]
    of = f" for input {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "") if prep.n_items > 1 else ""
    module = getattr(prep.model, "module", None)
    eager = getattr(getattr(module, "config", None), "_attn_implementation", None) == "eager"
    padded = prep.n_items > 1 and any(len(k) < prep.n_prompt for k in prep.keep)
    hint = ("the model's eager attention gives NaN on a left-padded row that masks every key (a fully masked query "
            "row); run it with attn_implementation='sdpa' (model.module.set_attn_implementation('sdpa')) or pass the "
            "prompts one at a time") if eager and padded else \
        "the model's forward or backward is not finite on these inputs; check its weights and dtype"
    raise NonFiniteAttributionError(f"{method} produced {found}{of} although the inputs are finite; {hint}.")


def has_dropout(module: torch.nn.Module) -> bool:
    """Whether a forward in train mode is random: a dropout module with p > 0, or a config that asks for
    dropout inside attention (Hugging Face models call the functional form there)."""
    for m in module.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
        config = getattr(m, "config", None)
        if any(isinstance(getattr(config, k, 0), float) and getattr(config, k) > 0
               for k in ("attention_dropout", "attn_pdrop", "attention_probs_dropout_prob", "dropout")):
            return True
    return False
