"""Free memory and the peak of a block (attrib/core/memory.py), measured on this machine's CPU."""

from __future__ import annotations

import sys

import pytest
import torch

from attrib.core.memory import PeakMeter, free_memory

MB = 1 << 20
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CPU meter reads Linux's /proc")


@linux
def test_free_memory_is_what_meminfo_or_the_cgroup_allows():
    free = free_memory(torch.device("cpu"))
    available = next(int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemAvailable"))
    assert free is not None and 0 < free <= available * 1.05


@linux
@pytest.mark.parametrize("mb", [8, 64, 256])
def test_the_peak_of_a_block_is_what_it_allocated(mb):
    with PeakMeter(torch.device("cpu")) as meter:
        x = torch.ones(mb * MB // 4)          # float32: mb MB, touched
        del x
    assert meter.bytes is not None and mb * MB * 0.95 <= meter.bytes <= mb * MB + 16 * MB


@linux
def test_memory_freed_before_the_block_and_reused_inside_it_still_counts():
    """Without handing freed heap back first, a block that reuses it would look free of cost."""
    for _ in range(3):
        y = torch.ones(16 * MB // 4)
        del y
    with PeakMeter(torch.device("cpu")) as meter:
        x = torch.ones(16 * MB // 4)
        del x
    assert meter.bytes is not None and meter.bytes >= 15 * MB


def test_a_block_that_raises_has_no_peak():
    with pytest.raises(ValueError):
        with PeakMeter(torch.device("cpu")) as meter:
            raise ValueError("boom")
    assert meter.bytes is None


@pytest.mark.gpu
def test_the_peak_on_cuda_is_the_allocators():
    device = torch.device("cuda")
    with PeakMeter(device) as meter:
        x = torch.ones(64 * MB // 4, device=device)
        del x
    assert meter.bytes == 64 * MB
    assert free_memory(device) >= torch.cuda.mem_get_info(device)[0]


@pytest.mark.gpu
def test_free_memory_on_cuda_counts_the_allocators_unused_blocks():
    device = torch.device("cuda")
    keep = torch.ones(32 * MB // 4, device=device)
    gone = torch.ones(64 * MB // 4, device=device)
    del gone                                            # cached by the allocator, free for new tensors
    free, _ = torch.cuda.mem_get_info(device)
    unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    assert unused >= 64 * MB
    assert abs(free_memory(device) - (free + unused)) < 8 * MB      # the driver's count may move a little
    del keep
