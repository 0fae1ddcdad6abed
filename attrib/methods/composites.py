"""Composites: which rule each module of a model gets, by module type, path pattern or layout.

>>> import torch
>>> from attrib.methods.composites import composite
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> [(name, rule) for _, rule, name in composite("epsilon_plus").assign(net)]
[('0', Epsilon(epsilon=1e-06)), ('1', Pass(epsilon=1e-10)), ('2', Epsilon(epsilon=1e-06))]

A :class:`Composite` is a list of ``(selector, rule)`` pairs, the first match winning, and optionally
``first`` pairs for the first module (in ``named_modules`` order) that one of them selects — zennit's
``LayerMapComposite`` and ``SpecialFirstLayerMapComposite``. A selector is a module type (or a tuple of them),
a path pattern (``"encoder.*.fc"``, :mod:`fnmatch` style) or a function ``(path, module) -> bool``.

Named composites (:data:`NAMES`):

- For Linear / convolution networks, zennit's names, rules and defaults (Anders et al. 2021, "Software for
  Dataset-wide XAI: From Local Explanations to Global Insights with Zennit, CoRelAy, and ViRelAy"): ``epsilon``,
  ``gamma``, ``zplus`` (that rule on every Linear and convolution), ``epsilon_plus`` (z⁺ on convolutions, ε on
  Linear), ``epsilon_alpha2_beta1``, ``epsilon_gamma_box`` (the box rule on the first convolution, γ on the
  others, ε on Linear); activations and batch norms pass relevance unchanged, average pooling uses ``Norm``.
- For transformers of the layout registry: ``attnlrp`` (Achtibat et al. 2024, "AttnLRP: Attention-Aware
  Layer-Wise Relevance Propagation for Transformers") and ``cp-lrp`` (Ali et al. 2022, "XAI for Transformers:
  Better Explanations through Conservative Propagation"); see :func:`transformer`.
"""

from __future__ import annotations

import contextlib
import fnmatch
from typing import Any, Callable, ContextManager, Iterable, Iterator, Sequence

import torch

from ..core.devices import hook_device
from ..core.rules import Rule, Scale, as_rule
from ..errors import MethodError, RuleError
from ..models.layouts import Layout, layout_of
from .rules import AlphaBeta, Epsilon, FrozenNorm, Gamma, Norm, Pass, SoftcapLogits, ZBox, ZPlus, softcap_identity

__all__ = ["Composite", "composite", "transformer", "qkv_factors", "is_norm", "is_activation", "NAMES", "CONVOLUTIONS",
           "ACTIVATIONS"]

CONVOLUTIONS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d,
                torch.nn.ConvTranspose3d)
_A = torch.nn.modules.activation
ACTIVATIONS = (_A.ELU, _A.Hardshrink, _A.Hardsigmoid, _A.Hardtanh, _A.Hardswish, _A.LeakyReLU, _A.LogSigmoid,
               _A.PReLU, _A.ReLU, _A.ReLU6, _A.RReLU, _A.SELU, _A.CELU, _A.GELU, _A.Sigmoid, _A.SiLU, _A.Mish,
               _A.Softplus, _A.Softshrink, _A.Softsign, _A.Tanh, _A.Tanhshrink, _A.Threshold)
_POOL = (torch.nn.AvgPool1d, torch.nn.AvgPool2d, torch.nn.AvgPool3d, torch.nn.AdaptiveAvgPool1d,
         torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveAvgPool3d)
_BATCHNORM = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)

Selector = Any


def _site_paths(root: torch.nn.Module, spec: str) -> set[str]:
    """The module paths of a site selector ``"site:mlp_out.*"`` (``*``: every layer) on ``root``."""
    from ..core.model import Model
    from ..models.layouts import layout_of as find
    from ..models.sites import site

    name = spec[len("site:"):]
    wrapped = Model(root)
    if "*" in name:
        n = len(root.get_submodule(find(root).layers))
        names = [name.replace("*", str(i)) for i in range(n)]
    else:
        names = [name]
    paths = set()
    for one in names:
        found = site(wrapped, one)
        if found.part is not None:
            raise RuleError(f"{spec!r} is part of a fused projection ({found.path}); a rule acts on a whole module, so "
                            f"select {found.path!r} and give it a Scale with a per-feature factor.")
        paths.add(found.path)
    return paths


