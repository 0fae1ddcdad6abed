"""Rows per pass for ``batch_size=None``: planned from two measured passes (attrib/methods/planning.py).

The planner is driven here by a simulated device whose memory follows a known line (a fixed part plus a
part per row) and whose speed is a known function of the rows, so every planned size has a closed form.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

import attrib
from attrib.methods import planning
from attrib.methods.planning import Planner, each_chunk

GIB = 1 << 30
CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def simulate(planner: Planner, total: int, fixed: float, per_row: float, seconds=lambda n: float(n),
             capacity: int | None = None) -> list[int]:
    """Run ``planner`` over ``total`` rows like each_chunk does: each pass takes ``fixed + per_row × rows``
    bytes and ``seconds(rows)``; a pass above ``capacity`` rows runs out of memory. The sizes tried."""
    sizes, start = [], 0
    while start < total:
        n = planner.next_rows(total - start)
        sizes.append(n)
        if capacity is not None and n > capacity:
            assert planner.out_of_memory(n)
            continue
        planner.ran(n, seconds(n), {str(planner.device): int(fixed + per_row * n)} if planner.measuring else None)
        start += n
    planner.finish()
    return sizes


@pytest.fixture
def free(monkeypatch):
    """Set the simulated free memory: ``free(bytes)``."""
    room = {"bytes": 10 * GIB}
    monkeypatch.setattr(planning, "free_memory", lambda device: room["bytes"])
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    return lambda n: room.__setitem__("bytes", n)


def test_a_chosen_batch_size_is_used_as_given_and_its_oom_is_the_callers():
    seen = []
    size, passes = each_chunk(10, 4, CPU, lambda rows: seen.append(rows.tolist()))
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and (size, passes) == (4, 3)
    planner = Planner(10, 4, CPU)
    assert not planner.measuring and not planner.out_of_memory(4)


def test_a_gpu_plans_the_rows_that_fit_in_the_free_memory(free):
    free(10 * GIB)
    fixed, per_row = 300e6, 20e6
    planner = Planner(100_000, None, CUDA)
    sizes = simulate(planner, 100_000, fixed, per_row)
    fits = math.floor((0.9 * 10 * GIB - fixed) / per_row)        # 468
    assert sizes[:2] == [8, 16] and planner.size == fits
    # the rest in equal passes of at most that many rows
    assert len(sizes[2:]) == math.ceil((100_000 - 24) / fits) and max(sizes[2:]) - min(sizes[2:]) <= 1
    assert max(sizes[2:]) <= fits
    line = planner.cost.lines["cuda"]
    assert line[1] == pytest.approx(per_row) and line[0] == pytest.approx(fixed, rel=1e-6)


def test_a_one_time_cost_the_meter_missed_does_not_shrink_the_per_row_cost(free):
    """The first pass also took 1 GiB once (and the meter could not tell it apart): the line through both
    points would say each row costs nothing; on a GPU the per-row cost stays at least half the second pass's
    average (an over-estimate there is an out-of-memory error, halved), on a CPU all of it."""
    free(40 * GIB)
    planner = Planner(10_000, None, CUDA)
    sizes = []
    for n, peak in ((8, GIB + 8 * 10e6), (16, 16 * 10e6)):
        sizes.append(planner.next_rows(10_000))
        planner.ran(n, 1.0, {"cuda": int(peak)})
    assert sizes == [8, 16]
    assert planner.cost.lines["cuda"][1] == pytest.approx(10e6 / 2)
    fixed = 16 * 10e6 - 16 * 10e6 / 2                       # the rest of the second pass
    assert planner.size == math.floor((0.9 * 40 * GIB - fixed) / (10e6 / 2))
    cpu = Planner(10_000, None, CPU)
    for n, peak in ((4, GIB + 4 * 10e6), (8, 8 * 10e6)):
        cpu.ran(cpu.next_rows(10_000), 1.0, {"cpu": int(peak)})
    assert cpu.cost.lines["cpu"] == (pytest.approx(0.0), pytest.approx(10e6))


def test_running_out_of_memory_lands_between_half_of_what_fits_and_all_of_it(free):
    """The measured line says 468 rows fit, but only 300 do (fragmentation, a lazy allocation): the 1,976
    rows left go in 5 equal passes of 396, which run out of memory; the halved size 198 lies in (150, 300] and
    caps the plan, also for the next call with the same key, which makes no probes."""
    free(10 * GIB)
    module = torch.nn.Linear(1, 1)
    first = simulate(Planner(2_000, None, CUDA, (module, "k")), 2_000, 300e6, 20e6, capacity=300)
    assert first[:4] == [8, 16, 396, 198] and 300 / 2 < 198 <= 300 and max(first[4:]) <= 198
    again = simulate(Planner(2_000, None, CUDA, (module, "k")), 2_000, 300e6, 20e6, capacity=300)
    assert len(again) == math.ceil(2_000 / 198) and max(again) <= 198
    other = simulate(Planner(2_000, None, CUDA, (module, "other kind")), 2_000, 300e6, 20e6)
    assert other[:2] == [8, 16]


def test_a_model_over_two_gpus_plans_for_the_fuller_one(monkeypatch):
    """Layers on two cards: each card's line is measured; the rows are what the tighter card allows."""
    free = {"cuda:0": 20 * GIB, "cuda:1": 8 * GIB}
    monkeypatch.setattr(planning, "free_memory", lambda device: free[str(device)])
    planner = Planner(50_000, None, torch.device("cuda:0"), devices=[torch.device("cuda:0"), torch.device("cuda:1")])
    for _ in range(2):
        n = planner.next_rows(50_000)
        planner.ran(n, 1.0, {"cuda:0": int(5e6 * n), "cuda:1": int(1e8 + 8e6 * n)})   # cuda:1: the head
    card0 = math.floor(0.9 * 20 * GIB / 5e6)                  # 3,865
    card1 = math.floor((0.9 * 8 * GIB - 1e8) / 8e6)           # 953
    assert planner.size == min(card0, card1) == card1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CPU meter reads Linux's /proc")
