"""A Llama-shape model split over two GPUs the way ``device_map="auto"`` splits it (accelerate's ``dispatch_model``:
layers 0–3 with the embedding on cuda:0, layers 4–7, the norm and the head on cuda:1) equals the same model on one
GPU in traces, backward contexts and every method. Run on a machine with two GPUs: ``pytest -m gpu
tests/core/test_dispatch_cuda.py`` (CI has none; the default run deselects the ``gpu`` marker)."""

from __future__ import annotations

import copy

import pytest
import torch

import attrib
from tests.core.dispatch_cases import (backward_grads, device_map, devices_of, flat, method_cases, tiny_llama,
                                       trace_values)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")]

LAYERS, SPLIT = 8, 4
CUDA0, CUDA1 = torch.device("cuda", 0), torch.device("cuda", 1)
IDS = torch.tensor([[3, 14, 15, 9, 26, 5], [0, 0, 4, 8, 16, 23]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
CLEAN, CORRUPTED = IDS[:1], torch.tensor([[3, 14, 11, 9, 26, 5]])
LATE = LAYERS - 2                 # a layer on cuda:1


def _close(expected: torch.Tensor, got: torch.Tensor) -> None:
    """Equal up to float32 rounding (the two runs use the same kernels on the same kind of GPU)."""
    expected, got = expected.detach().double().cpu(), got.detach().double().cpu()
    assert expected.shape == got.shape
    assert torch.equal(expected.isnan(), got.isnan())
    scale = float(expected.nan_to_num().abs().max().clamp(min=1e-6))
    diff = float((expected - got).nan_to_num().abs().max())
    assert diff <= 1e-4 * scale, f"max |difference| {diff:.3g} for values up to {scale:.3g}"


@pytest.fixture(scope="module")
def twins() -> tuple[attrib.LanguageModel, attrib.LanguageModel]:
    """(the model on cuda:0 alone, the same weights dispatched over cuda:0 and cuda:1)."""
    from accelerate import dispatch_model

    hf = tiny_llama(LAYERS, hidden=64, dtype=torch.float32)
    single = attrib.LanguageModel(copy.deepcopy(hf).to(CUDA0))
    dispatch_model(hf, device_map(LAYERS, SPLIT, 0, 1))
    split = attrib.LanguageModel(hf)
    assert hf.model.layers[SPLIT - 1].mlp.down_proj.weight.device == CUDA0
    assert hf.model.layers[SPLIT].mlp.down_proj.weight.device == CUDA1
    assert hf.lm_head.weight.device == CUDA1
    return single, split


def test_the_input_device_is_the_embeddings(twins):
    single, split = twins
    assert split.device == CUDA0 == single.device


@pytest.mark.parametrize("case", list(method_cases(IDS, MASK, CLEAN, CORRUPTED, LATE)))
def test_every_method_equals_one_gpu(twins, case):
    fn = method_cases(IDS.to(CUDA0), MASK.to(CUDA0), CLEAN.to(CUDA0), CORRUPTED.to(CUDA0), LATE)[case]
    single, split = twins
    expected, got = fn(single), fn(split)
    _close(flat(expected), flat(got))
    if isinstance(got, (attrib.Attribution, list)):
        assert devices_of(got) == {CUDA0}                # results come back on the input device


@pytest.mark.parametrize("given", ["cpu", "cuda:1"])
def test_inputs_on_another_device_are_moved(twins, given):
    """As a dispatched Hugging Face model moves them itself; an undispatched model refuses them."""
    single, split = twins
    expected = attrib.integrated_gradients(single, IDS.to(CUDA0), target=7, n_steps=8)
    got = attrib.integrated_gradients(split, IDS.to(given), target=7, n_steps=8)
    for e, g in zip(expected, got):
        _close(e.values, g.values)
    with split.trace(IDS.to(given)):
        ids = split.model.embed_tokens.input.save()
    assert ids.device == CUDA0
    with pytest.raises(attrib.InputError, match="move it with"):
        single.trace(IDS.to(CUDA1))


def test_trace_reads_values_on_both_devices(twins):
    single, split = twins
    layers = (1, SPLIT - 1, SPLIT, LATE)
    expected, got = trace_values(single, IDS.to(CUDA0), layers), trace_values(split, IDS.to(CUDA0), layers)
    assert [t.device for t in got] == [CUDA0, CUDA0, CUDA1, CUDA1, CUDA0]   # values where they live; logits back
    for e, g in zip(expected, got):
        _close(e, g)
    with split.trace(IDS.to(CUDA0)):
        h = split.model.layers[LATE].output[0].save()      # the example: a late layer's value, row 0
    _close(expected[-2][0], h)


def test_backward_context_reads_gradients_on_both_devices(twins):
    single, split = twins
    layers = (1, SPLIT - 1, SPLIT, LATE)
    expected, got = backward_grads(single, IDS.to(CUDA0), layers), backward_grads(split, IDS.to(CUDA0), layers)
    assert [g.device for g in got] == [CUDA1, CUDA1, CUDA0, CUDA0]          # read from the last layer back
    for e, g in zip(expected, got):
        _close(e, g)


def test_layers_offloaded_to_the_cpu(twins):
    """Layers marked "cpu" in the map keep their weights in CPU memory and run on cuda:0 (accelerate's offload)."""
    from accelerate import dispatch_model

    single, _ = twins
    hf = tiny_llama(LAYERS, hidden=64, dtype=torch.float32)
    placement = device_map(LAYERS, SPLIT, 0, 1)
    placement.update({"model.layers.1": "cpu", "model.layers.2": "cpu"})
    dispatch_model(hf, placement, main_device=0)
    assert hf.model.layers[1].mlp.down_proj.weight.device.type == "meta"
    model = attrib.LanguageModel(hf)
    for case in ("integrated_gradients_layer", "attribution_patching", "lrp_gamma"):
        fn = method_cases(IDS.to(CUDA0), MASK.to(CUDA0), CLEAN.to(CUDA0), CORRUPTED.to(CUDA0), LATE)[case]
        _close(flat(fn(single)), flat(fn(model)))
