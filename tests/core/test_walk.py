"""attrib.core.walk: the same modules and parameters as torch's walks, in the same order, each once."""

from __future__ import annotations

import torch
import transformers

import attrib
from attrib.core.devices import compute_devices
from attrib.core.walk import buffers, memoized, modules, parameters, remembered


def shared_net() -> torch.nn.Module:
    """A module reached twice, a tied weight, a None child and a None parameter."""
    shared = torch.nn.Linear(3, 3)
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), shared, torch.nn.Sequential(shared, torch.nn.ReLU()))
    net.add_module("empty", None)
    head = torch.nn.Linear(3, 3, bias=False)
    head.weight = shared.weight
    net.add_module("head", head)
    net.register_parameter("nothing", None)
    return net


def test_same_as_torch_on_shared_and_tied_modules():
    net = shared_net()
    assert [id(m) for m in modules(net)] == [id(m) for m in net.modules()]
    assert [id(p) for p in parameters(net)] == [id(p) for p in net.parameters()]
    assert len(parameters(net)) == 4            # first Linear's two, the shared one's two; the tied head adds none


def test_same_as_torch_on_a_tied_language_model():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                                   num_key_value_heads=1, vocab_size=40, tie_word_embeddings=True)
    hf = transformers.LlamaForCausalLM(cfg)
    assert [id(m) for m in modules(hf)] == [id(m) for m in hf.modules()]
    assert [id(p) for p in parameters(hf)] == [id(p) for p in hf.parameters()]
    assert hf.lm_head.weight is hf.model.embed_tokens.weight


def test_a_cycle_ends():
    a, b = torch.nn.Module(), torch.nn.Linear(1, 1)
    a.add_module("b", b)
    b.add_module("back", a)                     # torch's own walk also visits each module once
    assert [id(m) for m in modules(a)] == [id(m) for m in a.modules()] == [id(a), id(b)]


def test_remembered_walks_once_per_block_and_not_outside():
    net = shared_net()
    assert modules(net) is not modules(net)                 # outside a block: walked every time
    with remembered():
        first = modules(net)
        assert modules(net) is first and parameters(net) is parameters(net)
        with remembered():                                  # nested: the same memo
            assert modules(net) is first
        calls = []
        assert memoized("k", net, lambda m: calls.append(m) or 7) == 7
        assert memoized("k", net, lambda m: calls.append(m) or 8) == 7 and len(calls) == 1
    with remembered():                                      # a new block reads the tree again
        assert modules(net) is not first


def test_compute_devices_read_once_per_public_call(monkeypatch):
    """A method call reads the model's devices once (it read them for every planner and compiled pass)."""
    from attrib.core import devices
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    model = attrib.Model(net)
    seen = []
    real = devices._compute_devices
    monkeypatch.setattr(devices, "_compute_devices", lambda m: seen.append(m) or real(m))
    x = torch.randn(3, 4, dtype=torch.float64)
    attrib.integrated_gradients(model, x, target=1, n_steps=8, batch_size=None)
    assert len(seen) == 1
    assert compute_devices(net) == [torch.device("cpu")] and len(seen) == 2       # outside a call: read again


def test_buffers_same_as_torch():
    net = torch.nn.Sequential(torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 3))
    shared = net[0]
    net.add_module("again", shared)
    assert [id(b) for b in buffers(net)] == [id(b) for b in net.buffers()] and len(buffers(net)) == 3


def test_a_parameter_that_is_also_a_buffer_elsewhere_is_listed_as_both():
    a, b = torch.nn.Linear(2, 2), torch.nn.Module()
    b.register_buffer("w", a.weight)
    root = torch.nn.Sequential(a, b)
    assert [id(t) for t in buffers(root)] == [id(t) for t in root.buffers()] == [id(a.weight)]
    assert [id(t) for t in parameters(root)] == [id(t) for t in root.parameters()]
