"""How much memory a device has free, and how much a block of work took at its peak.

>>> import torch
>>> from attrib.core.memory import free_memory, PeakMeter
>>> free_memory(torch.device("cpu")) is None or free_memory(torch.device("cpu")) > 0
True
>>> with PeakMeter(torch.device("cpu")) as meter:
...     x = torch.ones(4_000_000)                      # 16 MB
>>> meter.bytes is None or meter.bytes >= 15_000_000   # None where the platform cannot tell
True

On CUDA both come from torch's caching allocator: the free memory is what the driver reports free plus
what the allocator holds unused, and the peak is ``max_memory_allocated`` over the block (its counter is
reset for the block, so a caller's own reading of it afterwards starts from there). On Linux CPUs the free
memory is ``MemAvailable``, lowered to the cgroup's limit where one is set (the memory a container may
still use), and the peak is the process's resident-set high-water mark (``VmHWM``, reset for the block by
writing 5 to ``/proc/self/clear_refs``) after ``malloc_trim`` handed freed heap back, so that memory
reused inside the block counts. Elsewhere both are ``None``: a planner then does without them.
"""

from __future__ import annotations

import ctypes
import os
import sys
from types import TracebackType

import torch

__all__ = ["free_memory", "PeakMeter"]


def free_memory(device: torch.device) -> int | None:
    """Bytes that new tensors on ``device`` can still take (``None``: unknown on this platform)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # one read of the allocator's counters (memory_reserved() and memory_allocated() each flatten all of
        # them: ~0.4 ms of a compiled single-prompt call on an H200's host)
        stats = torch.cuda.memory_stats_as_nested_dict(device)
        return int(free + _current(stats, "reserved_bytes") - _current(stats, "allocated_bytes"))
    if device.type == "cpu" and sys.platform.startswith("linux"):
        return _linux_available()
    return None


def _current(stats: dict, name: str) -> int:
    return int(stats.get(name, {}).get("all", {}).get("current", 0))


def _linux_available() -> int | None:
    available = _meminfo("MemAvailable")
    limit = _cgroup_room()
    if available is None:
        return limit
    return available if limit is None else min(available, limit)


def _field(path: str, field: str) -> int | None:
    """A ``Name:  N kB`` line's value in bytes, from a /proc file."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _meminfo(field: str) -> int | None:
    return _field("/proc/meminfo", field)


def _cgroup_room() -> int | None:
    """The memory the process's cgroup may still take: its limit minus its use (v2, else v1)."""
    for limit_file, use_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                 ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                  "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(use_file) as f:
                used = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:      # "max", or v1's "no limit" (a huge number)
            return max(0, int(limit) - used)
    return None


def _status(field: str) -> int | None:
    return _field("/proc/self/status", field)


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _libc() if sys.platform.startswith("linux") else None


class PeakMeter:
    """``with PeakMeter(device) as m: ...`` — ``m.bytes``: how far memory on ``device`` rose above where it
    stood when the block began; ``m.kept``: how much of that was still held when it ended (both ``None``
    where the platform cannot tell, or when the block raised)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bytes: int | None = None
        self.kept: int | None = None
        self._start: int | None = None

    def __enter__(self) -> "PeakMeter":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        elif self.device.type == "cpu" and _LIBC is not None and self._reset_high_water():
            self._start = _status("VmRSS")
        return self

    @staticmethod
    def _reset_high_water() -> bool:
        """Hand freed heap back to the system, then restart the resident-set high-water mark from here."""
        _LIBC.malloc_trim(0)          # type: ignore[union-attr]
        try:
            with open(f"/proc/{os.getpid()}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            return False
        return True

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is not None or self._start is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak: int | None = torch.cuda.max_memory_allocated(self.device)
            end: int | None = torch.cuda.memory_allocated(self.device)
        else:
            peak = _status("VmHWM")
            _LIBC.malloc_trim(0)      # type: ignore[union-attr]
            end = _status("VmRSS")
        if peak is not None and end is not None:
            self.bytes = max(0, peak - self._start)
            self.kept = min(self.bytes, max(0, end - self._start))
