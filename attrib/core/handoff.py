"""The one interleaving mechanism of traces and backward contexts: a computation that stops at the values
the user's block asks for, hands each one over, and goes on with what the block left there.

>>> from attrib.core.handoff import Handoff
>>> class Squares(Handoff):
...     def _run(self):
...         return [self.offer(i, i * i) for i in range(3)]   # each value may be replaced by the block
>>> with Squares() as s:
...     s.wait_for(lambda: s.current_key == 1)
...     s.replace(-1)
>>> s.result
[0, -1, 4]

The computation (the model's forward, a backward pass) runs in a child greenlet (:mod:`attrib.core.switch`).
``offer(key, value)`` — called in the child — pauses it with ``value`` as the current value; the block reads
it, may :meth:`replace` it, and resumes the child by waiting for another value (:meth:`wait_for`) or by
leaving the block, which runs the computation to its end. Whatever way the block is left, :meth:`close`
ends the child, the subclass's :meth:`_cleanup` removes what it installed, and an exception leaving the
block is released (:mod:`attrib.core.release`) so that nothing the computation allocated stays reachable.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Hashable

from ..errors import ReusedBlockError
from .release import release
from .switch import Coroutine

__all__ = ["Handoff"]

_NONE = object()


class Handoff(abc.ABC):
    """Base of :class:`~attrib.core.trace.Trace` and :class:`~attrib.core.backward.BackwardContext`."""

    _co: Coroutine | None = None
    current_key: Hashable | None = None
    _current: Any = _NONE
    result: Any = None
    _used = False
    _again = "a new block"       # how a user opens another one, for the message of a reused object
    blocker: Any = None           # the scheduler of a batch of invokes, when this trace runs one

    # -- what a subclass provides -------------------------------------------------------------------
    @abc.abstractmethod
    def _run(self) -> Any:
        """The computation, run in the child; calls :meth:`offer` at each value it hands over."""

    def _setup(self) -> None:
        """Install what the computation needs (hooks, patches) before it starts."""

    def _finished(self) -> None:
        """Checks once the computation has run to its end without error."""

    def _cleanup(self, failed: bool) -> None:
        """Remove what :meth:`_setup` installed and drop the computation's values."""

    # -- lifecycle ----------------------------------------------------------------------------------
    def __enter__(self) -> "Handoff":
        if self._used:
            raise ReusedBlockError(
                f"this {type(self).__name__} object was already used by a `with` block, and each runs one pass (its "
                f"values belong to that pass); open a new one instead: {self._again} again."
            )
        self._used = True
        try:
            self._setup()
            self._co = Coroutine(self._run)
        except BaseException as err:
            self._close(failed=True)
            release(err)
            raise
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        try:
            if exc_type is None:
                self.finish()
                self._finished()
        except BaseException as err:
            self._close(failed=True)
            release(err)
            raise
        self._close(failed=exc is not None)
        release(exc)
        return False

    def _close(self, failed: bool) -> None:
        try:
            if self._co is not None:
                self.result = None if failed else self._co.result
                self._co.close()
        finally:
            self._co = None
            self.current_key, self._current = None, _NONE
            self._cleanup(failed)

    # -- the block's side ---------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self._co is None or self._co.finished

    @property
    def started(self) -> bool:
        return self._co is not None and self._co.started

    @property
    def in_child(self) -> bool:
        """Whether the caller is the computation itself (a model's code reading a value, say)."""
        return self._co is not None and self._co.in_child

    def wait_for(self, done: Callable[[], bool]) -> None:
        """Resume the computation until ``done()`` holds or it ends. A body of a batch of invokes
        (:mod:`attrib.core.batch`) waits instead: its scheduler resumes the computation for every body."""
        if self.blocker is not None and self.blocker.waits_here():
            self.blocker.wait(done, self)
            return
        while not done() and not self._co.finished:
            self._co.resume()

    def finish(self) -> None:
        """Run the computation to its end."""
        self.wait_for(lambda: False)

    @property
    def current(self) -> Any:
        """The value the computation is paused at."""
        return None if self._current is _NONE else self._current

    def replace(self, value: Any) -> None:
        """Give the computation ``value`` instead of the current one when it resumes."""
        self._current = value

    # -- the computation's side ---------------------------------------------------------------------
    def offer(self, key: Hashable, value: Any) -> Any:
        """Pause at ``value`` (called in the child); return what the block left in its place."""
        self.current_key, self._current = key, value
        try:
            self._co.pause()
            return self._current
        finally:
            self.current_key, self._current = None, _NONE
