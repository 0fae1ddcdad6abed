"""No hooks, patched torch attributes or live greenlets after normal exits and after errors raised in the
block, in the model, and in a backward context; the model is reusable afterwards."""

from __future__ import annotations

import traceback

import pytest
import torch

import attrib


class Boom(Exception):
    pass


def clean_run(model, ids):
    with model.trace(ids):
        h = model.transformer.h[0].output
        logits = model.output.logits
        with logits.sum().backward():
            g = h.grad.save()
    return g


def test_normal_exit(gpt2, leakcheck):
    model, hf, ids = gpt2
    check = leakcheck(hf)
    g = clean_run(model, ids)
    check.assert_clean()
    assert g.abs().sum() > 0
    assert h_hooks_empty(model, ids)


def h_hooks_empty(model, ids) -> bool:
    """The tensors handed out carry no tensor hook after the trace."""
    with model.trace(ids):
        h = model.transformer.h[0].output
        logits = model.output.logits
        with logits.sum().backward():
            h.grad
    return not h._backward_hooks and not logits._backward_hooks


def test_error_in_the_block_while_the_forward_is_paused(gpt2, leakcheck):
    model, hf, ids = gpt2
    check = leakcheck(hf)
    with pytest.raises(Boom):
        with model.trace(ids):
            model.transformer.h[0].output
            raise Boom()
    check.assert_clean()
    assert clean_run(model, ids).abs().sum() > 0


def test_error_in_the_model_keeps_its_type_and_shows_the_users_line(gpt2, leakcheck):
    model, hf, ids = gpt2
    check = leakcheck(hf)

    def explode(module, args, out):
        raise Boom("from the model")

    handle = hf.transformer.h[1].mlp.register_forward_hook(explode)
    try:
        with pytest.raises(Boom, match="from the model") as info:
            with model.trace(ids):
                model.transformer.h[0].output
                model.transformer.h[1].output          # the user's line
    finally:
        handle.remove()
    lines = [frame.line for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "model.transformer.h[1].output          # the user's line" in lines
    check.assert_clean()
    assert clean_run(model, ids).abs().sum() > 0


def test_error_in_the_model_after_the_block(gpt2, leakcheck):
    model, hf, ids = gpt2
    check = leakcheck(hf)

    def explode(module, args, out):
        raise Boom("late")

    handle = hf.lm_head.register_forward_hook(explode)
    try:
        with pytest.raises(Boom):
            with model.trace(ids):
                model.transformer.h[0].output
    finally:
        handle.remove()
    check.assert_clean()


def test_error_in_a_backward_context_while_the_backward_is_paused(gpt2, leakcheck):
    model, hf, ids = gpt2
    check = leakcheck(hf)
    with pytest.raises(Boom):
        with model.trace(ids):
            model.transformer.h[0].output        # upstream of the pause: the backward has work left
            logits = model.output.logits
            with logits.sum().backward():
                logits.grad
                raise Boom()
    check.assert_clean()
    assert clean_run(model, ids).abs().sum() > 0


def test_error_raised_by_autograd_inside_a_context(gpt2, leakcheck):
    model, hf, ids = gpt2
    check = leakcheck(hf)

    with pytest.raises(Boom):
        with model.trace(ids):
            h = model.transformer.h[0].output
            h.register_hook(lambda g: (_ for _ in ()).throw(Boom()))
            logits = model.output.logits
            with logits.sum().backward():
                pass
    check.assert_clean()
    assert clean_run(model, ids).abs().sum() > 0


def test_keyboard_interrupt_in_the_block(gpt2, leakcheck):
    model, hf, ids = gpt2
    check = leakcheck(hf)
    with pytest.raises(KeyboardInterrupt):
        with model.trace(ids):
            logits = model.output.logits
            with logits.sum().backward():
                logits.grad
                raise KeyboardInterrupt
    check.assert_clean()


def test_demo_model_is_clean_after_errors(demo, leakcheck):
    check = leakcheck(demo.module)
    with pytest.raises(attrib.OutOfOrderError):
        with demo.trace("The capital of France is"):
            demo.model.layers[3].output
            demo.model.layers[1].output
    check.assert_clean()


test_demo_model_is_clean_after_errors = pytest.mark.slow(test_demo_model_is_clean_after_errors)


def test_another_librarys_backward_patch_survives_a_trace(gpt2):
    model, hf, ids = gpt2
    original = torch.Tensor.backward
    calls = []

    def theirs(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    torch.Tensor.backward = theirs
    try:
        with model.trace(ids):
            model.output.logits.sum().backward()        # bare: goes through their patch
        assert torch.Tensor.backward is theirs
        assert calls == [1]
    finally:
        torch.Tensor.backward = original
    hf.zero_grad(set_to_none=True)