def _matches(selector: Selector, path: str, module: torch.nn.Module) -> bool:
    if isinstance(selector, frozenset):                      # a resolved site selector
        return path in selector
    if isinstance(selector, type) or (isinstance(selector, tuple) and all(isinstance(t, type) for t in selector)):
        return isinstance(module, selector)
    if isinstance(selector, str):
        return fnmatch.fnmatchcase(path, selector)
    if callable(selector):
        return bool(selector(path, module))
    raise RuleError(f"a composite selector is a module type, a path pattern or a function (path, module) -> bool; "
                    f"got {type(selector).__name__} {selector!r:.40}.")


class Composite:
    """``(selector, rule)`` pairs, first match wins; ``first``: pairs for the first module one of them selects.
    A selector is a module type (or a tuple of them), a path pattern, ``"site:NAME"`` (a site of
    :mod:`attrib.models.sites` on the model's layout, ``*`` for every layer: ``"site:mlp_out.*"``), or a function
    ``(path, module) -> bool``."""

    def __init__(self, pairs: Iterable[tuple[Selector, Any]], first: Iterable[tuple[Selector, Any]] = (),
                 name: str = "composite") -> None:
        self.pairs = [(s, as_rule(r)) for s, r in pairs]
        self.first = [(s, as_rule(r)) for s, r in first]
        self.name = name

    def assign(self, module: torch.nn.Module) -> list[tuple[torch.nn.Module, Rule, str]]:
        """``(module, rule, path)`` for every submodule of ``module`` that gets a rule."""
        def resolved(pairs: list) -> list:
            return [(frozenset(_site_paths(module, s)) if isinstance(s, str) and s.startswith("site:") else s, r)
                    for s, r in pairs]
        pairs, first = resolved(self.pairs), resolved(self.first)
        out, first_done = [], not first
        for path, sub in module.named_modules():
            rule = None
            if not first_done:
                rule = next((r for s, r in first if _matches(s, path, sub)), None)
                first_done = rule is not None
            if rule is None:
                rule = next((r for s, r in pairs if _matches(s, path, sub)), None)
            if rule is not None:
                out.append((sub, rule, path or type(sub).__name__))
        return out

    def context(self, module: torch.nn.Module) -> ContextManager:
        """What must hold around the pass besides the rules (nothing, for a list of pairs)."""
        return contextlib.nullcontext()

    def __repr__(self) -> str:
        return f"Composite({self.name!r}, {len(self.pairs)} pairs{f', {len(self.first)} first' if self.first else ''})"


def _base(stabilizer: float = 1e-6) -> list[tuple[Selector, Rule]]:
    return [(ACTIVATIONS, Pass()), (_POOL, Norm(stabilizer)), (_BATCHNORM, Pass())]


def _zennit(name: str, epsilon: float = 1e-6, gamma: float = 0.25, stabilizer: float = 1e-6,
            low: Any = None, high: Any = None) -> Composite:
    lin = (torch.nn.Linear, *CONVOLUTIONS)
    if name in ("epsilon", "gamma", "zplus"):
        rule = {"epsilon": Epsilon(epsilon), "gamma": Gamma(gamma, stabilizer), "zplus": ZPlus(stabilizer)}[name]
        return Composite([*_base(stabilizer), (lin, rule)], name=name)
    conv = {"epsilon_plus": ZPlus(stabilizer), "epsilon_alpha2_beta1": AlphaBeta(2.0, 1.0, stabilizer),
            "epsilon_gamma_box": Gamma(gamma, stabilizer)}[name]
    pairs = [*_base(stabilizer), (CONVOLUTIONS, conv), (torch.nn.Linear, Epsilon(epsilon))]
    if name == "epsilon_gamma_box":
        if low is None or high is None:
            raise MethodError("the epsilon_gamma_box composite needs the inputs' bounds: "
                              "composite('epsilon_gamma_box', low=..., high=...).")
        return Composite(pairs, first=[(CONVOLUTIONS, ZBox(low, high, stabilizer))], name=name)
    return Composite(pairs, name=name)


