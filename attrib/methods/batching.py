"""Run rows of work in planned batches (:mod:`attrib.methods.planning`), summing results per group.

>>> import torch
>>> from attrib.methods.batching import run_rows
>>> out = run_rows(lambda rows: rows.double().view(-1, 1), 6, lambda rows: rows % 2, 2, None, like=torch.zeros(1, 1))
>>> out.flatten().tolist()            # rows 0+2+4 and 1+3+5
[6.0, 9.0]
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Hashable, Iterator

import torch

from ..core.model import Model
from ..models.language import LanguageModel
from .planning import Remember, each_chunk

__all__ = ["run_rows", "plan_key", "progress_bars"]

_bars: contextvars.ContextVar[bool] = contextvars.ContextVar("attrib_progress_bars", default=True)


@contextlib.contextmanager
def progress_bars(shown: bool) -> Iterator[None]:
    """Within the block, :func:`run_rows` shows its progress bar only if ``shown`` (a dataset run with
    ``progress=False`` turns them off). Per thread and per asyncio task (a context variable).

    >>> with progress_bars(False):
    ...     _ = run_rows(lambda rows: rows.double().view(-1, 1), 3, lambda rows: rows, 3, None, like=torch.zeros(1))
    """
    token = _bars.set(shown)
    try:
        yield
    finally:
        _bars.reset(token)


def plan_key(model: Model, kind: tuple[Hashable, ...], values: torch.Tensor, tokens: int | None = None) -> Remember:
    """``remember=`` for :func:`run_rows` over the items of ``values`` (items first), ``kind`` naming the work:
    ``(module, (*kind, shape, dtype))`` with the exact shape, or for a decoder-only language model
    ``(module, key, tokens)``, the positions a row runs (by default ``values.shape[1]``) left out of the key,
    so that a plan measured at one length serves the others (:mod:`attrib.methods.planning`)."""
    shape = tuple(values.shape[1:])
    if not isinstance(model, LanguageModel) or model.is_encoder_decoder or not shape:
        return (model.module, (*kind, shape, values.dtype))
    tokens = shape[0] if tokens is None else tokens
    return (model.module, (*kind, shape[1:] if shape[0] == tokens else shape, values.dtype), tokens)


def run_rows(run: Callable[[torch.Tensor], torch.Tensor], total: int, group: Callable[[torch.Tensor], torch.Tensor],
             n_groups: int, batch_size: int | None, like: torch.Tensor, remember: Remember | None = None
             ) -> torch.Tensor:
    """Σ over rows of ``run(rows)``, accumulated into ``n_groups`` by ``group(rows)``.

    ``batch_size`` rows per pass; ``None`` plans them from measured small passes and halves a pass that runs
    out of memory (:mod:`attrib.methods.planning`; ``remember`` (:func:`plan_key`) keeps the plan for the next
    call of that kind of work). A progress bar (tqdm) appears when the run takes longer than two seconds,
    unless :func:`progress_bars` turned them off.
    """
    from tqdm.auto import tqdm

    summed: list[torch.Tensor] = []

    def add(rows: torch.Tensor) -> None:
        part = run(rows)
        if not summed:
            summed.append(torch.zeros((n_groups, *part.shape[1:]), dtype=part.dtype, device=part.device))
        summed[0].index_add_(0, group(rows).to(part.device), part)

    with tqdm(total=total, delay=2.0, unit="row", leave=False, disable=total <= 1 or not _bars.get()) as bar:
        each_chunk(total, batch_size, like.device, add, remember, progress=bar.update)
    assert summed
    return summed[0]
