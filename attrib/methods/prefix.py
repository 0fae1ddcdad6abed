"""Prefix reuse for activation patching: a patched row runs only the positions from its first patch on.

>>> import torch, transformers, attrib
>>> from attrib.methods.patching import activation_patching
>>> _ = torch.manual_seed(0)
>>> config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
...                                   vocab_size=50, bos_token_id=0, eos_token_id=0, pad_token_id=0)
>>> model = attrib.LanguageModel(transformers.LlamaForCausalLM(config).double().eval())
>>> clean, corrupted = torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([[1, 6, 3, 4, 5]])
>>> fast = activation_patching(model, clean, corrupted, target=7, components="heads", positions=-1)
>>> full = activation_patching(model, clean, corrupted, target=7, components="heads", positions=-1,
...                            reuse_prefix=False)
>>> fast.info["prefix_reuse"], (fast.scores["heads"] - full.scores["heads"]).abs().max().item() < 1e-12
(True, True)

In a causal language model, patching an activation at position p changes nothing at positions before p, in
any layer. So a row whose patches all sit at p or later runs the receiving prompt's positions p, p+1, … only,
with the keys and values of positions < p taken from the receiving run the method makes anyway (its metric),
made with a key-value cache as generation makes one. A patch at the last of 14 positions then costs one
position's forward instead of fourteen.

Used where it is exact and the model allows it: a decoder-only :class:`~attrib.LanguageModel` of transformers' own
classes on one device, each of whose layers' attention modules says ``is_causal`` (not
``use_bidirectional_attention``, not an encoder's ``ForCausalLM`` head without ``is_decoder``), whose forward
takes a key-value cache (``cache`` from transformers 5.24 on, ``past_key_values`` before), with every
attention window covering the prompt (no sliding window shorter than it, no chunked or linear attention), scored
by ``target``/``contrast`` (which read the last positions' logits; a ``metric=`` callable may read any
position's logits, so it gets every position), and not compiled. The cache filled must hold one key and one value
tensor per layer of the layout, (pairs, heads, positions, head size); anything else turns the reuse off.
``activation_patching(..., reuse_prefix=False)`` turns it off by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..core.devices import is_dispatched
from ..core.model import Model
from ..models.language import LanguageModel, accepts
from .inputs import Inputs

__all__ = ["Prefix", "can_reuse", "cache_argument", "fill_cache", "read_prefix"]

_WINDOWED = ("sliding_attention", "chunked_attention")


@dataclass
class Prefix:
    """The receiving prompts' keys and values at every position, one (pairs, heads, positions, size) pair per
    layer, from which a chunk's rows take the positions before their first patch."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    width: int                  # positions of the receiving inputs (prompt and continuation)
    argument: str               # the forward's name for a cache
    last_start: int             # the latest start that keeps every scored position in the run

    def start(self, first_patch: int) -> int:
        """Where a chunk whose earliest patch is at ``first_patch`` starts (0: every position)."""
        return max(0, min(first_patch, self.last_start))

    def call(self, inputs: Inputs, items: torch.Tensor, start: int) -> tuple[tuple, dict]:
        """The forward's arguments for rows copying ``items`` from position ``start`` on, on a cache of the
        positions before it. Every pass fills a cache, also from 0: the first passes, which the planner measures,
        start earliest, and their memory then bounds that of the later passes (whose caches hold every position,
        and whose activations hold fewer)."""
        args, kwargs = inputs.call(items)
        out: dict[str, Any] = {}
        for key, value in kwargs.items():
            per_token = (isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[1] == self.width
                         and key != "attention_mask")     # the mask covers cached and new positions alike
            out[key] = value[:, start:] if per_token else value
        keep = out.get("logits_to_keep")
        if isinstance(keep, torch.Tensor):
            out["logits_to_keep"] = keep - start
        cache = _empty()        # from 0: empty, so that the pass holds what later passes' caches hold (its memory
        for layer, (keys, values) in enumerate(self.layers if start else ()):   # measured bounds theirs)
            rows = items.to(keys.device)
            cache.update(keys[rows, :, :start], values[rows, :, :start], layer)
        out[self.argument], out["use_cache"] = cache, True
        return args, out


def can_reuse(model: Model, inputs: Inputs, layers: Sequence[torch.nn.Module]) -> bool:
    """Whether the receiving run of ``inputs`` can be cut at a patch position (see the module's docstring);
    ``layers``: the model's layers, whose attention must be causal."""
    if not isinstance(model, LanguageModel) or model.is_encoder_decoder or is_dispatched(model.module):
        return False
    if inputs.targets[0].metric is not None or inputs.x.dim() < 2:
        return False
    module = model.module
    if not type(module).__module__.startswith("transformers."):
        return False                  # remote code: its forward may take a cache of its own (legacy tuples)
    if cache_argument(module) is None or not accepts(module, "use_cache"):
        return False
    if not all(_causal(layer) for layer in layers) or not layers:
        return False
    config = getattr(module, "config", None)
    if config is None:
        return False
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(config, "use_bidirectional_attention", False):
        return False
    width = inputs.x.shape[1]
    window = getattr(config, "sliding_window", None)
    short = isinstance(window, int) and window < width
    types = getattr(config, "layer_types", None)
    if types is not None:
        if any(t not in ("full_attention", *_WINDOWED) for t in types):
            return False                           # linear attention, state-space layers: not a key-value cache
        if short and any(t in _WINDOWED for t in types):
            return False
    elif short and getattr(config, "use_sliding_window", True):
        return False
    if getattr(config, "attention_chunk_size", None):
        return False
    return True


def _causal(layer: torch.nn.Module) -> bool:
    """Whether every attention of ``layer`` says it is causal (transformers' ``is_causal`` attribute; a layer
    without one is taken as not causal: a patch could then change earlier positions)."""
    flags = [m.is_causal for m in layer.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    return bool(flags) and all(flags)


def cache_argument(module: torch.nn.Module) -> str | None:
    """The name under which ``module.forward`` takes a key-value cache (``cache`` from transformers 5.24 on,
    ``past_key_values`` before), or None."""
    return next((name for name in ("cache", "past_key_values") if accepts(module, name)), None)


def fill_cache(model: Model) -> tuple[dict[str, Any], Any]:
    """Keyword arguments that make a forward of ``model`` fill a fresh key-value cache, and that cache."""
    cache = _empty()
    return {cache_argument(model.module): cache, "use_cache": True}, cache


def _empty() -> Any:
    from transformers import DynamicCache

    return DynamicCache()


def read_prefix(model: Model, cache: Any, inputs: Inputs, n_layers: int) -> Prefix | None:
    """The :class:`Prefix` in ``cache`` after a forward of every receiving input, or None where the cache is not
    one key and one value tensor per layer over every position."""
    layers = getattr(cache, "layers", None)
    if layers is not None:                                    # transformers ≥ 4.56
        pairs = [(getattr(layer, "keys", None), getattr(layer, "values", None)) for layer in layers]
    else:
        pairs = list(zip(getattr(cache, "key_cache", ()), getattr(cache, "value_cache", ())))
    n, width = inputs.x.shape[:2]
    if len(pairs) != n_layers:
        return None
    for keys, values in pairs:
        if not all(isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[0] == n and t.shape[2] == width
                   for t in (keys, values)):
            return None
    n_keep = inputs.targets[0].n_tokens
    return Prefix([(k.detach(), v.detach()) for k, v in pairs], width, cache_argument(model.module), width - n_keep)
