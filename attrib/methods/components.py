"""Where the components of a decoder-only transformer live, and how to read and patch them in a trace.

>>> import torch, transformers, attrib
>>> from attrib.methods.components import resolve_layout, Sites
>>> _ = torch.manual_seed(0)
>>> config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, bos_token_id=0, eos_token_id=0)
>>> hf = transformers.GPT2LMHeadModel(config)
>>> model = attrib.Model(hf.eval())
>>> layout = resolve_layout(model, None, ("resid", "heads"))
>>> layout.name, layout.layers, layout.out_proj, layout.n_heads
('GPT-2', 'transformer.h', 'attn.c_proj', 4)
>>> sites = Sites(model, layout)
>>> with torch.no_grad(), model.trace(torch.tensor([[1, 2, 3]])):
...     heads = sites.read("heads", 0).save()      # the input of h[0].attn.c_proj
...     resid = sites.read("resid", 0).save()      # the output of h[0]
>>> tuple(heads.shape), tuple(resid.shape)
((1, 3, 32), (1, 3, 32))

Components (the names every patching method uses):

- ``resid``: the output of each decoder layer (the residual stream after the layer), per position.
- ``attn``: the output of the attention module (the first tensor of its tuple), per position.
- ``mlp``: the output of the MLP module, per position.
- ``heads``: each attention head's output, i.e. that head's slice of the INPUT of the attention output
  projection (GPT-2 ``attn.c_proj``, Llama ``self_attn.o_proj``, GPT-NeoX ``attention.dense``), per position.

Layouts known out of the box: GPT-2, Llama-family (Llama, SmolLM2, Mistral, Qwen2...), GPT-NeoX/Pythia, each
as a causal LM or as its base model. Other models pass ``component_map={"layers": ..., "attn": ...,
"mlp": ..., "out_proj": ..., "n_heads": ...}`` (paths of ``attn``, ``mlp`` and ``out_proj`` are relative to a
decoder layer; a component whose entry is missing cannot be asked for).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

import torch

from ..core.envoy import Envoy
from ..core.model import Model
from ..errors import MethodError
from .common import envoy_for, first_tensor, replace_first

__all__ = ["COMPONENTS", "Layout", "KNOWN_LAYOUTS", "resolve_layout", "Sites", "patch_rows", "normalize_components",
           "normalize_positions"]

COMPONENTS = ("resid", "attn", "mlp", "heads")
# Within one decoder layer the model computes these in this order (the head outputs inside attention).
_EXECUTION = ("heads", "attn", "mlp", "resid")
_NEEDS = {"attn": "attn", "mlp": "mlp", "heads": "out_proj"}
_MAP_KEYS = ("layers", "attn", "mlp", "out_proj", "n_heads")


@dataclass(frozen=True)
class Layout:
    """Module paths of one model family: ``layers`` from the root, the others relative to a decoder layer."""

    name: str
    layers: str
    attn: str | None
    mlp: str | None
    out_proj: str | None
    n_heads: int | None = None


KNOWN_LAYOUTS: tuple[Layout, ...] = (
    Layout("GPT-2", "transformer.h", "attn", "mlp", "attn.c_proj"),
    Layout("Llama", "model.layers", "self_attn", "mlp", "self_attn.o_proj"),
    Layout("GPT-NeoX", "gpt_neox.layers", "attention", "mlp", "attention.dense"),
)


def normalize_components(components: Iterable[str] | str) -> tuple[str, ...]:
    """A tuple of known component names (a single name is allowed), in the order given, without repeats."""
    comps = tuple(dict.fromkeys((components,) if isinstance(components, str) else components))
    for c in comps or ("",):
        if c not in COMPONENTS:
            what = f"unknown component {c!r}" if comps else "components is empty"
            raise MethodError(f"{what}; choose from {', '.join(map(repr, COMPONENTS))}.")
    return comps


def normalize_positions(positions: int | Iterable[int] | None, n: int) -> list[int]:
    """Sorted prompt positions (negative ones count from the end); ``None``: all ``n``."""
    if positions is None:
        return list(range(n))
    out = set()
    for p in [positions] if isinstance(positions, int) else positions:
        if not -n <= int(p) < n:
            raise MethodError(f"position {p} is outside the prompt of {n} tokens.")
        out.add(int(p) % n)
    if not out:
        raise MethodError("positions is empty; pass None for every position.")
    return sorted(out)


def _base_variants() -> tuple[Layout, ...]:
    """The same layouts on a base model (GPT2Model: ``h``, LlamaModel / GPTNeoXModel: ``layers``)."""
    return tuple(replace(l, name=f"{l.name} (base model)", layers=l.layers.split(".", 1)[1]) for l in KNOWN_LAYOUTS)


def _submodule(root: torch.nn.Module, dotted: str) -> torch.nn.Module | None:
    try:
        return root.get_submodule(dotted)
    except AttributeError:
        return None


def _n_heads_of(module: torch.nn.Module) -> int | None:
    config = getattr(module, "config", None)
    for name in ("num_attention_heads", "n_head", "num_heads"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _fits(root: torch.nn.Module, layout: Layout) -> bool:
    layers = _submodule(root, layout.layers)
    if not isinstance(layers, (torch.nn.ModuleList, torch.nn.Sequential)) or len(layers) == 0:
        return False
    first = layers[0]
    return all(_submodule(first, p) is not None for p in (layout.attn, layout.mlp, layout.out_proj) if p)


def resolve_layout(model: Model, component_map: Mapping[str, Any] | None,
                   components: Iterable[str] = COMPONENTS) -> Layout:
    """The :class:`Layout` of ``model``: from ``component_map`` when given, else a known family.

    Raises :class:`~attrib.methods.common.MethodError` naming the paths it looked for when none fits, or
    when a requested component has no module in the map.
    """
    root = model.module
    components = tuple(components)
    if component_map is not None:
        unknown = sorted(set(component_map) - set(_MAP_KEYS))
        if unknown or "layers" not in component_map:
            raise MethodError(
                f"component_map needs 'layers' and may have {', '.join(map(repr, _MAP_KEYS[1:]))}"
                + (f"; got unknown key(s) {', '.join(map(repr, unknown))}." if unknown else ".")
            )
        layout = Layout("component_map", str(component_map["layers"]), component_map.get("attn"),
                        component_map.get("mlp"), component_map.get("out_proj"), component_map.get("n_heads"))
        layers = _submodule(root, layout.layers)
        if not isinstance(layers, (torch.nn.ModuleList, torch.nn.Sequential)) or len(layers) == 0:
            raise MethodError(f"component_map['layers']={layout.layers!r} is not a non-empty ModuleList of "
                              f"{type(root).__name__}.")
        for key in ("attn", "mlp", "out_proj"):
            path = getattr(layout, key)
            if path is not None and _submodule(layers[0], path) is None:
                raise MethodError(f"component_map[{key!r}]={path!r} is not a submodule of {layout.layers}[0] "
                                  f"({type(layers[0]).__name__}); give its path relative to a decoder layer.")
    else:
        candidates = KNOWN_LAYOUTS + _base_variants()
        layout = next((l for l in candidates if _fits(root, l)), None)
        if layout is None:
            looked = "; ".join(f"{l.name}: {l.layers}[i].{{{l.attn}, {l.mlp}, {l.out_proj}}}" for l in candidates)
            raise MethodError(
                f"unknown layout: {type(root).__name__} has none of the decoder-layer paths looked for ({looked}). "
                "Pass component_map={'layers': ..., 'attn': ..., 'mlp': ..., 'out_proj': ..., 'n_heads': ...}."
            )
    for comp in components:
        if comp not in COMPONENTS:
            raise MethodError(f"unknown component {comp!r}; choose from {', '.join(map(repr, COMPONENTS))}.")
        need = _NEEDS.get(comp)
        if need is not None and getattr(layout, need) is None:
            raise MethodError(f"component {comp!r} needs component_map[{need!r}] (a path relative to a decoder layer).")
    if "heads" in components and layout.n_heads is None:
        n_heads = _n_heads_of(root)
        if n_heads is None:
            raise MethodError("component 'heads' needs the number of attention heads: the model's config has no "
                              "num_attention_heads / n_head; pass component_map={..., 'n_heads': ...}.")
        layout = replace(layout, n_heads=n_heads)
    return layout


class Sites:
    """The component values of one model, read and written inside a trace (in execution order)."""

    def __init__(self, model: Model, layout: Layout) -> None:
        self.model = model
        self.layout = layout
        self.layers: list[Envoy] = list(envoy_for(model, layout.layers))
        self._envoys: dict[tuple[str, int], Envoy] = {}

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_heads(self) -> int:
        if self.layout.n_heads is None:
            raise MethodError("the number of heads is unknown; pass component_map={..., 'n_heads': ...}.")
        return int(self.layout.n_heads)

    def envoy(self, component: str, layer: int) -> Envoy:
        key = (component, layer)
        found = self._envoys.get(key)
        if found is None:
            found = self.layers[layer]
            path = {"resid": None, "attn": self.layout.attn, "mlp": self.layout.mlp,
                    "heads": self.layout.out_proj}[component]
            for part in path.split(".") if path else ():
                found = found[int(part)] if part.isdigit() else getattr(found, part)
            self._envoys[key] = found
        return found

    @staticmethod
    def schedule(keys: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
        """``(component, layer)`` pairs sorted in the order the model computes them."""
        return sorted(set(keys), key=lambda k: (k[1], _EXECUTION.index(k[0])))

    def read(self, component: str, layer: int) -> torch.Tensor:
        """The component's (batch, positions, hidden) value in the running trace."""
        envoy = self.envoy(component, layer)
        value = envoy.input if component == "heads" else first_tensor(envoy.output)
        if not isinstance(value, torch.Tensor) or value.dim() != 3:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise MethodError(f"{component} at layer {layer} ({envoy.path}) is {shape}; patching needs a "
                              "(batch, positions, hidden) tensor there.")
        if component == "heads" and value.shape[-1] % self.n_heads:
            raise MethodError(f"the input of {envoy.path} has width {value.shape[-1]}, not a multiple of "
                              f"n_heads={self.n_heads}; pass the right component_map['n_heads'].")
        return value

    def write(self, component: str, layer: int, value: torch.Tensor) -> None:
        """Replace the component's value in the running trace (right after reading it)."""
        envoy = self.envoy(component, layer)
        if component == "heads":
            envoy.input = value
        else:
            envoy.output = replace_first(envoy.output, value)

    def split_heads(self, value: torch.Tensor) -> torch.Tensor:
        """(batch, positions, H·d) -> (batch, positions, H, d)."""
        return value.unflatten(-1, (self.n_heads, value.shape[-1] // self.n_heads))


def patch_rows(current: torch.Tensor, source: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor,
               heads: torch.Tensor | None = None, n_heads: int | None = None) -> torch.Tensor:
    """A copy of ``current`` (B, T, D) with ``current[rows[i], positions[i]] = source[0, positions[i]]``
    (only head ``heads[i]``'s slice of D when heads are given).

    >>> cur, src = torch.zeros(2, 3, 4), torch.arange(12.0).view(1, 3, 4)
    >>> patch_rows(cur, src, torch.tensor([1]), torch.tensor([2]), torch.tensor([1]), 2)[1, 2].tolist()
    [0.0, 0.0, 10.0, 11.0]
    """
    new = current.clone()
    source = source.to(new.dtype)
    if heads is None:
        new[rows, positions] = source[0, positions]
    else:
        if n_heads is None:
            raise MethodError("patching heads needs n_heads.")
        view = new.unflatten(-1, (n_heads, new.shape[-1] // n_heads))
        view[rows, positions, heads] = source.unflatten(-1, view.shape[-2:])[0, positions, heads]
    return new
