"""A model's modules and parameters, walked without building their names: what per-call checks need.

>>> import torch
>>> from attrib.core.walk import modules, parameters, remembered
>>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
>>> list(modules(net)) == list(net.modules()) and list(parameters(net)) == list(net.parameters())
True
>>> with remembered():                      # one public call: the tree is walked once
...     modules(net) is modules(net)
True

``Module.modules()`` and ``Module.parameters()`` go through ``named_modules``, which builds every module's dotted
name and recurses through generators. A compiled single-prompt call walked a 30-layer model four times (the
grad-mode check, the devices of the planner twice, the parameters frozen for the call): on an H200's host about
3 ms of a 20 ms call, before its first kernel. These walks give the same modules and parameters in the same order
(pre-order, each object once), and inside :func:`remembered` (every public method's call, see
:func:`attrib.core.release.releasing`) each root is walked once: a method call does not add or move modules
with parameters (attention probes, which it may add, hold none).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Hashable, Iterator, TypeVar

import torch

__all__ = ["modules", "parameters", "buffers", "remembered", "memoized"]

T = TypeVar("T")
_memo: contextvars.ContextVar[dict[Hashable, tuple[torch.nn.Module, Any]] | None] = \
    contextvars.ContextVar("attrib_walk_memo", default=None)


@contextlib.contextmanager
def remembered() -> Iterator[None]:
    """Within the block (and the blocks it opens), each root's walk and :func:`memoized` values are kept."""
    if _memo.get() is not None:
        yield
        return
    token = _memo.set({})
    try:
        yield
    finally:
        _memo.reset(token)


def memoized(kind: str, root: torch.nn.Module, compute: Callable[[torch.nn.Module], T]) -> T:
    """``compute(root)``, once per ``kind`` and root inside :func:`remembered`, every time outside it."""
    memo = _memo.get()
    if memo is None:
        return compute(root)
    key = (kind, id(root))
    hit = memo.get(key)
    if hit is not None and hit[0] is root:
        return hit[1]
    value = compute(root)
    memo[key] = (root, value)
    return value


def modules(root: torch.nn.Module) -> tuple[torch.nn.Module, ...]:
    """``tuple(root.modules())``: ``root`` and every submodule, pre-order, each once."""
    return memoized("tree", root, _tree)[0]


def parameters(root: torch.nn.Module) -> tuple[torch.nn.Parameter, ...]:
    """``tuple(root.parameters())``: every parameter of ``root`` and its submodules, each once (tied ones too)."""
    return memoized("tree", root, _tree)[1]


def buffers(root: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    """``tuple(root.buffers())``: every buffer of ``root`` and its submodules, each once."""
    return memoized("tree", root, _tree)[2]


def _tree(root: torch.nn.Module) -> tuple[tuple[torch.nn.Module, ...], tuple[torch.nn.Parameter, ...],
                                          tuple[torch.Tensor, ...]]:
    """(modules, parameters, buffers) in one pre-order walk, each object once."""
    seen: set[int] = set()
    seen_params: set[int] = set()
    seen_buffers: set[int] = set()      # (a tensor may be one module's parameter and another's buffer)
    found: list[torch.nn.Module] = []
    params: list[torch.nn.Parameter] = []
    bufs: list[torch.Tensor] = []
    stack = [root]
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        found.append(m)
        for p in m._parameters.values():
            if p is not None and id(p) not in seen_params:
                seen_params.add(id(p))
                params.append(p)
        for b in m._buffers.values():
            if b is not None and id(b) not in seen_buffers:
                seen_buffers.add(id(b))
                bufs.append(b)
        children = [c for c in m._modules.values() if c is not None]
        children.reverse()
        stack.extend(children)
    return tuple(found), tuple(params), tuple(bufs)
