"""Module values: the tensors inside one (a tensor, tuple, list, dict or ModelOutput), and the check on an edit."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ValueEditError

__all__ = ["tensors_in", "check_edit"]


def tensors_in(value: Any) -> list[torch.Tensor]:
    """Every tensor in ``value`` (nested containers, depth-first, in order; six levels deep at most)."""
    if isinstance(value, torch.Tensor):       # the common case: a module's output is one tensor
        return [value]
    found: list[torch.Tensor] = []
    _collect(value, found, 0)
    return found


def _collect(value: Any, found: list[torch.Tensor], depth: int) -> None:
    if isinstance(value, torch.Tensor):
        found.append(value)
    elif depth > 6:
        return
    elif isinstance(value, dict):  # also ModelOutput
        for v in value.values():
            _collect(v, found, depth + 1)
    elif isinstance(value, (tuple, list)):
        for v in value:
            _collect(v, found, depth + 1)


def check_edit(path: str, old: Any, new: Any) -> None:
    """Refuse a tensor of another shape, dtype or device than the one it replaces at ``path`` (also element-wise
    in a tuple of the same length): the model would fail later, in another module, with torch's words."""
    pairs = [(None, old, new)]
    if isinstance(old, tuple) and isinstance(new, tuple) and len(old) == len(new):
        pairs = [(i, o, n) for i, (o, n) in enumerate(zip(old, new))]
    for i, o, n in pairs:
        if not (isinstance(o, torch.Tensor) and isinstance(n, torch.Tensor)):
            continue
        for what, want, got in (("shape", tuple(o.shape), tuple(n.shape)), ("dtype", o.dtype, n.dtype),
                                ("device", o.device, n.device)):
            if want != got:
                where = path + ("" if i is None else f"[{i}]")
                raise ValueEditError(
                    f"{where} was assigned a tensor of {what} {got}; expected {what} {want}, like the value it "
                    f"replaces (edit it in place, e.g. {where}[:] = ..., or convert with .to(...))."
                )
