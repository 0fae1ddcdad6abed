"""The default chunk follows the device a run computes on (16 prompts on a CPU, 256 on CUDA), a resumed run keeps the
chunk it started with, an explicit chunk is used as given; and ``progress=False`` also silences the methods' bars."""

from __future__ import annotations

import json
import threading

import pytest
import torch

import attrib
from attrib.methods import batching
from attrib.runs import runner
from attrib.runs.runner import CUDA_CHUNK, DEFAULT_CHUNK, default_chunk

from .conftest import ROWS


def test_the_default_chunk_follows_the_device_type():
    assert default_chunk("cpu") == default_chunk(torch.device("cpu"), 10_000) == DEFAULT_CHUNK == 16
    assert default_chunk("cuda") == default_chunk("cuda:1", 10_000) == default_chunk(torch.device("cuda", 3)) == 256
    assert CUDA_CHUNK == 256
    assert default_chunk("cuda:0", prompts=100) == 100                          # one chunk: no smaller
    assert default_chunk("cuda:0", prompts=1_000, processes=8) == 125           # every process gets a chunk
    assert default_chunk("cuda:0", prompts=100_000, processes=8) == 256
    assert default_chunk("meta") == 16
    # the same arguments always give the same chunk (it is recorded in run.json and compared at a restart)
    assert {default_chunk("cuda:0", 5_000, 2) for _ in range(3)} == {256}


def recorded_chunk(out) -> int:
    return json.loads((out / "run.json").read_text())["chunk"]


def test_a_run_started_with_the_default_resumes_with_the_default(tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "run"
    first = attrib.run_dataset(tiny_model, ROWS, method="saliency", out=out, progress=False)
    assert recorded_chunk(out) == 16 and len(list(out.glob("shard-*"))) == 1        # a CPU run: 16 prompts a call

    def refuse(*args, **kwargs):
        raise AssertionError("a chunk was computed again")

    monkeypatch.setattr(runner, "run_chunk", refuse)
    assert attrib.run_dataset(tiny_model, ROWS, method="saliency", out=out, progress=False) == first
    assert attrib.run_dataset(tiny_model, ROWS, method="saliency", out=out, chunk=16, progress=False) == first


def test_an_interrupted_run_on_cuda_resumes_with_its_chunk_on_any_device(tiny_model, tmp_path, monkeypatch):
    """A run started where the default was 5 (as if on CUDA) and stopped after its first chunk; restarted here,
    where the default is 16, it keeps 5 and computes only the two chunks left; the result equals one run."""
    want = attrib.run_dataset(tiny_model, ROWS, method="saliency", out=tmp_path / "whole", chunk=5, progress=False)
    out = tmp_path / "run"
    monkeypatch.setattr(runner, "default_chunk", lambda device, prompts=None, processes=1: 5)
    calls = []
    run_chunk = runner.run_chunk

    def stop_after_one(model, method, examples, options):
        if calls:
            raise KeyboardInterrupt
        calls.append(len(examples))
        return run_chunk(model, method, examples, options)

    monkeypatch.setattr(runner, "run_chunk", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        attrib.run_dataset(tiny_model, ROWS, method="saliency", out=out, progress=False)
    assert recorded_chunk(out) == 5 and calls == [5]
    monkeypatch.undo()
    assert runner.default_chunk("cpu") == 16
    sizes = []

    def counted(model, method, examples, options):
        sizes.append(len(examples))
        return run_chunk(model, method, examples, options)

    monkeypatch.setattr(runner, "run_chunk", counted)
    got = attrib.run_dataset(tiny_model, ROWS, method="saliency", out=out, progress=False)
    assert sizes == [5, 2] and recorded_chunk(out) == 5
    assert [(r["id"], r["chunk"]) for r in got] == [(r["id"], r["chunk"]) for r in want]
    assert [r["scores"] for r in got] == [r["scores"] for r in want]


def test_an_explicit_chunk_wins(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "default_chunk", lambda device, prompts=None, processes=1: CUDA_CHUNK)
    out = tmp_path / "run"
    attrib.run_dataset(tiny_model, ROWS[:3], method="saliency", out=out, chunk=2, progress=False)
    assert recorded_chunk(out) == 2
    with pytest.raises(attrib.RunError, match=r"chunk 2 then, 3 now"):       # not silently the recorded one
        attrib.run_dataset(tiny_model, ROWS[:3], method="saliency", out=out, chunk=3, progress=False)
    fresh = tmp_path / "fresh"
    attrib.run_dataset(tiny_model, ROWS[:3], method="saliency", out=fresh, progress=False)
    assert recorded_chunk(fresh) == CUDA_CHUNK


def bars_seen(monkeypatch) -> list[bool]:
    """Whether each progress bar that run_rows opens over more than one row is shown (tqdm's ``disable``
    negated; a bar over one row never is)."""
    import tqdm.auto

    shown: list[bool] = []
    real = tqdm.auto.tqdm

    def recording(*args, **kwargs):
        if kwargs.get("unit") == "row" and kwargs.get("total", 0) > 1:
            shown.append(not kwargs.get("disable", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", recording)
    return shown


@pytest.mark.parametrize("progress", [False, True])
def test_no_progress_silences_the_methods_bars(tiny_model, tmp_path, monkeypatch, progress):
    shown = bars_seen(monkeypatch)
    attrib.run_dataset(tiny_model, ROWS[:3], method="ig", out=tmp_path / "run", progress=progress, n_steps=4)
    assert shown and set(shown) == {progress}
    shown.clear()
    attrib.integrated_gradients(tiny_model, "w1 w2 w3", target=" w4", n_steps=4)      # outside a run: shown again
    assert shown == [True]


def test_progress_bars_are_set_per_thread(monkeypatch):
    shown = bars_seen(monkeypatch)
    like = torch.zeros(1)

    def call() -> None:
        batching.run_rows(lambda rows: rows.double().view(-1, 1), 3, lambda rows: rows, 3, None, like=like)

    with batching.progress_bars(False):
        call()
        other = threading.Thread(target=call)      # a thread of its own starts from the default
        other.start()
        other.join()
        with batching.progress_bars(True):
            call()
        call()
    call()
    assert shown == [False, True, True, False, True]
