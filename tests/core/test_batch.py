"""Invokes that share one forward (attrib/core/batch.py, attrib/core/deferred.py): each body sees its own rows,
edits and gradients stay in them, and everything equals one trace per prompt (float64); invokes that cannot
share a forward (other lengths, a name from an earlier body, a body that cannot be moved) still run right."""

from __future__ import annotations

import sys

import pytest
import torch

import attrib
from tests.core.test_invoke import body

SAME = ["w3 w14 w15 w9", "w7 w8 w2 w1", "w40 w41 w42 w43"]      # four tokens each
TOL = dict(rtol=1e-12, atol=1e-12)


def forwards_of(lm):
    """A counter of the root module's forward calls."""
    calls = []
    handle = lm.module.register_forward_pre_hook(lambda m, a: calls.append(1))
    return calls, handle


def test_same_length_invokes_run_as_one_forward_and_equal_per_prompt_traces(lm, leakcheck):
    check = leakcheck(lm.module)
    calls, handle = forwards_of(lm)
    got = []
    with lm.trace() as tracer:
        for prompt in SAME:
            with tracer.invoke(prompt):
                got.append(body(lm))
    handle.remove()
    check.assert_clean()
    assert (tracer.invokes, tracer.forwards, len(calls)) == (3, 1, 1)
    for prompt, values in zip(SAME, got):
        with lm.trace(prompt):
            want = body(lm)
        assert values[0].shape == (1, 4, 32) and values[3].shape == (1, 4, 50)   # the invoke's own row
        for a, b in zip(values, want):
            torch.testing.assert_close(a, b, **TOL)
        assert float(values[1].abs().sum()) > 0


def test_loop_variables_and_names_bound_in_bodies(lm):
    def run():
        out = {}
        with lm.trace() as tracer:
            for prompt in SAME:
                with tracer.invoke(prompt):
                    out[prompt] = lm.output.logits.save()
                    last = prompt            # bound in the body, seen after the block as the last invoke left it
        return out, last, tracer.forwards

    out, last, forwards = run()
    assert forwards == 1 and last == SAME[-1]
    for prompt in SAME:
        with lm.trace(prompt):
            want = lm.output.logits.save()
        torch.testing.assert_close(out[prompt], want, **TOL)


def test_edits_stay_in_their_rows(lm):
    with lm.trace() as tracer:
        with tracer.invoke(SAME[0]):
            lm.transformer.h[0].output[:, 1] = 0                  # in place, on this invoke's view
            a = lm.output.logits.save()
        with tracer.invoke(SAME[1]):
            b = lm.output.logits.save()
        with tracer.invoke(SAME[2]):
            h = lm.transformer.h[1].output
            lm.transformer.h[1].output = h * 2                    # assigned: these rows of the batch value
            c = lm.output.logits.save()
    assert tracer.forwards == 1
    with lm.trace(SAME[0]):
        lm.transformer.h[0].output[:, 1] = 0
        want_a = lm.output.logits.save()
    with lm.trace(SAME[1]):
        want_b = lm.output.logits.save()
    with lm.trace(SAME[2]):
        lm.transformer.h[1].output = lm.transformer.h[1].output * 2
        want_c = lm.output.logits.save()
    for got, want in ((a, want_a), (b, want_b), (c, want_c)):
        torch.testing.assert_close(got, want, **TOL)
    assert not torch.allclose(a, want_b)


def test_gradient_edits_stay_in_their_rows(lm):
    def edit(lm):
        h0 = lm.transformer.h[0].output
        h1 = lm.transformer.h[1].output
        logits = lm.output.logits
        with logits[0, -1].sum().backward():
            lm_grad = h1.grad
            h1.grad = lm_grad * 3                                 # overwritten on the way back
            g0 = h0.grad.save()
        return g0

    with lm.trace() as tracer:
        with tracer.invoke(SAME[0]):
            first = edit(lm)
        with tracer.invoke(SAME[1]):
            second = body(lm)
    assert tracer.forwards == 1
    with lm.trace(SAME[0]):
        want_first = edit(lm)
    with lm.trace(SAME[1]):
        want_second = body(lm)
    torch.testing.assert_close(first, want_first, **TOL)
    for a, b in zip(second, want_second):
        torch.testing.assert_close(a, b, **TOL)


def test_other_lengths_start_new_forwards(lm):
    prompts = ["w3 w4", "w5 w6", "w7 w8 w9", "w1 w2"]
    got = []
    with lm.trace() as tracer:
        for prompt in prompts:
            with tracer.invoke(prompt):
                got.append(lm.output.logits.save())
    assert tracer.forwards == 3                     # [2, 2], [3], [2]: consecutive runs of one length
    for prompt, out in zip(prompts, got):
        with lm.trace(prompt):
            torch.testing.assert_close(out, lm.output.logits.save(), **TOL)


def test_a_body_on_the_with_line_runs_in_place(lm):
    with lm.trace() as tracer:
        with tracer.invoke(SAME[0]):
            a = lm.output.logits.save()
        with tracer.invoke(SAME[1]): b = lm.output.logits.save()   # noqa: E701 - no line of its own to skip
    assert tracer.forwards == 2
    with lm.trace(SAME[0]):
        torch.testing.assert_close(a, lm.output.logits.save(), **TOL)
    with lm.trace(SAME[1]):
        torch.testing.assert_close(b, lm.output.logits.save(), **TOL)


def test_an_error_in_a_body_leaves_the_model_clean(lm, leakcheck):
    check = leakcheck(lm.module)
    tracing = sys.gettrace()
    with pytest.raises(ZeroDivisionError):
        with lm.trace() as tracer:
            with tracer.invoke(SAME[0]):
                lm.transformer.h[0].output.save()
            with tracer.invoke(SAME[1]):
                lm.transformer.h[1].output.save()
                1 / 0
    assert sys.gettrace() is tracing
    check.assert_clean()
    with pytest.raises(attrib.OutOfOrderError, match="ran past"):
        with lm.trace() as tracer:
            with tracer.invoke(SAME[0]):
                lm.transformer.h[1].output.save()
            with tracer.invoke(SAME[1]):
                lm.transformer.h[1].output.save()
                lm.transformer.h[0].output.save()           # read after the model ran past it, in this body
    check.assert_clean()
    with lm.trace(SAME[0]):                                 # the model is reusable
        assert lm.output.logits.save().shape == (1, 4, 50)


def test_plain_model_rows():
    torch.manual_seed(0)
    net = attrib.Model(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double())
    xs = [torch.randn(1, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)]
    got = []
    with net.trace() as tracer:
        for x in xs:
            with tracer.invoke(x):
                h = net[1].output
                out = net.output
                with out.sum().backward():
                    got.append((h.save(), h.grad.save()))
    assert tracer.forwards == 1
    for x, (h, g) in zip(xs, got):
        with net.trace(x):
            hh = net[1].output
            with net.output.sum().backward():
                gg = hh.grad.save()
        assert h.shape == (x.shape[0], 4)
        torch.testing.assert_close(h, hh, **TOL)
        torch.testing.assert_close(g, gg, **TOL)
