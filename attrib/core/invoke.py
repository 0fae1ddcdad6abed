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

A trace opened without inputs runs no forward itself; each ``tracer.invoke(*args, **kwargs)`` adds its inputs
(what ``model.trace(*args, **kwargs)`` takes) to the trace, and everything inside it — reads, edits,
``.save()``, backward contexts and ``.grad`` — sees that invoke's rows only, with the ordering rules of any
trace. Values flow from an invoke to the later ones.

The bodies run when the outer block ends (:mod:`attrib.core.deferred` takes each out of line), and
consecutive invokes whose inputs can share one forward exactly — the same number of tokens, or tensors of
the same shape past the first dimension — run as one batch (:mod:`attrib.core.batch`); an invoke of
another length starts the next forward. Where a body cannot be taken out of line (no source, a body on the
``with`` line, a ``return`` in it…) the invokes before it run at once and it runs in place, as its own
forward: the results are the same, only not batched. Reading a model value in the outer block, outside every
invoke, is refused with a message that says where to read it.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError, NotInTraceError, ReusedBlockError
from .batch import concat_inputs, rows_of, run_batch
from .current import trace_of
from .deferred import Body, defer_body, write_back
from .trace import Trace

if TYPE_CHECKING:
    from .model import Model

__all__ = ["Invoker", "Invoke"]

_MISSING = object()
# modules whose training-mode forward depends on the whole batch or draws at random for it
_PER_BATCH = (torch.nn.modules.dropout._DropoutNd, torch.nn.modules.batchnorm._NormBase)


class _Pending:
    """A deferred invoke: its inputs, its body, and the names its body bound so far."""

    def __init__(self, args: tuple, kwargs: dict, body: Body) -> None:
        self.args, self.kwargs, self.body = args, kwargs, body
        self.ns: dict[str, Any] | None = None
        self.own: dict[str, Any] = {}
        self.before: dict[str, Any] = {}


