"""The torch attributes attrib patches, only while a trace or a backward context is active.

``torch.Tensor.backward``, ``torch.Tensor.save`` and ``torch.Tensor.grad`` are patched for the life of a
trace (``.grad`` means "this backward pass" inside a backward context, and a promise for the pre-0.5 form
before any backward; torch's meaning everywhere else). Patches are reference counted
(traces of several models may nest) and always restored in ``finally`` blocks.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any

import torch

from ..errors import GraphFreedError, NoGradError, NonScalarLossError
from .withdetect import called_in_with

if TYPE_CHECKING:
    from .backward import BackwardContext
    from .trace import Trace

__all__ = ["local", "current_trace", "install_trace_patches", "remove_trace_patches",
           "install_grad_patch", "remove_grad_patch", "plain_backward", "original_grad", "PATCHED"]

ORIGINAL_BACKWARD = torch.Tensor.backward
original_grad = torch._C.TensorBase.grad  # the getset descriptor behind ``Tensor.grad``
PATCHED = ("backward", "save", "grad")


class _Local(threading.local):
    def __init__(self) -> None:
        self.traces: list["Trace"] = []
        self.backward: "BackwardContext | None" = None


local = _Local()
_lock = threading.Lock()
_counts = {"trace": 0, "grad": 0}


def current_trace() -> "Trace | None":
    return local.traces[-1] if local.traces else None


def _translate(err: RuntimeError) -> Exception | None:
    text = str(err)
    if "backward through the graph a second time" in text:
        return GraphFreedError(
            "this backward pass goes through parts of the graph that an earlier backward already freed; "
            "pass retain_graph=True to the earlier .backward(...) call."
        )
    if "implicitly created only for scalar outputs" in text:
        return NonScalarLossError(
            "backward() was called on a non-scalar tensor without a gradient: reduce it first "
            "(e.g. loss.sum()) or pass gradient=torch.ones_like(loss)."
        )
    if "does not require grad and does not have a grad_fn" in text:
        return NoGradError(
            "backward() was called on a tensor that does not require grad (made under torch.no_grad(), "
            "detached, or from integer inputs only); compute the loss from model values with grad enabled."
        )
    return None


def plain_backward(tensor: torch.Tensor, gradient=None, retain_graph=None, create_graph=False, inputs=None) -> None:
    """``Tensor.backward`` with torch's semantics; its common errors say what to do instead."""
    underlying = _saved.get("backward", ORIGINAL_BACKWARD)  # another library's patch, if it had one
    try:
        underlying(tensor, gradient, retain_graph, create_graph, inputs)
    except RuntimeError as err:
        better = _translate(err)
        if better is None:
            raise
        raise better from None


def _backward(self: torch.Tensor, gradient=None, retain_graph=None, create_graph=False, inputs=None):
    trace = current_trace()
    if trace is not None:
        trace.deferred.backward_ran = True     # from here on, .grad keeps torch's meaning outside contexts
    if trace is not None and called_in_with(sys._getframe(1)):
        from .backward import BackwardContext

        return BackwardContext(trace, self, gradient, retain_graph, create_graph, inputs)
    plain_backward(self, gradient, retain_graph, create_graph, inputs)
    return None


_backward.__doc__ = ORIGINAL_BACKWARD.__doc__


def _save(self: torch.Tensor) -> torch.Tensor:
    """Mark this tensor as kept after the trace; returns it."""
    trace = current_trace()
    if trace is not None:
        trace.saved.append(self)
    return self


def _grad_get(self: torch.Tensor) -> Any:
    ctx = local.backward
    if ctx is not None and ctx.intercepts(self):
        return ctx.read(self)
    if ctx is None and self.grad_fn is not None and not self.retains_grad:
        for trace in reversed(local.traces):      # the pre-0.5 NNsight form: .grad first, .backward() later
            if trace.defers(self):
                return trace.deferred.promise(self)
    return original_grad.__get__(self)


def _grad_set(self: torch.Tensor, value: Any) -> None:
    ctx = local.backward
    if ctx is not None and ctx.intercepts(self):
        ctx.write(self, value)
        return
    original_grad.__set__(self, value)


def _grad_del(self: torch.Tensor) -> None:
    original_grad.__delete__(self)


_MISSING = object()
_saved: dict[str, object] = {}


def _swap_in(name: str, value: object) -> None:
    """Remember what ``torch.Tensor.<name>`` is now (another library may have patched it), then set it."""
    _saved[name] = torch.Tensor.__dict__.get(name, _MISSING)
    setattr(torch.Tensor, name, value)


def _swap_out(name: str) -> None:
    """Put back exactly what was there before :func:`_swap_in`."""
    old = _saved.pop(name)
    if old is _MISSING:
        delattr(torch.Tensor, name)
    else:
        setattr(torch.Tensor, name, old)


def install_trace_patches() -> None:
    with _lock:
        if _counts["trace"] == 0:
            _swap_in("backward", _backward)
            _swap_in("save", _save)
        _counts["trace"] += 1


def remove_trace_patches() -> None:
    with _lock:
        _counts["trace"] -= 1
        if _counts["trace"] == 0:
            _swap_out("backward")
            _swap_out("save")


def install_grad_patch() -> None:
    with _lock:
        if _counts["grad"] == 0:
            _swap_in("grad", _GRAD_PROPERTY)
        _counts["grad"] += 1


def remove_grad_patch() -> None:
    with _lock:
        _counts["grad"] -= 1
        if _counts["grad"] == 0:
            _swap_out("grad")


_GRAD_PROPERTY = property(_grad_get, _grad_set, _grad_del, original_grad.__doc__)
