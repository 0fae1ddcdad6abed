"""Forward traces: module values, writes, order, save, inputs."""

from __future__ import annotations

import pytest
import torch

import attrib
from tests.conftest import attn_name, envoy_at, layers_path
from tests.core.reference import reference_grads


def plain_outputs(hf, ids, paths, edits=None):
    """Module outputs with plain forward hooks (edits: path -> fn replacing the output)."""
    edits = edits or {}
    store, handles = {}, []
    for path in set(paths) | set(edits):
        def hook(m, a, out, path=path):
            if path in edits:
                out = edits[path](out)
            store[path] = out
            return out
        handles.append(hf.get_submodule(path).register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = hf(input_ids=ids).logits
    finally:
        for h in handles:
            h.remove()
    return store, logits


def test_outputs_are_the_real_values(tiny, arch, leakcheck):
    model, hf, ids = tiny
    check = leakcheck(hf)
    lp = layers_path(arch)
    with model.trace(ids):
        h0 = envoy_at(model, f"{lp}.0").output.save()
        attn = envoy_at(model, f"{lp}.1.{attn_name(arch)}").output
        h1 = envoy_at(model, f"{lp}.1").output
        logits = model.output.logits
    store, ref_logits = plain_outputs(hf, ids, [f"{lp}.0", f"{lp}.1"])
    torch.testing.assert_close(h0, store[f"{lp}.0"], rtol=0, atol=0)
    torch.testing.assert_close(h1, store[f"{lp}.1"], rtol=0, atol=0)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)
    assert isinstance(attn, tuple), "attention modules return a tuple in transformers 5"
    check.assert_clean()


