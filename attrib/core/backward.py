"""Ordered backward contexts: ``with loss.backward():`` inside a trace.

>>> import torch, attrib
>>> net = attrib.Model(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1)))
>>> with net.trace(torch.ones(1, 2)):
...     hidden = net[0].output
...     out = net.output
...     with out.sum().backward():
...         g_out = out.grad.save()          # reverse execution order: the output first
...         hidden.grad[:] = 0               # edit what flows further back
>>> g_out.tolist()
[[1.0]]

The backward runs in a greenlet (:mod:`attrib.core.handoff`, as the trace's forward does):
``torch.autograd.grad(loss, touched, allow_unused=True)``, where
``touched`` are the tensors the trace handed out. It computes no parameter gradient unless asked
(``backward(inputs=[...])`` or ``model.trace(..., param_grads=True)``). Each touched tensor gets a
hook when the context starts; the hook of the tensor whose ``.grad`` the user reads pauses the
backward and hands the user a private copy of the gradient, which it returns to autograd when the
user moves on: an in-place edit changes this tensor's gradient only, never the other branch of an add.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Sequence

import torch

from ..errors import (GradientValueError, NestedBackwardError, NoGradError, NonScalarLossError, NotOnPathError,
                      OutOfOrderError)
from .handoff import Handoff
from .patches import GRAD, original_grad, translate
from .current import local

if TYPE_CHECKING:
    from .trace import Trace

__all__ = ["BackwardContext"]


def _tensor_list(inputs: Any) -> list[torch.Tensor]:
    """``backward(inputs=...)`` as a list of leaf tensors, or a clear error."""
    try:
        found = list(inputs)
    except TypeError:
        found = [inputs]
    for i, t in enumerate(found):
        if not isinstance(t, torch.Tensor):
            raise GradientValueError(
                f"backward(inputs=...) takes tensors whose gradients to compute, got {type(t).__name__} "
                f"{t!r:.40} at position {i}; pass the tensors themselves (e.g. inputs=[model.module.lm_head.weight])."
            )
    return found


class BackwardContext(Handoff):
    """One ``with loss.backward(...):`` block. Made by the patched ``Tensor.backward`` in a trace."""

    _again = "`with loss.backward():`"

    def __init__(self, trace: "Trace", loss: torch.Tensor, gradient: torch.Tensor | None = None,
                 retain_graph: bool | None = None, create_graph: bool = False,
                 inputs: torch.Tensor | Sequence[torch.Tensor] | None = None) -> None:
        if not loss.requires_grad:
            raise NoGradError(
                "`with loss.backward():` needs a loss that requires grad; this one was computed without "
                "grad (torch.no_grad(), .detach(), or integer-only inputs)."
            )
        if gradient is None:
            if loss.numel() != 1:
                raise NonScalarLossError(
                    f"`with loss.backward():` got a loss of shape {tuple(loss.shape)} and no gradient: reduce it "
                    "to a scalar (loss.sum()) or pass gradient=torch.ones_like(loss)."
                )
            gradient = torch.ones_like(loss)
        elif gradient.shape != loss.shape:
            raise GradientValueError(
                f"backward(gradient=...) expected shape {tuple(loss.shape)} like the loss, got {tuple(gradient.shape)}."
            )
        self.trace = trace
        self.loss = loss
        self.gradient = gradient
        if trace.lens is not None:     # the invokes of a batch share one graph: the later ones backward through it
            retain_graph = True         # (it is freed with the trace)
        elif retain_graph is None:
            retain_graph = create_graph
        self.retain_graph = retain_graph
        self.create_graph = create_graph
        if inputs is None:
            module = trace.model.module
            self.inputs = [p for p in module.parameters() if p.requires_grad] if trace.param_grads else []
        else:
            self.inputs = [inputs] if isinstance(inputs, torch.Tensor) else _tensor_list(inputs)
        self._tensors: dict[int, torch.Tensor] = {}
        self._seq: dict[int, int | None] = {}
        self._handles: list[Any] = []
        self._fired: set[int] = set()
        self._pos: int | None = None
        self._pos_key: int | None = None
        self._want: int | None = None
        self._entered = False

    # -- lifecycle (see Handoff) ----------------------------------------------------------------
    def _setup(self) -> None:
        if local.backward is not None:
            raise NestedBackwardError("backward contexts cannot be nested; close the open `with ....backward():` "
                                      "block first.")
        local.backward = self
        GRAD.acquire()
        self.trace.backward_started()     # after acquiring: the trace's hold passes on, torch.Tensor is not touched
        self._entered = True
        self._hook(self.loss)
        for t in self.trace.touched():
            if t.requires_grad:
                self._hook(t)

    def _cleanup(self, failed: bool) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._tensors.clear()
        # the loss holds the whole graph (and through it the forward's saved activations)
        self.loss = self.gradient = None  # type: ignore[assignment]
        self.inputs = []
        if self._entered:
            local.backward = None
            GRAD.release()
            self._entered = False

    def _run(self) -> None:
        targets = list(self._tensors.values())
        wanted = targets + self.inputs
        if not wanted:
            return
        try:
            with torch.autograd.set_multithreading_enabled(False):  # hooks must fire on this thread
                grads = torch.autograd.grad(
                    (self.loss,), wanted, (self.gradient,), retain_graph=self.retain_graph,
                    create_graph=self.create_graph, allow_unused=True,
                )
        except RuntimeError as err:
            better = translate(err)
            if better is None:
                raise
            raise better from None
        # The values read in the trace keep the gradient this pass gave them in ``.grad`` (summed over the
        # trace's contexts, as retain_grad() would), so ``h.grad`` read after the block is that value.
        kept, values = self.trace.grads_kept, self.trace._touched
        for t, grad in zip(targets, grads):
            # only the trace's values: they live as long as the trace, so their ids in ``kept`` are not reused
            # (the loss of an earlier context, freed since, may share its id with this one)
            if grad is not None and t.grad_fn is not None and values.get(id(t)) is t:
                # torch warns when an unset non-leaf .grad is read: read it only where one was set
                old = original_grad.__get__(t) if t.retains_grad or id(t) in kept else None
                original_grad.__set__(t, grad if old is None else old + grad)
                kept.add(id(t))
        if self.trace.lens is not None:
            self.trace.lens.keep_grads(kept, values)
        for param, grad in zip(self.inputs, grads[len(targets):]):
            if grad is not None:
                old = original_grad.__get__(param)
                original_grad.__set__(param, grad if old is None else old + grad)

    # -- hooks --------------------------------------------------------------------------------
    def _hook(self, t: torch.Tensor) -> None:
        key = id(t)
        if key in self._tensors:
            return
        self._tensors[key] = t
        self._seq[key] = t.grad_fn._sequence_nr() if t.grad_fn is not None else None
        self._handles.append(t.register_hook(lambda grad, key=key: self._on_grad(key, grad)))

    def _on_grad(self, key: int, grad: torch.Tensor) -> torch.Tensor | None:
        self._fired.add(key)
        seq = self._seq.get(key)
        if seq is not None and (self._pos is None or seq < self._pos):
            self._pos, self._pos_key = seq, key
        if key != self._want:
            return None
        out = self.offer(key, grad.clone())
        if out.shape != grad.shape:     # an in-place edit that changed the shape (resize_, unsqueeze_...)
            raise GradientValueError(
                f"the gradient of {self._label(self._tensors[key])} was changed in place to shape {tuple(out.shape)}; "
                f"expected shape {tuple(grad.shape)}, like the gradient it replaces: edit its values, not its shape."
            )
        return out

    # -- the user's side ----------------------------------------------------------------------
    def intercepts(self, t: torch.Tensor) -> bool:
        """Whether ``t.grad`` means "the gradient in this backward pass" for ``t``."""
        if not self._entered or self.in_child:
            return False
        # Everything but parameters and the leaves passed in ``inputs=``: their .grad keeps torch's meaning
        # (filled when the backward ends). Another leaf gets no gradient from the pruned backward: say so.
        if id(t) in self._tensors or not t.requires_grad or t.grad_fn is not None:
            return True
        return not isinstance(t, torch.nn.Parameter) and not any(t is i for i in self.inputs)

    def _label(self, t: torch.Tensor) -> str:
        return "the loss" if t is self.loss else self.trace.label(t)

    def _where(self) -> str:
        if self._pos_key is None:
            return "it had not started"
        return f"it was at {self._label(self._tensors[self._pos_key])}"

    def read(self, t: torch.Tensor) -> torch.Tensor:
        rows = self._rows_of(t)
        if rows is not None:             # an invoke's rows of a batch's value: the rows of that value's gradient
            return self.read(rows[0])[rows[1]]
        key = id(t)
        if key == self.current_key:
            return self.current
        if key in self._fired:
            raise self._too_late(t)
        if self.finished:
            raise self._no_gradient(t, finished=True)
        if key not in self._tensors:
            self._check_lazy(t)
            self._hook(t)
        self._want = key
        try:
            self.wait_for(lambda: self.current_key == key)
        finally:
            self._want = None
        if self.current_key != key:
            raise self._no_gradient(t, finished=True)
        return self.current

    def write(self, t: torch.Tensor, value: Any) -> None:
        rows = self._rows_of(t)
        if rows is not None:
            whole = self.read(rows[0])
            self._check_value(t, whole[rows[1]], value)
            whole = whole.clone()
            whole[rows[1]] = value
            self.replace(whole)
            return
        if id(t) != self.current_key:
            self.read(t)
        self._check_value(t, self.current, value)
        self.replace(value)

    def _rows_of(self, t: torch.Tensor) -> tuple[torch.Tensor, slice] | None:
        lens = self.trace.lens
        return None if lens is None else lens.base_of(t)

    def _check_value(self, t: torch.Tensor, current: torch.Tensor, value: Any) -> None:
        if not isinstance(value, torch.Tensor):
            raise GradientValueError(
                f"the gradient of {self._label(t)} must be set to a tensor, got {type(value).__name__}."
            )
        for what, want, got in (("shape", tuple(current.shape), tuple(value.shape)),
                                ("dtype", current.dtype, value.dtype), ("device", current.device, value.device)):
            if want != got:
                raise GradientValueError(
                    f"the gradient of {self._label(t)} was assigned a tensor of {what} {got}; expected {what} "
                    f"{want}, like the gradient it replaces."
                )

    # -- diagnosis ----------------------------------------------------------------------------
    def _check_lazy(self, t: torch.Tensor) -> None:
        if not t.requires_grad or t.grad_fn is None:
            raise self._no_gradient(t)
        seq = t.grad_fn._sequence_nr()
        if self._pos is not None and seq >= self._pos:
            if self._reaches(t):
                raise self._too_late(t)
            raise self._no_gradient(t)
        if self.started and not self._reaches(t):
            raise self._no_gradient(t)

    def _too_late(self, t: torch.Tensor) -> OutOfOrderError:
        return OutOfOrderError(
            f"the gradient of {self._label(t)} was read after the backward pass had computed it "
            f"({self._where()}); read gradients in reverse execution order, last computed value first."
        )

    def _reaches(self, t: torch.Tensor) -> bool:
        """Whether the loss's graph contains ``t``'s node (walks the graph: error paths only)."""
        node = t.grad_fn
        if node is None or self.loss.grad_fn is None:
            return False
        want = (node._sequence_nr(), node.name())
        seen: set[int] = set()
        todo = deque([self.loss.grad_fn])
        while todo:
            n = todo.popleft()
            if n is None or id(n) in seen:
                continue
            seen.add(id(n))
            if (n._sequence_nr(), n.name()) == want:
                return True
            todo.extend(nxt for nxt, _ in n.next_functions)
        return False

    def _no_gradient(self, t: torch.Tensor, finished: bool = False) -> OutOfOrderError:
        """Why ``t`` gets no gradient: :class:`NotOnPathError`, or an :class:`OutOfOrderError` when the
        backward already ran past it."""
        label = self._label(t)
        if not t.requires_grad:
            why = "it does not require grad (it was detached or computed under torch.no_grad())"
        elif t.grad_fn is None:
            why = ("it is a leaf that was not read in the trace before this context, so the pruned backward does "
                   "not compute its gradient; pass it in backward(inputs=[...])")
        elif not self._reaches(t):
            why = "it is not on the path from the loss: the loss does not depend on it"
            if label == "this tensor":
                why += (" (a tensor made in the block from a module value, like output[0] of a tensor output, "
                        "is not used by the model; read the gradient of the module value itself)")
        elif finished:
            why = ("the pruned backward did not reach it: no value read in the trace before the context lies "
                   "behind it; read it in the trace before `with ....backward():`")
        else:
            return OutOfOrderError(f"{label} gets no gradient from this backward: the backward pass had already "
                                   "run past it; read gradients in reverse execution order, last computed value first.")
        return NotOnPathError(f"{label} gets no gradient from this backward: {why}.")
