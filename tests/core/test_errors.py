"""Bad input: each case raises one clear AttribError subclass, and leaves the model clean."""

from __future__ import annotations

import pytest
import torch

import attrib
from tests.conftest import tiny_hf


def test_unknown_module_path_lists_close_names(gpt2, leakcheck):
    model, hf, ids = gpt2
    check = leakcheck(hf)
    with pytest.raises(attrib.ModulePathError) as info:
        model.transformer.hh
    msg = str(info.value)
    assert "model.transformer" in msg and "'hh'" in msg and "did you mean 'h'" in msg
    assert isinstance(info.value, AttributeError)
    with pytest.raises(attrib.ModulePathError, match=r"h\[5\] is out of range: model.transformer.h has 2"):
        model.transformer.h[5]
    with pytest.raises(attrib.ModulePathError, match="did you mean 'lm_head'"):
        with model.trace(ids):
            model.lm_haed.output
    check.assert_clean()


def test_out_of_order_gradient_read(gpt2, leakcheck):
    model, hf, ids = gpt2
    check = leakcheck(hf)
    with pytest.raises(attrib.OutOfOrderError) as info:
        with model.trace(ids):
            h0 = model.transformer.h[0].output
            h1 = model.transformer.h[1].output
            logits = model.output.logits
            with logits.sum().backward():
                h0.grad
                h1.grad
    msg = str(info.value)
    assert "model.transformer.h[1].output" in msg and "reverse execution order" in msg
    assert "model.transformer.h[0].output" in msg
    check.assert_clean()


def test_gradient_of_a_tensor_not_on_the_path(gpt2, leakcheck):
    model, hf, ids = gpt2
    check = leakcheck(hf)
    with pytest.raises(attrib.OutOfOrderError) as info:
        with model.trace(ids):
            row = model.transformer.h[-1].output[0]      # a batch row: the model never uses it
            logits = model.output.logits
            with logits.sum().backward():
                row.grad
    msg = str(info.value)
    assert "not on the path from the loss" in msg and "output[0]" in msg
    check.assert_clean()
    with pytest.raises(attrib.OutOfOrderError, match="does not require grad"):
        with model.trace(ids):
            h = model.transformer.h[0].output.detach()
            logits = model.output.logits
            with logits.sum().backward():
                h.grad


def test_gradient_assignment_checks_shape_dtype_device(gpt2, leakcheck):
    model, hf, ids = gpt2
    check = leakcheck(hf)
    cases = [(lambda g: torch.zeros(3), "shape (3,); expected shape (1, 6, 32)"),
             (lambda g: torch.zeros_like(g, dtype=torch.float32), "dtype torch.float32; expected dtype torch.float64"),
             (lambda g: torch.zeros_like(g, device="meta"), "device meta; expected device cpu"),
             (lambda g: 0.0, "must be set to a tensor, got float")]
    for make, text in cases:
        with pytest.raises(attrib.GradientValueError) as info:
            with model.trace(ids):
                h = model.transformer.h[1].output
                logits = model.output.logits
                with logits.sum().backward():
                    h.grad = make(h.grad)
        assert text in str(info.value)
        assert "model.transformer.h[1].output" in str(info.value)
    check.assert_clean()


def test_second_backward_without_retain_graph(gpt2, leakcheck):
    model, hf, ids = gpt2
    check = leakcheck(hf)
    with pytest.raises(attrib.GraphFreedError, match=r"retain_graph=True"):
        with model.trace(ids):
            h0 = model.transformer.h[0].output
            logits = model.output.logits
            with logits.sum().backward():
                h0.grad
            with logits[0, -1].sum().backward():
                h0.grad
    check.assert_clean()
    with pytest.raises(attrib.GraphFreedError, match=r"retain_graph=True") as info:
        with model.trace(ids):
            logits = model.output.logits
            logits.sum().backward()
            logits.sum().backward()
    assert isinstance(info.value, RuntimeError)      # plain torch code still catches it
    check.assert_clean()


def test_non_scalar_backward_without_gradient(gpt2, leakcheck):
    model, hf, ids = gpt2
    check = leakcheck(hf)
    with pytest.raises(attrib.NonScalarLossError, match=r"shape \(1, 6, 50\) and no gradient"):
        with model.trace(ids):
            logits = model.output.logits
            with logits.backward():
                pass
    with pytest.raises(attrib.NonScalarLossError, match="non-scalar"):
        with model.trace(ids):
            model.output.logits.backward()
    check.assert_clean()


def test_inputs_on_another_device(gpt2, leakcheck):
    model, hf, ids = gpt2
    check = leakcheck(hf)
    with pytest.raises(attrib.InputError, match=r"is on meta, but the model is on cpu; move it with .to\('cpu'\)"):
        model.trace(ids.to("meta"))
    check.assert_clean()


def test_string_prompt_without_tokenizer(gpt2):
    model, hf, ids = gpt2
    with pytest.raises(attrib.InputError, match="has no tokenizer; wrap the model with attrib.LanguageModel"):
        model.trace("hello")
    lm = attrib.LanguageModel(hf, None)
    with pytest.raises(attrib.InputError, match="has no tokenizer"):
        lm.trace("hello")


@pytest.mark.slow
@pytest.mark.parametrize("prompt", ["", [], ["ok", ""]])
def test_empty_prompt(demo, prompt):
    with pytest.raises(attrib.InputError, match="empty"):
        demo.trace(prompt)


@pytest.mark.slow
def test_whitespace_prompt_with_tokens_is_a_prompt(demo):
    with demo.trace("   "):           # byte-level BPE gives whitespace tokens: a legitimate input (issue 9)
        logits = demo.output.logits.save()
    assert logits.shape[:2] == (1, len(demo.tokenizer("   ")["input_ids"]))


def test_empty_token_tensor(gpt2):
    lm = attrib.LanguageModel(tiny_hf("gpt2"))
    with pytest.raises(attrib.InputError, match="empty tensor"):
        lm.trace(torch.zeros(1, 0, dtype=torch.long))


def test_no_inputs_is_a_block_of_invokes(gpt2):
    model, hf, ids = gpt2
    with pytest.raises(attrib.NotInTraceError, match="outside every invoke"):
        with model.trace():
            model.output
    with model.trace() as tracer:
        with tracer.invoke(ids):
            out = model.output.logits.save()
    assert out.shape == (1, 6, 50)


def test_every_error_is_an_attrib_error():
    for cls in (attrib.OutOfOrderError, attrib.ModulePathError, attrib.GradientValueError, attrib.GraphFreedError,
                attrib.InputError, attrib.NonScalarLossError, attrib.NoGradError):
        assert issubclass(cls, attrib.AttribError)