def test_inplace_write_reaches_downstream(tiny, arch):
    model, hf, ids = tiny
    lp = layers_path(arch)
    with model.trace(ids):
        envoy_at(model, f"{lp}.0").output[:, 1] = 0
        logits = model.output.logits.save()

    def zero(out):
        out = out.clone()
        out[:, 1] = 0
        return out

    _, ref = plain_outputs(hf, ids, [], edits={f"{lp}.0": zero})
    _, unedited = plain_outputs(hf, ids, [])
    torch.testing.assert_close(logits, ref, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(logits, unedited)


def test_assignment_replaces_output(tiny, arch):
    model, hf, ids = tiny
    lp = layers_path(arch)
    with model.trace(ids):
        mlp = envoy_at(model, f"{lp}.0.mlp")
        mlp.output = mlp.output * 2
        logits = model.output.logits.save()
    _, ref = plain_outputs(hf, ids, [], edits={f"{lp}.0.mlp": lambda o: o * 2})
    torch.testing.assert_close(logits, ref, rtol=1e-12, atol=1e-12)


def test_assigned_output_gets_gradients(gpt2):
    """A replaced output is the tensor the model goes on with: its grad is the one flowing in."""
    model, hf, ids = gpt2
    with model.trace(ids):
        mlp = model.transformer.h[0].mlp
        new = mlp.output * 2
        mlp.output = new
        logits = model.output.logits
        with logits.sum().backward():
            g = mlp.output.grad.save()
    ref, _, _ = reference_grads(hf, ids, ["transformer.h.0.mlp"], lambda l: l.sum(),
                                output_edits={"transformer.h.0.mlp": lambda o: o * 2})
    torch.testing.assert_close(g, ref["transformer.h.0.mlp"], rtol=1e-12, atol=1e-12)


def test_input_and_inputs(gpt2):
    model, hf, ids = gpt2
    with model.trace(ids):
        layer = model.transformer.h[1]
        args, kwargs = layer.inputs
        x = layer.input
    assert x is args[0]
    store, _ = plain_outputs(hf, ids, ["transformer.h.0"])
    torch.testing.assert_close(x, store["transformer.h.0"], rtol=0, atol=0)
    assert isinstance(kwargs, dict)


def test_input_write_changes_the_call(gpt2):
    model, hf, ids = gpt2
    with model.trace(ids):
        layer = model.transformer.h[1]
        layer.input = torch.zeros_like(layer.input)
        out = layer.output.save()
    with torch.no_grad():
        args_kwargs = {}
        handle = hf.transformer.h[1].register_forward_pre_hook(
            lambda m, a, k: args_kwargs.update(k=k) or None, with_kwargs=True)
        hf(input_ids=ids)
        handle.remove()
        expected = hf.transformer.h[1](torch.zeros_like(out), **args_kwargs["k"])
    torch.testing.assert_close(out, expected[0] if isinstance(expected, tuple) else expected)


def test_root_input_and_output(gpt2):
    model, hf, ids = gpt2
    with model.trace(ids):
        args, kwargs = model.inputs
        out = model.output
    assert torch.equal(kwargs["input_ids"], ids) if "input_ids" in kwargs else torch.equal(args[0], ids)
    assert hasattr(out, "logits")


def test_reading_twice_returns_the_same_value(gpt2):
    model, hf, ids = gpt2
    with model.trace(ids):
        a = model.transformer.h[0].output
        model.transformer.h[1].output
        b = model.transformer.h[0].output          # already read: cached, not out of order
        logits = model.output.logits
        with logits.sum().backward():
            c = model.transformer.h[0].output       # also inside a backward context
    assert a is b is c


def test_values_are_real_tensors_in_the_block(gpt2):
    model, hf, ids = gpt2
    with model.trace(ids):
        h = model.transformer.h[0].output
        assert isinstance(h, torch.Tensor) and h.norm() > 0
        if h.sum() > -1e9:                          # python control flow on values
            branch = True
        text = repr(h)
    assert branch and "tensor" in text


def test_save_returns_the_value_itself(gpt2):
    model, hf, ids = gpt2
    with model.trace(ids):
        h = model.transformer.h[0].output
        saved = h.save()
        output = model.output
        out = attrib.save(output)
    assert saved is h and out is output
    assert torch.equal(out.logits, hf(ids).logits)
    assert not hasattr(torch.Tensor, "save")


def test_out_of_order_forward_read_names_both_modules(gpt2, leakcheck):
    model, hf, ids = gpt2
    check = leakcheck(hf)
    with pytest.raises(attrib.OutOfOrderError) as info:
        with model.trace(ids):
            model.transformer.h[1].output
            model.transformer.h[0].output
    msg = str(info.value)
    assert "model.transformer.h[0].output was read after the model ran past it" in msg
    assert "model.transformer.h[1]" in msg
    check.assert_clean()


def test_input_of_a_running_parent_is_out_of_order(gpt2):
    model, hf, ids = gpt2
    with pytest.raises(attrib.OutOfOrderError, match=r"model\.transformer\.h\[0\]\.input was read after"):
        with model.trace(ids):
            model.transformer.h[0].mlp.output
            model.transformer.h[0].input


def test_module_that_never_runs(gpt2, leakcheck):
    model, hf, ids = gpt2
    hf.transformer.add_module("unused", torch.nn.Linear(2, 2))
    try:
        check = leakcheck(hf)
        with pytest.raises(attrib.OutOfOrderError, match="never ran"):
            with model.trace(ids):
                model.transformer.unused.output
        check.assert_clean()
    finally:
        del hf.transformer.unused


def test_write_after_the_model_ran_past(gpt2):
    model, hf, ids = gpt2
    with pytest.raises(attrib.OutOfOrderError, match="assigned after the model ran past"):
        with model.trace(ids):
            h0 = model.transformer.h[0]
            value = h0.output
            model.transformer.h[1].output
            h0.output = value * 0


def test_first_read_inside_a_backward_context_is_out_of_order(gpt2):
    model, hf, ids = gpt2
    with pytest.raises(attrib.OutOfOrderError, match="inside a backward context"):
        with model.trace(ids):
            logits = model.output.logits
            with logits.sum().backward():
                model.transformer.h[0].output


def test_values_outside_a_trace(gpt2):
    model, hf, ids = gpt2
    with pytest.raises(attrib.OutOfOrderError, match="only inside"):
        model.transformer.h[0].output


def test_model_can_be_traced_again_after_errors(gpt2, leakcheck):
    model, hf, ids = gpt2
    check = leakcheck(hf)
    for _ in range(2):
        with pytest.raises(ZeroDivisionError):
            with model.trace(ids):
                model.transformer.h[0].output
                1 / 0
    with model.trace(ids):
        logits = model.output.logits.save()
    assert logits.shape[-1] == 50
    check.assert_clean()


def test_nested_trace_of_the_same_model_is_refused(gpt2):
    model, hf, ids = gpt2
    with model.trace(ids):
        with pytest.raises(attrib.AttribError, match="already being traced"):
            with model.trace(ids):
                pass


def test_traces_of_two_models_nest(gpt2):
    model, hf, ids = gpt2
    other = attrib.Model(torch.nn.Linear(2, 1).double())
    with model.trace(ids):
        h = model.transformer.h[0].output
        with other.trace(torch.ones(1, 2, dtype=torch.float64)):
            y = other.output.save()
        logits = model.output.logits.save()
    assert y.shape == (1, 1) and logits.shape[-1] == 50 and h.shape[-1] == 32


class Swapping(torch.nn.Module):
    """Calls ``a`` then ``b``, or ``b`` then ``a`` when the input sum is negative."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(2, 2)
        self.b = torch.nn.Linear(2, 2)

    def forward(self, x):
        if x.sum() < 0:
            return self.a(self.b(x))
        return self.b(self.a(x))


def test_module_order_that_changes_between_traces(leakcheck):
    """The order learnt by the first trace never refuses a read that is legal in this run."""
    net = Swapping()
    model = attrib.Model(net)
    check = leakcheck(net)
    for x in (torch.ones(1, 2), -torch.ones(1, 2), torch.ones(1, 2), -torch.ones(1, 2)):
        first, second = (model.a, model.b) if x.sum() > 0 else (model.b, model.a)
        with model.trace(x):
            u = first.output.save()
            v = second.output.save()
            out = model.output.save()
        torch.testing.assert_close(out, v)
        torch.testing.assert_close(v, second.module(u))
        with pytest.raises(attrib.OutOfOrderError, match="ran past"):
            with model.trace(x):
                second.output
                first.output
    check.assert_clean()