# -- transformers ------------------------------------------------------------------------------------------
def is_norm(module: torch.nn.Module) -> bool:
    """LayerNorm and RMSNorm modules, torch's and every family's own (``...LayerNorm``, ``...RMSNorm``)."""
    name = type(module).__name__
    return isinstance(module, (torch.nn.LayerNorm, getattr(torch.nn, "RMSNorm", torch.nn.LayerNorm))) or \
        name.endswith("LayerNorm") or name.endswith("RMSNorm")


def is_activation(module: torch.nn.Module) -> bool:
    """Element-wise activation modules: torch's and transformers' (``transformers.activations``)."""
    if isinstance(module, ACTIVATIONS):
        return True
    return type(module).__module__.startswith("transformers.activations") and \
        next(module.parameters(recurse=False), None) is None


def qkv_factors(layout: Layout, layer: torch.nn.Module, q: float, k: float, v: float) -> list[tuple]:
    """``(module, Scale, path)`` multiplying the gradient of one layer's query, key and value by q, k and v (per
    feature on a fused projection)."""
    projections = [layer.get_submodule(p) for p in layout.qkv]
    if layout.fused is None:
        return [(m, Scale(f), p) for m, f, p in zip(projections, (q, k, v), layout.qkv)]
    (fused,) = projections
    width = fused.weight.shape[0] if isinstance(fused, torch.nn.Linear) else fused.weight.shape[-1]
    nh, nkv = layout.n_heads, layout.n_kv_heads
    if layout.fused == "per_head":               # GPT-NeoX: (q, k, v) per head
        hd = width // (3 * nh)
        values = ([q] * hd + [k] * hd + [v] * hd) * nh
    else:                                        # q | k | v
        hd = width // (nh + 2 * nkv)
        values = [q] * (nh * hd) + [k] * (nkv * hd) + [v] * (nkv * hd)
    factor = torch.tensor(values, dtype=fused.weight.dtype, device=_device_of(fused))   # no copy per backward
    return [(fused, Scale(factor), layout.qkv[0])]


def _device_of(module: torch.nn.Module) -> torch.device:
    """Where ``module`` computes: its weight's device, or its accelerate hook's when the weight is offloaded."""
    device = module.weight.device
    return (hook_device(module) or device) if device.type == "meta" else device


_GATED = (("gate_proj", "up_proj", "down_proj"), ("gate_up_proj", None, "down_proj"), ("wi_0", "wi_1", "wo"),
          ("w1", "w3", "w2"))


def _gated_pairs(mlp: torch.nn.Module, path: str, cp: bool) -> list[tuple]:
    for gate, up, down in _GATED:
        g, d = getattr(mlp, gate, None), getattr(mlp, down, None)
        if not isinstance(g, torch.nn.Module) or not isinstance(d, torch.nn.Module) or \
                (up is not None and not isinstance(getattr(mlp, up, None), torch.nn.Module)):
            continue
        pairs = [(d, Scale(0.5, at="input"), f"{path}.{down}")]
        if cp:                                   # CP-LRP: no relevance through the gate
            if up is None:                       # fused gate | up (Phi-3)
                half = g.weight.shape[0] // 2
                factor = torch.tensor([0.0] * half + [1.0] * half, dtype=g.weight.dtype, device=_device_of(g))
                pairs = [(g, Scale(factor), f"{path}.{gate}")]
            else:
                pairs = [(g, Scale(0.0), f"{path}.{gate}")]
        return pairs
    return []


def _is_moe(mlp: torch.nn.Module) -> bool:
    return isinstance(getattr(mlp, "experts", None), torch.nn.Module) and \
        isinstance(getattr(mlp, "gate", None), torch.nn.Module)


