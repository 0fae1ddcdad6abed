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
   in a row fail to raise rows per second by 5%, and stays at the fastest size found (the largest of those
   within 5% of the fastest: a tie on a busy machine, and fewer passes). The search goes on
   across calls with the same key (a call too short for the next size runs all its rows in one pass; the same
   whole call twice ends it, until a call with more rows than that size comes: a loop of one-pair calls then
   does not hold a call on eight pairs to one pair a pass).
4. The plan is kept per model and kind of work (the ``remember`` key): a later call with the same key
   skips the probes and plans from the memory free then.
5. A language model's rows differ in length from call to call (``remember=(module, key, tokens)``: the key
   leaves the length out, ``tokens`` is the positions one row runs). A plan measured at ``t0`` tokens serves
   ``t``: the per-row bytes are scaled by ``t / t0`` for shorter rows and by ``(t / t0)²`` for longer ones.
   A row's memory is about ``a·t + b·t²`` (activations per token; eager attention's scores per pair of
   positions), which both ratios bound from above; a part that does not shrink with the row (the kept
   logits, a fraction of one token's activations in common models) is left to the margins. The fixed part
   is never scaled down and grows as the rows do. A row more than twice as long as the measured one is
   measured again (the quadratic bound is loose by then), and the plan is kept at that length from then on.
   A CPU's fastest size is kept as rows × tokens, so a search settled at one length is not begun again at
   another; an out-of-memory cap is kept with the length it was learned at and scaled like the memory.

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
RESCALE = 2               # rows more than this many times longer than the measured ones are measured again
MARGIN = {"cuda": 0.9}     # share of the free memory a plan may take; others: DEFAULT_MARGIN
DEFAULT_MARGIN = 0.5
FLOOR = {"cuda": 0.5}      # the per-row cost is at least this share of the second probe's average; others: 1
GAIN = 1.05                # a CPU doubles its rows while that raises rows per second by at least this factor
clock = time.perf_counter  # what passes are timed with


def growth(tokens: int, at: int) -> float:
    """How many times the memory of a row of ``tokens`` positions may exceed that of a row of ``at``: linear
    below, quadratic above (module docstring, 5)."""
    ratio = tokens / max(at, 1)
    return ratio if ratio <= 1 else ratio * ratio


@dataclass
class Cost:
    """What a pass of some kind of work costs on one model: memory on each device it computes on, and (CPU)
    the size that ran fastest. Rows of one position for work without a token axis (``tokens`` 1)."""
    lines: dict[str, tuple[float, float]] = field(default_factory=dict)   # device -> (fixed, per-row bytes)
    tokens: int = 1                     # positions per row when the lines were measured
    best: int | None = None             # CPU: the rows × tokens past which larger passes stopped paying
    tried: dict[int, float] = field(default_factory=dict)   # CPU, still growing: rows × tokens -> tokens/s
    next: int | None = None             # CPU, still growing: the rows × tokens to try next (also in the next call)
    cap: tuple[int, int] | None = None  # (rows, tokens) halved after running out of memory: plan no more
    cut: bool = False                   # CPU: ``best`` ended the search only because the calls were too short

    @property
    def measured(self) -> bool:
        return bool(self.lines)

    def fits(self, tokens: int | None = None) -> int | None:
        """Rows of ``tokens`` positions (by default as measured) that fit in the memory free now on every
        device measured (``None``: unknown)."""
        scale = growth(tokens or self.tokens, self.tokens)
        rows = None
        for name, (fixed, per_row) in self.lines.items():
            device = torch.device(name)
            free = free_memory(device)
            if free is None:
                continue
            room = free * MARGIN.get(device.type, DEFAULT_MARGIN) / _ranks_sharing(device) - fixed * max(scale, 1.0)
            here = max(1, int(room // max(per_row * scale, 1.0)))
            rows = here if rows is None else min(rows, here)
        return rows

    def limit(self, tokens: int) -> int | None:
        """The out-of-memory cap for rows of ``tokens`` positions (``None``: none)."""
        if self.cap is None:
            return None
        rows, at = self.cap
        return max(1, int(rows / growth(tokens, at)))


# The plan per model and kind of work.
_plans: "weakref.WeakKeyDictionary[torch.nn.Module, dict[Hashable, Cost]]" = weakref.WeakKeyDictionary()
# ``remember``: (module, key) for work of one shape, (module, key, tokens) for rows of ``tokens`` positions
Remember = tuple


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

    def __init__(self, total: int, batch_size: int | None, device: torch.device, remember: Remember | None = None,
                 devices: Sequence[torch.device] | None = None) -> None:
        self.total, self.chosen, self.device = total, batch_size, device
        self.devices = list(devices) if devices else [device]
        self.tokens = int(remember[2]) if remember is not None and len(remember) > 2 else 1
        self.cost = Cost(tokens=self.tokens)
        if batch_size is None and remember is not None:
            self.cost = _plans.setdefault(remember[0], {}).setdefault(remember[1], self.cost)
            self._reopen()
        # rows much longer than the plan's: measured again (module docstring, 5)
        self.longer = self.cost.measured and self.tokens > RESCALE * self.cost.tokens
        self.can_measure = True
        self.points: list[tuple[int, dict[str, int]]] = []     # (rows, peak bytes per device) of the probes
        self.size = self._first()

    def _reopen(self) -> None:
        """A CPU search that short calls ended (the same whole call twice) goes on in a call with more work than
        its size: a loop of one-pair calls must not hold a later call of eight pairs to one pair a pass."""
        cost = self.cost
        if cost.cut and cost.best is not None and self.total * self.tokens > cost.best:
            cost.best, cost.cut = None, False
            cost.next = 2 * max(cost.tried)

    @property
    def _cpu_like(self) -> bool:
        """Whether throughput stops rising with the batch well before memory runs out (every device but CUDA)."""
        return self.device.type != "cuda"

    def _first(self) -> int:
        if self.chosen is not None:
            return max(1, self.chosen)
        probe = PROBE.get(self.device.type, DEFAULT_PROBE)
        if self.cost.measured or self.cost.best is not None or self.cost.tried:
            # planned before: no probes, or (rows much longer) probes no larger than the plan
            return min(probe, self._planned()) if self.longer else self._planned()
        return probe

    def _planned(self) -> int:
        size = self.cost.fits(self.tokens)
        if self._cpu_like:
            work = self.cost.best or self.cost.next or (max(self.cost.tried) if self.cost.tried else
                                                        DEFAULT_PROBE * self.tokens)
            grow = max(1, work // self.tokens)
            size = grow if size is None else min(size, grow)
        if size is None:        # a device that cannot tell its free memory: every row, halved on OOM
            size = self.total
        return max(1, min(size, self.cost.limit(self.tokens) or size))

    @property
    def settled(self) -> bool:
        """Whether the plan is made: no pass left to measure, and (CPU) the search for the fastest size over."""
        return not self.measuring and (not self._cpu_like or self.cost.best is not None)

    @property
    def measuring(self) -> bool:
        """Whether the next pass is a probe, to be run inside a :class:`PeakMeter`."""
        return (self.chosen is None and self.can_measure and (self.longer or not self.cost.measured)
                and len(self.points) < 2)

    def next_rows(self, remaining: int) -> int:
        """Rows of the next pass. Once planned on a GPU, the rows left are split into equal passes of at most
        the planned size (8,704 rows at 4,036 a pass: 2,902 × 3, not 4,036 + 4,036 + 632, whose short last pass
        runs below the card's throughput). A CPU runs the size it measured fastest (smaller equal passes were
        not measured, and ran slower: 136 rows as 5 × 27 at 0.87× the speed of 64 + 64 + 8)."""
        size = max(1, min(self.size, remaining))
        if self.chosen is None and self.settled and not self._cpu_like:
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
        elif self.measuring:            # a GPU (or a settled CPU) after its first probe: the second one
            self.size = min(2 * rows, self.cost.limit(self.tokens) or 2 * rows)
        else:
            self.size = self._planned()

    def finish(self) -> None:
        """The run ended after a single probe: plan later runs from that one point."""
        if self.chosen is None and (self.longer or not self.cost.measured) and len(self.points) == 1:
            self._fit_line()

    def _fit_line(self) -> None:
        """Per device, the line through the two measured passes; the plan is kept at this call's length."""
        (n1, first), (n2, second) = self.points[0], self.points[-1]
        lines = {}
        for name, p2 in second.items():
            p1 = first.get(name, p2)
            average = p2 / max(n2, 1)
            slope = (p2 - p1) / (n2 - n1) if n2 > n1 else average
            per_row = max(slope, average * FLOOR.get(torch.device(name).type, 1.0), 1.0)
            lines[name] = (max(0.0, p2 - per_row * n2), per_row)
        self.cost.lines, self.cost.tokens, self.longer = lines, self.tokens, False

    def _grow(self, rows: int, seconds: float) -> None:
        """CPU: keep doubling until two doublings in a row fail to raise rows per second by ``GAIN`` over the
        fastest smaller size (one slow pass on a busy machine does not end the search), or memory runs out;
        then settle on the fastest size. Sizes are counted in rows × tokens, speeds in tokens per second.

        A call too short for the next size runs all its rows in one pass: that size is recorded (its speed counts
        when the size is chosen, but only sizes at least twice the last one counted are steps of the search), and
        the same whole call a second time ends the search, which it cannot take further."""
        tried, t = self.cost.tried, self.tokens
        work = rows * t
        if rows < self.size:
            if rows < self.total:       # a run's last, shorter pass says nothing about the size
                return
            if work in tried:           # the same whole call again: settle (until a call with more work)
                self._settle()
                self.cost.cut = True
                return
        tried[work] = max(tried.get(work, 0.0), work / max(seconds, 1e-9))   # a busy machine only slows
        misses, fastest, step = 0, 0.0, 0
        for size in sorted(tried):
            if size >= 2 * step:        # a doubling (sizes in between only inform the choice)
                misses = 0 if tried[size] >= fastest * GAIN else misses + 1
                step = size
            fastest = max(fastest, tried[size])
        largest = max(tried)
        limit = min([2 * largest] + [n * t for n in (self.cost.fits(t), self.cost.limit(t)) if n is not None])
        if misses >= 2 or limit <= largest:
            self._settle()
        else:
            self.cost.next = limit
            self.size = max(1, limit // t)

    def _settle(self) -> None:
        """End the CPU search: sizes within ``GAIN`` of the fastest are a tie on a busy machine, and the largest
        of them runs fewer passes (each has a fixed cost the timing of a pass only partly sees)."""
        tried = self.cost.tried
        fastest = max(tried.values())
        self.cost.best = max(size for size in tried if tried[size] * GAIN >= fastest)
        self.cost.next = None
        self.size = self._planned()

    def out_of_memory(self, rows: int) -> bool:
        """A pass of ``rows`` ran out of memory: halve and retry (``False``: the error is the caller's)."""
        if self.chosen is not None or rows <= 1:
            return False
        self.size = max(1, rows // 2)
        self.cost.cap = (self.size, self.tokens)
        work = self.size * self.tokens
        if self.cost.best is not None:
            self.cost.best = min(self.cost.best, work)
        for size in [size for size in self.cost.tried if size > work]:
            del self.cost.tried[size]
        if self.cost.next is not None:
            self.cost.next = min(self.cost.next, work)
        return True


def each_chunk(total: int, batch_size: int | None, device: torch.device, run: Callable[[torch.Tensor], None],
               remember: Remember | None = None, progress: Callable[[int], None] | None = None) -> tuple[int, int]:
    """``run(rows)`` over ``arange(total)`` (on ``device``) in passes the :class:`Planner` sizes;
    (the largest pass's rows, the number of passes that ran). With ``remember=(module, key)`` the
    memory of every device ``module`` computes on is planned for, and the plan is kept under ``key``; with
    ``remember=(module, key, tokens)`` rows of ``tokens`` positions, the plan serving every length."""
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
