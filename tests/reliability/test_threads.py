"""Issue 9, threads: a trace or backward context affects only the calls of the thread that opened it.

Each scenario is made deterministic with events (the other thread runs exactly while this one's forward or
backward is paused or running), and repeated with free-running threads for many iterations.
"""

from __future__ import annotations

import threading
from typing import Callable

import pytest
import torch

import attrib
from tests.conftest import tiny_hf

IDS = torch.tensor([[3, 14, 15, 9, 26, 5]])
TIMEOUT = 60


def hidden(lm, i: int) -> torch.Tensor:
    """Layer ``i``'s hidden state (a block returns a tensor or a tuple, by transformers version)."""
    out = lm.transformer.h[i].output
    return out[0] if isinstance(out, tuple) else out


def run_threads(*targets: Callable[[], None]) -> list[BaseException]:
    """Run each target in its own thread; return what they raised (a hung thread fails the test)."""
    errors: list[BaseException] = []

    def guard(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as err:   # noqa: BLE001 - reported to the test
                errors.append(err)
        return run

    threads = [threading.Thread(target=guard(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
        assert not t.is_alive(), "a thread hung"
    return errors


@pytest.fixture
def lm():
    return attrib.LanguageModel(tiny_hf("gpt2").double())


def edited_reference(lm) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-threaded: the first layer's output and the logits with layer 1's MLP output zeroed."""
    with lm.trace(IDS):
        h = hidden(lm, 0).save()
        lm.transformer.h[1].mlp.output[:] = 0
        logits = lm.output.logits.save()
    return h, logits


def test_a_plain_forward_in_another_thread_during_the_first_trace_is_not_recorded(lm, leakcheck):
    """The order record must only see the traced forward: the other thread's forward would make a later read
    look out of order (a false OutOfOrderError)."""
    check = leakcheck(lm.module)
    plain_ref = lm.module(IDS).logits.detach()
    paused, ran = threading.Event(), threading.Event()
    seen: dict[str, torch.Tensor] = {}

    def tracer() -> None:
        assert lm._order is None                      # this is the trace that records the module order
        with lm.trace(IDS):
            seen["h"] = hidden(lm, 0).save()
            paused.set()                              # the forward is paused inside layer 0's parent
            assert ran.wait(TIMEOUT)
            lm.transformer.h[1].mlp.output[:] = 0
            seen["logits"] = lm.output.logits.save()

    def plain() -> None:
        assert paused.wait(TIMEOUT)
        seen["plain"] = lm.module(IDS).logits.detach()
        ran.set()

    assert run_threads(tracer, plain) == []
    torch.testing.assert_close(seen["plain"], plain_ref, rtol=0, atol=0)
    h, logits = edited_reference(attrib.LanguageModel(tiny_hf("gpt2").double()))
    torch.testing.assert_close(seen["h"], h, rtol=0, atol=0)
    torch.testing.assert_close(seen["logits"], logits, rtol=0, atol=0)
    check.assert_clean()


def test_a_plain_forward_in_another_thread_while_the_trace_waits_for_a_module(lm, leakcheck):
    """While this thread's forward runs towards an asked-for module, another thread's plain call of that same
    module must run untouched (it used to try to hand the value over: `greenlet.error`)."""
    check = leakcheck(lm.module)
    edited_reference(lm)                              # record the order first: the later trace uses it
    plain_ref = lm.module(IDS).logits.detach()
    inside, ran = threading.Event(), threading.Event()
    me: list[int] = []
    seen: dict[str, torch.Tensor] = {}

    def stall(module, args):
        if threading.get_ident() in me:              # only the tracing thread's forward waits here
            inside.set()
            assert ran.wait(TIMEOUT)

    handle = lm.module.transformer.h[1].attn.register_forward_pre_hook(stall)
    try:
        def tracer() -> None:
            me.append(threading.get_ident())
            with lm.trace(IDS):
                seen["mlp"] = lm.transformer.h[1].mlp.output.save()   # asked for: the forward is running
                seen["logits"] = lm.output.logits.save()

        def plain() -> None:
            assert inside.wait(TIMEOUT)
            seen["plain"] = lm.module(IDS).logits.detach()         # goes through the wrapped h[1].mlp
            ran.set()

        assert run_threads(tracer, plain) == []
    finally:
        handle.remove()
    torch.testing.assert_close(seen["plain"], plain_ref, rtol=0, atol=0)
    torch.testing.assert_close(seen["logits"], plain_ref, rtol=0, atol=0)
    check.assert_clean()


def test_plain_forwards_and_traces_of_one_model_in_two_threads_many_times(lm, leakcheck):
    check = leakcheck(lm.module)
    h_ref, logits_ref = edited_reference(attrib.LanguageModel(tiny_hf("gpt2").double()))
    plain_ref = lm.module(IDS).logits.detach()
    stop = threading.Event()
    counts = {"plain": 0}

    def tracer() -> None:
        try:
            for _ in range(60):
                h, logits = edited_reference(lm)
                torch.testing.assert_close(h, h_ref, rtol=0, atol=0)
                torch.testing.assert_close(logits, logits_ref, rtol=0, atol=0)
        finally:
            stop.set()

    def plain() -> None:
        while not stop.is_set():
            torch.testing.assert_close(lm.module(IDS).logits.detach(), plain_ref, rtol=0, atol=0)
            counts["plain"] += 1

    assert run_threads(tracer, plain) == []
    assert counts["plain"] > 0
    check.assert_clean()


def test_two_threads_tracing_one_model_get_a_clear_error(lm, leakcheck):
    check = leakcheck(lm.module)
    opened, tried = threading.Event(), threading.Event()
    seen: list[BaseException] = []

    def first() -> None:
        with lm.trace(IDS):
            hidden(lm, 0).save()
            opened.set()
            assert tried.wait(TIMEOUT)

    def second() -> None:
        assert opened.wait(TIMEOUT)
        try:
            with lm.trace(IDS):
                pass
        except attrib.AlreadyTracedError as err:
            seen.append(err)
        finally:
            tried.set()

    assert run_threads(first, second) == []
    assert len(seen) == 1 and "by another thread" in str(seen[0])
    check.assert_clean()
    with lm.trace(IDS):                            # free again once the first trace closed
        assert lm.output.logits.shape[1] == IDS.shape[1]


def test_traces_of_two_models_in_two_threads_with_backward_contexts(leakcheck):
    models = [attrib.LanguageModel(tiny_hf("gpt2", seed=s).double()) for s in (0, 1)]
    check = leakcheck(*(m.module for m in models))

    def grads(lm) -> tuple[torch.Tensor, torch.Tensor]:
        with lm.trace(IDS):
            h = hidden(lm, 0)
            logits = lm.output.logits
            with logits[0, -1, 7].backward():
                g = h.grad.save()
        return g, logits.detach()

    refs = [grads(m) for m in models]

    def worker(i: int) -> Callable[[], None]:
        def run() -> None:
            for _ in range(40):
                g, logits = grads(models[i])
                torch.testing.assert_close(g, refs[i][0], rtol=0, atol=0)
                torch.testing.assert_close(logits, refs[i][1], rtol=0, atol=0)
        return run

    assert run_threads(worker(0), worker(1)) == []
    check.assert_clean()


def test_a_plain_backward_in_another_thread_during_a_backward_context(lm, leakcheck):
    """The patched ``.grad`` and the context's hooks must not touch another thread's autograd: its parameter
    gradients are torch's, and ``.grad`` of its own tensors is torch's."""
    check = leakcheck(lm.module)
    other = tiny_hf("gpt2", seed=3).double()
    x = torch.ones(3, requires_grad=True)

    def plain_grads() -> tuple[torch.Tensor, torch.Tensor]:
        other.zero_grad(set_to_none=True)
        x.grad = None
        out = other(IDS).logits[0, -1, 2] * x.sum()
        out.backward()
        return other.transformer.wte.weight.grad.clone(), x.grad.clone()

    ref_w, ref_x = plain_grads()
    inside, ran = threading.Event(), threading.Event()
    seen: dict[str, torch.Tensor] = {}

    def tracer() -> None:
        with lm.trace(IDS):
            h = hidden(lm, 0)
            logits = lm.output.logits
            with logits[0, -1, 7].backward():
                inside.set()
                assert ran.wait(TIMEOUT)
                seen["g"] = h.grad.save()

    def plain() -> None:
        assert inside.wait(TIMEOUT)
        try:
            seen["w"], seen["x"] = plain_grads()
        finally:
            ran.set()

    assert run_threads(tracer, plain) == []
    torch.testing.assert_close(seen["w"], ref_w, rtol=0, atol=0)
    torch.testing.assert_close(seen["x"], ref_x, rtol=0, atol=0)
    assert seen["g"].shape == (1, IDS.shape[1], lm.module.config.n_embd) and seen["g"].abs().sum() > 0
    check.assert_clean()


def test_methods_in_two_threads_on_two_models():
    models = [attrib.LanguageModel(tiny_hf("gpt2", seed=s).double()) for s in (0, 1)]
    refs = [attrib.integrated_gradients(m, IDS, target=3, n_steps=4).scores for m in models]

    def worker(i: int) -> Callable[[], None]:
        def run() -> None:
            for _ in range(10):
                got = attrib.integrated_gradients(models[i], IDS, target=3, n_steps=4).scores
                torch.testing.assert_close(got, refs[i], rtol=0, atol=0)
        return run

    assert run_threads(worker(0), worker(1)) == []