class Invoker:
    """The block of ``with model.trace() as tracer:`` (no inputs); :meth:`invoke` adds one input to it."""

    def __init__(self, model: "Model", param_grads: bool = False) -> None:
        self.model = model
        self.param_grads = param_grads
        self.invokes = 0
        self.forwards = 0                  # forward passes run for the invokes (one per batch)
        self._open = False
        self._used = False
        self._running = False              # the deferred bodies are running
        self._pending: list[_Pending] = []
        self._done: list[_Pending] = []

    def __enter__(self) -> "Invoker":
        if self._used:
            raise ReusedBlockError("this tracer was already used by a `with` block; open a new one: "
                                   "`with model.trace() as tracer:` again.")
        self._used = self._open = True
        self.model._invokers.append(self)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        try:
            if exc_type is None:
                self.flush()
        finally:
            self._open = False
            if self in self.model._invokers:
                self.model._invokers.remove(self)
            self._pending.clear()
            self._done.clear()
        return False

    def invoke(self, *args: Any, **kwargs: Any) -> "Invoke":
        """Add ``*args, **kwargs`` (one prompt, a batch, token ids …) to this trace, as a ``with`` block."""
        if not self._open:
            raise NotInTraceError("tracer.invoke(...) was called outside its `with model.trace() as tracer:` block; "
                                  "open the invokes inside that block.")
        if self._running or trace_of(self.model) is not None:
            raise NotInTraceError("tracer.invoke(...) was opened inside another invoke; close the first `with "
                                  "tracer.invoke(...):` block before opening the next (invokes follow each other).")
        if not args and not kwargs:
            raise InputError("tracer.invoke() got no inputs; pass the prompt (or batch) this invoke runs, e.g. "
                             "tracer.invoke('The capital of France is').")
        self.invokes += 1
        return Invoke(self, args, kwargs)

    # -- running the deferred bodies ----------------------------------------------------------------
    def flush(self) -> None:
        """Run the deferred invokes: consecutive ones that can share a forward as one batch."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        model = self.model
        self._running = True
        try:
            prepared = [model._place(*model._prepare(p.args, p.kwargs)) for p in pending]
            # dropout and batch norm in training mode mix or draw per batch: each invoke keeps its own forward
            batchable = not any(m.training and isinstance(m, _PER_BATCH) for m in model.module.modules())
            plain = not hasattr(model, "tokenizer")
            offset = getattr(model, "position_offset", 0)
            start = 0
            while start < len(pending):
                stop = start + 1
                while stop < len(pending) and batchable and _joins(pending[start:stop], pending[stop]) and \
                        concat_inputs(prepared[start:stop + 1], plain, offset) is not None:
                    stop += 1
                self._run_group(pending[start:stop], prepared[start:stop])
                start = stop
        finally:
            self._running = False
            self._write_back()

    def _run_group(self, group: list[_Pending], prepared: list[tuple[tuple, dict]]) -> None:
        self.forwards += 1
        self._done.extend(group)
        if len(group) == 1:
            args, kwargs = prepared[0]
            with Trace(self.model, args, kwargs, param_grads=self.param_grads):
                self._before(group[0])
                try:
                    group[0].body.run(group[0].ns)
                finally:
                    self._after(group[0])
            return
        args, kwargs = concat_inputs(prepared, offset=getattr(self.model, "position_offset", 0))
        spans, start = [], 0
        for a, kw in prepared:
            n = rows_of(a, kw)
            spans.append(slice(start, start + n))
            start += n
        trace = Trace(self.model, args, kwargs, param_grads=self.param_grads)
        run_batch(trace, [lambda p=p: p.body.run(p.ns) for p in group], spans,
                  before=lambda i: self._before(group[i]), after=lambda i: self._after(group[i]))

    def _before(self, p: _Pending) -> None:
        """Give the body what the invokes before it bound (its own bindings stay its own)."""
        if p.ns is None:
            p.ns = p.body.namespace()
        inject: dict[str, Any] = {}
        for q in self._done:
            if q is p:
                break
            inject.update((k, v) for k, v in q.own.items() if k not in p.own)
        p.ns.update(inject)
        p.before = {k: p.ns.get(k, _MISSING) for k in p.body.assigned}

    def _after(self, p: _Pending) -> None:
        ns, before = p.ns, p.before
        for k in p.body.assigned:      # what this stretch of the body bound (to another object than it found)
            v = ns.get(k, _MISSING)
            if v is not _MISSING and v is not before.get(k, _MISSING):
                p.own[k] = v
        if p.body.module_level:                 # functions of the module read its globals: keep them current
            p.body.globals.update(p.own)

    def _write_back(self) -> None:
        done, self._done = self._done, []
        by_frame: dict[int, tuple[Body, dict[str, Any]]] = {}
        for p in done:                         # the last invoke's binding of a name wins, as when run in turn
            entry = by_frame.setdefault(id(p.body.frame), (p.body, {}))
            entry[1].update(p.own)
            p.ns = None
        for body, values in by_frame.values():
            if values:
                write_back(body, values)
        for p in done:
            p.body.frame = None


def _joins(group: list[_Pending], p: _Pending) -> bool:
    """Whether ``p``'s body may share the forward of ``group``'s: not when it reads, before it could wait, a name
    an earlier body binds, or reads from an object an earlier body changes (``cache["h"]``, ``len(out)``): in a
    shared forward it would start before that value exists (NNsight raises NameError there); in its own, after."""
    facts = p.body.facts
    bound = {name for q in group for name in q.body.assigned}
    if (facts.free | facts.read_first) & bound:
        return False
    changed = {name for q in group for name in q.body.facts.written}
    return not any(_data(p.body, name) for name in facts.reads & changed)


def _data(body: Body, name: str) -> bool:
    """Whether ``name`` holds data rather than a model, a module of code or a function (whose attributes a body
    reads and edits through: ``lm.transformer.h[0].output[:] = ...``)."""
    value = body.snapshot.get(name, body.globals.get(name))
    return not (isinstance(value, (types.ModuleType, types.FunctionType, type, torch.nn.Module))
                or type(value).__module__.startswith("attrib."))


class Invoke:
    """One ``with tracer.invoke(...):`` block: deferred to the end of the trace, or run in place."""

    def __init__(self, invoker: Invoker, args: tuple, kwargs: dict) -> None:
        self.invoker = invoker
        self.args, self.kwargs = args, kwargs
        self._body: Body | None = None
        self._trace: Trace | None = None

    def __enter__(self) -> "Invoke | Trace":
        body = defer_body(sys._getframe(1))
        if body is not None:
            self._body = body
            self.invoker._pending.append(_Pending(self.args, self.kwargs, body))
            return self
        self.invoker.flush()                   # the invokes before run first: their values flow to this one
        self.invoker.forwards += 1
        self._trace = self.invoker.model.trace(*self.args, param_grads=self.invoker.param_grads, **self.kwargs)
        return self._trace.__enter__()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if self._body is not None:
            return self._body.skipped(exc)
        trace, self._trace = self._trace, None
        return bool(trace is not None and trace.__exit__(exc_type, exc, tb))