def _moe_pairs(moe: torch.nn.Module, path: str, cp: bool) -> list[tuple]:
    """A sparse mixture of experts (Mixtral): y = Σ routing weight × expert(x). AttnLRP: the uniform rule on
    that product (½ into the weights' path and ½ into the experts', as a scale at the block's output) and on each
    expert's act(gate) · up (another ½ into the experts' input, or at each expert's down projection when the
    experts are modules). CP-LRP: no gradient into the router (its input) nor through the experts' gates."""
    experts, out = moe.experts, []
    if cp:
        out.append((moe.gate, Scale(0.0, at="input"), f"{path}.gate"))
    else:
        out.append((moe, Scale(0.5), path))
    if isinstance(experts, (torch.nn.ModuleList, torch.nn.Sequential)):
        for i, expert in enumerate(experts):
            out.extend(_gated_pairs(expert, f"{path}.experts.{i}", cp))
        return out
    act = getattr(experts, "act_fn", None)
    if cp and isinstance(act, torch.nn.Module):
        out.append((act, Scale(0.0), f"{path}.experts.act_fn"))
    elif not cp:
        out.append((experts, Scale(0.5, at="input"), f"{path}.experts"))
    return out


def transformer(variant: str = "attnlrp") -> Composite:
    """AttnLRP (``"attnlrp"``) or CP-LRP (``"cp-lrp"``) for any model of the layout registry.

    - Norms (every LayerNorm / RMSNorm): :class:`~attrib.methods.rules.FrozenNorm` (both).
    - Element-wise activations: :class:`~attrib.methods.rules.Pass`, the identity rule (both).
    - Attention: the query and key get ¼ of their gradient and the value ½ (the uniform rule on the two
      products q·k and weights·v; the softmax keeps its gradient, which is AttnLRP's softmax rule in the
      gradient × input form) — as a scale at the q, k, v projections' outputs, so any attention implementation
      runs. CP-LRP: no gradient through the query and key (the weights are constants), the value's in full.
    - Gated MLPs (``act(gate) * up``): AttnLRP halves the gradient into the product (at the down projection's
      input); CP-LRP stops it at the gate.
    - Linear layers keep their gradient (LRP-0 with the bias absorbing its share, as in AttnLRP and LXT).
    - Mixtral's experts (:func:`_moe_pairs`), Gemma 2's soft-caps (the identity rule) and encoder-decoders (every
      attention of both stacks): docs/rules.md.
    """
    if variant not in ("attnlrp", "cp-lrp"):
        raise MethodError(f"transformer({variant!r:.30}) must be 'attnlrp' or 'cp-lrp'.")
    cp = variant == "cp-lrp"

    def pairs(root: torch.nn.Module) -> list[tuple[torch.nn.Module, Rule, str]]:
        layout = layout_of(root)
        layers = root.get_submodule(layout.layers)
        out: list[tuple] = _encoder_decoder(root, cp) if getattr(_config(root), "is_encoder_decoder", False) else []
        for i, layer in enumerate([] if out else layers):
            prefix = f"{layout.layers}.{i}"
            for m, rule, p in qkv_factors(layout, layer, *((0.0, 0.0, 1.0) if cp else (0.25, 0.25, 0.5))):
                out.append((m, rule, f"{prefix}.{p}"))
            if layout.mlp and _is_moe(layer.get_submodule(layout.mlp)):
                out.extend(_moe_pairs(layer.get_submodule(layout.mlp), f"{prefix}.{layout.mlp}", cp))
            elif layout.mlp:
                mlp = layer.get_submodule(layout.mlp)
                candidates = [(f"{prefix}.{layout.mlp}", mlp)] + \
                    [(f"{prefix}.{layout.mlp}.{n}", s) for n, s in mlp.named_children()]
                for path, m in candidates:
                    found = _gated_pairs(m, path, cp)
                    if found:
                        out.extend(found)
                        break
        cap = getattr(_config(root), "final_logit_softcapping", None)
        head = root.get_output_embeddings() if hasattr(root, "get_output_embeddings") else None
        if cap and isinstance(head, torch.nn.Module):
            path = next(p for p, m in root.named_modules() if m is head)
            out.append((head, SoftcapLogits(float(cap)), path))
        taken = {id(m) for m, _, _ in out}
        for path, m in root.named_modules():
            if id(m) in taken:
                continue
            if is_norm(m):
                out.append((m, FrozenNorm(), path))
            elif is_activation(m):
                out.append((m, Pass(), path))
        return out

    return _Built(pairs, variant, None if cp else _attention_softcap)


