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
    assert sizes[7:] == [64] * (1492 // 64) + [1492 % 64]      # the measured size, not smaller equal passes
    assert Planner(2_000, None, CPU, (module, "k")).size == 64


def test_a_cpu_keeps_the_larger_of_two_sizes_within_the_noise(free):
    """32 rows measured 2% faster than 64 (a tie on a busy machine), 128 clearly slower: the planner keeps 64,
    which runs fewer passes."""
    free(100 * GIB)
    rate = {4: 10, 8: 18, 16: 26, 32: 33, 64: 32.4, 128: 28, 256: 25}
    planner = Planner(2_000, None, CPU)
    sizes = simulate(planner, 2_000, 0.0, 1e6, seconds=lambda n: n / rate.get(n, 20))
    assert sizes[:6] == [4, 8, 16, 32, 64, 128] and planner.cost.best == 64     # two misses: 64 and 128
    assert set(sizes[6:-1]) == {64}


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
    assert sizes[:6] == [4, 8, 16, 32, 64, 128]
    assert planner.cost.best == 128      # 32, 64 and 128 are within 5% of each other: the largest is kept


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


def test_calls_shorter_than_the_next_size_still_end_the_search(free):
    """Calls of 136 rows, rows per second flat from 64 rows on: the next size to try (256) never fits in a call,
    so each call runs its 136 rows in one pass, which is recorded; the same whole call a second time ends the
    search (it went on for ever before, the CPU bench's case), on the largest size within 5% of the fastest."""
    free(100 * GIB)
    rate = {4: 10, 8: 18, 16: 26, 32: 33, 64: 38, 128: 38.5, 136: 38.2}
    module = torch.nn.Linear(1, 1)
    calls = [simulate(Planner(136, None, CPU, (module, "k")), 136, 0.0, 1e6, seconds=lambda n: n / rate.get(n, 20))
             for _ in range(4)]
    assert calls[0] == [4, 8, 16, 32, 64, 12] and calls[1] == [128, 8] and calls[2] == calls[3] == [136]
    cost = planning._plans[module]["k"]
    assert cost.best == 136 and Planner(136, None, CPU, (module, "k")).settled


def test_the_same_small_call_again_ends_the_search(free):
    """Calls of 3 rows, shorter than the first probe: the search cannot go on, so the second such call settles it
    (an unsettled CPU plan kept compile=True's passes eager for ever)."""
    free(100 * GIB)
    module = torch.nn.Linear(1, 1)
    for _ in range(2):
        assert simulate(Planner(3, None, CPU, (module, "k", 8)), 3, 0.0, 1e6, seconds=lambda n: 1.0) == [3]
    assert planning._plans[module]["k"].best == 3 * 8 and Planner(3, None, CPU, (module, "k", 8)).settled


def test_calls_growing_a_little_at_a_time_do_not_end_the_search(free):
    """Whole calls of 5, 6, 7, 8, 9 rows (a prompt a token longer each time), speed rising with the size: sizes
    less than twice the last step only inform the choice, so they are not doublings that failed to pay, and a
    large call later goes on doubling past them."""
    free(100 * GIB)
    module = torch.nn.Linear(1, 1)

    def seconds(n: int) -> float:
        return 5e-4 + 1e-5 * n * 16                # a fixed cost per pass: larger passes always pay (16 tokens)

    for rows in (5, 6, 7, 8, 9):                   # 8 and 9 rows gain under 5% on the size before: not doublings
        simulate(Planner(rows, None, CPU, (module, "k", 16)), rows, 0.0, 1e6, seconds=seconds)
    assert planning._plans[module]["k"].best is None
    sizes = simulate(Planner(4096, None, CPU, (module, "k", 16)), 4096, 0.0, 1e6, seconds=seconds)
    assert max(sizes) >= 64


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


# -- rows of another length: a plan measured at one length serves the others (module docstring, 5) --------------
def test_a_plan_at_32_tokens_serves_16_and_64_tokens_without_probes(free):
    """Measured at 32 tokens: 16-token rows take half the bytes a row (linear below), 64-token rows four times
    as many (quadratic above), and the fixed part is kept (16) or grows as the rows do (64)."""
    free(10 * GIB)
    fixed, per_row = 300e6, 20e6
    module = torch.nn.Linear(1, 1)
    assert simulate(Planner(100_000, None, CUDA, (module, "k", 32)), 100_000, fixed, per_row)[:2] == [8, 16]
    room = 0.9 * 10 * GIB
    shorter = Planner(100_000, None, CUDA, (module, "k", 16))
    assert not shorter.measuring and shorter.settled and shorter.size == math.floor((room - fixed) / (per_row / 2))
    longer = Planner(100_000, None, CUDA, (module, "k", 64))
    assert not longer.measuring and longer.size == math.floor((room - 4 * fixed) / (4 * per_row))     # 105
    sizes = simulate(longer, 10_000, 4 * fixed, 4 * per_row)
    assert max(sizes) <= 105 and len(sizes) == math.ceil(10_000 / 105)
    assert planning._plans[module]["k"].tokens == 32 and len(planning._plans[module]) == 1


def test_the_exact_length_still_plans_as_measured(free):
    free(10 * GIB)
    module = torch.nn.Linear(1, 1)
    simulate(Planner(1_000, None, CUDA, (module, "k", 32)), 1_000, 300e6, 20e6)
    simulate(Planner(1_000, None, CUDA, (module, "k", 48)), 1_000, 300e6, 45e6)     # scaled, not measured
    again = Planner(1_000, None, CUDA, (module, "k", 32))
    assert not again.measuring and again.size == math.floor((0.9 * 10 * GIB - 300e6) / 20e6)      # 468
    assert planning._plans[module]["k"].lines["cuda"] == (pytest.approx(300e6, rel=1e-6), pytest.approx(20e6))


def test_rows_more_than_twice_as_long_are_measured_again(free):
    """At 80 tokens (over twice 32) the quadratic bound is loose: two probes (no larger than that bound allows),
    and the plan is kept at 80 tokens from then on; 32 tokens scale down from there."""
    free(10 * GIB)
    module = torch.nn.Linear(1, 1)
    simulate(Planner(1_000, None, CUDA, (module, "k", 32)), 1_000, 300e6, 20e6)
    long = Planner(10_000, None, CUDA, (module, "k", 80))
    assert long.measuring
    assert simulate(long, 10_000, 750e6, 50e6)[:2] == [8, 16]
    cost = planning._plans[module]["k"]
    assert cost.tokens == 80 and cost.lines["cuda"][1] == pytest.approx(50e6)
    assert long.size == math.floor((0.9 * 10 * GIB - 750e6) / 50e6)
    short = Planner(1_000, None, CUDA, (module, "k", 32))
    assert not short.measuring and short.size == math.floor((0.9 * 10 * GIB - 750e6) / (50e6 * 32 / 80))


def test_a_cpu_search_settled_at_one_length_is_not_begun_again_at_another(free):
    """Settled on 64 rows of 32 tokens: 16-token rows run 128 a pass and 64-token rows 32 (rows × tokens kept),
    with no probes and no new sizes tried; memory still bounds them (quadratically for longer rows)."""
    free(100 * GIB)
    rate = {4: 10, 8: 18, 16: 26, 32: 33, 64: 38, 128: 36, 256: 30}
    module = torch.nn.Linear(1, 1)
    simulate(Planner(2_000, None, CPU, (module, "k", 32)), 2_000, 0.0, 1e6, seconds=lambda n: n / rate.get(n, 20))
    cost = planning._plans[module]["k"]
    assert cost.best == 64 * 32
    tried = dict(cost.tried)
    half = Planner(2_000, None, CPU, (module, "k", 16))
    assert half.settled and not half.measuring
    assert simulate(half, 2_000, 0.0, 0.5e6, seconds=lambda n: 1.0) == [128] * 15 + [80]
    double = Planner(2_000, None, CPU, (module, "k", 64))
    assert double.settled and double.size == 32
    assert cost.tried == tried and cost.best == 64 * 32
    longest = Planner(2_000, None, CPU, (module, "k", 128))        # over twice 32 tokens: measured again
    assert longest.measuring and longest.size == 4
    free(64 << 20)                    # half of it over 4 × 1 MB a row: 8 rows of 64 tokens fit, not 32
    assert Planner(2_000, None, CPU, (module, "k", 64)).size == math.floor(0.5 * (64 << 20) / 4e6) == 8


def test_the_cpu_search_goes_on_across_calls_of_different_lengths(free):
    """Still growing after a call of 16 rows at 8 tokens: the next call, at 16 tokens, tries the next size in
    rows × tokens (16 rows of 8 tokens = 8 rows of 16)."""
    free(100 * GIB)
    module = torch.nn.Linear(1, 1)
    assert simulate(Planner(16, None, CPU, (module, "k", 8)), 16, 0.0, 1e6, seconds=lambda n: 1.0) == [4, 8, 4]
    assert planning._plans[module]["k"].next == 16 * 8
    assert Planner(64, None, CPU, (module, "k", 16)).size == 8


def test_an_out_of_memory_cap_scales_with_the_length(free):
    """A cap learned at 64 tokens allows four times its rows at 16 tokens (linear below) and a quarter of them
    at 128 tokens (quadratic above)."""
    free(10 * GIB)
    module = torch.nn.Linear(1, 1)
    simulate(Planner(100_000, None, CUDA, (module, "k", 64)), 100_000, 0.0, 1e6, capacity=300)
    rows, tokens = planning._plans[module]["k"].cap
    assert tokens == 64 and 150 < rows <= 300
    assert Planner(100_000, None, CUDA, (module, "k", 64)).size == rows
    assert Planner(100_000, None, CUDA, (module, "k", 16)).size == 4 * rows       # not capped at ``rows``
    assert Planner(100_000, None, CUDA, (module, "k", 128)).size == rows // 4


def test_work_without_a_token_axis_keeps_exact_keys():
    """A plain model's key holds the exact shape; a decoder-only language model's leaves the length out and
    carries it."""
    from attrib.methods.batching import plan_key
    from tests.conftest import tiny_hf

    net = attrib.Model(torch.nn.Linear(6, 2))
    assert plan_key(net, ("ig",), torch.zeros(3, 6)) == (net.module, ("ig", (6,), torch.float32))
    hf = tiny_hf("gpt2")
    lm = attrib.LanguageModel(hf)
    assert plan_key(lm, ("ig",), torch.zeros(3, 9, 32)) == (hf, ("ig", (32,), torch.float32), 9)
    assert plan_key(lm, ("ig",), torch.zeros(3, 4, 9), 9) == (hf, ("ig", (4, 9), torch.float32), 9)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CPU meter reads Linux's /proc")
def test_two_ig_calls_of_different_lengths_measure_once(monkeypatch):
    """A real model: IG on 8-token prompts measures two passes; IG on 12-token prompts measures none."""
    from tests.conftest import tiny_hf

    meters = []

    class Counted(planning.PeakMeter):
        def __init__(self, device: torch.device) -> None:
            super().__init__(device)
            meters.append(device)

    monkeypatch.setattr(planning, "PeakMeter", Counted)
    model = attrib.LanguageModel(tiny_hf("gpt2"))
    torch.manual_seed(0)
    first = attrib.integrated_gradients(model, torch.randint(1, 50, (2, 8)), target=3, n_steps=6)
    assert len(meters) == 2
    second = attrib.integrated_gradients(model, torch.randint(1, 50, (2, 12)), target=3, n_steps=6)
    assert len(meters) == 2 and len(first) == len(second) == 2
    (key, cost), = planning._plans[model.module].items()
    assert key[0] == "ig" and cost.tokens == 8


def test_a_search_short_calls_ended_goes_on_in_a_larger_call(free):
    """One-row calls settle the CPU search on one row (the same whole call twice); a later call of 64 rows, whose
    larger passes pay, goes on doubling instead of running 64 passes of one row, and settles by speed."""
    free(100 * GIB)
    module = torch.nn.Linear(1, 1)
    for _ in range(2):
        assert simulate(Planner(1, None, CPU, (module, "k", 14)), 1, 0.0, 1e6, seconds=lambda n: 1.0) == [1]
    cost = planning._plans[module]["k"]
    assert cost.best == 14 and cost.cut
    rate = {1: 1, 2: 2, 4: 4, 8: 7, 16: 7.1, 32: 7.2, 64: 7.0}
    sizes = simulate(Planner(64, None, CPU, (module, "k", 14)), 64, 0.0, 1e6, seconds=lambda n: n / rate.get(n, 1))
    assert sizes[:3] == [2, 4, 8] and len(sizes) < 16
    assert simulate(Planner(1, None, CPU, (module, "k", 14)), 1, 0.0, 1e6) == [1]   # short calls: all rows at once
    big = [simulate(Planner(64, None, CPU, (module, "k", 14)), 64, 0.0, 1e6, seconds=lambda n: n / rate.get(n, 1))
           for _ in range(3)][-1]
    assert max(big) >= 8 and cost.best is not None and cost.best >= 8 * 14


def test_the_same_short_call_keeps_its_plan(free):
    """A call no larger than the size short calls settled on does not reopen the search."""
    free(100 * GIB)
    module = torch.nn.Linear(1, 1)
    for _ in range(3):
        assert simulate(Planner(3, None, CPU, (module, "k", 8)), 3, 0.0, 1e6, seconds=lambda n: 1.0) == [3]
    assert Planner(2, None, CPU, (module, "k", 8)).settled and Planner(3, None, CPU, (module, "k", 8)).settled
