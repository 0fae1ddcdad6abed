"""The one record of what is open in this thread: its traces (innermost last) and its backward context.

>>> import torch, attrib
>>> from attrib.core import current
>>> net = attrib.Model(torch.nn.Linear(2, 1))
>>> current.current_trace() is None
True
>>> with net.trace(torch.ones(1, 2)) as tr:
...     current.current_trace() is tr, current.trace_of(net) is tr
(True, True)

Traces and contexts of other threads are invisible here: each thread sees only what it opened. A model
being traced by one thread is refused to another (:func:`claim`) until the first trace closes.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ..errors import AlreadyTracedError

if TYPE_CHECKING:
    from .backward import BackwardContext
    from .trace import Trace

__all__ = ["local", "current_trace", "trace_of", "current_backward", "claim", "unclaim"]


class _Local(threading.local):
    def __init__(self) -> None:
        self.traces: list["Trace"] = []
        self.backward: "BackwardContext | None" = None


local = _Local()
_claims: dict[int, int] = {}       # id(module) -> the thread tracing it
_lock = threading.Lock()


def current_trace() -> "Trace | None":
    """The innermost open trace of this thread."""
    return local.traces[-1] if local.traces else None


def trace_of(model: Any) -> "Trace | None":
    """The open trace of ``model`` in this thread."""
    for trace in reversed(local.traces):
        if trace.model is model:
            return trace
    return None


def current_backward() -> "BackwardContext | None":
    return local.backward


def claim(module: Any, name: str) -> None:
    """Mark ``module`` as traced by this thread; refuse a second trace of it anywhere."""
    me = threading.get_ident()
    with _lock:
        owner = _claims.get(id(module))
        if owner is None:
            _claims[id(module)] = me
            return
    where = "" if owner == me else " by another thread"
    raise AlreadyTracedError(
        f"{name} is already being traced{where}; finish the open `with model.trace(...)` block before starting "
        "another on the same model" + ("." if owner == me else " (one thread traces a model at a time).")
    )


def unclaim(module: Any) -> None:
    with _lock:
        _claims.pop(id(module), None)
