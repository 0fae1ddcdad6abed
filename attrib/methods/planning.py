"""Rows per pass: ``batch_size=None`` plans them from two measured small passes.

>>> import torch
>>> from attrib.methods.planning import each_chunk
>>> seen = []
>>> size, passes = each_chunk(10, 3, torch.device("cpu"), lambda rows: seen.append(rows.tolist()))
>>> seen
[[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]

How ``batch_size=None`` chooses (every batched method runs its rows through here):

1. Two small passes (8 then 16 rows on a GPU, 4 then 8 on a CPU) are measured on every device the model
   computes on: how far memory rose above where it stood, less what the pass left allocated for good (a
   library's workspace, made once; ``attrib.core.memory.PeakMeter``). A straight line through the two
   points gives the memory one row takes and what a pass takes whatever its rows. A one-time cost the meter
   cannot tell apart (a transient allocation of the first pass only) would flatten the line, so the per-row
   figure is at least half the second pass's average on a GPU, and all of it on a CPU, where an
   over-estimate cannot be caught as an error.
2. The rows that fit (on the fullest device) are the memory actually free now (``free_memory``: on a GPU what the driver reports
   plus what torch's allocator holds unused; on a CPU ``MemAvailable`` or the cgroup's room), times a margin
   (0.9 on a GPU; 0.5 on a CPU, where running out is the kernel killing the process rather than an error,
   shared among the ranks a ``torchrun`` started on the host), less the fixed part, over the per-row part.
3. A GPU then runs passes of that many rows: its throughput keeps rising with the batch. A CPU's does not
   (caches), so a CPU keeps doubling the rows from the probes, within the memory bound, until two doublings
   in a row fail to raise rows per second by 5%, and stays at the fastest size found. The search goes on
   across calls with the same key (a call too short for the next size runs all its rows in one pass).
4. The plan is kept per model and kind of work (the ``remember`` key): a later call with the same key
   skips the probes and plans from the memory free then.

An out-of-memory error still halves the batch and retries the same rows (after releasing everything the
failed pass held); halving from above what fits lands between half of it and all of it, and the size
that fitted caps later plans for that key. A ``batch_size`` the caller chose is used as given, and an
out-of-memory error with it reaches the caller.
"""

from __future__ import annotations

import contextlib
import os
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

import torch

from ..core.devices import compute_devices
from ..core.memory import PeakMeter, free_memory
from ..core.release import free_after_oom, is_oom

__all__ = ["each_chunk", "Planner", "Cost"]

PROBE = {"cuda": 8}       # rows of the first measured pass per device type; others: DEFAULT_PROBE
DEFAULT_PROBE = 4
MARGIN = {"cuda": 0.9}     # share of the free memory a plan may take; others: DEFAULT_MARGIN
DEFAULT_MARGIN = 0.5
FLOOR = {"cuda": 0.5}      # the per-row cost is at least this share of the second probe's average; others: 1
GAIN = 1.05                # a CPU doubles its rows while that raises rows per second by at least this factor
clock = time.perf_counter  # what passes are timed with


