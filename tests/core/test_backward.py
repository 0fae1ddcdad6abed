"""Backward contexts compared with plain PyTorch hooks in float64 on GPT-2, Llama and GPT-NeoX layouts."""

from __future__ import annotations

import pytest
import torch

import attrib
from tests.conftest import attn_name, envoy_at, layers_path
from tests.core.reference import reference_grads


def loss_fn(logits: torch.Tensor) -> torch.Tensor:
    return logits[0, -1, 7] - 0.5 * logits[0, -2, 3]


def paths_for(arch: str) -> dict[str, str]:
    lp = layers_path(arch)
    return {"layer0": f"{lp}.0", "attn1": f"{lp}.1.{attn_name(arch)}", "mlp1": f"{lp}.1.mlp", "layer1": f"{lp}.1"}


def first(value):
    return value[0] if isinstance(value, tuple) else value


def test_grads_match_plain_hooks(tiny, arch, leakcheck):
    model, hf, ids = tiny
    check = leakcheck(hf)
    p = paths_for(arch)
    with model.trace(ids):
        layer0 = envoy_at(model, p["layer0"]).output
        attn1 = first(envoy_at(model, p["attn1"]).output)
        mlp1 = envoy_at(model, p["mlp1"]).output
        layer1 = envoy_at(model, p["layer1"]).output
        logits = model.output.logits
        with loss_fn(logits).backward():
            got = {"logits": logits.grad.save(), "layer1": layer1.grad.save(), "mlp1": mlp1.grad.save(),
                   "attn1": attn1.grad.save(), "layer0": layer0.grad.save()}
    ref, ref_logits, _ = reference_grads(hf, ids, [p[k] for k in ("layer0", "attn1", "mlp1", "layer1")], loss_fn)
    for name in ("layer0", "attn1", "mlp1", "layer1"):
        torch.testing.assert_close(got[name], ref[p[name]], rtol=1e-12, atol=1e-12)
        assert got[name].abs().sum() > 0
    expected_logits_grad = torch.zeros_like(ref_logits)
    expected_logits_grad[0, -1, 7] = 1
    expected_logits_grad[0, -2, 3] = -0.5
    assert torch.equal(got["logits"], expected_logits_grad)
    assert all(q.grad is None for q in hf.parameters()), "the context computed parameter gradients"
    check.assert_clean()


def test_inplace_zero_does_not_leak_into_the_residual_branch(tiny, arch):
    model, hf, ids = tiny
    p = paths_for(arch)
    with model.trace(ids):
        layer0 = envoy_at(model, p["layer0"]).output
        attn1 = first(envoy_at(model, p["attn1"]).output)
        logits = model.output.logits
        with loss_fn(logits).backward():
            attn1.grad[:] = 0
            got = layer0.grad.save()
    ref, _, _ = reference_grads(hf, ids, [p["layer0"], p["attn1"]], loss_fn,
                                grad_hooks={p["attn1"]: torch.zeros_like})
    plain, _, _ = reference_grads(hf, ids, [p["layer0"]], loss_fn)
    torch.testing.assert_close(got, ref[p["layer0"]], rtol=1e-12, atol=1e-12)
    assert got.abs().sum() > 0, "zeroing the attention branch zeroed the residual stream"
    assert not torch.allclose(got, plain[p["layer0"]]), "the edit did not flow upstream"


def test_assignment_replaces_what_flows_upstream(tiny, arch):
    model, hf, ids = tiny
    p = paths_for(arch)
    with model.trace(ids):
        layer0 = envoy_at(model, p["layer0"]).output
        mlp1 = envoy_at(model, p["mlp1"]).output
        logits = model.output.logits
        with loss_fn(logits).backward():
            mlp1.grad = mlp1.grad * 3 + 1
            got = layer0.grad.save()
    ref, _, _ = reference_grads(hf, ids, [p["layer0"], p["mlp1"]], loss_fn,
                                grad_hooks={p["mlp1"]: lambda g: g * 3 + 1})
    torch.testing.assert_close(got, ref[p["layer0"]], rtol=1e-12, atol=1e-12)


def test_grad_in_context_is_this_pass_not_accumulated(gpt2):
    model, hf, ids = gpt2
    with model.trace(ids):
        h = model.transformer.h[0].output
        logits = model.output.logits
        h.retain_grad()
        logits.sum().backward(retain_graph=True)     # a bare backward first: h.grad accumulates
        logits.sum().backward(retain_graph=True)
        accumulated = torch.Tensor.grad.__get__(h).clone()
        with logits.sum().backward():
            this_pass = h.grad.save()
    torch.testing.assert_close(accumulated, 2 * this_pass, rtol=1e-12, atol=1e-12)


def test_derived_values_and_the_loss_have_gradients(gpt2):
    model, hf, ids = gpt2
    with model.trace(ids):
        h = model.transformer.h[1].output
        x = h[:, -1] * 3
        loss = (x ** 2).sum()
        with loss.backward():
            g_loss = loss.grad.save()
            g_x = x.grad.save()
            g_h = h.grad.save()
    assert torch.equal(g_loss, torch.ones_like(g_loss))
    torch.testing.assert_close(g_x, 2 * x.detach())
    expected = torch.zeros_like(h)
    expected[:, -1] = 2 * x.detach() * 3
    torch.testing.assert_close(g_h, expected)


