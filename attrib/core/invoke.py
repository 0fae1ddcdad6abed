"""Invokes: NNsight's ``with model.trace() as tracer: with tracer.invoke(prompt): ...`` form.

>>> import torch, attrib
>>> net = attrib.Model(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)))
>>> with net.trace() as tracer:
...     with tracer.invoke(torch.ones(1, 2)):
...         first = net[0].output.save()
...     with tracer.invoke(torch.zeros(3, 2)):
...         net[0].output[:] = first            # a value of the earlier invoke, broadcast to these rows
...         out = net.output.save()
>>> out.shape, bool(torch.allclose(out, net.module(torch.ones(3, 2))))
(torch.Size([3, 1]), True)

A trace opened without inputs runs no forward itself; each ``tracer.invoke(*args, **kwargs)`` is a trace of
its own inputs (what ``model.trace(*args, **kwargs)`` takes), and everything inside it — reads, edits,
``.save()``, backward contexts and ``.grad`` — sees that invoke's rows only, with the ordering rules of any
trace. Values flow from an invoke to the later ones (they ran before). Invokes run one after another, one
forward each: they are not batched into one forward yet, so a value has its invoke's own shape (no padding
from other invokes). Reading a model value in the outer block, outside every invoke, is refused with a
message that says where to read it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import InputError, NotInTraceError, ReusedBlockError
from .current import trace_of

if TYPE_CHECKING:
    from .model import Model
    from .trace import Trace

__all__ = ["Invoker"]


class Invoker:
    """The block of ``with model.trace() as tracer:`` (no inputs); :meth:`invoke` opens one trace per input."""

    def __init__(self, model: "Model", param_grads: bool = False) -> None:
        self.model = model
        self.param_grads = param_grads
        self.invokes = 0
        self._open = False
        self._used = False

    def __enter__(self) -> "Invoker":
        if self._used:
            raise ReusedBlockError("this tracer was already used by a `with` block; open a new one: "
                                   "`with model.trace() as tracer:` again.")
        self._used = self._open = True
        self.model._invokers.append(self)
        return self

    def __exit__(self, *exc: Any) -> bool:
        self._open = False
        if self in self.model._invokers:
            self.model._invokers.remove(self)
        return False

    def invoke(self, *args: Any, **kwargs: Any) -> "Trace":
        """A trace of ``*args, **kwargs`` (one prompt, a batch, token ids …) inside this block."""
        if not self._open:
            raise NotInTraceError("tracer.invoke(...) was called outside its `with model.trace() as tracer:` block; "
                                  "open the invokes inside that block.")
        running = trace_of(self.model)
        if running is not None:
            raise NotInTraceError("tracer.invoke(...) was opened inside another invoke; close the first `with "
                                  "tracer.invoke(...):` block before opening the next (invokes follow each other).")
        if not args and not kwargs:
            raise InputError("tracer.invoke() got no inputs; pass the prompt (or batch) this invoke runs, e.g. "
                             "tracer.invoke('The capital of France is').")
        self.invokes += 1
        return self.model.trace(*args, param_grads=self.param_grads, **kwargs)
