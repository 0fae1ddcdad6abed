"""DeepLIFT (Rescale), guided backpropagation and deconvolution against Captum, float64, on networks whose
non-linearities are modules (in-place ReLUs included), plus their identities and refusals."""

from __future__ import annotations

import pytest
import torch
from captum.attr import Deconvolution, DeepLift, GuidedBackprop

import attrib
from attrib import MethodError
from tests.models.test_layouts import FAMILIES, IDS, TARGET


def mlp(act: type) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), act(), torch.nn.Linear(8, 6), act(), torch.nn.Linear(6, 3)).double()


def cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(inplace=True), torch.nn.Conv2d(4, 4, 3),
                               torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(64, 3)).double()


X = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
TARGETS = [0, 2, 1, 0]


@pytest.mark.parametrize("act", [torch.nn.ReLU, torch.nn.Sigmoid, torch.nn.Tanh, torch.nn.ELU, torch.nn.Softplus,
                                 torch.nn.LeakyReLU])
def test_deeplift_equals_captum_and_is_complete(act, leakcheck):
    net = mlp(act)
    check = leakcheck(net)
    baseline = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    theirs = DeepLift(net).attribute(X, baselines=baseline, target=TARGETS)
    ours = attrib.deeplift(attrib.Model(net), X, target=TARGETS, baseline=baseline)
    check.assert_clean()
    torch.testing.assert_close(torch.stack([r.values for r in ours]), theirs, rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        diff = net(X)[range(4), TARGETS] - net(baseline)[range(4), TARGETS]
    for r, d in zip(ours, diff):                    # every non-linearity is a module: sums to f(x) − f(x')
        assert abs(float(r.values.sum() - d)) < 1e-10 and abs(float(r.delta)) < 1e-10
    saliency = attrib.saliency(attrib.Model(net), X, target=TARGETS, mode="grad_x_input")
    assert not torch.allclose(ours[0].values, saliency[0].scores)


def test_deeplift_on_a_cnn_with_an_inplace_relu_equals_captum():
    net = cnn()
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    theirs = DeepLift(net).attribute(x, baselines=torch.zeros_like(x), target=[1, 2])
    ours = attrib.deeplift(attrib.Model(net), x, target=[1, 2], baseline="zeros")
    torch.testing.assert_close(torch.stack([r.values for r in ours]), theirs, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("ours_fn,theirs_cls", [(attrib.guided_backprop, GuidedBackprop),
                                                (attrib.deconvolution, Deconvolution)])
@pytest.mark.parametrize("make", [lambda: mlp(torch.nn.ReLU), cnn])
def test_guided_backprop_and_deconvolution_equal_captum(ours_fn, theirs_cls, make, leakcheck):
    net = make()
    check = leakcheck(net)
    x = X if isinstance(net[0], torch.nn.Linear) else torch.randn(2, 2, 6, 6, dtype=torch.float64)
    targets = TARGETS[: len(x)]
    theirs = theirs_cls(net).attribute(x, target=targets)
    ours = ours_fn(attrib.Model(net), x, target=targets)
    check.assert_clean()
    torch.testing.assert_close(torch.stack([r.values for r in ours]), theirs, rtol=1e-12, atol=1e-12)
    plain = attrib.saliency(attrib.Model(net), x, target=targets)
    assert not torch.allclose(ours[0].values, plain[0].values)


def test_guided_methods_refuse_a_model_without_relu_modules():
    with pytest.raises(MethodError, match="has none"):
        attrib.guided_backprop(attrib.Model(mlp(torch.nn.Tanh)), X, target=0)


def test_deeplift_on_a_language_model_reports_what_the_functional_softmax_and_norms_leave():
    torch.manual_seed(0)
    hf = FAMILIES["llama"]().double().eval()
    r = attrib.deeplift(attrib.LanguageModel(hf), IDS, target=TARGET, baseline="zeros")
    assert torch.isfinite(r.values).all() and r.values.shape[0] == IDS.shape[1]
    with torch.no_grad():
        f = hf(input_ids=IDS).logits[0, -1, TARGET]
        f0 = hf(inputs_embeds=torch.zeros(1, IDS.shape[1], 32, dtype=torch.float64)).logits[0, -1, TARGET]
    assert abs(float(r.values.sum() - r.delta) - float(f - f0)) < 1e-9


def test_nan_from_the_models_own_forward_is_named_not_returned(leakcheck):
    """transformers' eager attention gives NaN on a left-padded row that masks every key (plain HF too)."""
    torch.manual_seed(0)
    hf = FAMILIES["llama"]().double().eval()
    hf.set_attn_implementation("eager")
    check = leakcheck(hf)
    prompts = [[5, 17, 23, 9, 41, 12], [8, 30, 2]]
    for method in (attrib.saliency, attrib.lrp, attrib.deeplift, attrib.gradient_shap):
        with pytest.raises(attrib.NonFiniteAttributionError, match="for input 1 .*attn_implementation='sdpa'"):
            method(attrib.LanguageModel(hf), prompts, target=TARGET)
    check.assert_clean()
    # GIM runs its own attention (SDPA's forward with the additive mask): the padded row is finite there
    assert torch.isfinite(attrib.gim(attrib.LanguageModel(hf), prompts, target=TARGET)[1].values).all()
    hf.set_attn_implementation("sdpa")
    assert torch.isfinite(attrib.lrp(attrib.LanguageModel(hf), prompts, target=TARGET)[1].values).all()
