"""Find the tensors inside a module value: a tensor, tuple, list, dict or ModelOutput."""

from __future__ import annotations

from typing import Any, Iterator

import torch

__all__ = ["tensors_in"]


def tensors_in(value: Any, _depth: int = 0) -> Iterator[torch.Tensor]:
    """Yield every tensor in ``value`` (nested containers, depth-first, in order)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif _depth > 6:
        return
    elif isinstance(value, dict):  # also ModelOutput
        for v in value.values():
            yield from tensors_in(v, _depth + 1)
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from tensors_in(v, _depth + 1)
