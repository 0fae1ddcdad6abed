"""Rules: a module's local backward replaced by a function of (output gradient, input, output), for as long
as a :class:`Rules` block is open, while the rest of autograd runs as usual.

>>> import torch
>>> from attrib.core.rules import Rules
>>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
>>> x = torch.tensor([[1.0, -2.0]], requires_grad=True)
>>> deconv = lambda grad_output, input, output: grad_output.clamp(min=0)    # ReLU: pass positive gradients
>>> with Rules([(net[1], deconv)]):
...     net(x).sum().backward()
>>> len(net[1]._forward_hooks)                                               # removed on exit
0

A rule is a plain function ``fn(grad_output, input, output) -> grad_input``, or a :class:`Rule` whose
``backward(grad_output, call)`` also gets the module and its own backward (:meth:`Call.vjp`, optionally with
other parameters: the LRP rules of :mod:`attrib.methods.rules` are written that way). The module's parameters
get no gradient through a ruled call; its input gets only what the rule returns.

How: a forward hook replaces the module's output by the same values from a small autograd function whose
backward calls the rule, with the module's input (as it came in: an in-place module such as
``ReLU(inplace=True)`` is given a copy to work on) as the function's input. Hooks act only in the thread that
opened the block and are removed when it closes, also after an error (``finally``).
"""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch

from ..errors import RuleError
from .devices import functional_call

__all__ = ["Rule", "Scale", "Call", "Rules", "RuleFunction", "as_rule"]

RuleFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_quiet = threading.local()      # depth of rule backwards running in this thread: their module calls go unruled