def test_what_a_probe_keeps_for_good_is_not_a_cost_of_every_pass():
    """A real CPU pass that builds a 64 MB cache once (kept) and 8 MB per row (freed): the cache is not
    counted in the per-row cost."""
    cache = []

    def run(rows: torch.Tensor) -> None:
        if not cache:
            cache.append(torch.ones(16 * (1 << 20)))
        work = torch.ones(len(rows), 2 * (1 << 20))                 # 8 MB a row, touched
        del work

    module = torch.nn.Linear(1, 1)
    each_chunk(12, None, CPU, run, remember=(module, "k"))
    fixed, per_row = planning._plans[module]["k"].lines["cpu"]
    assert 7.5e6 < per_row < 9.5e6 and fixed < 16e6


def test_a_later_call_plans_from_the_memory_free_then(free):
    free(10 * GIB)
    module = torch.nn.Linear(1, 1)
    simulate(Planner(1_000, None, CUDA, (module, "k")), 1_000, 0.0, 20e6)
    free(2 * GIB)
    planner = Planner(1_000, None, CUDA, (module, "k"))
    assert not planner.measuring and planner.size == math.floor(0.9 * 2 * GIB / 20e6)


def test_a_cpu_doubles_while_throughput_rises_and_keeps_the_fastest_size(free):
    """Rows per second rise until 64 rows, then fall (caches): after two doublings that do not pay, the
    planner settles on 64."""
    free(100 * GIB)
    rate = {4: 10, 8: 18, 16: 26, 32: 33, 64: 38, 128: 36, 256: 30}
    module = torch.nn.Linear(1, 1)
    planner = Planner(2_000, None, CPU, (module, "k"))
    sizes = simulate(planner, 2_000, 0.0, 1e6, seconds=lambda n: n / rate.get(n, 20))
    assert sizes[:7] == [4, 8, 16, 32, 64, 128, 256] and planner.cost.best == 64
    assert max(sizes[7:]) - min(sizes[7:]) <= 1 and max(sizes[7:]) <= 64 and len(sizes[7:]) == math.ceil(1492 / 64)
    assert Planner(2_000, None, CPU, (module, "k")).size == 64


