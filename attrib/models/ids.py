"""Token ids in the forms users give them: ints (Python, numpy, 0-d tensors), lists of ints, numpy arrays.

>>> import numpy as np
>>> from attrib.models.ids import as_int, as_ids
>>> as_int(np.int64(3)), as_int(True), as_int(2.0)
(3, None, None)
>>> as_ids([1, 2, 3]), as_ids(np.array([[1, 2]])), as_ids([[1, 2], [3]]), as_ids(["a prompt"])
(tensor([1, 2, 3]), tensor([[1, 2]]), [[1, 2], [3]], None)

A list of ints is one row of token ids (like a 1-D tensor), a list of such lists a batch of rows, and a
numpy integer array is the tensor it converts to. A list that mixes prompts (strings) and ids is refused
with an :class:`~attrib.InputError` that names the first element of the other kind.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import InputError

__all__ = ["as_int", "as_ids", "short"]


def short(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to about ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "…" + text[-4:]


def as_int(value: Any) -> int | None:
    """``value`` as an int when it is one: a Python or numpy integer, or a 0-d integer tensor; never a bool."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, torch.Tensor):
        if value.dim() or value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            return None
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iu":
        return int(value)
    return None


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return "a string"
    if as_int(value) is not None:
        return "a token id"
    if isinstance(value, (list, tuple, np.ndarray)) or (isinstance(value, torch.Tensor) and value.dim() == 1):
        return "a row of ids"
    return f"a {type(value).__name__}"


def _row(value: Any) -> list[int] | None:
    """A non-empty row of ids (a list, tuple, 1-D array or 1-D tensor of ints), else None."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            return None
        value = value.tolist()
    elif isinstance(value, np.ndarray):
        if value.dtype.kind not in "iu":
            return None
        value = value.tolist()
    out = [as_int(v) for v in value]
    return [v for v in out if v is not None] if out and all(v is not None for v in out) else None


_LISTS = {"a string": "prompts (strings)", "a token id": "token ids (ints)", "a row of ids": "rows of token ids"}


def as_ids(value: Any, what: str = "the inputs") -> torch.Tensor | list[list[int]] | None:
    """Token ids given as a list or a numpy array: a numpy integer array or a list of ints becomes an int64
    tensor (one row: ``(T,)``), a list of rows of ints stays a list of rows (a batch, to be padded); ``None``
    when ``value`` is another kind of input (text, a tensor, a dict). A list that mixes kinds, or a numpy array
    that is not integer, raises :class:`~attrib.InputError` (``what`` names the argument)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iu" or value.size == 0:
            raise InputError(f"got a numpy array of {value.dtype} with shape {value.shape} as {what}; token ids must "
                             "be a non-empty integer array of shape (T,) or (N, T) (or pass text).")
        return torch.from_numpy(value.astype(np.int64))
    if not isinstance(value, (list, tuple)) or not value or all(isinstance(v, str) for v in value):
        return None
    kinds = [_kind(v) for v in value]
    first = kinds[0]
    if first not in _LISTS:
        raise InputError(f"element 0 of {what} {short(value)} is {short(value[0], 30)} ({first}), neither a prompt "
                         "(a string) nor a token id (an int); pass text, token ids or a list of either.")
    i = next((j for j, kind in enumerate(kinds) if kind != first), None)
    if i is not None:
        raise InputError(f"element {i} of {what} {short(value)} is {short(value[i], 30)} ({kinds[i]}), but element 0 "
                         f"is {first}; a list holds {_LISTS[first]} only, so pass one kind.")
    if first == "a token id":
        return torch.tensor([int(v) for v in value], dtype=torch.long)
    rows = [_row(v) for v in value]
    for j, row in enumerate(rows):
        if row is None:
            raise InputError(f"element {j} of {what} {short(value)} is {short(value[j], 30)}, not a non-empty row of "
                             "integer token ids; pass rows of ints.")
    return [row for row in rows if row is not None]
