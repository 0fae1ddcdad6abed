"""Attention probes: the query and key after the rotary embedding and the attention pattern, as module values.

>>> import torch, transformers, attrib
>>> from attrib.models.sites import site
>>> _ = torch.manual_seed(0)
>>> hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
...     num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
...     vocab_size=50)).eval()
>>> model = attrib.LanguageModel(hf)
>>> pattern = site(model, "pattern.1")             # installs the probes (see below), before the trace
>>> with torch.no_grad(), model.trace(torch.tensor([[1, 2, 3]])):
...     p = pattern.read(model).save()               # (batch, query positions, heads, key positions)
>>> tuple(p.shape), bool(torch.allclose(p.sum(-1), torch.ones(1, 3, 4)))
((1, 3, 4, 3), True)
>>> attrib.models.probes.remove(model)            # back to the model's own attention implementation

Hugging Face models compute attention in one function (``eager``, ``sdpa``, flash …) that no module
wraps, so the rotated query and key and the softmax weights are not module values that a trace could read,
edit or differentiate. The first request of a ``q_rot.L``, ``k_rot.L`` or ``pattern.L`` site installs
identity modules (:class:`Probe`, no parameters) in every attention module, under ``attrib_probes``, and
switches the model to attrib's attention function, which is the family's own eager attention with the
probes called on its way: the rotated query and key before the scores, the weights after the softmax
(their output is then what multiplies the values, so an edit takes effect). Consequences, documented in
``docs/architecture.md``: the model computes eager attention from then on (as TransformerLens always does),
which differs from SDPA by rounding only; a fully masked query row (left padding) gets weights of 0 instead
of eager's NaN; :func:`remove` restores the implementation and removes the probes.

Probe values are laid out like the other per-head sites: (batch, positions, heads, last) where ``last`` is
the head dimension for ``q_rot`` / ``k_rot`` and the key positions for ``pattern`` (positions = query
positions), so a patching's dot product over the last dimension sums a pattern row over its keys.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from ..core.current import current_trace
from ..errors import LayoutError, OutOfOrderError
from .layouts import layout_of

__all__ = ["Probe", "PROBES", "install", "remove", "installed", "attention_path"]

PROBES = ("q_rot", "k_rot", "pattern")
NAME = "attrib_probe"
CHILD = "attrib_probes"


class Probe(torch.nn.Module):
    """An identity module: a named place for a value computed inside an attention function."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _eager(module: torch.nn.Module) -> Any:
    found = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if found is None:
        raise LayoutError(f"{type(module).__name__} has no eager_attention_forward in its modeling file, so attrib "
                          "cannot probe its attention; read its q/k/v projections (sites q.L, k.L, v.L) instead.")
    return found


def _attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The family's eager attention, with the rotated query and key and the weights passed through probes."""
    eager = _eager(module)
    probes = module._modules.get(CHILD)
    if probes is None:                  # an attention module without probes (e.g. cross-attention)
        return eager(module, query, key, value, attention_mask, **kwargs)
    module.__dict__["_attrib_scaling"] = kwargs.get("scaling")    # what the scores are multiplied by (AtP*)
    query = probes.q_rot(query.transpose(1, 2)).transpose(1, 2)
    key = probes.k_rot(key.transpose(1, 2)).transpose(1, 2)
    capped = module.__dict__.get(SOFTCAP)
    if capped is not None and kwargs.get("softcap"):
        weights = _softcapped(module, query, key, attention_mask, kwargs, capped)
    else:
        _, weights = eager(module, query, key, value, attention_mask, **kwargs)
    weights = torch.nan_to_num(weights, nan=0.0)            # fully masked rows (left padding): no weights
    pattern = probes.pattern(weights.transpose(1, 2)).transpose(1, 2)
    repeat = pattern.shape[1] // value.shape[1]            # grouped-query attention: each key/value head serves
    values = value.repeat_interleave(repeat, dim=1) if repeat > 1 else value
    out = torch.matmul(pattern.to(values.dtype), values).transpose(1, 2).contiguous()
    return out, pattern


SOFTCAP = "_attrib_softcap"     # on an attention module: fn(scores, cap) to use for a tanh soft-cap (LRP's rule)


def _softcapped(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None,
                kwargs: dict, capped: Any) -> torch.Tensor:
    """The weights of an eager attention with a tanh soft-cap on the scores (Gemma 2), the cap computed by
    ``capped(scores, cap)`` (an autograd function with the backward a rule wants)."""
    repeat = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(repeat, dim=1) if repeat > 1 else key
    scaling = kwargs.get("scaling") or module.head_dim ** -0.5
    scores = capped(torch.matmul(query, key.transpose(2, 3)) * scaling, float(kwargs["softcap"]))
    if mask is not None:
        scores = scores + mask[:, :, :, : key.shape[-2]]
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["eager"])


def attention_path(layout: Any) -> str:
    """The attention module of a layer, relative to it: the parent of its query (or fused) projection."""
    if not layout.qkv or "." not in layout.qkv[0]:
        raise LayoutError(f"the {layout.family} layout names no query projection inside an attention module, so "
                          "attrib cannot find where to probe; pass component_map={..., 'qkv': ...}.")
    return layout.qkv[0].rsplit(".", 1)[0]


def installed(module: torch.nn.Module) -> bool:
    """Whether :func:`install` ran on this model (a mark on the model itself: two models may share a config)."""
    module = getattr(module, "module", module)
    config = getattr(module, "config", None)
    return "_attrib_previous_attention" in module.__dict__ and getattr(config, "_attn_implementation", None) == NAME


def install(model: Any, layout: Any = None) -> None:
    """Probes in every layer's attention module of ``model`` (an attrib model or its module) and attrib's attention
    function (idempotent). Not while a trace of the model runs: its forward has built the attention mask for the
    implementation it started with."""
    module = getattr(model, "module", model)
    if installed(module):
        return
    trace = current_trace()
    if trace is not None and trace.model.module is module:
        raise OutOfOrderError(
            "attention probes (sites q_rot.L, k_rot.L, pattern.L) switch the model to attrib's attention function, "
            "which must happen before a trace starts, not inside one; ask for the site, or call "
            "attrib.models.probes.install(model), before `with model.trace(...)`.")
    if layout is None:
        layout = layout_of(module)
    if not hasattr(module, "set_attn_implementation"):
        raise LayoutError(f"{type(module).__name__} is not a Hugging Face model with set_attn_implementation(), so "
                          "its attention cannot be probed; read the q/k/v projections (q.L, k.L, v.L) instead.")
    inner = attention_path(layout)
    attns = [layer.get_submodule(inner) for layer in module.get_submodule(layout.layers)]
    for attn in attns:
        _eager(attn)
    _register()
    previous = module.config._attn_implementation
    for attn in attns:
        if CHILD not in attn._modules:
            attn.add_module(CHILD, torch.nn.ModuleDict({name: Probe() for name in PROBES}))
    module.set_attn_implementation(NAME)
    module.__dict__["_attrib_previous_attention"] = previous if previous != NAME else "sdpa"


def remove(model: Any) -> None:
    """Undo :func:`install`: the model's previous attention implementation, no probes."""
    module = getattr(model, "module", model)
    if not installed(module):
        return
    module.set_attn_implementation(module.__dict__.pop("_attrib_previous_attention", None) or "sdpa")
    for m in list(module.modules()):
        if CHILD in m._modules:
            del m._modules[CHILD]