def test_a_cpu_stops_doubling_after_two_gains_under_five_percent(free):
    free(100 * GIB)
    rate = {4: 10, 8: 18, 16: 26, 32: 27, 64: 27.5}   # +3.8%, then +5.8% over 16 rows: two misses
    planner = Planner(1_000, None, CPU)
    sizes = simulate(planner, 1_000, 0.0, 1e6, seconds=lambda n: n / rate.get(n, 20))
    assert sizes[:5] == [4, 8, 16, 32, 64] and planner.cost.best == 64 and max(sizes[5:]) <= 64


def test_one_slow_pass_does_not_end_the_search(free):
    """A pass of 16 rows slowed by another process: the next doubling is still tried, and pays."""
    free(100 * GIB)
    rate = {4: 10, 8: 18, 16: 12, 32: 33, 64: 33.5, 128: 33}
    planner = Planner(2_000, None, CPU)
    sizes = simulate(planner, 2_000, 0.0, 1e6, seconds=lambda n: n / rate.get(n, 20))
    assert sizes[:6] == [4, 8, 16, 32, 64, 128] and planner.cost.best == 64


def test_a_cpu_never_plans_above_its_share_of_the_free_memory(free, monkeypatch):
    """Half the free memory (the kernel kills a process that takes too much), shared among the torchrun
    ranks of the host; throughput that keeps rising does not push past it."""
    free(2 * GIB)
    planner = Planner(10_000, None, CPU)
    sizes = simulate(planner, 10_000, 0.0, 10e6, seconds=lambda n: 1.0)      # rows/s always rising
    fits = math.floor(0.5 * 2 * GIB / 10e6)                                  # 107
    assert max(sizes) == fits and planner.cost.best == fits
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    shared = Planner(10_000, None, CPU)
    sizes = simulate(shared, 10_000, 0.0, 10e6, seconds=lambda n: 1.0)
    assert max(sizes) == math.floor(0.5 * 2 * GIB / 2 / 10e6)


def test_the_cpu_search_goes_on_across_short_calls(free):
    """Calls of 16 rows each, larger passes always paying: the sizes grow across calls until one pass holds
    the whole call (a call shorter than the next size to try runs all its rows at once)."""
    free(100 * GIB)
    module = torch.nn.Linear(1, 1)
    calls = [simulate(Planner(16, None, CPU, (module, "k")), 16, 0.0, 1e6, seconds=lambda n: 1.0)
             for _ in range(4)]
    assert calls[0] == [4, 8, 4] and calls[1:] == [[16], [16], [16]]


def test_a_run_shorter_than_the_probe_is_one_pass_and_still_plans_the_next(free):
    free(10 * GIB)
    module = torch.nn.Linear(1, 1)
    assert simulate(Planner(6, None, CUDA, (module, "k")), 6, 0.0, 1e6) == [6]
    assert Planner(10_000, None, CUDA, (module, "k")).size == math.floor(0.9 * 10 * GIB / 1e6)


def test_the_default_gives_the_result_of_a_chosen_batch_size():
    """Planned passes on a real model (this CPU's memory and speed): the same attributions as one fixed size."""
    torch.manual_seed(0)
    net = attrib.Model(torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double())
    x = torch.randn(40, 6, dtype=torch.float64)
    planned = attrib.integrated_gradients(net, x, target=1, n_steps=50)
    fixed = attrib.integrated_gradients(net, x, target=1, n_steps=50, batch_size=7)
    for a, b in zip(planned, fixed, strict=True):
        torch.testing.assert_close(a.values, b.values, rtol=1e-12, atol=1e-14)
