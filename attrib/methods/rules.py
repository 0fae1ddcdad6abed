"""The rules of layer-wise relevance propagation, as gradients: relevance = gradient × input at every layer.

>>> import torch
>>> from attrib.core.rules import Rules
>>> from attrib.methods.rules import Epsilon
>>> lin = torch.nn.Linear(2, 1, bias=False)
>>> with torch.no_grad():
...     _ = lin.weight.copy_(torch.tensor([[1.0, 3.0]]))
>>> x = torch.tensor([[2.0, 1.0]], requires_grad=True)
>>> with Rules([(lin, Epsilon(epsilon=0.0))]):
...     lin(x).sum().backward()
>>> (x * x.grad).tolist()                              # z = 2 + 3 = 5, split as 2 and 3: conserved
[[2.0, 3.0]]

Every rule here returns the gradient for its module's input such that gradient × input is the relevance the
rule gives that input (the "gradient × input" framework of LXT, Achtibat et al. 2024): relevance at a layer's
output is its gradient times its value, and modules without a rule pass their true gradient. So residual sums,
reshapes, max-pooling and every linear operation without bias propagate relevance conservatively by
themselves, and a method's relevance at its input is ``input × gradient``, as gradient × input is.

- Linear and convolution layers (Bach et al. 2015, "On Pixel-Wise Explanations for Non-Linear Classifier
  Decisions by Layer-Wise Relevance Propagation"; Montavon et al. 2019, "Layer-Wise Relevance Propagation: An
  Overview"), with zennit's definitions and defaults (Anders et al. 2021): :class:`Epsilon`, :class:`Gamma`
  (generalized to negative inputs), :class:`ZPlus`, :class:`AlphaBeta`, :class:`ZBox` (the box rule, for the
  first layer), :class:`Norm` (ε-like, for pooling).
- Element-wise functions: :class:`Pass` (relevance passes unchanged: the identity rule of AttnLRP, eq. 9).
- Normalization: :class:`FrozenNorm` (LayerNorm / RMSNorm with their statistic held constant: the identity
  rule on the division, as AttnLRP and CP-LRP do).
- Products and attention: :class:`attrib.core.rules.Scale` (AttnLRP's uniform rule halves the gradient
  through each factor of a product; a factor of 0 stops it, as CP-LRP does for the attention weights).

The denominators are stabilized as zennit does: ``z + ε · sign(z)`` with sign(0) = 1.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import torch

from ..core.devices import functional_call, live
from ..core.rules import Call, Rule, Scale
from ..errors import RuleError

__all__ = ["Epsilon", "Gamma", "ZPlus", "AlphaBeta", "ZBox", "Norm", "Pass", "FrozenNorm", "Scale", "SoftcapLogits",
           "softcap_identity", "stabilize"]


def stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z + ε · sign(z)``, with sign(0) taken as +1 (zennit's ``stabilize``)."""
    return z + ((z == 0).to(z) + z.sign()) * epsilon


def _params(call: Call, what: str) -> dict[str, torch.Tensor]:
    module = call.module
    weight = live(module, "weight") if isinstance(getattr(module, "weight", None), torch.Tensor) else None
    if weight is None:
        raise RuleError(f"the {what} rule needs a module with a weight (Linear, Conv), but {call.name} is a "
                        f"{type(module).__name__}; give it Pass() or Norm() instead.")
    bias = live(module, "bias") if isinstance(getattr(module, "bias", None), torch.Tensor) else None
    return {"weight": weight.detach(), **({"bias": bias.detach()} if bias is not None else {})}


def _modified(params: dict[str, torch.Tensor], fn: Callable[[torch.Tensor], torch.Tensor],
              bias: bool = True) -> dict[str, torch.Tensor]:
    out = {"weight": fn(params["weight"])}
    if "bias" in params:
        out["bias"] = fn(params["bias"]) if bias else torch.zeros_like(params["bias"])
    return out


