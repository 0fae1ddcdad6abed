"""Invokes (`with model.trace() as tracer: with tracer.invoke(...)`): reads, edits, saves and gradients inside
each invoke equal one trace per prompt (float64, prompts of different lengths, several invokes and several
backward passes); values flow to later invokes; misuse gets one clear error and leaves nothing behind."""

from __future__ import annotations

import pytest
import torch

import attrib

PROMPTS = ["w3 w14 w15 w9 w26 w5", "w7 w8", "w40 w41 w42 w43"]


def body(lm):
    """Inside an open trace: a layer's output, its gradient under two losses, and the logits."""
    h = lm.transformer.h[0].output
    hs = h.save()
    logits = lm.output.logits
    with logits[0, -1, 7].backward(retain_graph=True):
        g_last = h.grad.save()
    with logits[0, 0, 3].backward():
        g_first = h.grad.save()
    return hs, g_last, g_first, logits.save()


def per_prompt(lm, prompt):
    with lm.trace(prompt):
        return body(lm)


def test_invokes_equal_one_trace_per_prompt(lm, leakcheck):
    check = leakcheck(lm.module)
    got = []
    with lm.trace() as tracer:
        for prompt in PROMPTS:
            with tracer.invoke(prompt):
                got.append(body(lm))
    check.assert_clean()
    assert tracer.invokes == 3
    for prompt, values in zip(PROMPTS, got):
        want = per_prompt(lm, prompt)
        assert values[0].shape == (1, len(prompt.split()), 32)       # the invoke's own rows and positions
        for a, b in zip(values, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert float(values[1].abs().sum()) > 0 and float(values[2][0, 1:].abs().sum()) == 0   # causal


def test_values_flow_to_later_invokes_like_nnsight_patching(lm):
    """The NNsight patching idiom: save an activation in one invoke, write it into another."""
    clean, corrupted = "w3 w14 w15 w9", "w3 w14 w40 w9"
    with lm.trace() as tracer:
        with tracer.invoke(clean):
            h_clean = lm.transformer.h[1].output.save()
        with tracer.invoke(corrupted):
            lm.transformer.h[1].output[:] = h_clean
            patched = lm.output.logits.save()
    # the corrupted body reads a name the clean body binds: it waits for it in a forward of its own (in a
    # shared one it would start before h_clean exists)
    assert tracer.forwards == 2
    with lm.trace(clean):
        want = lm.output.logits.save()
    torch.testing.assert_close(patched, want, rtol=1e-12, atol=1e-12)   # the last layer's output decides


def test_a_batch_inside_one_invoke(lm):
    with lm.trace() as tracer:
        with tracer.invoke(PROMPTS[:2]):                 # a list of prompts: a left-padded batch of 2
            out = lm.output.logits.save()
    with lm.trace(PROMPTS[:2]):
        want = lm.output.logits.save()
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert out.shape[0] == 2


def test_misuse_is_refused(lm, leakcheck):
    check = leakcheck(lm.module)
    with pytest.raises(attrib.NotInTraceError, match=r"outside every invoke; a trace without inputs runs its forwards "
                                                     r"in its invokes, so read it inside `with tracer\.invoke"):
        with lm.trace():
            lm.transformer.h[0].output
    with pytest.raises(attrib.NotInTraceError, match=r"opened inside another invoke; close the first"):
        with lm.trace() as tracer:
            with tracer.invoke(PROMPTS[0]):
                with tracer.invoke(PROMPTS[1]):
                    pass
    tracer = lm.trace()
    with tracer:
        pass
    with pytest.raises(attrib.NotInTraceError, match=r"outside its `with model\.trace\(\) as tracer:` block"):
        tracer.invoke(PROMPTS[0])
    with pytest.raises(attrib.ReusedBlockError, match="this tracer was already used"):
        with tracer:
            pass
    with pytest.raises(attrib.NotInTraceError, match=r"exists only inside `with model\.trace"):
        lm.transformer.h[0].output                   # after the block: the ordinary message again
    check.assert_clean()
    with lm.trace(PROMPTS[0]):                         # the model is reusable
        ok = lm.output.logits.save()
    assert ok.shape == (1, 6, 50)


def test_an_invoke_without_inputs_is_refused(lm):
    with pytest.raises(attrib.InputError, match=r"tracer\.invoke\(\) got no inputs; pass the prompt"):
        with lm.trace() as tracer:
            tracer.invoke()
