"""Where the parts of a transformer live, one small table per family, and how a model finds its own.

>>> import torch, transformers
>>> from attrib.models.layouts import layout_of
>>> _ = torch.manual_seed(0)
>>> hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50))
>>> layout = layout_of(hf)
>>> layout.family, layout.layers, layout.o_proj, layout.n_heads
('gpt2', 'transformer.h', 'attn.c_proj', 4)

A :class:`Layout` names module paths: ``layers`` and ``embed`` from the root, the others relative to one
layer. Out of the box (``config.model_type``): GPT-2, GPT-NeoX / Pythia, Llama 2/3, Mistral, Mixtral (its
sparse MoE block is the MLP), Qwen2, Qwen3, Gemma, Gemma 2, Gemma 3, Phi-3, OPT, BERT-style encoders
(BERT, RoBERTa), the encoder of T5 and that of BART-style encoder-decoders (BART, mBART, Marian, Pegasus,
PLBart, Blenderbot). Each applies to the task model (``...ForCausalLM``) and to the bare
model (``LlamaModel``: the same paths without their first part). Another family is one :func:`register`
call, or a ``component_map`` dict given to a method.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import LayoutError

__all__ = ["Layout", "LAYOUTS", "register", "layout_of", "from_map"]


@dataclass(frozen=True)
class Layout:
    """Module paths of one family. ``qkv`` is three separate projections, or one fused projection whose
    output is ``fused`` = ``"concat"`` (q | k | v) or ``"per_head"`` (per head: q, k, v — GPT-NeoX)."""

    family: str
    layers: str
    embed: str | None = None
    attn: str | None = None        # its output (first tensor) is the attention output
    mlp: str | None = None         # its output (first tensor) is the MLP output
    o_proj: str | None = None      # the attention's output projection: its input is every head's output
    qkv: tuple[str, ...] = ()      # (q, k, v) projections, or (fused,) with ``fused`` set
    fused: str | None = None
    n_heads: int | None = None     # read from the config when None
    n_kv_heads: int | None = None
    flat_mlp: bool = False         # the MLP runs on (batch · positions, hidden) rows (OPT)
    ln_attn: str | None = None     # the norm the attention reads the residual stream through (None: none)
    ln_mlp: str | None = None      # the norm the MLP reads it through

    def heads_of(self, module: torch.nn.Module) -> "Layout":
        """This layout with the head counts read from ``module``'s config (when not given)."""
        config = getattr(module, "config", None)
        config = getattr(config, "text_config", None) or config
        n_heads = self.n_heads or _first_int(config, "num_attention_heads", "n_head", "num_heads")
        n_kv = self.n_kv_heads or _first_int(config, "num_key_value_heads", "n_kv_heads") or n_heads
        return replace(self, n_heads=n_heads, n_kv_heads=n_kv)


