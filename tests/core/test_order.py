"""Wrappers installed from the recorded module order: only the modules running at a pause, and still every
read of a module while it runs (a layer after its sublayer) works, in the first trace and in later ones."""

from __future__ import annotations

import pytest
import torch

import attrib
from tests.conftest import tiny_hf


def _hooked_outputs(hf: torch.nn.Module, ids: torch.Tensor, modules: list[torch.nn.Module]) -> list[torch.Tensor]:
    got: dict[torch.nn.Module, torch.Tensor] = {}
    def keep(mod: torch.nn.Module, _args: tuple, out) -> None:
        got.setdefault(mod, _tensor(out))

    handles = [m.register_forward_hook(keep) for m in modules]
    try:
        with torch.no_grad():
            hf(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return [got[m] for m in modules]


def _tensor(value):
    """The main tensor of a module value: itself, a tuple's first, a model output's first field."""
    if isinstance(value, torch.Tensor):
        return value
    return value[0]



@pytest.mark.parametrize("run", range(3))   # run 0 records the order, runs 1 and 2 use it
def test_parent_read_after_its_child_in_every_trace(run, leakcheck):
    hf = tiny_hf("gpt2")
    model = attrib.Model(hf)
    ids = torch.tensor([[3, 14, 15, 9, 26, 5]])
    check = leakcheck(hf)
    block = hf.transformer.h[1]
    want = _hooked_outputs(hf, ids, [block.mlp.c_fc, block.mlp, block, hf.transformer])
    for _ in range(run + 1):
        with model.trace(ids):
            fc = model.transformer.h[1].mlp.c_fc.output.save()
            mlp = model.transformer.h[1].mlp.output.save()
            layer = attrib.save(model.transformer.h[1].output)
            body = attrib.save(model.transformer.output)
            logits = model.output.logits.save()
    for got, ref in zip((fc, mlp, _tensor(layer), body.last_hidden_state), want):
        torch.testing.assert_close(got.detach(), ref)
    assert logits.shape[-1] == hf.config.vocab_size
    check.assert_clean()


def test_input_of_a_sublayer_then_the_layer_output_in_a_later_trace():
    hf = tiny_hf("gpt2")
    model = attrib.Model(hf)
    ids = torch.tensor([[3, 14, 15, 9, 26, 5]])
    want = _hooked_outputs(hf, ids, [hf.transformer.h[0]])[0]
    for _ in range(2):
        with model.trace(ids):
            x = model.transformer.h[0].mlp.input.save()
            out = attrib.save(model.transformer.h[0].output)
    assert x.shape == want.shape
    torch.testing.assert_close(_tensor(out).detach(), want)


def test_a_known_order_wraps_only_the_modules_running_at_each_pause():
    """The seed example's reads (last layer, then the logits) wrap the root, the decoder and that layer, not
    every module with children: each wrapper costs a Python call on every forward."""
    hf = tiny_hf("gpt2")
    model = attrib.Model(hf)
    ids = torch.tensor([[3, 14, 15, 9, 26, 5]])
    for known in (False, True):
        with model.trace(ids) as tr:
            model.transformer.h[-1].output
            model.output
            wrapped = set(tr._wrapped)
        containers = {m for m in hf.modules() if m._modules}
        if known:
            # plus the layer list, which is never called (so the order cannot place it) and costs nothing
            assert wrapped == {hf, hf.transformer, hf.transformer.h[-1], hf.transformer.h}
        else:
            assert containers <= wrapped   # the recording trace cannot know: it wraps them all


class Reordering(torch.nn.Module):
    """Two blocks with a sublayer each, called a→b, or b→a when the input sum is negative."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh())
        self.b = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh())

    def forward(self, x):
        if x.sum() < 0:
            return self.a(self.b(x))
        return self.b(self.a(x))


def test_parent_after_child_when_the_order_changed_since_it_was_recorded(leakcheck):
    net = Reordering()
    model = attrib.Model(net)
    check = leakcheck(net)
    for x in (torch.ones(1, 2), -torch.ones(1, 2), -torch.ones(1, 2), torch.ones(1, 2)):
        first, second = (net.a, net.b) if x.sum() > 0 else (net.b, net.a)
        e_first, e_second = (model.a, model.b) if x.sum() > 0 else (model.b, model.a)
        with model.trace(x):
            inner = e_first[0].output.save()
            block = e_first.output.save()
            inner2 = e_second[0].output.save()
            block2 = e_second.output.save()
        torch.testing.assert_close(inner, first[0](x))
        torch.testing.assert_close(block, torch.tanh(inner))
        torch.testing.assert_close(inner2, second[0](block))
        torch.testing.assert_close(block2, torch.tanh(inner2))
    check.assert_clean()