class _Built(Composite):
    """A composite whose assignment is computed from the model (its layout), not from a list of pairs."""

    def __init__(self, build: Callable[[torch.nn.Module], list], name: str,
                 around: Callable[[torch.nn.Module], ContextManager] | None = None) -> None:
        super().__init__([], name=name)
        self._build, self._around = build, around

    def assign(self, module: torch.nn.Module) -> list[tuple[torch.nn.Module, Rule, str]]:
        return self._build(module)

    def context(self, module: torch.nn.Module) -> ContextManager:
        return self._around(module) if self._around is not None else contextlib.nullcontext()


def _config(root: torch.nn.Module) -> Any:
    config = getattr(root, "config", None)
    return getattr(config, "text_config", None) or config


@contextlib.contextmanager
def _attention_softcap(root: torch.nn.Module) -> Iterator[None]:
    """AttnLRP on a model that soft-caps its attention scores (Gemma 2): the identity rule on the cap, through the
    attention probes (installed for the pass, removed after if they were not there)."""
    from ..models import probes

    if not getattr(_config(root), "attn_logit_softcapping", None):
        yield
        return
    had = probes.installed(root)
    layout = layout_of(root)
    attns = [layer.get_submodule(probes.attention_path(layout)) for layer in root.get_submodule(layout.layers)]
    probes.install(root, layout)
    try:
        for attn in attns:
            attn.__dict__[probes.SOFTCAP] = softcap_identity
        yield
    finally:
        for attn in attns:
            attn.__dict__.pop(probes.SOFTCAP, None)
        if not had:
            probes.remove(root)


def _encoder_decoder(root: torch.nn.Module, cp: bool) -> list[tuple]:
    """An encoder-decoder (T5): the registry's layout names the encoder's layers only, so every attention of both
    stacks (self- and cross-attention: a module with q, k, v and o projections) and every MLP is found by shape."""
    out: list[tuple] = []
    q, k, v = (0.0, 0.0, 1.0) if cp else (0.25, 0.25, 0.5)
    for path, m in root.named_modules():
        if all(isinstance(getattr(m, n, None), torch.nn.Linear) for n in ("q", "k", "v", "o")):
            out += [(getattr(m, n), Scale(f), f"{path}.{n}") for n, f in (("q", q), ("k", k), ("v", v))]
        else:
            out += _gated_pairs(m, path, cp)
    if not out:
        raise MethodError(f"found no attention (q, k, v, o projections) in {type(root).__name__}; the transformer "
                          "composites need the layout registry's families.")
    return out


NAMES = ("epsilon", "gamma", "zplus", "epsilon_plus", "epsilon_alpha2_beta1", "epsilon_gamma_box", "attnlrp",
         "cp-lrp")


def composite(name: str | Composite | Sequence, **options: Any) -> Composite:
    """A composite by name (:data:`NAMES`; options such as ``epsilon=``, ``gamma=``, ``low=``, ``high=``), or
    a :class:`Composite`, or a list of ``(selector, rule)`` pairs, as it is."""
    if isinstance(name, Composite):
        return name
    if isinstance(name, str):
        if name in ("attnlrp", "cp-lrp"):
            if options:
                raise MethodError(f"rules={name!r} takes no options, got {', '.join(options)}.")
            return transformer(name)
        if name in NAMES:
            return _zennit(name, **options)
        raise MethodError(f"rules={name!r:.40} is not one of {', '.join(NAMES)}; or pass a Composite or a list of "
                          "(selector, rule) pairs.")
    if isinstance(name, (list, tuple)):
        return Composite(name)
    raise MethodError(f"rules= takes a composite name ({', '.join(NAMES)}), a Composite or a list of (selector, rule) "
                      f"pairs, got {type(name).__name__}.")