def _first_int(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


_LLAMA = dict(embed="model.embed_tokens", layers="model.layers", attn="self_attn", mlp="mlp",
              o_proj="self_attn.o_proj", qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
              ln_attn="input_layernorm", ln_mlp="post_attention_layernorm")

LAYOUTS: dict[str, Layout] = {
    "gpt2": Layout("gpt2", "transformer.h", "transformer.wte", "attn", "mlp", "attn.c_proj", ("attn.c_attn",),
                   "concat", ln_attn="ln_1", ln_mlp="ln_2"),
    "gpt_neox": Layout("gpt_neox", "gpt_neox.layers", "gpt_neox.embed_in", "attention", "mlp", "attention.dense",
                       ("attention.query_key_value",), "per_head", ln_attn="input_layernorm",
                       ln_mlp="post_attention_layernorm"),
    **{family: Layout(family, **_LLAMA) for family in
       ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gemma3")},
    "phi3": Layout("phi3", "model.layers", "model.embed_tokens", "self_attn", "mlp", "self_attn.o_proj",
                   ("self_attn.qkv_proj",), "concat", ln_attn="input_layernorm", ln_mlp="post_attention_layernorm"),
    "opt": Layout("opt", "model.decoder.layers", "model.decoder.embed_tokens", "self_attn", "fc2",
                  "self_attn.out_proj", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), flat_mlp=True,
                  ln_attn="self_attn_layer_norm", ln_mlp="final_layer_norm"),
    "bert": Layout("bert", "bert.encoder.layer", "bert.embeddings.word_embeddings", "attention.output.dense",
                   "output.dense", "attention.output.dense",
                   ("attention.self.query", "attention.self.key", "attention.self.value")),
    "t5": Layout("t5", "encoder.block", "encoder.embed_tokens", "layer.0.SelfAttention", "layer.1.DenseReluDense",
                 "layer.0.SelfAttention.o", ("layer.0.SelfAttention.q", "layer.0.SelfAttention.k",
                                             "layer.0.SelfAttention.v")),
}
# BART-style encoder-decoders: the encoder's layers (OPT's names), whose embedding takes the prompt. Without these
# the structural fallback found OPT's decoder-only layout in them, and the embed site was the decoder's embedding.
for _family in ("bart", "mbart", "marian", "pegasus", "plbart", "blenderbot", "blenderbot-small"):
    LAYOUTS[_family] = replace(LAYOUTS["opt"], family=_family, layers="model.encoder.layers",
                               embed="model.encoder.embed_tokens")
LAYOUTS["roberta"] = replace(LAYOUTS["bert"], family="roberta", layers="roberta.encoder.layer",
                             embed="roberta.embeddings.word_embeddings")
for _family in ("gemma2", "gemma3_text", "gemma3"):     # a norm before and after each sublayer
    LAYOUTS[_family] = replace(LAYOUTS[_family], ln_mlp="pre_feedforward_layernorm")
LAYOUTS["gemma3"] = replace(LAYOUTS["gemma3"], layers="model.language_model.layers",
                            embed="model.language_model.embed_tokens")


def register(model_type: str, layout: Layout) -> None:
    """Make ``layout`` the layout of every model whose ``config.model_type`` is ``model_type``."""
    if not isinstance(layout, Layout):
        raise LayoutError(f"register() takes an attrib Layout, got {type(layout).__name__}.")
    LAYOUTS[model_type] = layout


def _module(root: torch.nn.Module, path: str | None) -> torch.nn.Module | None:
    if not path:
        return None
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def _fits(root: torch.nn.Module, layout: Layout) -> bool:
    layers = _module(root, layout.layers)
    if not isinstance(layers, (torch.nn.ModuleList, torch.nn.Sequential)) or len(layers) == 0:
        return False
    first = layers[0]
    return all(_module(first, p) is not None for p in (layout.attn, layout.mlp, layout.o_proj, *layout.qkv) if p)


def _bare(layout: Layout) -> Layout:
    """The same layout on the bare model: every root path without its first part."""
    def strip(path: str | None) -> str | None:
        return path.split(".", 1)[1] if path and "." in path else path
    return replace(layout, layers=strip(layout.layers), embed=strip(layout.embed))


# Older transformers names of a family's modules, tried after the current ones.
_OLDER: dict[str, tuple[Layout, ...]] = {
    "mixtral": (replace(LAYOUTS["mixtral"], mlp="block_sparse_moe"),),      # transformers 4.x
}


def layout_of(module: torch.nn.Module) -> Layout:
    """The layout of ``module``: its family's by ``config.model_type``, else the first known one that fits."""
    config = getattr(module, "config", None)
    model_type = getattr(config, "model_type", None)
    candidates = [LAYOUTS[model_type], *_OLDER.get(model_type, ())] if model_type in LAYOUTS \
        else list(LAYOUTS.values())
    if getattr(config, "is_encoder_decoder", False):      # the prompt goes to the encoder: never a decoder's layout
        candidates = [c for c in candidates if "decoder" not in (c.embed or "").split(".")]
    for layout in candidates:
        for variant in (layout, _bare(layout)):
            if _fits(module, variant):
                return variant.heads_of(module)
    if model_type in LAYOUTS:
        known = LAYOUTS[model_type]
        looked = f"{known.layers}[i].{{{known.attn}, {known.mlp}}}"
    else:
        paths = list(dict.fromkeys(layout.layers for layout in candidates))
        looked = f"layers at {', '.join(paths[:5])}{', …' if len(paths) > 5 else ''}"
    raise LayoutError(
        f"no known layout fits {type(module).__name__} (model_type {model_type!r}; looked for {looked}); pass "
        "component_map={'layers': ..., 'attn': ..., 'mlp': ..., 'o_proj': ..., 'n_heads': ...}, or register a "
        "Layout with attrib.models.layouts.register(model_type, layout)."
    )


_MAP_KEYS = ("layers", "embed", "attn", "mlp", "o_proj", "out_proj", "qkv", "fused", "n_heads", "n_kv_heads",
             "flat_mlp", "ln_attn", "ln_mlp")


def from_map(module: torch.nn.Module, component_map: Mapping[str, Any]) -> Layout:
    """A layout from a user's dict (``out_proj`` is accepted for ``o_proj``), checked against ``module``."""
    if not isinstance(component_map, Mapping):
        raise LayoutError(f"component_map={component_map!r:.40} is not a dict; pass one that maps 'layers' (and "
                          "'attn', 'mlp', 'o_proj', 'n_heads') to module paths, e.g. {'layers': 'transformer.h'}.")
    unknown = sorted(set(map(str, component_map)) - set(_MAP_KEYS))
    if unknown or "layers" not in component_map:
        raise LayoutError(
            f"component_map needs 'layers' and may have {', '.join(map(repr, _MAP_KEYS[1:]))}"
            + (f"; got unknown key(s) {', '.join(map(repr, unknown))}." if unknown else ".")
        )
    fields = dict(component_map)
    if "out_proj" in fields:
        fields["o_proj"] = fields.pop("out_proj")
    fields["qkv"] = tuple(fields.get("qkv", ()))
    if not isinstance(fields.get("flat_mlp", False), (bool, np.bool_)):
        raise LayoutError(f"component_map['flat_mlp']={fields['flat_mlp']!r:.40} must be True or False (whether the "
                          "MLP runs on (batch · positions, hidden) rows).")
    fields["flat_mlp"] = bool(fields.get("flat_mlp", False))
    layout = Layout("component_map", **fields)
    layers = _module(module, layout.layers)
    if not isinstance(layers, (torch.nn.ModuleList, torch.nn.Sequential)) or len(layers) == 0:
        raise LayoutError(f"component_map['layers']={layout.layers!r} is not a non-empty ModuleList of "
                          f"{type(module).__name__}.")
    for key in ("attn", "mlp", "o_proj"):
        path = getattr(layout, key)
        if path is not None and _module(layers[0], path) is None:
            raise LayoutError(f"component_map[{key!r}]={path!r} is not a submodule of {layout.layers}[0] "
                              f"({type(layers[0]).__name__}); give its path relative to a layer.")
    return layout.heads_of(module)
