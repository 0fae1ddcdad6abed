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


def test_a_plain_models_invokes_run_one_forward_each():
    """Which dimension of a module of the user's own is the batch is not known: no batching, same results."""
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
    assert tracer.forwards == 2
    for x, (h, g) in zip(xs, got):
        with net.trace(x):
            hh = net[1].output
            with net.output.sum().backward():
                gg = hh.grad.save()
        assert h.shape == (x.shape[0], 4)
        torch.testing.assert_close(h, hh, **TOL)
        torch.testing.assert_close(g, gg, **TOL)


# -- what a review found: code whose meaning depends on the body running in place, in order -------------------
def logits_of(lm, prompt):
    with lm.trace(prompt):
        return lm.output.logits.save()


def test_bodies_that_start_without_a_line_of_their_own_run_in_place(lm):
    seen = []
    previous = sys.gettrace()
    sys.settrace(lambda *a: None)          # a debugger's or coverage's tracer, to be kept
    mine = sys.gettrace()
    try:
        with lm.trace() as tracer:
            with tracer.invoke(SAME[0]):
                try:                           # `try` compiles to no instruction at its line
                    a = lm.output.logits.save()
                except KeyError:
                    pass
            with tracer.invoke(SAME[1]):
                pass
        seen.append(sys.gettrace() is mine)
    finally:
        sys.settrace(previous)
    assert seen == [True] and tracer.forwards == 2
    torch.testing.assert_close(a, logits_of(lm, SAME[0]), **TOL)


def test_code_that_reads_or_changes_what_a_body_uses_keeps_it_in_place(lm):
    norms, idx, out = [], [0], []
    with lm.trace() as tracer:
        for j, prompt in enumerate(SAME[:2]):
            idx[0] = j                         # changed after the previous invoke: that body must have run
            with tracer.invoke(prompt):
                h = lm.output.logits[:, idx[0]].save()
            norms.append(h)                    # read after the invoke, inside the trace
    assert tracer.forwards == 2
    for j, prompt in enumerate(SAME[:2]):
        torch.testing.assert_close(norms[j], logits_of(lm, prompt)[:, j], **TOL)

    with torch.no_grad(), lm.trace() as tracer:
        with tracer.invoke(SAME[0]):
            assert not torch.is_grad_enabled()
            out.append(lm.output.logits.save())
    with lm.trace() as tracer:
        try:
            with tracer.invoke(SAME[0]):
                raise ValueError("caught by the try around the invoke")
        except ValueError:
            out.append("caught")
        with tracer.invoke(SAME[1]) as inv:        # `as` binds a name the body may read: in place
            out.append(type(inv).__name__)
    assert out[1:] == ["caught", "Trace"] and not out[0].requires_grad


def test_values_passed_through_a_container_or_rebound_to_an_entry_object(lm):
    clean, corrupted = "w3 w14 w15 w9", "w3 w14 w40 w9"
    cache, x = {}, None
    with lm.trace() as tracer:
        with tracer.invoke(clean):
            cache["h"] = lm.transformer.h[1].output.save()
            x = 5
        with tracer.invoke(corrupted):
            lm.transformer.h[1].output[:] = cache["h"]     # read from what the clean body wrote: a forward of its own
            patched = lm.output.logits.save()
            x = None                                       # the last invoke's binding wins, even back to None
    assert tracer.forwards == 2 and x is None
    torch.testing.assert_close(patched, logits_of(lm, clean), **TOL)


def test_gradients_in_a_batch_with_retain_graph_false_and_the_pre_05_form(lm):
    def old_form(lm):
        h = lm.transformer.h[0].output
        g = h.grad.save()                                  # read before the backward: filled by it
        lm.output.logits[0, -1, 7].backward()
        return g

    def context_form(lm):
        h = lm.transformer.h[0].output
        with lm.output.logits[0, -1, 7].backward(retain_graph=False):
            return h.grad.save()

    for form in (old_form, context_form):
        got = []
        with lm.trace() as tracer:
            for prompt in SAME[:2]:
                with tracer.invoke(prompt):
                    got.append(form(lm))
        assert tracer.forwards == 1
        for prompt, g in zip(SAME[:2], got):
            with lm.trace(prompt):
                want = form(lm)
            torch.testing.assert_close(g, want, **TOL)


def test_an_edit_of_a_value_all_rows_share_is_refused(lm, leakcheck):
    check = leakcheck(lm.module)
    with pytest.raises(attrib.ValueEditError, match=r"invoke 1 of the batch edited in place a value of shape "
                                                    r"\(1, 4, 32\) whose first dimension is not the batch's 2 rows"):
        with lm.trace() as tracer:
            for prompt in SAME[:2]:
                with tracer.invoke(prompt):
                    lm.transformer.wpe.output[:] = 0       # GPT-2's position embeddings: (1, T, d), one for all rows
    check.assert_clean()


def test_a_plain_model_with_a_second_tensor_argument_is_not_batched():
    class Scaled(torch.nn.Module):
        def forward(self, x, w):
            return x * w

    net = attrib.Model(Scaled())
    w = torch.tensor([1.0, 2.0], dtype=torch.float64)
    xs = [torch.ones(2, 2, dtype=torch.float64), torch.full((2, 2), 3.0, dtype=torch.float64)]
    got = []
    with net.trace() as tracer:
        for x in xs:
            with tracer.invoke(x, w):                      # w has as many entries as x has rows: not per row
                got.append(net.output.save())
    assert tracer.forwards == 2
    for x, out in zip(xs, got):
        torch.testing.assert_close(out, x * w, **TOL)


def test_a_padded_and_an_unpadded_invoke_of_a_roberta_style_model_equal_their_own_traces():
    """The unpadded invoke's position ids are written out as the padded one's are, from padding_idx + 1 on a
    RoBERTa-style position table (from 0 they gave its row other logits than its own trace)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.RobertaConfig(is_decoder=True, num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                        num_attention_heads=4, vocab_size=60, max_position_embeddings=70,
                                        pad_token_id=0)
    lm = attrib.LanguageModel(transformers.RobertaForCausalLM(config).double().eval())
    padded, alone = [[3, 14, 15, 9], [12, 13]], [[7, 8, 2, 5]]
    with lm.trace() as tracer:
        with tracer.invoke(padded):
            a = lm.output.logits[:, -1].save()
        with tracer.invoke(alone):
            b = lm.output.logits[:, -1].save()
    assert tracer.forwards == 1
    for got, prompt in ((a, padded), (b, alone)):
        with lm.trace(prompt):
            want = lm.output.logits[:, -1].save()
        torch.testing.assert_close(got, want, **TOL)