def _forward(call: Call, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = functional_call(call.module, params, (x,))
    return out[0] if isinstance(out, (tuple, list)) else out


def _where_sign(x: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """``positive`` where x > 0, ``negative`` where x < 0, 0 where x == 0 (relevance x · g is 0 there anyway)."""
    zero = torch.zeros((), dtype=positive.dtype, device=positive.device)
    return torch.where(x > 0, positive, torch.where(x < 0, negative, zero))


def _pos(t: torch.Tensor) -> torch.Tensor:
    return t.clamp(min=0)


def _neg(t: torch.Tensor) -> torch.Tensor:
    return t.clamp(max=0)


class Epsilon(Rule):
    """LRP-ε (Bach et al. 2015): R_in = x ⊙ Wᵀ (R_out / (z + ε sign z)); ``epsilon=0`` is LRP-0."""

    def __init__(self, epsilon: float = 1e-6) -> None:
        self.epsilon = epsilon

    def backward(self, grad_output: torch.Tensor, call: Call) -> torch.Tensor:
        y = call.output
        return call.vjp(grad_output * y / stabilize(y, self.epsilon))


class Norm(Epsilon):
    """ε-rule with ε only a stabilizer, for modules without parameters (average pooling): zennit's ``Norm``."""

    def __init__(self, stabilizer: float = 1e-6) -> None:
        super().__init__(stabilizer)


class ZPlus(Rule):
    """LRP-z⁺ (α = 1, β = 0), negative inputs allowed as in zennit: positive contributions only."""

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = stabilizer

    def backward(self, grad_output: torch.Tensor, call: Call) -> torch.Tensor:
        p, x = _params(call, "z-plus"), call.input
        wp, wn = _modified(p, _pos), _modified(p, _neg, bias=False)
        z = _forward(call, _pos(x), wp) + _forward(call, _neg(x), wn)
        m = grad_output * call.output / stabilize(z, self.stabilizer)
        return _where_sign(x, call.vjp(m, params=wp), call.vjp(m, params=wn))


class AlphaBeta(Rule):
    """LRP-αβ (Bach et al. 2015): α × the positive contributions − β × the negative ones (α − β = 1)."""

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6) -> None:
        if alpha < 0 or beta < 0 or alpha - beta != 1:
            raise RuleError(f"AlphaBeta(alpha={alpha!r}, beta={beta!r}) needs alpha, beta ≥ 0 and alpha − beta = 1.")
        self.alpha, self.beta, self.stabilizer = alpha, beta, stabilizer

    def backward(self, grad_output: torch.Tensor, call: Call) -> torch.Tensor:
        p, x = _params(call, "alpha-beta"), call.input
        r = grad_output * call.output
        wp, wn = _modified(p, _pos), _modified(p, _neg)
        wp0, wn0 = _modified(p, _pos, bias=False), _modified(p, _neg, bias=False)
        ma = r / stabilize(_forward(call, _pos(x), wp) + _forward(call, _neg(x), wn0), self.stabilizer)
        mb = r / stabilize(_forward(call, _pos(x), wn) + _forward(call, _neg(x), wp0), self.stabilizer)
        pos = self.alpha * call.vjp(ma, params=wp) - self.beta * call.vjp(mb, params=wn)
        neg = self.alpha * call.vjp(ma, params=wn) - self.beta * call.vjp(mb, params=wp)
        return _where_sign(x, pos, neg)


class Gamma(Rule):
    """LRP-γ (Montavon et al. 2019), generalized to negative inputs as in zennit (Andéol et al. 2021): the
    contributions of the output's sign are boosted by γ × their positive (or negative) weight part."""

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6) -> None:
        self.gamma, self.stabilizer = gamma, stabilizer

    def backward(self, grad_output: torch.Tensor, call: Call) -> torch.Tensor:
        p, x, y, g = _params(call, "gamma"), call.input, call.output, self.gamma
        up = _modified(p, lambda t: t + g * _pos(t))
        down = _modified(p, lambda t: t + g * _neg(t))
        up0, down0 = _modified(p, lambda t: t + g * _pos(t), bias=False), _modified(p, lambda t: t + g * _neg(t),
                                                                                    bias=False)
        r = grad_output * y
        m_pos = (y > 0).to(r) * r / stabilize(_forward(call, _pos(x), up) + _forward(call, _neg(x), down0),
                                              self.stabilizer)
        m_neg = (y < 0).to(r) * r / stabilize(_forward(call, _pos(x), down) + _forward(call, _neg(x), up0),
                                              self.stabilizer)
        positive = call.vjp(m_pos, params=up) + call.vjp(m_neg, params=down)
        negative = call.vjp(m_pos, params=down) + call.vjp(m_neg, params=up)
        return _where_sign(x, positive, negative)


