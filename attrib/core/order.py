"""Where a traced forward is: which module starts and ends the model has already passed.

>>> import torch
>>> from attrib.core.order import OrderBook
>>> net = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.ReLU())
>>> book = OrderBook(None)                  # no order known yet: record it with global hooks
>>> book.start(); _ = net(torch.ones(1, 1)); book.stop()
>>> book.passed(net[0], "output"), len(book.events)
(True, 6)

The first trace of a model records the order of module start and end events with one global
forward hook and one global pre-hook (they put every module call on torch's slower hooked path).
Later traces reuse that order and hook only the modules asked for, so a module the model already
ran past is still refused. The order also says which modules will be running when the forward pauses at
a value (:meth:`OrderBook.running_at`): those are the only ones whose output can be asked for while they
run (a layer's output after one of its sublayers'), so only they need a wrapper installed in advance. A trace that pauses at events out of the recorded order (a model whose
control flow changed its module order) marks the record stale, and the next trace records again; the
trace confirms a refusal that only the record supports by running on (see ``Trace.read``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

__all__ = ["OrderBook", "Event"]

Event = tuple[torch.nn.Module, str]  # (module, "start" | "end")


def event_of(module: torch.nn.Module, kind: str) -> Event:
    return (module, "end" if kind == "output" else "start")


class OrderBook:
    """Tracks the forward's position against a known event order, or records that order."""

    def __init__(self, known: dict[Event, int] | None, memo: dict | None = None) -> None:
        self.known = known
        self._memo = {} if memo is None else memo   # running_at's answers for this known order, by (event, pos)
        self.recording = known is None
        self.events: dict[Event, int] = {}
        self.pos = -1
        self.last: torch.nn.Module | None = None
        self.stale = False
        self._handles: list[Any] = []
        self._mine: Callable[[], bool] = lambda: True

    def start(self, mine: Callable[[], bool] | None = None) -> None:
        """Record, when the order is not known yet. The global hooks see every module call of every thread;
        only calls for which ``mine()`` holds (the traced forward's own) are recorded."""
        if mine is not None:
            self._mine = mine
        if self.recording:
            self._handles = [register_module_forward_pre_hook(self._on_start),
                             register_module_forward_hook(self._on_end)]

    def stop(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _on_start(self, module: torch.nn.Module, args: Any) -> None:
        if self._mine():
            self.events.setdefault((module, "start"), len(self.events))

    def _on_end(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self._mine():
            self.events.setdefault((module, "end"), len(self.events))
            self.last = module

    def running_at(self, event: Event, candidates: list[torch.nn.Module]) -> list[torch.nn.Module] | None:
        """The ``candidates`` that start after the current position and are still running at ``event``: the
        modules that a pause at ``event`` will find half-way. ``None`` when the known order cannot tell (it is
        being recorded, is stale, does not contain ``event``, or places it before the current position: a read
        that only this pass can confirm): then any candidate may be running."""
        if self.recording or self.stale:
            return None
        target = self.known.get(event)
        if target is None or target <= self.pos:   # not in the order, or asked for after the order says it passed
            return None
        key = (event, self.pos, len(candidates))
        found = self._memo.get(key)
        if found is not None:
            return found
        found = []
        for m in candidates:
            start = self.known.get((m, "start"))
            if start is None:
                found.append(m)      # never ran when the order was recorded: it may run now
            elif self.pos < start <= target < self.known.get((m, "end"), target + 1):
                found.append(m)
        self._memo[key] = found
        return found

    def passed(self, module: torch.nn.Module, kind: str) -> bool:
        """Whether the forward is already past the moment ``module.<kind>`` is produced."""
        event = event_of(module, kind)
        if self.recording:
            return event in self.events
        index = self.known.get(event)
        return index is not None and index <= self.pos

    def paused_at(self, module: torch.nn.Module, kind: str) -> None:
        """Called when the forward pauses to hand out ``module.<kind>``."""
        self.last = module
        if self.recording:
            return
        index = self.known.get(event_of(module, kind))
        if index is None or index <= self.pos:
            self.stale = True
        else:
            self.pos = index
