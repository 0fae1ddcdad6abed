"""Run a function in a greenlet that can pause and resume, carrying torch's thread-local state.

The model's forward and a context's backward run in a child greenlet; the user's block runs in
the caller's. Greenlets of one thread share torch's thread-local state (grad mode, autocast, the
current CUDA device and stream), so each switch saves the state of the side that pauses and
restores the state of the side that resumes. A switch costs about a microsecond; a thread hand-off
would cost ~24 µs and tie the model to another thread.
"""

from __future__ import annotations

import contextvars
from typing import Any, Callable

import greenlet
import torch

from .errors import AttribError

__all__ = ["TorchState", "Coroutine", "ResumeAfterFailure"]


class ResumeAfterFailure(AttribError):
    """The model's forward (or a backward) already raised; nothing is left to resume."""

_AUTOCAST_DEVICES = ("cpu", "cuda")


class TorchState:
    """Snapshot of the thread-local torch state that a model's forward can change mid-way."""

    __slots__ = ("grad", "autocast", "cache", "cuda")

    def __init__(self) -> None:
        self.grad = torch.is_grad_enabled()
        self.autocast = tuple(
            (torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in _AUTOCAST_DEVICES
        )
        self.cache = torch.is_autocast_cache_enabled()
        self.cuda = None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self.cuda = (torch.cuda.current_device(), torch.cuda.current_stream())

    def apply(self) -> None:
        """Make this snapshot the thread's state (only what differs is set)."""
        if torch.is_grad_enabled() != self.grad:
            torch.set_grad_enabled(self.grad)
        for device, (enabled, dtype) in zip(_AUTOCAST_DEVICES, self.autocast):
            if torch.is_autocast_enabled(device) != enabled:
                torch.set_autocast_enabled(device, enabled)
            if torch.get_autocast_dtype(device) != dtype:
                torch.set_autocast_dtype(device, dtype)
        if torch.is_autocast_cache_enabled() != self.cache:
            torch.set_autocast_cache_enabled(self.cache)
        if self.cuda is not None:
            device, stream = self.cuda
            if torch.cuda.current_device() != device:
                torch.cuda.set_device(device)
            if torch.cuda.current_stream() != stream:
                torch.cuda.set_stream(stream)


class Coroutine:
    """A function run in a child greenlet, resumed by :meth:`resume`, paused by :meth:`pause`.

    ``resume`` returns what the child passed to ``pause`` (``finished`` is then False) or, once the
    function returns, its result (``finished`` True). An exception in the child propagates out of
    ``resume`` with its own type and traceback.
    """

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._state = TorchState()  # the child starts with the caller's state at creation
        self._glet = greenlet.greenlet(self._run)
        self._glet.gr_context = contextvars.copy_context()
        self._fn = fn
        self.finished = False
        self.failed: BaseException | None = None
        self.result: Any = None

    def _run(self, *_: Any) -> Any:
        try:
            self.result = self._fn()
        except BaseException as err:
            self.failed = err
            raise
        self.finished = True
        return self.result

    @property
    def started(self) -> bool:
        return self._glet is None or bool(self._glet) or self._glet.dead

    def resume(self, value: Any = None) -> Any:
        """Run the child until it pauses or returns."""
        if self.failed is not None:
            raise ResumeAfterFailure(
                f"the traced computation already failed with {type(self.failed).__name__}: {self.failed}; "
                "fix that error and trace again."
            ) from self.failed
        if self.finished:
            return self.result
        caller = TorchState()
        self._state.apply()
        try:
            out = self._glet.switch(value)
        finally:
            if not self._glet.dead:
                self._state = TorchState()
            caller.apply()
        return out

    def pause(self, value: Any = None) -> Any:
        """Called in the child: hand ``value`` to the caller and wait to be resumed."""
        return self._glet.parent.switch(value)

    @property
    def in_child(self) -> bool:
        return self._glet is not None and greenlet.getcurrent() is self._glet

    def close(self) -> None:
        """Unwind a paused child (its ``finally`` blocks run); no-op when not started or done."""
        if self._glet is not None and self._glet and not self._glet.dead:
            caller = TorchState()
            try:
                self._glet.throw(greenlet.GreenletExit)
            finally:
                caller.apply()
        self._glet = None  # drop the frame references
        self._fn = None  # type: ignore[assignment]