class ZBox(Rule):
    """The z^B (box) rule (Montavon et al. 2017, "Explaining Nonlinear Classification Decisions with Deep Taylor
    Decomposition") for inputs bounded by ``low`` and ``high`` (numbers or tensors that broadcast against one
    input item). Its relevance is not of the form input × something, so the gradient returned is relevance /
    input; at an input element that is exactly 0 that relevance cannot be carried and is 0."""

    def __init__(self, low: float | torch.Tensor, high: float | torch.Tensor, stabilizer: float = 1e-6) -> None:
        self.low, self.high, self.stabilizer = low, high, stabilizer

    def backward(self, grad_output: torch.Tensor, call: Call) -> torch.Tensor:
        p, x = _params(call, "box"), call.input
        low = torch.as_tensor(self.low, dtype=x.dtype, device=x.device).expand_as(x)
        high = torch.as_tensor(self.high, dtype=x.dtype, device=x.device).expand_as(x)
        wp, wn = _modified(p, _pos), _modified(p, _neg)
        z = call.output - _forward(call, low, wp) - _forward(call, high, wn)
        m = grad_output * call.output / stabilize(z, self.stabilizer)
        relevance = x * call.vjp(m) - low * call.vjp(m, params=wp) - high * call.vjp(m, params=wn)
        safe = torch.where(x == 0, torch.ones_like(x), x)
        return torch.where(x == 0, torch.zeros_like(x), relevance / safe)


class Pass(Rule):
    """Relevance passes unchanged through an element-wise function: gradient × f(x) / x (AttnLRP's identity
    rule, eq. 9; zennit's ``Pass`` for activations). ``epsilon`` stabilizes the division at x = 0."""

    def __init__(self, epsilon: float = 1e-10) -> None:
        self.epsilon = epsilon

    def backward(self, grad_output: torch.Tensor, call: Call) -> torch.Tensor:
        x, y = call.input, call.output
        if x.shape != y.shape:
            raise RuleError(f"Pass() is for element-wise modules, but {call.name} maps {tuple(x.shape)} to "
                            f"{tuple(y.shape)}; give it another rule.")
        ratio = torch.where(y == x, torch.ones_like(x), y / stabilize(x, self.epsilon))   # exact where f(x) = x
        return grad_output * ratio


_FORMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()     # norm module -> (centred, which gain)