def test_no_parameter_gradients_unless_asked(gpt2):
    model, hf, ids = gpt2
    with model.trace(ids):
        logits = model.output.logits
        with logits.sum().backward():
            logits.grad
    assert all(q.grad is None for q in hf.parameters())

    weight = hf.lm_head.weight
    with model.trace(ids):
        logits = model.output.logits
        with logits.sum().backward(inputs=[weight]):
            pass
    got = weight.grad.clone()
    others = [q for q in hf.parameters() if q is not weight]
    assert all(q.grad is None for q in others)
    hf.zero_grad(set_to_none=True)
    hf(input_ids=ids).logits.sum().backward()
    torch.testing.assert_close(got, weight.grad, rtol=1e-12, atol=1e-12)
    full = {n: q.grad.clone() for n, q in hf.named_parameters()}
    hf.zero_grad(set_to_none=True)

    with model.trace(ids, param_grads=True):
        logits = model.output.logits
        with logits.sum().backward():
            pass
    for n, q in hf.named_parameters():
        torch.testing.assert_close(q.grad, full[n], rtol=1e-12, atol=1e-12)
    hf.zero_grad(set_to_none=True)


def test_pruned_backward_stops_at_the_earliest_value_read(gpt2):
    """Nothing upstream of the values read is computed: a plain hook on the embedding never fires."""
    model, hf, ids = gpt2
    fired = []

    def on_embedding(module, args, out):
        out.register_hook(lambda g: fired.append("wte"))

    handle = hf.transformer.wte.register_forward_hook(on_embedding)
    try:
        with model.trace(ids):
            logits = model.output.logits
            with logits.sum().backward():
                logits.grad
        assert fired == []
        with model.trace(ids):
            model.transformer.wte.output
            logits = model.output.logits
            with logits.sum().backward():
                logits.grad
        assert fired == ["wte"]
    finally:
        handle.remove()


def test_several_contexts_with_retain_graph(gpt2):
    model, hf, ids = gpt2
    with model.trace(ids):
        h0 = model.transformer.h[0].output
        logits = model.output.logits
        with logits[0, -1].sum().backward(retain_graph=True):
            g1 = h0.grad.save()
        with logits[0, 0].sum().backward():
            g2 = h0.grad.save()
    ref1, _, _ = reference_grads(hf, ids, ["transformer.h.0"], lambda l: l[0, -1].sum())
    ref2, _, _ = reference_grads(hf, ids, ["transformer.h.0"], lambda l: l[0, 0].sum())
    torch.testing.assert_close(g1, ref1["transformer.h.0"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g2, ref2["transformer.h.0"], rtol=1e-12, atol=1e-12)


def test_generic_model_leaf_input_gradient():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 1).double()
    net = attrib.Model(lin)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    with net.trace(x):
        inp = net.input
        out = net.output
        with out.sum().backward():
            g_out = out.grad.save()
            g_in = inp.grad.save()
    assert inp is x
    assert torch.equal(g_out, torch.ones(2, 1, dtype=torch.float64))
    torch.testing.assert_close(g_in, lin.weight.detach().expand(2, 3))
    assert x.grad is None and lin.weight.grad is None


def test_gradient_argument_for_non_scalar_loss(gpt2):
    model, hf, ids = gpt2
    with model.trace(ids):
        h = model.transformer.h[1].output
        logits = model.output.logits
        weights = torch.randn_like(logits)
        with logits.backward(gradient=weights):
            g = h.grad.save()
    ref, _, _ = reference_grads(hf, ids, ["transformer.h.1"], lambda l: (l * weights).sum())
    torch.testing.assert_close(g, ref["transformer.h.1"], rtol=1e-12, atol=1e-12)


def test_backward_context_on_demo_model_matches_hooks(demo):
    """Once on the real model (float32): reverse-order reads and an in-place edit."""
    model = demo
    kwargs = model.tokenize("When Mary and John went to the store, John gave a drink to")
    hf = model.module
    mary, john = (model.tokenizer(w)["input_ids"][0] for w in (" Mary", " John"))
    with model.trace(kwargs):
        l3 = model.model.layers[3].output
        attn10 = model.model.layers[10].self_attn.output[0]
        logits = model.output.logits
        with (logits[0, -1, mary] - logits[0, -1, john]).backward():
            attn10.grad[:] = 0
            got = l3.grad.save()
    ref, _, _ = reference_grads(hf, kwargs["input_ids"], ["model.layers.3", "model.layers.10.self_attn"],
                                lambda l: l[0, -1, mary] - l[0, -1, john],
                                grad_hooks={"model.layers.10.self_attn": torch.zeros_like})
    torch.testing.assert_close(got, ref["model.layers.3"], rtol=1e-5, atol=1e-6)
    assert got.abs().sum() > 0


test_backward_context_on_demo_model_matches_hooks = pytest.mark.slow(test_backward_context_on_demo_model_matches_hooks)
