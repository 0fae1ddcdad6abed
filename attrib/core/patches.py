"""The attributes of ``torch.Tensor`` that attrib replaces, as objects installed and removed in one place.

>>> import torch
>>> from attrib.core.patches import SAVE
>>> hasattr(torch.Tensor, "save")
False
>>> with SAVE.held():
...     torch.ones(2).save().tolist()
[1.0, 1.0]
>>> hasattr(torch.Tensor, "save")
False

Three patches, each reference counted (traces of several models may nest, threads may overlap) and put back
exactly as found (another library may have patched the same attribute first):

- :data:`BACKWARD` and :data:`SAVE` — held by every open trace. ``Tensor.backward`` used as the expression of
  a ``with`` statement in a trace opens a backward context; anywhere else it is torch's.
- :data:`GRAD` — ``Tensor.grad`` as a property, held by a backward context while it is open, and by a trace
  only until its first backward (the pre-0.5 form, :mod:`attrib.core.pending`). Outside those, in this
  thread and every other, it returns what torch's own descriptor returns.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Any, Iterator

import torch

from ..errors import GradientValueError, GraphFreedError, NoGradError, NonScalarLossError, PlainBackwardError
from .current import current_trace, local
from .withdetect import called_in_with, entered_later

__all__ = ["Patch", "BACKWARD", "SAVE", "GRAD", "original_grad", "plain_backward", "translate"]

_MISSING = object()
_lock = threading.Lock()
original_grad = torch._C.TensorBase.grad  # the getset descriptor behind ``Tensor.grad``


class Patch:
    """``torch.Tensor.<name> = value`` while at least one holder needs it."""

    def __init__(self, name: str, value: Any) -> None:
        self.name = name
        self.value = value
        self.count = 0
        self.saved: Any = _MISSING

    def acquire(self) -> None:
        with _lock:
            if self.count == 0:
                self.saved = torch.Tensor.__dict__.get(self.name, _MISSING)
                setattr(torch.Tensor, self.name, self.value)
            self.count += 1

    def release(self) -> None:
        with _lock:
            self.count -= 1
            if self.count == 0:
                if self.saved is _MISSING:
                    delattr(torch.Tensor, self.name)
                else:
                    setattr(torch.Tensor, self.name, self.saved)
                self.saved = _MISSING

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def underlying(self, default: Any) -> Any:
        """What was there before (another library's patch), else ``default``."""
        return default if self.saved is _MISSING else self.saved


def translate(err: RuntimeError) -> Exception | None:
    """An attrib error for torch's common backward errors (``None``: leave it as it is)."""
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
    if "all inputs have to be Tensors" in text:
        return GradientValueError(
            "backward(inputs=...) takes tensors whose gradients to compute, and got something else; pass the "
            "tensors themselves (e.g. inputs=[model.module.lm_head.weight])."
        )
    if "does not require grad and does not have a grad_fn" in text:
        return NoGradError(
            "backward() was called on a tensor that does not require grad (made under torch.no_grad(), "
            "detached, or from integer inputs only); compute the loss from model values with grad enabled."
        )
    return None


_ORIGINAL_BACKWARD = torch.Tensor.backward


def plain_backward(tensor: torch.Tensor, gradient=None, retain_graph=None, create_graph=False, inputs=None) -> None:
    """``Tensor.backward`` with torch's semantics; its common errors say what to do instead."""
    try:
        BACKWARD.underlying(_ORIGINAL_BACKWARD)(tensor, gradient, retain_graph, create_graph, inputs)
    except RuntimeError as err:
        better = translate(err)
        if better is None:
            raise
        raise better from None


def _backward(self: torch.Tensor, gradient=None, retain_graph=None, create_graph=False, inputs=None):
    trace = current_trace()
    if trace is None:
        return plain_backward(self, gradient, retain_graph, create_graph, inputs)
    frame = sys._getframe(1)
    if called_in_with(frame):
        return trace.backward_context(self, gradient, retain_graph, create_graph, inputs)
    name = entered_later(frame)
    if name is not None:
        raise PlainBackwardError(
            f"`{name} = loss.backward()` runs a plain backward pass at once and returns None, so the later "
            f"`with {name}:` cannot open a backward context; write `with loss.backward():` in its place."
        )
    trace.backward_started()
    if trace.lens is not None:                             # the invokes of a batch share one graph
        retain_graph = True
    plain_backward(self, gradient, retain_graph, create_graph, inputs)
    return None


_backward.__doc__ = _ORIGINAL_BACKWARD.__doc__


def _save(self: torch.Tensor) -> torch.Tensor:
    """Keep this tensor after the trace (values in a trace are real tensors: it returns ``self``)."""
    return self


def _grad_get(self: torch.Tensor) -> Any:
    ctx = local.backward
    if ctx is not None:
        if ctx.intercepts(self):
            return ctx.read(self)
    elif self.grad_fn is not None and not self.retains_grad:
        for trace in reversed(local.traces):      # the pre-0.5 NNsight form: .grad first, .backward() later
            rows = trace.lens.base_of(self) if trace.lens is not None else None
            if rows is not None and trace.defers(rows[0]):      # an invoke's rows of a batch's value
                return trace.promises.promise(self, rows)
            if trace.defers(self):
                return trace.promises.promise(self)
    return original_grad.__get__(self)


def _grad_set(self: torch.Tensor, value: Any) -> None:
    ctx = local.backward
    if ctx is not None and ctx.intercepts(self):
        ctx.write(self, value)
        return
    original_grad.__set__(self, value)


def _grad_del(self: torch.Tensor) -> None:
    original_grad.__delete__(self)


BACKWARD = Patch("backward", _backward)
SAVE = Patch("save", _save)
GRAD = Patch("grad", property(_grad_get, _grad_set, _grad_del, original_grad.__doc__))
