"""The seed page's pre-0.5 form: ``g = h.grad.save()`` in a trace, then a plain ``loss.backward()`` later.

>>> import torch, attrib
>>> net = attrib.Model(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)))
>>> with net.trace(torch.ones(1, 3)):
...     g = net[0].output.grad.save()       # a promise: filled by the backward below
...     net.output.sum().backward()
>>> torch.equal(g, net.module[1].weight.detach().expand(1, 3))
True

Before that backward, the promised gradient can only be saved: any other use would compute with a
gradient that does not exist yet, so it raises :class:`~attrib.PendingGradError` instead of returning zeros.

This form is the only reason a trace makes ``Tensor.grad`` a property outside backward contexts, and only
until the trace's first backward: :class:`Promises` holds the :data:`~attrib.core.patches.GRAD` patch from the
trace's start to that moment (a hook fills each promise; no ``.grad`` read is needed for that), so the rest
of the trace runs with torch's own ``.grad``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_flatten

from ..errors import NoGradError, PendingGradError
from .patches import GRAD

__all__ = ["PendingGrad", "Promises"]


class PendingGrad(torch.Tensor):
    """A tensor that a later backward fills in place; unusable (except ``.save()``) until then."""

    _filled: bool = False

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") != "__get__":          # .shape, .dtype, ... are always fine
            flat, _ = tree_flatten((args, kwargs))
            if any(isinstance(a, PendingGrad) and not a._filled for a in flat):
                raise PendingGradError(
                    f"this .grad was read before any backward ran, so it has no value yet ({func.__name__} "
                    "used it); only .save() it there and use it after the trace, or read it inside "
                    "`with loss.backward():`."
                )
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)


class Promises:
    """One trace's promised gradients: a holder and a tensor hook per value read before any backward."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[PendingGrad, Any, torch.Tensor]] = {}
        self.open = False            # True from the trace's start to its first backward

    def start(self) -> None:
        GRAD.acquire()
        self.open = True

    def backward_started(self) -> None:
        """The trace's first backward: from here on ``.grad`` is torch's outside contexts."""
        if self.open:
            self.open = False
            GRAD.release()

    def get(self, tensor: torch.Tensor) -> PendingGrad | None:
        entry = self._entries.get(id(tensor))
        return entry[0] if entry is not None and entry[2] is tensor else None

    def promise(self, tensor: torch.Tensor, rows: tuple[torch.Tensor, slice] | None = None) -> PendingGrad:
        """The holder of ``tensor``'s gradient, summed over the plain backwards that reach it. ``rows``: the
        tensor is an invoke's rows of a batch's value (``(value, rows)``), whose gradient fills it."""
        found = self.get(tensor)
        if found is not None:
            return found
        holder = torch.zeros_like(tensor, requires_grad=False).as_subclass(PendingGrad)
        span = slice(None) if rows is None else rows[1]

        def fill(grad: torch.Tensor) -> None:
            with torch._C.DisableTorchFunctionSubclass():
                holder.add_(grad.detach()[span])
            holder._filled = True

        # the tensor stays in the entry so that its id is its own while the trace runs
        hooked = tensor if rows is None else rows[0]
        self._entries[id(tensor)] = (holder, hooked.register_hook(fill), tensor)
        return holder

    def check(self) -> None:
        """At the end of a trace: every promise was filled by some backward."""
        if any(not holder._filled for holder, _, _ in self._entries.values()):
            raise NoGradError(
                "a value's .grad was read before any backward in this trace and no backward reached it "
                "afterwards; call loss.backward() later in the same trace on a loss that depends on that "
                "value, or read .grad inside `with loss.backward():`."
            )

    def clear(self) -> None:
        self.backward_started()
        for _, handle, _ in self._entries.values():
            handle.remove()
        self._entries.clear()
