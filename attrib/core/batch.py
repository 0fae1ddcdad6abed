"""Invokes of one trace run as one batched forward: each invoke's body sees its own rows.

>>> import torch
>>> from attrib.core.batch import Lens
>>> lens = Lens(rows=3)
>>> lens.span = slice(1, 3)                      # the body of the invoke with rows 1 and 2 runs now
>>> batch = torch.arange(6.0).reshape(3, 2)
>>> lens.view(batch).tolist()                    # what it reads
[[2.0, 3.0], [4.0, 5.0]]
>>> lens.merge(batch, torch.zeros(2, 2)).tolist()   # what an assignment of it sets
[[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]

The invokes' inputs (a language model's token ids) are concatenated along the batch dimension (rows) and
the model runs once. Each body
runs in its own greenlet; a read that the forward has not reached yet parks the body, and the scheduler
(:func:`run_batch`) resumes the forward only when every body is parked or done, so the forward pauses at each
value some body asked for and hands it to the waiting bodies in invoke order (values flow from an invoke to
the later ones, as when they run one after another; a body that reads a name an earlier body binds starts
the next forward instead, since in a shared one it would start before the value exists). Through :class:`Lens`, a body's read of a value whose
first dimension is the batch returns its own rows (a view: edits in place reach the batch); an assignment
sets those rows; ``.grad`` of such a view is those rows of the batch value's gradient. A tensor whose first
dimension is not the batch (a position table's ``(1, T, d)``) is shared by the rows and handed over whole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

from ..errors import ValueEditError
from .patches import original_grad
from .switch import Coroutine

if TYPE_CHECKING:
    from .trace import Trace

__all__ = ["Lens", "run_batch", "concat_inputs"]


class Lens:
    """Row views of a batch's values for the body that runs now."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.span: slice | None = None     # the rows of the body running now
        self._views: dict[int, tuple[torch.Tensor, torch.Tensor, slice]] = {}
        self.shared: list[tuple[torch.Tensor, int]] = []   # values handed over whole, and their versions

    def view(self, value: Any) -> Any:
        span = self.span
        if span is None:
            return value
        return _map(value, lambda t: self._view(t, span))

    def _view(self, t: torch.Tensor, span: slice) -> torch.Tensor:
        if t.dim() == 0 or t.shape[0] != self.rows:
            self.shared.append((t, t._version))
            return t
        v = t[span]
        self._views[id(v)] = (v, t, span)
        return v

    def merge(self, whole: Any, new: Any) -> Any:
        """``whole`` with this body's rows set to ``new`` (same structure as the body's view of it)."""
        span = self.span
        if span is None:
            return new
        if isinstance(whole, torch.Tensor):
            if not isinstance(new, torch.Tensor):
                return new
            if whole.dim() == 0 or whole.shape[0] != self.rows:
                raise ValueEditError(
                    f"a value of shape {tuple(whole.shape)} whose first dimension is not the batch's {self.rows} rows "
                    "was assigned in an invoke of a batch: every invoke shares it, so the assignment would reach the "
                    "others; assign it in a trace of its own (`with model.trace(prompt):`), or assign a value that has "
                    "a row per prompt.")
            return torch.cat([whole[: span.start], new, whole[span.stop:]], 0)
        if isinstance(whole, (tuple, list)) and isinstance(new, (tuple, list)) and len(whole) == len(new):
            return _like(whole, [self.merge(w, n) for w, n in zip(whole, new)])
        if isinstance(whole, dict) and isinstance(new, dict):
            return _like(whole, {k: self.merge(whole[k], v) if k in whole else v for k, v in new.items()})
        return new

    def base_of(self, t: torch.Tensor) -> tuple[torch.Tensor, slice] | None:
        found = self._views.get(id(t))
        return None if found is None or found[0] is not t else (found[1], found[2])

    def keep_grads(self, kept: set[int], values: dict[int, torch.Tensor]) -> None:
        """After a backward: each view whose batch value got a ``.grad`` gets its rows of it."""
        for view, base, span in self._views.values():
            if id(base) in kept and values.get(id(base)) is base:
                grad = original_grad.__get__(base)
                if grad is not None:
                    original_grad.__set__(view, grad[span])

    def clear(self) -> None:
        self._views.clear()
        self.shared.clear()
        self.span = None


def _like(value: Any, items: list | dict) -> Any:
    """A container of ``value``'s type holding ``items``: a tuple, list or named tuple from a list; a dict or a
    ModelOutput (a dataclass, built from keywords) from a dict."""
    kind = type(value)
    if isinstance(items, dict):
        return kind(**items) if kind is not dict and hasattr(kind, "__dataclass_fields__") else items
    return kind(items) if kind in (tuple, list) else kind(*items)


def _map(value: Any, fn: Callable[[torch.Tensor], torch.Tensor], depth: int = 0) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if depth > 6:
        return value
    if isinstance(value, dict):
        return _like(value, {k: _map(v, fn, depth + 1) for k, v in value.items()})
    if isinstance(value, tuple):
        return _like(value, [_map(v, fn, depth + 1) for v in value])
    if isinstance(value, list):
        return [_map(v, fn, depth + 1) for v in value]
    return value


# -- inputs -------------------------------------------------------------------------------------------
def rows_of(args: tuple, kwargs: dict) -> int | None:
    """The batch size of one invoke's prepared inputs: the first dimension its tensors share, else None."""
    sizes = {t.shape[0] for t in _tensors(args, kwargs) if t.dim() > 0}
    return sizes.pop() if len(sizes) == 1 else None


def _tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    return [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]