class FrozenNorm(Rule):
    """LayerNorm or RMSNorm with its statistic held constant: the gradient of ``a ⊙ (x − mean x) / σ + b``
    (LayerNorm) or ``a ⊙ x / rms(x)`` (RMSNorm) with σ treated as a number — the identity rule on the division
    of AttnLRP and CP-LRP. ``a`` is the weight, or 1 + weight for the norms that store it so (Gemma); which one
    is found by reproducing the module's output (once per module: the answer is kept), and a module whose output
    neither form reproduces is refused."""

    def backward(self, grad_output: torch.Tensor, call: Call) -> torch.Tensor:
        module, x = call.module, call.input
        eps = next((getattr(module, k) for k in ("eps", "variance_epsilon", "epsilon")
                    if isinstance(getattr(module, k, None), (int, float))), None)
        if eps is None:
            raise RuleError(f"FrozenNorm() found no eps on {call.name} ({type(module).__name__}); it knows LayerNorm "
                            f"and RMSNorm modules, so give this one a rule of its own.")
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        if module not in _FORMS:               # found once per module (a check that synchronizes a GPU)
            _FORMS[module] = self._form(call, xf, eps)
        centered, gain = _FORMS[module]
        xc = xf - xf.mean(-1, keepdim=True) if centered else xf
        scale = torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)
        a = self._gains(module, xf)[gain]
        g = grad_output.to(device=xf.device, dtype=xf.dtype) * a * scale
        if centered:
            g = g - g.mean(-1, keepdim=True)
        return g

    @staticmethod
    def _gains(module: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor | float]:
        if not isinstance(getattr(module, "weight", None), torch.Tensor):
            return [1.0]
        w = live(module, "weight").detach().to(device=x.device, dtype=x.dtype)     # offloaded: from its hook
        return [w, 1.0 + w]

    def _form(self, call: Call, xf: torch.Tensor, eps: float) -> tuple[bool, int]:
        """(centred or not, which gain) that reproduce the module's output (names mislead: T5LayerNorm is an
        RMSNorm)."""
        module, y = call.module, call.output.to(device=xf.device, dtype=xf.dtype)
        bias = getattr(module, "bias", None)
        b = live(module, "bias").detach().to(device=xf.device, dtype=xf.dtype) if isinstance(bias, torch.Tensor) \
            else 0.0
        tol = dict(rtol=1e-2, atol=1e-3) if call.output.dtype in (torch.float16, torch.bfloat16) else \
            dict(rtol=1e-4, atol=1e-5)
        for centered in ((True,) if isinstance(module, torch.nn.LayerNorm) else (False, True)):
            xc = xf - xf.mean(-1, keepdim=True) if centered else xf
            scale = torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)
            for i, a in enumerate(self._gains(module, xf)):
                if torch.allclose(a * xc * scale + b, y, equal_nan=True, **tol):   # NaN: the model's own
                    return centered, i
        raise RuleError(f"FrozenNorm() could not reproduce the output of {call.name} ({type(module).__name__}) as "
                        f"a LayerNorm or RMSNorm (weight or 1 + weight); give this module a rule of its own.")


class _CapIdentity(torch.autograd.Function):
    """c · tanh(s / c) forward; backward: the identity rule, gradient × z / s."""

    @staticmethod
    def forward(ctx: Any, s: torch.Tensor, cap: float) -> torch.Tensor:
        z = cap * torch.tanh(s / cap)
        ctx.save_for_backward(torch.where(s == 0, torch.ones_like(s), z / torch.where(s == 0, torch.ones_like(s), s)))
        return z

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None


def softcap_identity(scores: torch.Tensor, cap: float) -> torch.Tensor:
    """A tanh soft-cap whose backward is the identity rule (relevance passes through it unchanged)."""
    return _CapIdentity.apply(scores, cap)


class SoftcapLogits(Rule):
    """On the output projection of a model that soft-caps its logits after it (Gemma 2): the gradient arriving
    has been multiplied by the cap's derivative 1 − tanh²; this undoes that and applies the identity rule's
    z / l instead, then the projection's own backward."""

    def __init__(self, cap: float) -> None:
        self.cap = cap

    def backward(self, grad_output: torch.Tensor, call: Call) -> torch.Tensor:
        logits = call.output.to(torch.promote_types(call.output.dtype, torch.float32))
        t = torch.tanh(logits / self.cap)
        safe = torch.where(logits == 0, torch.ones_like(logits), logits)
        identity = torch.where(logits == 0, torch.ones_like(logits), self.cap * t / safe)
        derivative = (1 - t * t).clamp(min=torch.finfo(t.dtype).tiny)
        return call.vjp(grad_output.to(logits.dtype) * identity / derivative)
