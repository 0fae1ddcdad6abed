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

import fnmatch
from typing import Any, Callable, Iterable, Sequence

import torch

from ..core.rules import Rule, Scale, as_rule
from ..errors import MethodError, RuleError
from ..models.layouts import Layout, layout_of
from .rules import AlphaBeta, Epsilon, FrozenNorm, Gamma, Norm, Pass, ZBox, ZPlus

__all__ = ["Composite", "composite", "transformer", "NAMES", "CONVOLUTIONS", "ACTIVATIONS"]

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


def _matches(selector: Selector, path: str, module: torch.nn.Module) -> bool:
    if isinstance(selector, type) or (isinstance(selector, tuple) and all(isinstance(t, type) for t in selector)):
        return isinstance(module, selector)
    if isinstance(selector, str):
        return fnmatch.fnmatchcase(path, selector)
    if callable(selector):
        return bool(selector(path, module))
    raise RuleError(f"a composite selector is a module type, a path pattern or a function (path, module) -> bool; "
                    f"got {type(selector).__name__} {selector!r:.40}.")


class Composite:
    """``(selector, rule)`` pairs, first match wins; ``first``: pairs for the first module one of them selects."""

    def __init__(self, pairs: Iterable[tuple[Selector, Any]], first: Iterable[tuple[Selector, Any]] = (),
                 name: str = "composite") -> None:
        self.pairs = [(s, as_rule(r)) for s, r in pairs]
        self.first = [(s, as_rule(r)) for s, r in first]
        self.name = name

    def assign(self, module: torch.nn.Module) -> list[tuple[torch.nn.Module, Rule, str]]:
        """``(module, rule, path)`` for every submodule of ``module`` that gets a rule."""
        out, first_done = [], not self.first
        for path, sub in module.named_modules():
            rule = None
            if not first_done:
                rule = next((r for s, r in self.first if _matches(s, path, sub)), None)
                first_done = rule is not None
            if rule is None:
                rule = next((r for s, r in self.pairs if _matches(s, path, sub)), None)
            if rule is not None:
                out.append((sub, rule, path or type(sub).__name__))
        return out

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


def _qkv_factors(layout: Layout, layer: torch.nn.Module, q: float, k: float, v: float) -> list[tuple]:
    projections = [layer.get_submodule(p) for p in layout.qkv]
    if layout.fused is None:
        return [(m, Scale(f), p) for m, f, p in zip(projections, (q, k, v), layout.qkv)]
    (fused,) = projections
    width = fused.weight.shape[0] if isinstance(fused, torch.nn.Linear) else fused.weight.shape[-1]
    nh, nkv = layout.n_heads, layout.n_kv_heads
    if layout.fused == "per_head":               # GPT-NeoX: (q, k, v) per head
        hd = width // (3 * nh)
        one = [q] * hd + [k] * hd + [v] * hd
        factor = torch.tensor(one * nh)
    else:                                        # q | k | v
        hd = width // (nh + 2 * nkv)
        factor = torch.tensor([q] * (nh * hd) + [k] * (nkv * hd) + [v] * (nkv * hd))
    return [(fused, Scale(factor), layout.qkv[0])]


_GATED = (("gate_proj", "up_proj", "down_proj"), ("gate_up_proj", None, "down_proj"), ("wi_0", "wi_1", "wo"))


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
                pairs = [(g, Scale(torch.tensor([0.0] * half + [1.0] * half)), f"{path}.{gate}")]
            else:
                pairs = [(g, Scale(0.0), f"{path}.{gate}")]
        return pairs
    return []


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
    """
    if variant not in ("attnlrp", "cp-lrp"):
        raise MethodError(f"transformer({variant!r:.30}) must be 'attnlrp' or 'cp-lrp'.")
    cp = variant == "cp-lrp"

    def pairs(root: torch.nn.Module) -> list[tuple[torch.nn.Module, Rule, str]]:
        layout = layout_of(root)
        _refuse(root, layout, variant)
        layers = root.get_submodule(layout.layers)
        out: list[tuple] = []
        for i, layer in enumerate(layers):
            prefix = f"{layout.layers}.{i}"
            for m, rule, p in _qkv_factors(layout, layer, *((0.0, 0.0, 1.0) if cp else (0.25, 0.25, 0.5))):
                out.append((m, rule, f"{prefix}.{p}"))
            if layout.mlp:
                mlp = layer.get_submodule(layout.mlp)
                candidates = [(f"{prefix}.{layout.mlp}", mlp)] + \
                    [(f"{prefix}.{layout.mlp}.{n}", s) for n, s in mlp.named_children()]
                for path, m in candidates:
                    found = _gated_pairs(m, path, cp)
                    if found:
                        out.extend(found)
                        break
        taken = {id(m) for m, _, _ in out}
        for path, m in root.named_modules():
            if id(m) in taken:
                continue
            if is_norm(m):
                out.append((m, FrozenNorm(), path))
            elif is_activation(m):
                out.append((m, Pass(), path))
        return out

    return _Built(pairs, variant)


class _Built(Composite):
    """A composite whose assignment is computed from the model (its layout), not from a list of pairs."""

    def __init__(self, build: Callable[[torch.nn.Module], list], name: str) -> None:
        super().__init__([], name=name)
        self._build = build

    def assign(self, module: torch.nn.Module) -> list[tuple[torch.nn.Module, Rule, str]]:
        return self._build(module)


def _refuse(root: torch.nn.Module, layout: Layout, variant: str) -> None:
    config = getattr(root, "config", None)
    config = getattr(config, "text_config", None) or config
    caps = [k for k in ("attn_logit_softcapping", "final_logit_softcapping") if getattr(config, k, None)]
    if caps:
        raise MethodError(f"{variant} has no rule for {type(root).__name__}'s tanh soft-capping ({', '.join(caps)}), "
                          "which runs inside the forward where no rule can reach it; set it to None in the config "
                          "for a conservative explanation, or use integrated_gradients.")
    if getattr(config, "is_encoder_decoder", False):
        raise MethodError(f"{variant} covers the layers the layout registry names, which for "
                          f"{type(root).__name__} are the encoder's only; its decoder's attention would get no rule. "
                          "Explain the encoder alone (e.g. T5EncoderModel), or use integrated_gradients.")
    if layout.family == "mixtral" or any(type(m).__name__.endswith("Experts") for m in root.modules()):
        raise MethodError(f"{variant} does not reach inside {type(root).__name__}'s mixture-of-experts block: its "
                          "experts' products and routing weights are computed without modules that rules can be "
                          "put on; use integrated_gradients or saliency for this model.")


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