def concat_inputs(prepared: list[tuple[tuple, dict]], plain: bool = False, offset: int = 0) -> tuple[tuple, dict] | None:
    """The invokes' inputs as one batch, or ``None`` when they cannot share one forward exactly (other
    lengths, shapes, dtypes, keywords or non-tensor arguments). ``plain``: inputs of a module of the user's own
    (not a language model's token ids), whose batch dimension is not known: not batched. ``offset``: the model's
    first position id (``LanguageModel.position_offset``)."""
    first_args, first_kwargs = prepared[0]
    if rows_of(first_args, first_kwargs) is None:
        return None
    if plain:       # a module of the user's own: which dimension is the batch (and which tensor is per row) is theirs
        return None
    kwarg_sets = [dict(kw) for _, kw in prepared]
    if all("attention_mask" in kw for kw in kwarg_sets) and any("position_ids" in kw for kw in kwarg_sets):
        for kw in kwarg_sets:             # an unpadded prompt's positions, written out like a padded one's
            if "position_ids" not in kw and isinstance(kw["attention_mask"], torch.Tensor):
                kw["position_ids"] = (kw["attention_mask"].long().cumsum(-1) - 1).clamp(min=0) + offset
    keys = list(kwarg_sets[0])
    if any(set(kw) != set(keys) or len(a) != len(first_args) for (a, _), kw in zip(prepared, kwarg_sets)):
        return None
    if any(rows_of(a, kw) is None for (a, _), kw in zip(prepared, kwarg_sets)):
        return None

    def joined(items: list[Any]) -> tuple[bool, Any]:
        if all(isinstance(x, torch.Tensor) for x in items):
            head = items[0]
            if head.dim() == 0 or any(x.shape[1:] != head.shape[1:] or x.dtype != head.dtype or x.device != head.device
                                      for x in items):
                return False, None
            return True, torch.cat(items, 0)
        if any(isinstance(x, torch.Tensor) for x in items):
            return False, None
        try:
            same = all(x is items[0] or x == items[0] for x in items)
        except Exception:                 # noqa: BLE001 - an argument whose == is not a bool: not batchable
            return False, None
        return (True, items[0]) if same is True else (False, None)

    args = []
    for i in range(len(first_args)):
        ok, value = joined([a[i] for a, _ in prepared])
        if not ok:
            return None
        args.append(value)
    kwargs = {}
    for key in keys:
        ok, value = joined([kw[key] for kw in kwarg_sets])
        if not ok:
            return None
        kwargs[key] = value
    return tuple(args), kwargs


# -- the scheduler ------------------------------------------------------------------------------------
class _Scheduler:
    """The trace's ``blocker``: a body's wait parks it; :meth:`run` resumes the forward for all."""

    def __init__(self, trace: "Trace", bodies: list[Callable[[], Any]], spans: list[slice],
                 before: Callable[[int], None], after: Callable[[int], None]) -> None:
        self.trace = trace
        self.spans = spans
        self.before, self.after = before, after
        self.bodies = [Coroutine(fn) for fn in bodies]
        self.waits: list[Callable[[], bool] | None] = [None] * len(bodies)
        self.running: int | None = None

    def waits_here(self) -> bool:
        i = self.running
        return i is not None and self.bodies[i].in_child

    def wait(self, done: Callable[[], bool], handoff: Any) -> None:
        i = self.running
        while not done() and not handoff.finished:
            self.waits[i] = done
            self.bodies[i].pause()
        self.waits[i] = None

    def _resume(self, i: int) -> None:
        lens = self.trace.lens
        self.running = i
        lens.span = self.spans[i]
        self.before(i)
        lens.shared = [(t, t._version) for t, _ in lens.shared]    # the model may have edited them since
        try:
            self.bodies[i].resume()
        finally:
            lens.span = None
            self.running = None
            self.after(i)
        for t, version in lens.shared:
            # a value every invoke's rows share, edited in place by this body, would change the others too
            if t._version != version:
                raise ValueEditError(
                    f"invoke {i + 1} of the batch edited in place a value of shape {tuple(t.shape)} whose first "
                    f"dimension is not the batch's {lens.rows} rows: every invoke shares it, so the edit would reach "
                    "the others; edit it in a trace of its own (`with model.trace(prompt):`), or edit a value that has "
                    "a row per prompt."
                )

    def run(self) -> None:
        trace, bodies = self.trace, self.bodies
        started = [False] * len(bodies)
        while True:
            progressed = False
            for i, body in enumerate(bodies):
                if body.finished:
                    continue
                wait = self.waits[i]
                if not started[i] or trace.finished or (wait is not None and wait()):
                    started[i] = True
                    self._resume(i)
                    progressed = True
            if all(b.finished for b in bodies):
                return
            if not progressed:
                trace._co.resume()           # on to the next value some body waits for (or the end)

    def close(self) -> None:
        for body in self.bodies:
            body.close()


def run_batch(trace: "Trace", bodies: list[Callable[[], Any]], spans: list[slice],
              before: Callable[[int], None], after: Callable[[int], None]) -> None:
    """Run ``bodies`` (one per invoke, rows ``spans`` of ``trace``'s batch) against one forward; ``before(i)``
    and ``after(i)`` run around each stretch of body ``i`` (to share the names the bodies bind)."""
    trace.lens = Lens(spans[-1].stop)
    scheduler = _Scheduler(trace, bodies, spans, before, after)
    trace.blocker = scheduler
    try:
        with trace:
            try:
                scheduler.run()
            finally:
                scheduler.close()       # a body left waiting unwinds while the trace's hooks are still there
    finally:
        trace.blocker = None
        trace.lens.clear()
        trace.lens = None