@dataclass
class Cost:
    """What a pass of some kind of work costs on one model: memory on each device it computes on, and (CPU)
    the size that ran fastest."""
    lines: dict[str, tuple[float, float]] = field(default_factory=dict)   # device -> (fixed, per-row bytes)
    best: int | None = None             # CPU: the size past which more rows stopped paying
    tried: dict[int, float] = field(default_factory=dict)   # CPU, still growing: rows/s of each size run
    next: int | None = None             # CPU, still growing: the size to try next (also in the next call)
    cap: int | None = None              # halved after running out of memory: never plan above this

    @property
    def measured(self) -> bool:
        return bool(self.lines)

    def fits(self) -> int | None:
        """Rows that fit in the memory free now on every device measured (``None``: unknown)."""
        rows = None
        for name, (fixed, per_row) in self.lines.items():
            device = torch.device(name)
            free = free_memory(device)
            if free is None:
                continue
            room = free * MARGIN.get(device.type, DEFAULT_MARGIN) / _ranks_sharing(device) - fixed
            here = max(1, int(room // max(per_row, 1.0)))
            rows = here if rows is None else min(rows, here)
        return rows


# The plan per model and kind of work.
_plans: "weakref.WeakKeyDictionary[torch.nn.Module, dict[Hashable, Cost]]" = weakref.WeakKeyDictionary()


def _ranks_sharing(device: torch.device) -> int:
    """Processes of one ``torchrun`` that share this host's memory (each GPU rank has its own card)."""
    if device.type == "cuda":
        return 1
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


class Planner:
    """The size of each pass of one run of ``total`` rows (see the module's docstring). ``device``: where the
    rows are computed (the input device: its type sets the policy); ``devices``: every device whose memory the
    passes use (a model dispatched over several GPUs), by default ``[device]``."""

    def __init__(self, total: int, batch_size: int | None, device: torch.device,
                 remember: tuple[torch.nn.Module, Hashable] | None = None,
                 devices: Sequence[torch.device] | None = None) -> None:
        self.total, self.chosen, self.device = total, batch_size, device
        self.devices = list(devices) if devices else [device]
        self.cost = Cost()
        if batch_size is None and remember is not None:
            self.cost = _plans.setdefault(remember[0], {}).setdefault(remember[1], self.cost)
        self.can_measure = True
        self.points: list[tuple[int, dict[str, int]]] = []     # (rows, peak bytes per device) of the probes
        self.size = self._first()

    @property
    def _cpu_like(self) -> bool:
        """Whether throughput stops rising with the batch well before memory runs out (every device but CUDA)."""
        return self.device.type != "cuda"

    def _first(self) -> int:
        if self.chosen is not None:
            return max(1, self.chosen)
        if self.cost.measured or self.cost.best is not None or self.cost.tried:
            return self._planned()          # planned before: no probes
        return PROBE.get(self.device.type, DEFAULT_PROBE)

    def _planned(self) -> int:
        size = self.cost.fits()
        if self._cpu_like:
            grow = self.cost.best or self.cost.next or (max(self.cost.tried) if self.cost.tried else DEFAULT_PROBE)
            size = grow if size is None else min(size, grow)
        if size is None:        # a device that cannot tell its free memory: every row, halved on OOM
            size = self.total
        return max(1, min(size, self.cost.cap or size))

    @property
    def settled(self) -> bool:
        """Whether the plan is made: no pass left to measure, and (CPU) the search for the fastest size over."""
        return not self.measuring and (not self._cpu_like or self.cost.best is not None)

    @property
    def measuring(self) -> bool:
        """Whether the next pass is a probe, to be run inside a :class:`PeakMeter`."""
        return self.chosen is None and self.can_measure and not self.cost.measured and len(self.points) < 2

    def next_rows(self, remaining: int) -> int:
        """Rows of the next pass. Once planned, the rows left are split into equal passes of at most the
        planned size (8,704 rows at 4,036 a pass: 2,902 × 3, not 4,036 + 4,036 + 632, whose short last pass
        runs below the card's throughput)."""
        size = max(1, min(self.size, remaining))
        if self.chosen is None and self.settled:
            passes = -(-remaining // size)
            size = -(-remaining // passes)
        return size

    def ran(self, rows: int, seconds: float, peak: dict[str, int] | None) -> None:
        """A pass of ``rows`` rows ran in ``seconds`` and raised memory by ``peak`` bytes per device (if
        measured)."""
        if self.chosen is not None:
            return
        if self.measuring:
            if not peak:                # this platform cannot measure: plan by speed alone
                self.can_measure = False
            else:
                self.points.append((rows, peak))
                if len(self.points) == 2:
                    self._fit_line()
        if self._cpu_like and self.cost.best is None:
            self._grow(rows, seconds)
        elif self.measuring:            # a GPU after its first probe: the second one
            self.size = min(2 * rows, self.cost.cap or 2 * rows)
        else:
            self.size = self._planned()

    def finish(self) -> None:
        """The run ended after a single probe: plan later runs from that one point."""
        if self.chosen is None and not self.cost.measured and len(self.points) == 1:
            self._fit_line()

    def _fit_line(self) -> None:
        """Per device, the line through the two measured passes."""
        (n1, first), (n2, second) = self.points[0], self.points[-1]
        for name, p2 in second.items():
            p1 = first.get(name, p2)
            average = p2 / max(n2, 1)
            slope = (p2 - p1) / (n2 - n1) if n2 > n1 else average
            per_row = max(slope, average * FLOOR.get(torch.device(name).type, 1.0), 1.0)
            self.cost.lines[name] = (max(0.0, p2 - per_row * n2), per_row)

    def _grow(self, rows: int, seconds: float) -> None:
        """CPU: keep doubling until two doublings in a row fail to raise rows per second by ``GAIN`` over the
        fastest smaller size (one slow pass on a busy machine does not end the search), or memory runs out;
        then settle on the fastest size."""
        if rows < self.size:            # a run's last, shorter pass says nothing about the size
            return
        tried = self.cost.tried
        tried[rows] = max(tried.get(rows, 0.0), rows / max(seconds, 1e-9))   # a busy machine only slows
        misses, fastest = 0, 0.0
        for size in sorted(tried):
            misses = 0 if tried[size] >= fastest * GAIN else misses + 1
            fastest = max(fastest, tried[size])
        largest = max(tried)
        limit = min(x for x in (self.cost.fits(), self.cost.cap, 2 * largest) if x is not None)
        if misses >= 2 or limit <= largest:
            self.cost.best, self.cost.next = max(tried, key=lambda size: (tried[size], -size)), None
            self.size = self._planned()
        else:
            self.size = self.cost.next = limit

    def out_of_memory(self, rows: int) -> bool:
        """A pass of ``rows`` ran out of memory: halve and retry (``False``: the error is the caller's)."""
        if self.chosen is not None or rows <= 1:
            return False
        self.size = self.cost.cap = max(1, rows // 2)
        if self.cost.best is not None:
            self.cost.best = min(self.cost.best, self.size)
        for size in [size for size in self.cost.tried if size > self.size]:
            del self.cost.tried[size]
        if self.cost.next is not None:
            self.cost.next = min(self.cost.next, self.size)
        return True


def each_chunk(total: int, batch_size: int | None, device: torch.device, run: Callable[[torch.Tensor], None],
               remember: tuple[torch.nn.Module, Hashable] | None = None,
               progress: Callable[[int], None] | None = None) -> tuple[int, int]:
    """``run(rows)`` over ``arange(total)`` (on ``device``) in passes the :class:`Planner` sizes;
    (the largest pass's rows, the number of passes that ran). With ``remember=(module, key)`` the
    memory of every device ``module`` computes on is planned for, and the plan is kept under ``key``."""
    devices = None if remember is None else compute_devices(remember[0])
    planner = Planner(total, batch_size, device, remember, devices)
    start, passes, size = 0, 0, 0
    while start < total:
        n = planner.next_rows(total - start)
        rows = torch.arange(start, start + n, device=device)
        meters = [PeakMeter(d) for d in planner.devices] if planner.measuring else []
        began = clock()
        try:
            with contextlib.ExitStack() as stack:
                for meter in meters:
                    stack.enter_context(meter)
                run(rows)
        except BaseException as err:
            if is_oom(err) and planner.out_of_memory(n):
                free_after_oom(err, device)   # the failed attempt's tensors are gone before the retry
                continue
            raise
        # what a pass takes beyond what it left allocated for good (a library's workspace, made once)
        peaks = {str(m.device): m.bytes - (m.kept or 0) for m in meters if m.bytes is not None}
        planner.ran(n, clock() - began, peaks or None)
        start += n
        passes += 1
        size = max(size, n)
        if progress is not None:
            progress(n)
    planner.finish()
    return size, passes
