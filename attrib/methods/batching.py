"""Run rows of work in planned batches (:mod:`attrib.methods.planning`), summing results per group.

>>> import torch
>>> from attrib.methods.batching import run_rows
>>> out = run_rows(lambda rows: rows.double().view(-1, 1), 6, lambda rows: rows % 2, 2, None, like=torch.zeros(1, 1))
>>> out.flatten().tolist()            # rows 0+2+4 and 1+3+5
[6.0, 9.0]
"""

from __future__ import annotations

from typing import Callable, Hashable

import torch

from .planning import each_chunk

__all__ = ["run_rows"]


def run_rows(run: Callable[[torch.Tensor], torch.Tensor], total: int, group: Callable[[torch.Tensor], torch.Tensor],
             n_groups: int, batch_size: int | None, like: torch.Tensor,
             remember: tuple[torch.nn.Module, Hashable] | None = None) -> torch.Tensor:
    """Σ over rows of ``run(rows)``, accumulated into ``n_groups`` by ``group(rows)``.

    ``batch_size`` rows per pass; ``None`` plans them from measured small passes and halves a pass that runs
    out of memory (:mod:`attrib.methods.planning`; ``remember=(module, key)`` keeps the plan for the next
    call with that key). A progress bar (tqdm) appears when the run takes longer than two seconds.
    """
    from tqdm.auto import tqdm

    summed: list[torch.Tensor] = []

    def add(rows: torch.Tensor) -> None:
        part = run(rows)
        if not summed:
            summed.append(torch.zeros((n_groups, *part.shape[1:]), dtype=part.dtype, device=part.device))
        summed[0].index_add_(0, group(rows).to(part.device), part)

    with tqdm(total=total, delay=2.0, unit="row", leave=False, disable=total <= 1) as bar:
        each_chunk(total, batch_size, like.device, add, remember, progress=bar.update)
    assert summed
    return summed[0]
