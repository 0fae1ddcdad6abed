"""Sites: one naming of the places in a model that methods read, write and attribute to.

>>> import torch, transformers, attrib
>>> from attrib.models.sites import site
>>> _ = torch.manual_seed(0)
>>> hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50))
>>> model = attrib.Model(hf.eval())
>>> z, q = site(model, "z.1"), site(model, "q.1")
>>> with torch.no_grad(), model.trace(torch.tensor([[1, 2, 3]])):
...     queries = q.read(model).save()           # (batch, positions, heads, head dim)
...     heads = z.read(model).save()             # every head's output: the input of h[1].attn.c_proj, split
>>> tuple(queries.shape), tuple(heads.shape), z.path
((1, 3, 4, 8), (1, 3, 4, 8), 'transformer.h.1.attn.c_proj')

Names (``L`` a layer index, negative from the end):

============== ===========================================================================================
``embed``      the input embedding module's output (batch, positions, hidden)
``input``      the root module's first input (a plain model's input tensor)
``resid_pre.L``  the residual stream entering layer L (the layer's input)
``resid_post.L`` the residual stream leaving layer L (the layer's output)
``attn_out.L`` the attention output of layer L (the output of its output projection's module)
``mlp_out.L``  the MLP output of layer L (for Mixtral, the sparse MoE block's output)
``z.L``        every head's output in layer L: the input of the attention's output projection, split into
               (batch, positions, heads, head dim)
``q.L`` ``k.L`` ``v.L``  the query / key / value projections of layer L, split into heads (key/value heads for
               grouped-query attention); for fused projections (GPT-2, GPT-NeoX, Phi-3) their part of it
``q_rot.L`` ``k_rot.L``  the query / key as the attention scores use them (after a rotary embedding), (batch,
               positions, heads, head dim); reading one installs attention probes (:mod:`attrib.models.probes`)
``pattern.L``  the attention weights after the softmax, (batch, query positions, heads, key positions); probes
a module path  ``"model.layers.3.mlp"`` (or an envoy): that module's output (the first tensor of a tuple)
============== ===========================================================================================

Each :class:`Site` reads the tensor attrib hands out for its module (:meth:`Site.module_value`, whose
``.grad`` works in a backward context) and takes its part of it (:meth:`Site.take`); :meth:`Site.write`
puts a value of the site's shape back. Within a layer, sites run in the order ``resid_pre``, ``q``/``k``/``v``,
``q_rot``/``k_rot``, ``pattern``, ``z``, ``attn_out``, ``mlp_out``, ``resid_post`` (:func:`schedule`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
from einops import rearrange

from ..core.current import current_trace
from ..core.devices import live
from ..core.envoy import Envoy
from ..core.model import Model
from ..errors import LayoutError
from .layouts import Layout, from_map, layout_of
from .probes import CHILD, PROBES, attention_path, install

__all__ = ["Site", "site", "layout_for", "schedule", "head_outputs", "NAMED", "first_tensor", "replace_first"]

NAMED = ("resid_pre", "q", "k", "v", "q_rot", "k_rot", "pattern", "z", "attn_out", "mlp_out",
         "resid_post")                                                          # execution order in a layer


def first_tensor(value: Any) -> torch.Tensor:
    """The tensor a module produced (the first element of a tuple or list output)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise LayoutError(f"expected a module value that is a tensor or a tuple starting with one, got "
                      f"{type(value).__name__}.")


def replace_first(value: Any, new: torch.Tensor) -> Any:
    """``value`` with its first tensor replaced by ``new``."""
    if isinstance(value, torch.Tensor):
        return new
    return type(value)((new, *value[1:])) if isinstance(value, tuple) else [new, *value[1:]]


