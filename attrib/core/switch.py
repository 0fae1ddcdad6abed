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

from ..errors import TraceFailedError

__all__ = ["capture", "restore", "Coroutine"]


_C = torch._C
_AUTOCAST_DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)

State = tuple  # (grad, (autocast enabled, dtype) per device..., cache, cuda (device, stream) or None)


_is_grad, _is_ac, _ac_dtype, _is_cache = (torch.is_grad_enabled, torch.is_autocast_enabled,
                                          torch.get_autocast_dtype, torch.is_autocast_cache_enabled)

if len(_AUTOCAST_DEVICES) > 1:
    def capture() -> State:
        """The thread-local torch state that a model's forward can change mid-way, as a comparable tuple."""
        cuda = None
        if torch.cuda.is_initialized():
            device = _C._cuda_getDevice()
            cuda = (device, _C._cuda_getCurrentStream(device))
        return (_is_grad(), (_is_ac("cpu"), _ac_dtype("cpu")), (_is_ac("cuda"), _ac_dtype("cuda")),
                _is_cache(), cuda)
else:
    def capture() -> State:
        """The thread-local torch state that a model's forward can change mid-way, as a comparable tuple."""
        return (_is_grad(), (_is_ac("cpu"), _ac_dtype("cpu")), _is_cache(), None)


def restore(state: State, current: State) -> None:
    """Set the thread's state to ``state`` (``current`` is what it is now; only differences are set)."""
    if state == current:
        return
    if state[0] != current[0]:
        torch.set_grad_enabled(state[0])
    for i, device in enumerate(_AUTOCAST_DEVICES, start=1):
        if state[i] != current[i]:
            torch.set_autocast_enabled(device, state[i][0])
            torch.set_autocast_dtype(device, state[i][1])
    if state[-2] != current[-2]:
        torch.set_autocast_cache_enabled(state[-2])
    if state[-1] != current[-1] and state[-1] is not None:
        device, (stream_id, device_index, device_type) = state[-1]
        torch.cuda.set_device(device)
        torch.cuda.set_stream(torch.cuda.Stream(stream_id=stream_id, device_index=device_index,
                                                device_type=device_type))


class Coroutine:
    """A function run in a child greenlet, resumed by :meth:`resume`, paused by :meth:`pause`.

    ``resume`` returns what the child passed to ``pause`` (``finished`` is then False) or, once the
    function returns, its result (``finished`` True). An exception in the child propagates out of
    ``resume`` with its own type and traceback.
    """

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._state = capture()  # the child starts with the caller's state at creation
        self._glet = greenlet.greenlet(self._run)
        self._glet.gr_context = contextvars.copy_context()
        self._fn = fn
        self.finished = False
        self.failed: BaseException | None = None
        self.result: Any = None

    def _run(self, *_: Any) -> Any:
        try:
            self.result = self._fn()
        except greenlet.GreenletExit:
            raise                               # :meth:`close` unwinding a paused child is no failure
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
            raise TraceFailedError(
                f"the traced computation already failed with {type(self.failed).__name__}: {self.failed}; "
                "fix that error and trace again."
            ) from self.failed
        if self.finished:
            return self.result
        caller = capture()
        restore(self._state, caller)
        try:
            out = self._glet.switch(value)
        finally:
            now = capture()
            if not self._glet.dead:
                self._state = now
            restore(caller, now)
        return out

    def pause(self, value: Any = None) -> Any:
        """Called in the child: hand ``value`` to the caller and wait to be resumed."""
        return self._glet.parent.switch(value)

    @property
    def in_child(self) -> bool:
        return self._glet is not None and greenlet.getcurrent() is self._glet

    def close(self) -> None:
        """Unwind a paused child (its ``finally`` blocks run) and drop every reference to what it computed:
        its frames, its result and its failure (whose traceback holds the child's frames)."""
        if self._glet is not None and self._glet and not self._glet.dead:
            caller = capture()
            try:
                self._glet.throw(greenlet.GreenletExit)
            finally:
                restore(caller, capture())
        self._glet = None
        self._fn = None  # type: ignore[assignment]
        self.result = None
        self.failed = None
