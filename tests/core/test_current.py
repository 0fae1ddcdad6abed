"""The per-thread record of open traces and contexts, and the torch patches held by them: .grad is a
property only while a context is open or before the trace's first backward."""

from __future__ import annotations

import threading

import pytest
import torch

import attrib
from attrib.core import current
from attrib.core.patches import BACKWARD, GRAD, SAVE


def grad_patched() -> bool:
    return "grad" in torch.Tensor.__dict__


def test_grad_is_torchs_own_after_the_first_backward(gpt2, leakcheck):
    model, hf, ids = gpt2
    check = leakcheck(hf)
    seen = []
    with model.trace(ids):
        h = model.transformer.h[0].output
        logits = model.output.logits
        seen.append(grad_patched())                  # before any backward: the pre-0.5 form needs it
        logits.sum().backward(retain_graph=True)
        seen.append(grad_patched())                  # after a plain backward: torch's descriptor
        with logits.sum().backward():
            seen.append(grad_patched())              # inside a context
            h.grad
        seen.append(grad_patched())
    assert seen == [True, False, True, False]
    assert not grad_patched() and (BACKWARD.count, SAVE.count, GRAD.count) == (0, 0, 0)
    check.assert_clean()


def test_the_record_is_per_thread(gpt2):
    model, hf, ids = gpt2
    other_saw: list = []
    ready, done = threading.Event(), threading.Event()

    def other():
        ready.wait()
        other_saw.append(current.current_trace())
        other_saw.append(current.trace_of(model))
        try:
            with model.trace(ids):
                pass
        except attrib.AlreadyTracedError as err:
            other_saw.append(str(err))
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    with model.trace(ids) as tr:
        assert current.current_trace() is tr and current.trace_of(model) is tr
        ready.set()
        done.wait(10)
    thread.join()
    assert other_saw[:2] == [None, None]
    assert "by another thread" in other_saw[2]
    with model.trace(ids):                           # free again once the first trace closed
        assert model.output.logits.shape == (1, 6, 50)


def test_patches_restore_what_another_library_put_there():
    sentinel = property(lambda self: "theirs")
    torch.Tensor.save = sentinel
    try:
        with SAVE.held():
            assert torch.ones(1).save().tolist() == [1.0]
        assert torch.Tensor.__dict__["save"] is sentinel
    finally:
        del torch.Tensor.save


def test_nested_traces_of_two_models_hold_each_patch_once_each(gpt2):
    model, hf, ids = gpt2
    other = attrib.Model(torch.nn.Linear(2, 1))
    with model.trace(ids):
        with other.trace(torch.ones(1, 2)) as inner:
            assert BACKWARD.count == 2 and current.current_trace() is inner
        assert BACKWARD.count == 1
    assert BACKWARD.count == 0 and not hasattr(torch.Tensor, "save")


def test_a_model_traced_twice_in_one_thread_is_refused(gpt2):
    model, hf, ids = gpt2
    with pytest.raises(attrib.AlreadyTracedError, match="already being traced;"):
        with model.trace(ids):
            with model.trace(ids):
                pass