@dataclass
class Call:
    """One call of a ruled module, as its rule sees it in the backward: ``input`` and ``output`` (detached)."""

    module: torch.nn.Module
    name: str
    input: torch.Tensor
    output: torch.Tensor
    versions: tuple[int, int] = (0, 0)
    extra: dict[str, Any] = field(default_factory=dict)

    def vjp(self, grad: torch.Tensor, *, input: torch.Tensor | None = None,
            params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``grad`` · ∂module(input)/∂input: the module's own backward at this call, or at ``input`` with
        ``params`` (name → tensor, e.g. ``{"weight": w.clamp(min=0)}``) in place of its parameters."""
        x = (self.input if input is None else input).detach().requires_grad_(True)
        _quiet.depth = getattr(_quiet, "depth", 0) + 1
        try:
            with torch.enable_grad():
                arg = x.clone() if getattr(self.module, "inplace", False) is True else x   # in-place: on a copy
                if params:
                    out = functional_call(self.module, dict(params), (arg,))     # accelerate's hook skipped
                else:
                    out = self.module.forward(arg)      # no hooks: the recomputation is not part of any trace
        finally:
            _quiet.depth -= 1
        out = out[0] if isinstance(out, (tuple, list)) else out
        (g,) = torch.autograd.grad(out, x, grad.to(out.dtype))
        return g

    def check(self) -> None:
        """Raise if the input or output was changed in place after the forward (the rule would read wrong values)."""
        now = (self.input._version, self.output._version)
        if now != self.versions:
            which = "input" if now[0] != self.versions[0] else "output"
            raise RuleError(f"the {which} of {self.name} ({type(self.module).__name__}) was changed in place after "
                            f"the forward, so its rule would read other values than the module saw; make the "
                            f"operation that changes it out of place (or its module inplace=False).")


class Rule(abc.ABC):
    """A module's local backward, replaced: subclass and define :meth:`backward`."""

    @abc.abstractmethod
    def backward(self, grad_output: torch.Tensor, call: Call) -> torch.Tensor:
        """The gradient for the module's input, given the gradient at its output."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class Scale(Rule):
    """The module's own backward, with the gradient multiplied by ``factor`` (a number, or a tensor that
    broadcasts against the last dimension) at its output (``at="output"``) or at its input (``at="input"``).
    No recomputation and no cut: the module's parameters still get their (scaled) gradients. AttnLRP's uniform
    rule for a product of two factors is ``Scale(0.5)`` on whatever computes the product."""

    def __init__(self, factor: float | torch.Tensor, at: str = "output") -> None:
        if at not in ("output", "input"):
            raise RuleError(f"Scale(at={at!r:.20}) must be 'output' or 'input'.")
        self.factor, self.at = factor, at

    def backward(self, grad_output: torch.Tensor, call: Call) -> torch.Tensor:
        return call.vjp(grad_output * self.factor)


class _Scaled(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, factor: Any) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        factor = ctx.factor
        if isinstance(factor, torch.Tensor) and (factor.device != grad.device or factor.dtype != grad.dtype):
            factor = factor.to(grad.device, grad.dtype)
        return grad * factor, None


class _FunctionRule(Rule):
    def __init__(self, fn: RuleFunction) -> None:
        self.fn = fn

    def backward(self, grad_output: torch.Tensor, call: Call) -> torch.Tensor:
        return self.fn(grad_output, call.input, call.output)

    def __repr__(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


def as_rule(rule: Rule | RuleFunction) -> Rule:
    """``rule`` as a :class:`Rule` (a plain function of (grad_output, input, output) is wrapped)."""
    if isinstance(rule, Rule):
        return rule
    if callable(rule):
        return _FunctionRule(rule)
    raise RuleError(f"a rule is a function (grad_output, input, output) -> grad_input or an attrib Rule, "
                    f"got {type(rule).__name__} {rule!r:.40}.")


class _Ruled(torch.autograd.Function):
    """Value: the module's output. Backward: the rule, for the module's input only."""

    @staticmethod
    def forward(ctx: Any, rule: Rule, call: Call, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ctx.rule, ctx.call = rule, call
        return y.clone()            # a copy: code after the module may change it in place (a view may not be)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        if not ctx.needs_input_grad[2]:
            return None, None, None, None
        call, rule = ctx.call, ctx.rule
        call.check()
        got = rule.backward(grad, call)
        if not isinstance(got, torch.Tensor) or got.shape != call.input.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise RuleError(f"rule {rule!r:.60} at {call.name} returned a gradient of shape {shape} for an input of "
                            f"shape {tuple(call.input.shape)}; return one gradient shaped like the module's input.")
        return None, None, got.to(call.input.dtype), None


def _first_tensor(args: tuple, kwargs: dict) -> tuple[str | int, torch.Tensor] | None:
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            return i, a
    for k, a in kwargs.items():
        if isinstance(a, torch.Tensor):
            return k, a
    return None


def _replace_first(output: Any, value: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (value, *output[1:])
    if isinstance(output, list):
        return [value, *output[1:]]
    return value


class Rules:
    """Rules installed on modules: a block (``with Rules(pairs):``) or an object to :meth:`remove`.

    ``pairs``: ``(module, rule)`` or ``(module, rule, name)``; ``name`` is used in messages (default: the
    module's type). One rule per module: a second one for the same module is refused.
    """

    def __init__(self, pairs: Iterable[tuple], *, thread: int | None = None) -> None:
        self._thread = threading.get_ident() if thread is None else thread
        self._handles: list[Any] = []
        self._inputs: dict[int, list[torch.Tensor]] = {}
        self.rules: dict[torch.nn.Module, tuple[Rule, str]] = {}
        try:
            for pair in pairs:
                module, rule, name = (*pair, None)[:3] if len(pair) == 2 else pair
                if not isinstance(module, torch.nn.Module):
                    raise RuleError(f"rules go on torch.nn.Module objects, got {type(module).__name__} for rule "
                                    f"{rule!r:.40}.")
                if module in self.rules:
                    raise RuleError(f"{name or type(module).__name__} was given two rules ({self.rules[module][0]!r:.40} "
                                    f"and {rule!r:.40}); give each module one.")
                rule = as_rule(rule)
                self.rules[module] = (rule, name or type(module).__name__)
                at = rule.at if isinstance(rule, Scale) else None      # a scale needs one hook, a rule both
                if at != "output":
                    self._handles.append(module.register_forward_pre_hook(self._pre, with_kwargs=True))
                if at != "input":
                    self._handles.append(module.register_forward_hook(self._post, with_kwargs=True))
        except BaseException:
            self.remove()
            raise

    def _mine(self) -> bool:
        return threading.get_ident() == self._thread and torch.is_grad_enabled() and not getattr(_quiet, "depth", 0)

    def _pre(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        if not self._mine():
            return None
        found = _first_tensor(args, kwargs)
        if found is None:
            return None
        key, x = found
        rule = self.rules[module][0]
        if isinstance(rule, Scale):
            if rule.at != "input" or not x.requires_grad:
                return None
            scaled = _Scaled.apply(x, rule.factor)
            return ((*args[:key], scaled, *args[key + 1:]), kwargs) if isinstance(key, int) else \
                (args, {**kwargs, key: scaled})
        self._inputs.setdefault(id(module), []).append(x)
        if getattr(module, "inplace", False) is True:       # it would overwrite the tensor the rule must read
            copy = x.clone()
            if isinstance(key, int):
                args = (*args[:key], copy, *args[key + 1:])
            else:
                kwargs = {**kwargs, key: copy}
            return args, kwargs
        return None

    def _post(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if not self._mine():
            return None
        rule, name = self.rules[module]
        if isinstance(rule, Scale):
            if rule.at != "output":
                return None
            y = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(y, torch.Tensor) or not y.requires_grad:
                return None
            return _replace_first(output, _Scaled.apply(y, rule.factor))
        stack = self._inputs.get(id(module))
        if not stack:
            return None
        x = stack.pop()
        y = output[0] if isinstance(output, (tuple, list)) else output
        if not isinstance(y, torch.Tensor) or not (y.requires_grad or x.requires_grad):
            return None
        call = Call(module, name, x.detach(), y.detach())
        call.versions = (call.input._version, call.output._version)
        return _replace_first(output, _Ruled.apply(rule, call, x, y))

    def remove(self) -> None:
        """Remove every hook (safe to call twice)."""
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()
        self._inputs.clear()

    def __enter__(self) -> "Rules":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"Rules({len(self.rules)} modules{'' if self._handles else ', removed'})"
