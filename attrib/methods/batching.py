"""Run rows of work in batches, halving the batch on out-of-memory, summing results per group.

>>> import torch
>>> from attrib.methods.batching import run_rows
>>> out = run_rows(lambda rows: rows.double().view(-1, 1), 6, lambda rows: rows % 2, 2, 4, like=torch.zeros(1, 1))
>>> out.flatten().tolist()            # rows 0+2+4 and 1+3+5
[6.0, 9.0]
"""

from __future__ import annotations

import weakref
from typing import Callable, Hashable

import torch

from ..core.release import free_after_oom, is_oom

__all__ = ["run_rows"]

# The batch size that last fitted, per module and per kind of work: later calls start there instead of
# finding it again by running out of memory.
_fitted: "weakref.WeakKeyDictionary[torch.nn.Module, dict[Hashable, int]]" = weakref.WeakKeyDictionary()


def run_rows(run: Callable[[torch.Tensor], torch.Tensor], total: int, group: Callable[[torch.Tensor], torch.Tensor],
             n_groups: int, batch_size: int | None, like: torch.Tensor,
             remember: tuple[torch.nn.Module, Hashable] | None = None) -> torch.Tensor:
    """Σ over rows of ``run(rows)``, accumulated into ``n_groups`` by ``group(rows)``.

    ``batch_size=None`` starts with every row in one pass; an out-of-memory error halves the batch and
    retries the same rows (the sum is then what that batch size gives); with ``remember=(module, key)`` the
    size that fitted is kept and the next call with that key starts from it. A progress bar (tqdm) appears
    when the run takes longer than two seconds.
    """
    from tqdm.auto import tqdm

    size = total if batch_size is None else max(1, int(batch_size))
    memo = None if remember is None or batch_size is not None else _fitted.setdefault(remember[0], {})
    if memo is not None and remember[1] in memo:
        size = min(size, memo[remember[1]])
    device = like.device
    summed: torch.Tensor | None = None
    start = 0
    with tqdm(total=total, delay=2.0, unit="row", leave=False, disable=total <= 1) as bar:
        while start < total:
            rows = torch.arange(start, min(start + size, total), device=device)
            try:
                part = run(rows)
            except BaseException as err:
                if batch_size is None and size > 1 and is_oom(err):
                    free_after_oom(err, device)  # the failed attempt's tensors are gone before the retry
                    size = max(1, size // 2)
                    if memo is not None:
                        memo[remember[1]] = size
                    continue
                raise
            if summed is None:
                summed = torch.zeros((n_groups, *part.shape[1:]), dtype=part.dtype, device=part.device)
            summed.index_add_(0, group(rows).to(part.device), part)
            start += rows.numel()
            bar.update(rows.numel())
    assert summed is not None
    return summed
