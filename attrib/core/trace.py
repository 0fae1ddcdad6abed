"""Traces: run a model's forward in a greenlet and hand the user its module values in order.

>>> import torch, attrib
>>> net = attrib.Model(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)))
>>> with net.trace(torch.ones(1, 2)):
...     net[0].output[:] = 0             # edit in place: the next layer sees zeros
...     out = net.output.save()
>>> bool(out == net.module[1].bias)
True

Mechanism (:mod:`attrib.core.handoff`): the model's forward runs in a child greenlet. A module's output is
handed over by a wrapper around its ``forward`` (an instance attribute, for this trace only, installed when
the module is asked for or before a pause that will find it running), an input by a pre-hook added when it
is asked for; the forward pauses there until the block moves on. Where the forward
is, and so which reads come too late (:class:`~attrib.OutOfOrderError`), is kept by an
:class:`~attrib.core.order.OrderBook`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

from ..errors import InputError, NeverRanError, NotInTraceError, OutOfOrderError
from .backward import BackwardContext
from .forward_errors import failed_forward, refuse_compiled
from .handoff import Handoff
from .order import OrderBook, event_of
from .patches import BACKWARD, SAVE
from .pending import Promises
from .current import claim, local, unclaim
from .values import check_edit, tensors_in

if TYPE_CHECKING:
    from .model import Model

__all__ = ["Trace"]

_MISSING = object()
_KIND_OF = {"output": "output", "input": "inputs", "inputs": "inputs"}


class Trace(Handoff):
    """The lifecycle of one ``with model.trace(...):`` block. Use it through ``Model.trace``."""

    _again = "`with model.trace(...):`"

    def __init__(self, model: "Model", args: tuple, kwargs: dict, param_grads: bool = False) -> None:
        self.model = model
        self.args = args
        self.kwargs = kwargs
        self.param_grads = param_grads
        self._values: dict[tuple[torch.nn.Module, str], Any] = {}
        memo = model.__dict__.get("_running_memo")
        if memo is None or memo[0] is not model._order:   # the answers of running_at hold for one known order
            memo = (model._order, {})
            object.__setattr__(model, "_running_memo", memo)
        self._book = OrderBook(model._order, memo[1])
        self._touched: dict[int, torch.Tensor] = {}
        self._labels: dict[int, tuple[torch.nn.Module, str, int]] = {}
        self._request_hooks: list[Any] = []
        self._input_waits: dict[tuple[torch.nn.Module, str], list[Any]] = {}   # key -> [pre-hook handle, waiters]
        self._wrapped: dict[torch.nn.Module, Any] = {}
        self._wanted: dict[torch.nn.Module, int] = {}   # modules whose output is waited for, by how many waits
        self._claimed = False
        self.promises = Promises()
        self.grads_kept: set[int] = set()   # ids of values whose .grad a backward context of this trace set
        self.lens: Any = None               # a batch of invokes' row views (attrib.core.batch), else None

    # -- lifecycle (see Handoff) ----------------------------------------------------------------
    def _setup(self) -> None:
        claim(self.model.module, type(self.model.module).__name__)
        self._claimed = True
        local.traces.append(self)
        BACKWARD.acquire()
        SAVE.acquire()
        self.promises.start()
        self._book.start(lambda: self.in_child)
        if self._book.recording:            # no order known yet: any module with children may be read while it runs
            for module in self.model._containers():
                self._wrap(module)

    def _run(self) -> Any:
        try:
            return self.model.module(*self.args, **self.kwargs)
        except Exception as err:
            better = failed_forward(self.model, self.args, self.kwargs, err)
            if better is None:
                raise
            raise better[0] from (err if better[1] else None)

    def _finished(self) -> None:
        book = self._book
        if book.recording:
            self.model._order = dict(book.events)
        elif book.stale:
            self.model._order = None
        self.promises.check()

    def _cleanup(self, failed: bool) -> None:
        """Remove every hook, wrapper and patch; drop the values of the pass (and, when it failed, its
        arguments, so that nothing it allocated stays reachable through the trace)."""
        for handle in self._request_hooks:
            handle.remove()
        self._request_hooks.clear()
        self._input_waits.clear()
        self._unwrap_all()
        self._book.stop()
        self.promises.clear()
        if self._claimed:
            SAVE.release()
            BACKWARD.release()
            if self in local.traces:
                local.traces.remove(self)
            unclaim(self.model.module)
            self._claimed = False
        self.model._forget_value_error()
        self._touched.clear()
        self._labels.clear()
        self.grads_kept.clear()
        self._values.clear()
        if failed:
            self.args, self.kwargs = (), {}

    # -- backward contexts and the pre-0.5 form -------------------------------------------------
    def backward_started(self) -> None:
        """Called by the patched ``Tensor.backward``: any backward of this trace, plain or in a context."""
        self.promises.backward_started()

    def backward_context(self, loss: torch.Tensor, gradient: torch.Tensor | None, retain_graph: bool | None,
                         create_graph: bool, inputs: Any) -> BackwardContext:
        return BackwardContext(self, loss, gradient, retain_graph, create_graph, inputs)

    def defers(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor.grad`` is a promise of this trace: a value it handed out, read by the user's
        code (not the model's) before any backward of the trace ran, or already promised."""
        if self.promises.get(tensor) is not None:
            return True
        return self.promises.open and not self.in_child and self._touched.get(id(tensor)) is tensor

    # -- forward bookkeeping ------------------------------------------------------------------
    def _where(self) -> str:
        at = self.current_key[0] if self.current_key else self._book.last
        if at is None:
            return "it had not started"
        return f"it was at {self.model._path_of(at)}"

    def _register(self, value: Any, module: torch.nn.Module, kind: str) -> None:
        for i, t in enumerate(tensors_in(value)):
            if id(t) not in self._touched:
                self._touched[id(t)] = t
                self._labels[id(t)] = (module, kind, i)

    def label(self, t: torch.Tensor) -> str:
        """A name for a tensor in messages: its module path when it is a module value."""
        found = self._labels.get(id(t))
        if found is None:
            return "this tensor"
        module, kind, i = found
        label = f"{self.model._path_of(module)}.{kind}"
        return label if i == 0 else f"{label} (tensor {i})"

    def touched(self) -> list[torch.Tensor]:
        return list(self._touched.values())

    # -- reads and writes ---------------------------------------------------------------------
    def read(self, module: torch.nn.Module, kind: str) -> Any:
        """``module.<kind>`` in this pass (an invoke of a batch sees its own rows: :mod:`attrib.core.batch`)."""
        value = self._read(module, kind)
        return value if self.lens is None else self.lens.view(value)

    def _read(self, module: torch.nn.Module, kind: str) -> Any:
        key = (module, _KIND_OF[kind])
        if key in self._values:
            return self._pick(key, kind)
        if local.backward is not None and local.backward.trace is self:
            raise NotInTraceError(
                f"{self.model._path_of(module)}.{kind} was first read inside a backward context, after the forward "
                "pass is over; read it in the trace before the `with ....backward():` block."
            )
        if self._book.passed(module, kind):
            where = self._where()      # before waiting: where the model was when the block asked
            if not (self._book.recording or self.finished):
                # Only the order recorded by an earlier trace says so; a model whose control flow changed its
                # module order may still call it. Go on until it runs, or the forward ends (then it ran past).
                self._wait_for(module, key)
                if key in self._values:
                    self._book.stale = True
                    return self._pick(key, kind)
            raise OutOfOrderError(
                f"{self.model._path_of(module)}.{kind} was read after the model ran past it ({where}); read module "
                "values in the order the model computes them."
            )
        if self.finished:
            raise NeverRanError(f"{self.model._path_of(module)}.{kind} was read, but {self.model._path_of(module)} "
                                "never ran in this forward pass.")
        was_stale = self._book.stale
        self._wait_for(module, key)
        if key not in self._values:
            self._book.stale = True  # the recorded order did not foresee this; learn it again next time
            maybe = ""
            if was_stale and module._modules:
                maybe = ("; this pass called its modules in another order than the trace that recorded the order, so "
                         "if it was already running when it was read, read it again in a new trace (it records anew)")
            raise NeverRanError(
                f"{self.model._path_of(module)}.{kind} was read, but {self.model._path_of(module)} never ran in this "
                f"forward pass (the model finished without calling it{maybe})."
            )
        return self._pick(key, kind)

    def _pick(self, key: tuple[torch.nn.Module, str], kind: str) -> Any:
        value = self._values[key]
        if kind == "input":
            args, kwargs = value
            if args:
                return args[0]
            return next(iter(kwargs.values()), None)
        return value

    def _wrap_running(self, module: torch.nn.Module, kind: str) -> None:
        """Wrap the modules with children that will be running when the forward pauses at ``module.<kind>``:
        their output may be asked for next, after they have looked up their ``forward``. By induction over the
        pauses, every module running at a pause has a wrapper; the others get one when they are asked for."""
        containers = self.model._containers()
        running = self._book.running_at(event_of(module, kind), containers)
        for m in containers if running is None else running:
            self._wrap(m)

    def _wait_for(self, module: torch.nn.Module, key: tuple[torch.nn.Module, str]) -> None:
        refuse_compiled(self.model, module, key[1])
        self._wrap_running(module, key[1])
        if key[1] == "output":
            self._wrap(module)
            wanted = self._wanted
            wanted[module] = wanted.get(module, 0) + 1
            try:
                self.wait_for(lambda: key in self._values)
            finally:
                if wanted.get(module, 1) <= 1:
                    wanted.pop(module, None)
                else:
                    wanted[module] -= 1
            return
        # one pre-hook per value, however many invoke bodies of a batch wait for it: torch calls the hooks of
        # a module from a list taken before the first one runs, so a second hook removed while the forward
        # paused in the first would still be called (without its keyword arguments)
        shared = self._input_waits.get(key)
        if shared is None:
            handle = module.register_forward_pre_hook(self._input_hook(key), with_kwargs=True)
            self._request_hooks.append(handle)
            shared = self._input_waits[key] = [handle, 0]
        shared[1] += 1
        try:
            self.wait_for(lambda: key in self._values)
        finally:
            shared[1] -= 1
            if shared[1] == 0:
                shared[0].remove()
                self._input_waits.pop(key, None)
                if shared[0] in self._request_hooks:
                    self._request_hooks.remove(shared[0])

    # Outputs are delivered by wrapping ``module.forward`` (an instance attribute, for this trace only),
    # not by forward hooks: a hook registered on a module that is already running (the root, a layer
    # whose submodule was just read) is not called, and hooks put every call on torch's slower path.
    # A module is wrapped when it is asked for, and before each pause every module with children that the
    # pause will find running (from the recorded module order; all of them while the order is recorded).
    def _wrap(self, module: torch.nn.Module) -> None:
        if module in self._wrapped:
            return
        inner = module.forward
        wanted, deliver = self._wanted, self._deliver

        def forward(*args: Any, **kwargs: Any) -> Any:
            out = inner(*args, **kwargs)
            # Only the traced forward hands values over: a call of the same module by another thread, or by
            # the block itself, runs untouched.
            return deliver(module, out) if module in wanted and self.in_child else out

        forward.__wrapped__ = inner  # inspect.signature(module.forward) still sees the real one
        self._wrapped[module] = module.__dict__.get("forward", _MISSING)
        module.__dict__["forward"] = forward

    def _unwrap_all(self) -> None:
        for module, old in self._wrapped.items():
            if old is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = old
        self._wrapped.clear()

    def _output_hook(self, module: torch.nn.Module, args: tuple, output: Any) -> Any:
        return self._deliver(module, output) if module in self._wanted and self.in_child else None

    def _deliver(self, module: torch.nn.Module, output: Any) -> Any:
        key = (module, "output")
        if key in self._values:  # a later call of the same module
            return output
        return self._hand_over(key, output, module)

    def _input_hook(self, key: tuple[torch.nn.Module, str]) -> Callable[..., Any]:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
            if key in self._values or not self.in_child:
                return None
            if module not in self._wrapped:
                # This call already looked up ``module.forward``: a wrapper would come too late for its
                # output, but a forward hook added now is still called (a pre-hook put it on the hooked path).
                self._request_hooks.append(module.register_forward_hook(self._output_hook))
            value = (args, kwargs)
            new = self._hand_over(key, value, module)
            return None if new is value else new

        return hook

    def _hand_over(self, key: tuple[torch.nn.Module, str], value: Any, module: torch.nn.Module) -> Any:
        """Record the value, pause the forward at it, and return what the block left there."""
        self._values[key] = value
        self._register(value, module, "input" if key[1] == "inputs" else key[1])
        self._book.paused_at(*key)
        return self.offer(key, value)

    def write(self, module: torch.nn.Module, kind: str, value: Any) -> None:
        key = (module, _KIND_OF[kind])
        if key not in self._values:
            self._read(module, kind)
        if self.current_key != key:
            raise OutOfOrderError(
                f"{self.model._path_of(module)}.{kind} was assigned after the model ran past it "
                f"({self._where()}); assign a module's value right after reading it, in execution order."
            )
        path, old = f"{self.model._path_of(module)}.{kind}", self._pick(key, kind)
        if self.lens is None:
            check_edit(path, old, value)
        else:                            # an invoke's rows, checked against its view and set into the batch's value
            check_edit(path, self.lens.view(old), value)
            value = self.lens.merge(old, value)
        if kind == "input":
            args, kwargs = self._values[key]
            if args:
                value = ((value, *args[1:]), kwargs)
            elif kwargs:
                first = next(iter(kwargs))
                value = (args, {**kwargs, first: value})
            else:
                value = ((value,), kwargs)
        elif kind == "inputs":
            if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict)):
                raise InputError(
                    f"{self.model._path_of(module)}.inputs must be set to (args_tuple, kwargs_dict), "
                    f"got {type(value).__name__}."
                )
            value = (tuple(value[0]), value[1])
        self._values[key] = value
        self._register(value, module, kind)
        self.replace(value)

    @property
    def output(self) -> Any:
        """The root module's output (same as ``model.output``)."""
        return self.read(self.model.module, "output")

