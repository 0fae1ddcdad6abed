"""The cases of issue 9 that returned something wrong without an error: each now gives a correct result,
a warning, or one clear error, and leaves the model clean."""

from __future__ import annotations

import warnings

import pytest
import torch

import attrib
from tests.conftest import tiny_hf

IDS = torch.tensor([[3, 14, 15, 9, 26, 5]])
CORRUPT = torch.tensor([[3, 14, 15, 9, 27, 5]])


@pytest.fixture
def lm():
    return attrib.LanguageModel(tiny_hf("gpt2").double())


def test_1_a_trace_object_cannot_be_entered_twice(lm, leakcheck):
    check = leakcheck(lm.module)
    tr = lm.trace(IDS)
    with tr:
        first = lm.output.logits.save()
    with pytest.raises(attrib.ReusedBlockError, match=r"already used by a `with` block.*model\.trace"):
        with tr:
            lm.transformer.h[0].output[:] = 0
    check.assert_clean()
    with lm.trace(IDS):                      # a new trace runs a new pass
        again = lm.output.logits.save()
    torch.testing.assert_close(again, first)


def test_1_a_backward_context_object_cannot_be_entered_twice(lm):
    with lm.trace(IDS):
        logits = lm.output.logits
        with logits.sum().backward(retain_graph=True) as ctx:
            pass
        with pytest.raises(attrib.ReusedBlockError, match="loss.backward"):
            with ctx:
                pass


def test_2_train_mode_with_dropout_warns(lm):
    lm.module.train()
    try:
        with pytest.warns(attrib.TrainModeWarning, match=r"train mode.*eval\(\)"):
            attrib.integrated_gradients(lm, IDS, target=3, n_steps=4)
        with pytest.warns(attrib.TrainModeWarning):
            attrib.saliency(lm, IDS, target=3)
    finally:
        lm.module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", attrib.TrainModeWarning)
        a = attrib.integrated_gradients(lm, IDS, target=3, n_steps=4)     # eval mode: no warning,
        b = attrib.integrated_gradients(lm, IDS, target=3, n_steps=4)     # and identical calls agree
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=0)


def test_2_train_mode_without_dropout_does_not_warn():
    net = attrib.Model(torch.nn.Sequential(torch.nn.Linear(3, 2)).double().train())
    with warnings.catch_warnings():
        warnings.simplefilter("error", attrib.TrainModeWarning)
        attrib.integrated_gradients(net, torch.ones(1, 3, dtype=torch.float64), target=0, n_steps=4)


@pytest.mark.parametrize("positions", [[1.7], 1.5, [True], ["1"], "1", [torch.tensor(0.5)]])
def test_3_positions_must_be_integers(lm, positions, leakcheck):
    check = leakcheck(lm.module)
    with pytest.raises(attrib.MethodError, match=r"positions must be"):
        attrib.activation_patching(lm, IDS, CORRUPT, positions=positions)
    check.assert_clean()


def test_3_integer_positions_of_other_types_still_work(lm):
    import numpy as np

    a = attrib.activation_patching(lm, IDS, CORRUPT, positions=[np.int64(1), torch.tensor(-1)])
    assert a.positions == [1, 5]


@pytest.mark.parametrize("k", [0, -1, 2.0, True, "3"])
def test_6_top_k_must_be_a_positive_int(lm, k):
    a = attrib.integrated_gradients(lm, IDS, target=3, n_steps=4)
    p = attrib.activation_patching(lm, IDS, CORRUPT, positions=[-1])
    for result in (a, p):
        with pytest.raises(attrib.InputError, match=r"top\(k\) takes a positive int"):
            result.top(k)
    assert len(a.top(len(a.tokens) + 3)) == len(a.tokens)     # more than there are: all of them


def test_7_a_user_leaf_inside_a_context_gets_a_clear_error(lm, leakcheck):
    check = leakcheck(lm.module)
    with lm.trace(IDS):
        logits = lm.output.logits
        leaf = torch.ones(3, dtype=torch.float64, requires_grad=True)
        with pytest.raises(attrib.NotOnPathError, match=r"leaf .*inputs=\["):
            with (logits.sum() + (2 * leaf).sum()).backward():
                leaf.grad
    check.assert_clean()


def test_7_a_leaf_passed_in_inputs_gets_its_gradient_after_the_context(lm):
    with lm.trace(IDS):
        logits = lm.output.logits
        leaf = torch.ones(3, dtype=torch.float64, requires_grad=True)
        with (logits.sum() + (2 * leaf).sum()).backward(inputs=[leaf]):
            pass
    torch.testing.assert_close(leaf.grad, torch.full((3,), 2.0, dtype=torch.float64))


def test_7_a_value_read_in_the_trace_keeps_its_gradient_after_the_context(lm):
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no "non-leaf .grad" warning from torch either
        with lm.trace(IDS):
            h = lm.transformer.h[0].output
            logits = lm.output.logits
            with logits[0, -1, 3].backward(retain_graph=True):
                inside = h.grad.save()
            after_one = h.grad.clone()
            with logits[0, -1, 4].backward():
                second = h.grad.save()
            after_two = h.grad
    torch.testing.assert_close(after_one, inside)
    torch.testing.assert_close(after_two, inside + second)        # summed like retain_grad()
    hf = lm.module
    store: list[torch.Tensor] = []
    handle = hf.transformer.h[0].register_forward_hook(
        lambda _m, _a, out: store.append(out[0] if isinstance(out, tuple) else out))
    try:
        out = hf(input_ids=IDS).logits
    finally:
        handle.remove()
    torch.testing.assert_close(inside, torch.autograd.grad(out[0, -1, 3], store[0])[0])


def test_7_a_later_loss_that_reuses_a_freed_loss_id_gets_no_stale_grad(lm):
    """The first context's loss is freed when it ends; a new loss may take its id. It must not be taken for a
    value whose gradient the trace keeps (torch's non-leaf warning, and a stale sum)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(20):                       # id reuse is likely within a few tries
            with lm.trace(IDS):
                h = lm.transformer.h[0].output
                logits = lm.output.logits
                with logits[0, -1, 3].backward(retain_graph=True):
                    h.grad.save()
                with logits[0, -1, 4].backward():
                    h.grad.save()
