"""Make what a failed pass allocated unreachable as soon as its exception leaves attrib.

>>> import torch, weakref
>>> from attrib.core.release import release
>>> refs = []
>>> def forward():
...     big = torch.ones(1000)
...     refs.append(weakref.ref(big))
...     raise ValueError("boom")
>>> try:
...     forward()
... except ValueError as err:
...     release(err)
...     alive = refs[0]() is not None
>>> alive
False

An exception keeps every frame it passed through alive (``err.__traceback__``), and with them their
local variables: a model's activations, a trace's values, a batch of interpolation points. Python frees
them only when the exception object goes, and a cycle (a frame that holds the object that holds the
exception, as a greenlet's run frame does) postpones that until the cycle collector happens to run, which
on a GPU means a card that stays full after an out-of-memory error. :func:`release` clears the locals of
every frame that has finished, in the exception and in the ones it was raised from (``__cause__`` and
``__context__``); the source lines of the traceback are kept. Frames still running (the caller's) are
left alone.
"""

from __future__ import annotations

import functools
import gc
import os
import sys
import types
from typing import Any, Callable, TypeVar

import torch

from .walk import remembered

__all__ = ["release", "releasing", "is_oom", "free_after_oom"]

F = TypeVar("F", bound=Callable[..., Any])


def release(err: BaseException | None) -> None:
    """Clear the finished frames of ``err``'s traceback and of every exception chained to it."""
    if err is None:
        return
    running = set()
    frame = sys._getframe(1)
    while frame is not None:
        running.add(id(frame))
        frame = frame.f_back
    seen: set[int] = set()
    todo = [err]
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None:
            if id(tb.tb_frame) not in running:
                _clear(tb.tb_frame)
            tb = tb.tb_next
        todo += [exc.__cause__, exc.__context__]


# Frames whose nested functions never outlive them: torch's hooked module call (its ``inner`` closure holds
# the call's args and result) and attrib's own code.
_OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PRIVATE_CLOSURES = {torch.nn.Module._call_impl.__code__}


def _clear(frame: types.FrameType) -> None:
    """Clear a finished frame's locals. ``frame.clear()`` keeps the cells that its nested functions share
    with it (a frame in the traceback keeps its function, and so those cells); for frames known to keep
    their nested functions private, empty those cells too. (The frame's referents are read with ``gc``:
    ``frame.f_locals`` would make a dict of the locals that ``clear()`` leaves in place.)"""
    code = frame.f_code
    if code.co_cellvars and (code in _PRIVATE_CLOSURES or code.co_filename.startswith(_OWN_DIR)):
        own = set(code.co_cellvars)
        for value in gc.get_referents(frame):
            if isinstance(value, types.FunctionType) and value.__closure__ and value.__code__ in code.co_consts:
                for name, cell in zip(value.__code__.co_freevars, value.__closure__):
                    if name in own:
                        cell.cell_contents = None
    try:
        frame.clear()
    except RuntimeError:  # a suspended generator's frame
        pass


def releasing(fn: F) -> F:
    """Decorate a public entry point: an exception leaving it has its finished frames released, and inside it the
    model's tree is read once (:func:`attrib.core.walk.remembered`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with remembered():              # the model's modules, parameters and devices: read once a call
                return fn(*args, **kwargs)
        except BaseException as err:
            release(err)
            raise

    return wrapper  # type: ignore[return-value]


def is_oom(err: BaseException) -> bool:
    """An out-of-memory error of torch on any device (also cuBLAS failing to allocate its workspace)."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        s in text for s in ("out of memory", "can't allocate memory", "CUBLAS_STATUS_ALLOC_FAILED"))


def free_after_oom(err: BaseException, device: torch.device) -> None:
    """Before a retry with a smaller batch: release what the failed attempt allocated, then hand the
    allocator's cached blocks back, so that the retry starts with the memory the first attempt had."""
    release(err)
    if device.type == "cuda" and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
