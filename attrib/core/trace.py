"""Traces: run a model's forward in a greenlet and hand the user its module values in order.

>>> import torch, attrib
>>> net = attrib.Model(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)))
>>> with net.trace(torch.ones(1, 2)):
...     net[0].output[:] = 0             # edit in place: the next layer sees zeros
...     out = net.output.save()
>>> bool(out == net.module[1].bias)
True

Mechanism: one global forward hook (only while the trace is active) records which modules
have finished, so that asking for a module the model already ran past is an
:class:`~attrib.OutOfOrderError` rather than a hang. A value asked for gets a hook on that one
module; the hook pauses the forward greenlet and hands the value to the user's block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

from ..errors import AlreadyTracedError, InputError, NeverRanError, NotInTraceError, OutOfOrderError
from .order import OrderBook
from .pending import DeferredGrads
from .release import release
from .patch import (NoGradError, install_grad_patch, install_trace_patches, local, remove_grad_patch,
                    remove_trace_patches)
from .switch import Coroutine
from .values import tensors_in

if TYPE_CHECKING:
    from .backward import BackwardContext
    from .model import Model

__all__ = ["Trace"]

_MISSING = object()
_KIND_OF = {"output": "output", "input": "inputs", "inputs": "inputs"}


class Trace:
    """The lifecycle of one ``with model.trace(...):`` block. Use it through ``Model.trace``."""

    def __init__(self, model: "Model", args: tuple, kwargs: dict, param_grads: bool = False) -> None:
        self.model = model
        self.args = args
        self.kwargs = kwargs
        self.param_grads = param_grads
        self.saved: list[Any] = []
        self._values: dict[tuple[torch.nn.Module, str], Any] = {}
        self._book = OrderBook(model._order)
        self._paused: tuple[torch.nn.Module, str] | None = None
        self._touched: dict[int, torch.Tensor] = {}
        self._labels: dict[int, tuple[torch.nn.Module, str, int]] = {}
        self._co: Coroutine | None = None
        self._request_hooks: list[Any] = []
        self._wrapped: dict[torch.nn.Module, Any] = {}
        self._wanted: set[torch.nn.Module] = set()
        self.backward: "BackwardContext | None" = None
        self._active = False
        self.deferred = DeferredGrads()

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> "Trace":
        if self.model._trace is not None:
            raise AlreadyTracedError(
                f"{type(self.model.module).__name__} is already being traced; finish the open "
                "`with model.trace(...)` block before starting another on the same model."
            )
        self.model._trace = self
        local.traces.append(self)
        install_trace_patches()
        install_grad_patch()
        self._active = True
        try:
            self._book.start()
            for module in self.model._containers():
                self._wrap(module)
            self._co = Coroutine(self._forward)
        except BaseException as err:
            self._cleanup()
            release(err)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                while not self._co.finished:
                    self._co.resume()
                self._learn_order()
                self._check_deferred()
        except BaseException as err:
            self._cleanup(failed=True)
            release(err)
            raise
        self._cleanup(failed=exc is not None)
        release(exc)
        return False

    def _learn_order(self) -> None:
        book = self._book
        if book.recording:
            self.model._order = dict(book.events)
        elif book.stale:
            self.model._order = None

    def _cleanup(self, failed: bool = True) -> None:
        """Remove every hook, wrapper and patch; drop the values of the pass (all of them when it failed,
        so that nothing it allocated stays reachable through the trace)."""
        try:
            if self._co is not None:
                self._co.close()
        finally:
            for handle in self._request_hooks:
                handle.remove()
            self._request_hooks.clear()
            self._unwrap_all()
            self._book.stop()
            self.deferred.clear()
            if self._active:
                remove_grad_patch()
                remove_trace_patches()
                self._active = False
            if local.traces and local.traces[-1] is self:
                local.traces.pop()
            self.model._trace = None
            self.model._forget_value_error()
            self._co = None
            self._touched.clear()
            self._labels.clear()
            self._values.clear()
            self._paused = None
            if failed:
                self.saved.clear()
                self.args, self.kwargs = (), {}

    # -- the pre-0.5 NNsight form: read .grad first, call .backward() later in the trace ---------
    def defers(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor.grad`` is a promise of this trace: a value it handed out, read by the user's
        code (not the model's) before any backward of the trace ran, or already promised."""
        if self.deferred.get(tensor) is not None:
            return True
        return (self._co is not None and not self._co.in_child and not self.deferred.backward_ran
                and self._touched.get(id(tensor)) is tensor)

    def _check_deferred(self) -> None:
        if self.deferred.unfilled():
            raise NoGradError(
                "a value's .grad was read before any backward in this trace and no backward reached it "
                "afterwards; call loss.backward() later in the same trace on a loss that depends on that "
                "value, or read .grad inside `with loss.backward():`."
            )

    def _forward(self) -> Any:
        return self.model.module(*self.args, **self.kwargs)

    # -- forward bookkeeping ------------------------------------------------------------------
    def _where(self) -> str:
        at = self._paused[0] if self._paused else self._book.last
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
        key = (module, _KIND_OF[kind])
        if key in self._values:
            return self._pick(key, kind)
        path = f"{self.model._path_of(module)}.{kind}"
        if self.backward is not None:
            raise NotInTraceError(
                f"{path} was first read inside a backward context, after the forward pass is over; "
                "read it in the trace before the `with ....backward():` block."
            )
        ran_past = OutOfOrderError(
            f"{path} was read after the model ran past it ({self._where()}); read module values "
            "in the order the model computes them."
        )
        if self._book.passed(module, kind):
            if self._book.recording or self._co.finished:
                raise ran_past
            # Only the order recorded by an earlier trace says so; a model whose control flow changed its
            # module order may still call it. Go on until it runs, or the forward ends (then it ran past).
            self._wait_for(module, key)
            if key not in self._values:
                raise ran_past
            self._book.stale = True
            return self._pick(key, kind)
        if self._co.finished:
            raise NeverRanError(f"{path} was read, but {self.model._path_of(module)} never ran in this forward pass.")
        self._wait_for(module, key)
        if key not in self._values:
            self._book.stale = True  # the recorded order did not foresee this; learn it again next time
            raise NeverRanError(
                f"{path} was read, but {self.model._path_of(module)} never ran in this forward pass "
                "(the model finished without calling it)."
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

    def _wait_for(self, module: torch.nn.Module, key: tuple[torch.nn.Module, str]) -> None:
        if key[1] == "output":
            self._wrap(module)
            self._wanted.add(module)
            try:
                while key not in self._values and not self._co.finished:
                    self._co.resume()
            finally:
                self._wanted.discard(module)
            return
        handle = module.register_forward_pre_hook(self._input_hook(key), with_kwargs=True)
        self._request_hooks.append(handle)
        try:
            while key not in self._values and not self._co.finished:
                self._co.resume()
        finally:
            handle.remove()
            self._request_hooks.remove(handle)

    # Outputs are delivered by wrapping ``module.forward`` (an instance attribute, for this trace only),
    # not by forward hooks: a hook registered on a module that is already running (the root, a layer
    # whose submodule was just read) is not called, and hooks put every call on torch's slower path.
    # Modules with children are wrapped when the trace starts, leaves when they are asked for.
    def _wrap(self, module: torch.nn.Module) -> None:
        if module in self._wrapped:
            return
        inner = module.forward
        wanted, deliver = self._wanted, self._deliver

        def forward(*args: Any, **kwargs: Any) -> Any:
            out = inner(*args, **kwargs)
            return deliver(module, out) if module in wanted else out

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
        return self._deliver(module, output) if module in self._wanted else None

    def _deliver(self, module: torch.nn.Module, output: Any) -> Any:
        key = (module, "output")
        if key in self._values:  # a later call of the same module
            return output
        self._values[key] = output
        self._register(output, module, "output")
        self._pause_at(key)
        return self._values[key]

    def _input_hook(self, key: tuple[torch.nn.Module, str]) -> Callable[..., Any]:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
            if key in self._values:
                return None
            value = (args, kwargs)
            self._values[key] = value
            self._register(value, module, "input")
            if module not in self._wrapped:
                # This call already looked up ``module.forward``: a wrapper would come too late for its
                # output, but a forward hook added now is still called (a pre-hook put it on the hooked path).
                self._request_hooks.append(module.register_forward_hook(self._output_hook))
            self._pause_at(key)
            new = self._values[key]
            return None if new is value else new

        return hook

    def _pause_at(self, key: tuple[torch.nn.Module, str]) -> None:
        self._book.paused_at(*key)
        self._paused = key
        try:
            self._co.pause()
        finally:
            self._paused = None

    def write(self, module: torch.nn.Module, kind: str, value: Any) -> None:
        key = (module, _KIND_OF[kind])
        if key not in self._values:
            self.read(module, kind)
        if self._paused != key:
            raise OutOfOrderError(
                f"{self.model._path_of(module)}.{kind} was assigned after the model ran past it "
                f"({self._where()}); assign a module's value right after reading it, in execution order."
            )
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

    @property
    def output(self) -> Any:
        """The root module's output (same as ``model.output``)."""
        return self.read(self.model.module, "output")

