"""The pre-0.5 form (``.grad`` read before a plain ``.backward()``): promised gradients, and torch's own
meaning of ``.grad`` everywhere else in a trace."""

from __future__ import annotations

import warnings

import pytest
import torch

import attrib
from attrib.errors import PendingGradError
from tests.conftest import tiny_hf

IDS = torch.tensor([[3, 14, 15, 9]])


def gpt2() -> attrib.Model:
    return attrib.Model(tiny_hf("gpt2"))


def layer_grad(hf: torch.nn.Module, index: int) -> torch.Tensor:
    store = {}
    handle = hf.transformer.h[index].register_forward_hook(lambda m, a, out: store.setdefault("h", out))
    try:
        logits = hf(IDS).logits
    finally:
        handle.remove()
    return torch.autograd.grad(logits.sum(), store["h"])[0]


def test_a_promised_gradient_cannot_be_used_before_its_backward(leakcheck):
    model = gpt2()
    check = leakcheck(model.module)
    with pytest.raises(PendingGradError, match=r"has no value yet \(sum used it\)"):
        with model.trace(IDS):
            model.transformer.h[0].output.grad.sum()
    check.assert_clean()
    with model.trace(IDS):                       # shape and dtype are fine, and so is everything afterwards
        g = model.transformer.h[0].output.grad
        assert g.shape == (1, 4, 32) and g.dtype == torch.float64
        g = g.save()
        model.output.logits.sum().backward()
    expected = layer_grad(model.module, 0)
    assert torch.equal(g, expected) and torch.equal(g.abs().sum(), expected.abs().sum())
    assert type(g.sum()) is torch.Tensor


def test_grad_after_a_plain_backward_is_torchs_own_and_after_a_context_the_contexts(leakcheck):
    model = gpt2()
    check = leakcheck(model.module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                         # torch: .grad of a non-leaf tensor
        with model.trace(IDS):
            h = model.transformer.h[0].output
            model.output.logits.sum().backward()
            plain = h.grad                                      # torch's order: backward, then .grad
        with model.trace(IDS):
            h = model.transformer.h[0].output
            logits = model.output.logits
            with logits.sum().backward():
                logits.grad.save()
                inside = h.grad.save()
            after = h.grad                                      # what the context gave h (issue 9, case 7)
    assert plain is None
    torch.testing.assert_close(after, inside)
    check.assert_clean()


def test_model_code_reading_grad_in_its_forward_sees_torchs_value():
    class Peeks(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 3).double()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.lin(x)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return h * 0 if h.grad is not None else h

    torch.manual_seed(0)
    net = Peeks()
    x = torch.randn(2, 3, dtype=torch.float64)
    model = attrib.Model(net)
    with model.trace(x):
        out = model.output.save()
        out.sum().backward()
    torch.testing.assert_close(out, net(x), rtol=0, atol=0)


def test_a_promise_belongs_to_the_trace_that_handed_out_the_value(leakcheck):
    a, b = gpt2(), gpt2()
    check = leakcheck(a.module, b.module)
    with a.trace(IDS):
        h = a.transformer.h[0].output
        with b.trace(IDS):
            g = h.grad.save()                                   # read in b's block, promised by a
            b.output.logits.save()
        a.output.logits.sum().backward()
    torch.testing.assert_close(g, layer_grad(a.module, 0), rtol=0, atol=0)
    check.assert_clean()


def test_two_reads_share_one_promise_and_two_backwards_sum():
    model = gpt2()
    with model.trace(IDS):
        first = model.transformer.h[1].output.grad.save()
        again = model.transformer.h[1].output.grad
        logits = model.output.logits
        logits.sum().backward(retain_graph=True)
        logits.sum().backward()
    assert first is again
    torch.testing.assert_close(first, 2 * layer_grad(model.module, 1), rtol=1e-12, atol=1e-12)