@dataclass(frozen=True)
class Site:
    """One place in a model: a module's output or input, optionally a part of its last dimension (a fused
    projection's q, k or v) split into heads."""

    name: str
    path: str                                  # dotted module path; "" is the root
    kind: str = "output"                       # "output" | "input"
    layer: int | None = None
    heads: int | None = None                   # split the last dimension into (heads, head dim)
    part: tuple[str, int, int] | None = None   # ("concat", start, stop) | ("per_head", which, n_heads)
    flat: bool = False                         # the module runs on (batch · positions, hidden) rows

    def envoy(self, model: Model) -> Envoy:
        obj: Any = model._root
        for piece in self.path.split(".") if self.path else ():
            obj = obj[int(piece)] if piece.lstrip("-").isdigit() else obj.submodule(piece)
        return obj

    # -- values in a trace --------------------------------------------------------------------
    def module_value(self, model: Model) -> torch.Tensor:
        """The whole tensor attrib hands out for the site's module (its ``.grad`` works in a context)."""
        envoy = self.envoy(model)
        value = envoy.input if self.kind == "input" else first_tensor(envoy.output)
        if not isinstance(value, torch.Tensor):
            raise LayoutError(f"{self.name} ({envoy.path}.{self.kind}) is a {type(value).__name__}, not a tensor.")
        return value

    def take(self, full: torch.Tensor) -> torch.Tensor:
        """The site's part of ``full`` (a module value, or its gradient)."""
        value = full
        if self.flat and value.dim() == 2:
            value = value.view(*_batch_positions(), value.shape[-1])
        if self.part is not None:
            how, a, b = self.part
            if how == "concat":
                value = value[..., a:b]
            else:                               # per head: (q, k, v) of head 0, then of head 1, ...
                value = rearrange(value, "... (h three d) -> ... h three d", h=b, three=3)[..., a, :]
                return value
        if self.heads is not None:
            if value.shape[-1] % self.heads:
                raise LayoutError(f"{self.name} has width {value.shape[-1]}, not a multiple of its {self.heads} "
                                  "heads; pass the right n_heads in component_map.")
            value = rearrange(value, "... (h d) -> ... h d", h=self.heads)
        return value

    def put(self, full: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """A copy of ``full`` whose part is ``value`` (of the site's shape)."""
        if self.flat and full.dim() == 2:
            return value.reshape(full.shape)
        if self.part is None and self.heads is None:
            return value
        merged = value
        if self.part is not None and self.part[0] == "per_head":
            _, which, n_heads = self.part
            new = rearrange(full, "... (h three d) -> ... h three d", h=n_heads, three=3).clone()
            new[..., which, :] = merged
            return rearrange(new, "... h three d -> ... (h three d)")
        if self.heads is not None:
            merged = rearrange(merged, "... h d -> ... (h d)")
        if self.part is None:
            return merged
        _, a, b = self.part
        new = full.clone()
        new[..., a:b] = merged
        return new

    def read(self, model: Model) -> torch.Tensor:
        """The site's value in the running trace."""
        return self.take(self.module_value(model))

    def write(self, model: Model, value: torch.Tensor) -> None:
        """Replace the site's value in the running trace (right after reading it, in execution order), moved to the
        device and dtype of the value it replaces (a dispatched model's site may live on another device than the
        caller's values; the move is differentiable, so gradients flow back to the caller's device)."""
        full = self.module_value(model)
        self.write_module_value(model, self.put(full, value.to(device=full.device, dtype=full.dtype)))

    def write_module_value(self, model: Model, full: torch.Tensor) -> None:
        """Replace the whole tensor of the site's module (not only the site's part of it)."""
        envoy = self.envoy(model)
        if self.kind == "input":
            envoy.input = full
        else:
            envoy.output = replace_first(envoy.output, full)


def _batch_positions() -> tuple[int, int]:
    """(batch, positions) of the running trace's input ids (for sites whose module flattens them)."""
    trace = current_trace()
    ids = None if trace is None else trace.kwargs.get("input_ids", trace.args[0] if trace.args else None)
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        raise LayoutError("this site's module runs on (batch · positions) rows; read it in a trace called with "
                          "input_ids of shape (batch, positions).")
    return ids.shape[0], ids.shape[1]


_layouts: "weakref.WeakKeyDictionary[torch.nn.Module, Layout]" = weakref.WeakKeyDictionary()


def layout_for(model: Model, component_map: Mapping[str, Any] | None = None) -> Layout:
    """The layout of ``model`` (from ``component_map`` when given; the found one is kept per module)."""
    if component_map is not None:
        return from_map(model.module, component_map)
    found = _layouts.get(model.module)
    if found is None:
        found = _layouts[model.module] = layout_of(model.module)
    return found


def _embedding_path(model: Model, layout: Layout | None) -> str:
    if layout is not None and layout.embed:
        try:
            model.module.get_submodule(layout.embed)
            return layout.embed
        except AttributeError:
            pass
    getter = getattr(model.module, "get_input_embeddings", None)
    module = getter() if getter is not None else None
    if module is None:
        raise LayoutError(f"{type(model.module).__name__} has no input embedding (get_input_embeddings()); name a "
                          "site or a module path to attribute to instead.")
    return model._dotted_of(module)


def _named(model: Model, kind: str, layer: int, layout: Layout) -> Site:
    layers = model.module.get_submodule(layout.layers)
    n = len(layers)
    if not -n <= layer < n:
        raise LayoutError(f"{kind}.{layer}: layer {layer} is outside the model's {n} layers.")
    layer %= n
    base = f"{layout.layers}.{layer}"
    name = f"{kind}.{layer}"
    if kind in PROBES:
        install(model, layout)
        return Site(name, f"{base}.{attention_path(layout)}.{CHILD}.{kind}", "output", layer)
    if kind == "resid_pre":
        return Site(name, base, "input", layer)
    if kind == "resid_post":
        return Site(name, base, "output", layer)
    field = {"attn_out": "attn", "mlp_out": "mlp", "z": "o_proj"}.get(kind, "qkv")
    if not getattr(layout, field):
        raise LayoutError(f"site {name!r} needs component_map[{field!r}] (a path relative to a layer); the "
                          f"{layout.family} layout has none.")
    if kind == "attn_out":
        return Site(name, f"{base}.{layout.attn}", "output", layer)
    if kind == "mlp_out":
        return Site(name, f"{base}.{layout.mlp}", "output", layer, flat=layout.flat_mlp)
    if kind == "z":
        return Site(name, f"{base}.{layout.o_proj}", "input", layer, heads=layout.n_heads)
    which = "qkv".index(kind)
    n_heads = layout.n_heads if kind == "q" else layout.n_kv_heads
    if len(layout.qkv) == 3:
        return Site(name, f"{base}.{layout.qkv[which]}", "output", layer, heads=n_heads)
    fused = f"{base}.{layout.qkv[0]}"
    if layout.fused == "per_head":
        return Site(name, fused, "output", layer, part=("per_head", which, layout.n_heads))
    width = model.module.get_submodule(f"{base}.{layout.o_proj}")
    d_head = in_out(width).shape[0] // layout.n_heads
    sizes = [layout.n_heads * d_head, layout.n_kv_heads * d_head, layout.n_kv_heads * d_head]
    start = sum(sizes[:which])
    return Site(name, fused, "output", layer, heads=n_heads, part=("concat", start, start + sizes[which]))


def in_out(module: torch.nn.Module) -> torch.Tensor:
    """A projection's weight as (in features, out features): GPT-2's Conv1D stores it so, nn.Linear transposed (an
    offloaded weight read from its accelerate hook: :func:`attrib.core.devices.live`)."""
    weight = live(module, "weight")
    return weight if type(module).__name__ == "Conv1D" else weight.T


def site(model: Model, spec: "str | Site | Envoy", component_map: Mapping[str, Any] | None = None) -> Site:
    """The :class:`Site` that ``spec`` names in ``model`` (see the module docstring for the names)."""
    if isinstance(spec, Site):
        return spec
    if isinstance(spec, Envoy):
        return Site(spec.path, spec._dotted, "output")
    if not isinstance(spec, str):
        raise LayoutError(f"a site is a name like 'resid_post.3', a module path or an envoy, got "
                          f"{type(spec).__name__}.")
    if spec == "input":
        return Site("input", "", "input")
    if spec == "embed":
        layout = None
        try:
            layout = layout_for(model, component_map)
        except LayoutError:
            pass
        return Site("embed", _embedding_path(model, layout), "output")
    kind, _, rest = spec.partition(".")
    if kind in NAMED:
        if not rest.lstrip("-").isdigit():
            raise LayoutError(f"site {spec!r} needs a layer index, e.g. '{kind}.0' or '{kind}.-1'.")
        return _named(model, kind, int(rest), layout_for(model, component_map))
    why = ""
    try:
        envoy = Site(spec, spec, "output").envoy(model)
    except (AttributeError, IndexError, TypeError) as err:
        envoy, why = None, f" ({err})"
    if not isinstance(envoy, Envoy):
        raise LayoutError(
            f"{spec!r} is neither a site name ({', '.join(NAMED)} followed by .layer; 'embed'; 'input') nor a "
            f"module path of {type(model.module).__name__}{why}."
        )
    return Site(spec, envoy._dotted, "output")


def head_outputs(model: Model, z_site: Site, z: torch.Tensor) -> torch.Tensor:
    """Each head's contribution to the attention output, (..., heads, hidden), from the values ``z`` of a
    ``z.L`` site (..., heads, head dim): the heads' slices of the output projection applied one by one. They
    sum to the attention output before the projection's bias."""
    proj = model.module.get_submodule(z_site.path)
    weight = in_out(proj)                                                               # (H·dh, hidden)
    per_head = rearrange(weight, "(h d) o -> h d o", h=z.shape[-2])
    return torch.einsum("...hd,hdo->...ho", z.to(weight.dtype), per_head)


def schedule(sites: Iterable[Site]) -> list[Site]:
    """Named sites in the order the model computes them (layer by layer); others keep their place after."""
    sites = list(dict.fromkeys(sites))
    named = [s for s in sites if s.layer is not None and s.name.split(".")[0] in NAMED]
    rest = [s for s in sites if s not in named]
    return sorted(named, key=lambda s: (s.layer, NAMED.index(s.name.split(".")[0]))) + rest
