"""Models placed by accelerate (``dispatch_model`` with a device map, ``cpu_offload``, ``disk_offload``) in traces,
backward contexts and every method, on the CPU: the layers marked ``"disk"`` / offloaded keep their weights on the
meta device between calls and accelerate's hooks load them for each call. Every result equals the same model's
undispatched twin (float64, bit for bit: the same kernels run). Two GPUs: ``test_dispatch_cuda.py``."""

from __future__ import annotations

import copy
from typing import Any, Callable

import pytest
import torch

import attrib
from attrib.core.devices import functional_call, input_device, is_dispatched, live
from tests.core.dispatch_cases import (backward_grads, device_map, devices_of, flat, method_cases, tiny_llama,
                                       trace_values)

accelerate = pytest.importorskip("accelerate")

LAYERS = 4
IDS = torch.tensor([[3, 14, 15, 9, 26, 5], [0, 0, 4, 8, 16, 23]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
CLEAN, CORRUPTED = IDS[:1], torch.tensor([[3, 14, 11, 9, 26, 5]])


def _mixed(hf: torch.nn.Module, tmp: Any) -> None:
    """Embedding, layers 1 and 3 and the head offloaded to the disk; layers 0 and 2 and the norm kept on the CPU."""
    placement = device_map(LAYERS, LAYERS, "cpu", "cpu")
    placement.update({"model.embed_tokens": "disk", "model.layers.1": "disk", "model.layers.3": "disk",
                      "lm_head": "disk"})
    accelerate.dispatch_model(hf, placement, main_device="cpu", offload_dir=str(tmp))


DISPATCH: dict[str, Callable[[torch.nn.Module, Any], Any]] = {
    "dispatch_model": _mixed,
    "cpu_offload": lambda hf, tmp: accelerate.cpu_offload(hf, execution_device="cpu"),
    "disk_offload": lambda hf, tmp: accelerate.disk_offload(hf, str(tmp), execution_device="cpu"),
}


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> dict[str, tuple[attrib.LanguageModel, attrib.LanguageModel]]:
    """Per way of dispatching: (the undispatched model, its dispatched copy)."""
    out = {}
    for name, dispatch in DISPATCH.items():
        hf = tiny_llama(LAYERS)
        reference = attrib.LanguageModel(copy.deepcopy(hf))
        dispatch(hf, tmp_path_factory.mktemp(name))
        out[name] = (reference, attrib.LanguageModel(hf))
    return out


def _equal(reference: torch.Tensor, got: torch.Tensor) -> None:
    assert reference.shape == got.shape
    assert torch.equal(reference.isnan(), got.isnan())
    assert torch.allclose(reference.nan_to_num(), got.nan_to_num(), rtol=1e-12, atol=1e-12), \
        float((reference - got).nan_to_num().abs().max())


def test_the_dispatched_models_are_offloaded(twins):
    """What the other tests rest on: weights on the meta device, accelerate's hooks in place, the input device cpu."""
    for name, (reference, model) in twins.items():
        embedding = model.module.get_input_embeddings()
        assert embedding.weight.device.type == "meta", name
        assert is_dispatched(model.module) and not is_dispatched(reference.module)
        assert model.device == torch.device("cpu") == reference.device
        assert live(embedding, "weight").device == torch.device("cpu")
        assert torch.equal(live(embedding, "weight"), reference.module.get_input_embeddings().weight)


@pytest.mark.parametrize("case", list(method_cases(IDS, MASK, CLEAN, CORRUPTED, LAYERS - 1)))
def test_every_method_equals_the_undispatched_model(twins, case):
    fn = method_cases(IDS, MASK, CLEAN, CORRUPTED, LAYERS - 1)[case]
    reference, model = twins["dispatch_model"]
    expected = fn(reference)
    got = fn(model)
    _equal(flat(expected), flat(got))
    if isinstance(got, (attrib.Attribution, list)):
        assert devices_of(got) == {torch.device("cpu")}


@pytest.mark.parametrize("way", ["cpu_offload", "disk_offload"])
@pytest.mark.parametrize("case", ["integrated_gradients_layer", "attribution_patching", "lrp_gamma",
                                  "edge_attribution_patching"])
def test_fully_offloaded_models(twins, way, case):
    fn = method_cases(IDS, MASK, CLEAN, CORRUPTED, LAYERS - 1)[case]
    reference, model = twins[way]
    _equal(flat(fn(reference)), flat(fn(model)))


@pytest.mark.parametrize("way", list(DISPATCH))
def test_trace_and_backward_context(twins, way):
    reference, model = twins[way]
    layers = (0, 1, LAYERS - 1)
    for expected, got in zip(trace_values(reference, IDS, layers), trace_values(model, IDS, layers)):
        _equal(expected.double(), got.double())
    for expected, got in zip(backward_grads(reference, IDS, layers), backward_grads(model, IDS, layers)):
        _equal(expected.double(), got.double())
        assert got.abs().sum() > 0


def test_edits_in_a_trace_reach_offloaded_layers(twins):
    reference, model = twins["dispatch_model"]
    outs = []
    for m in (reference, model):
        with m.trace(IDS):
            m.model.layers[1].output[:, 2] = 0          # layer 1 is offloaded to the disk in the dispatched twin
            outs.append(m.output.logits.save())
    _equal(outs[0], outs[1])
    with reference.trace(IDS):
        plain = reference.output.logits.save()
    assert not torch.allclose(plain, outs[0])           # the edit changed the output


def test_modified_weights_of_an_offloaded_module():
    """An LRP rule's forward with modified weights on an offloaded module: accelerate's hook would load the stored
    weights over them, so it is skipped for that call."""
    hf = tiny_llama(2)
    proj = hf.model.layers[0].mlp.down_proj
    x = torch.randn(3, proj.in_features, dtype=torch.float64)
    doubled = {"weight": proj.weight.detach() * 2}
    expected = functional_call(proj, doubled, (x,))
    accelerate.cpu_offload(hf, execution_device="cpu")
    assert proj.weight.device.type == "meta"
    assert torch.equal(functional_call(proj, {"weight": live(proj, "weight") * 2}, (x,)), expected)
    assert torch.equal(proj(x), expected / 2)                 # its own call still loads the stored weights
    assert proj.weight.device.type == "meta"


def test_a_model_dispatched_after_wrapping():
    """The input device is cached for speed; dispatching the wrapped model afterwards is still seen."""
    hf = tiny_llama(2)
    model = attrib.LanguageModel(hf)
    with model.trace(IDS):
        before = model.output.logits.save()
    accelerate.cpu_offload(hf, execution_device="cpu")
    with model.trace(IDS):
        after = model.output.logits.save()
    _equal(before, after)


def test_inputs_of_a_dispatched_model_move_to_its_input_device():
    """A dispatched model takes inputs on any device (its root hook moves them; attrib moves them first, so that
    values read at the inputs live where the model computes): moved to the input device, here made ``meta``."""
    hf = tiny_llama(2)
    accelerate.cpu_offload(hf, execution_device="cpu")
    model = attrib.LanguageModel(hf)
    hf.get_input_embeddings()._hf_hook.execution_device = torch.device("meta")
    assert input_device(hf)[0] == model.device == torch.device("meta")
    args, kwargs = model._place((), {"input_ids": IDS, "attention_mask": [MASK]})
    assert kwargs["input_ids"].device.type == "meta" and kwargs["attention_mask"][0].device.type == "meta"
    assert IDS.device.type == "cpu"                            # the caller's tensors are left as they are


def test_an_undispatched_model_still_refuses_inputs_on_another_device():
    model = attrib.LanguageModel(tiny_llama(2))
    with pytest.raises(attrib.InputError, match=r"is on meta, but the model is on cpu; move it with .to\('cpu'\)"):
        model._place((IDS.to("meta"),), {})


def test_a_meta_model_without_offload_hooks_is_still_refused():
    with torch.device("meta"):
        hf = tiny_llama(2)
    model = attrib.LanguageModel(hf)
    with pytest.raises(attrib.InputError, match="on the meta device.*load its weights first"):
        model.trace(IDS)


def test_a_plain_model_dispatched(tmp_path):
    """An ``attrib.Model`` of any module dispatched with offloaded layers: its input device is its root hook's."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).double()
    reference = attrib.Model(copy.deepcopy(net))
    accelerate.dispatch_model(net, {"0": "disk", "1": "cpu", "2": "disk"}, main_device="cpu", offload_dir=str(tmp_path))
    model = attrib.Model(net)
    assert net[0].weight.device.type == "meta" and model.device == torch.device("cpu")
    x = torch.randn(4, 5, dtype=torch.float64)
    for fn in (lambda m: attrib.integrated_gradients(m, x, target=1, n_steps=8),
               lambda m: attrib.saliency(m, x, target=2),
               lambda m: attrib.lrp(m, x, target=0, rules="zplus")):
        _equal(flat(fn(reference)), flat(fn(model)))
