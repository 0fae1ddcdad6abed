"""GIM against its package (gim-explain 0.1.4) part by part, where the package applies each part; GradientSHAP
against Captum under the same seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import GradientShap

import attrib
import gim as gim_explain                       # gim-explain 0.1.4, installed by `make test` (a test-only oracle)
from attrib import MethodError
from attrib.models import probes
from tests.models.test_layouts import FAMILIES, IDS, TARGET


def model(family: str, implementation: str):
    torch.manual_seed(0)
    hf = FAMILIES[family]().double().eval()
    hf.set_attn_implementation(implementation)
    return hf


# gim-explain applies the softmax temperature only where F.softmax is called (GPT-2's eager attention), the q/k/v
# scales only at SDPA's inputs, and freezes only torch's own LayerNorm / RMSNorm modules
CASES = [("gpt2", "eager", dict(q_scale=None, k_scale=None, v_scale=None)),
         ("gpt2", "sdpa", dict(softmax_temperature=None)),
         ("llama", "sdpa", dict(softmax_temperature=None, freeze_norm=False)),
         ("qwen3", "sdpa", dict(softmax_temperature=None, freeze_norm=False))]


@pytest.mark.parametrize("family,implementation,options", CASES)
def test_each_part_of_gim_equals_the_package(family, implementation, options, leakcheck):
    hf = model(family, implementation)
    check = leakcheck(hf)
    theirs = gim_explain.explain(hf, IDS, target_token_id=TARGET, baseline_token_id=3, **options)
    ours = attrib.gim(attrib.LanguageModel(hf), IDS, target=TARGET, baseline=3, **options)
    check.assert_clean()
    assert not probes.installed(hf) and hf.config._attn_implementation == implementation
    torch.testing.assert_close(ours.scores, theirs.to(ours.scores.dtype), rtol=1e-9, atol=1e-12)
    plain = attrib.gim(attrib.LanguageModel(hf), IDS, target=TARGET, baseline=3, freeze_norm=False,
                       softmax_temperature=None, q_scale=None, k_scale=None, v_scale=None)
    assert not torch.allclose(ours.scores, plain.scores)          # the part compared did change the gradient


def test_without_modifications_gim_is_gradient_times_input_minus_baseline():
    hf = model("llama", "eager")
    plain = attrib.gim(attrib.LanguageModel(hf), IDS, target=TARGET, freeze_norm=False, softmax_temperature=1.0,
                       q_scale=1.0, k_scale=1.0, v_scale=1.0)
    saliency = attrib.saliency(attrib.LanguageModel(hf), IDS, target=TARGET, mode="grad_x_input")
    torch.testing.assert_close(plain.scores, saliency.scores)


def test_the_tempered_softmax_rule_equals_softmax_at_temperature_t():
    from attrib.core.rules import Call
    from attrib.methods.gim import TemperedSoftmax

    torch.manual_seed(0)
    s = torch.randn(2, 3, 5, dtype=torch.float64)
    s[0, 0, 3:] = -torch.inf                                 # masked keys
    g = torch.randn(2, 3, 5, dtype=torch.float64)
    p = torch.softmax(s, -1)
    rule_grad = TemperedSoftmax(2.0).backward(g, Call(torch.nn.Identity(), "probe", p, p))
    _, through_softmax = torch.autograd.functional.vjp(lambda t: torch.softmax(t, -1), s.clamp(min=-1e9), rule_grad)
    _, at_t = torch.autograd.functional.vjp(lambda t: torch.softmax(t / 2.0, -1), s.clamp(min=-1e9), g)
    torch.testing.assert_close(through_softmax, at_t * 2.0)  # softmax(s/T)'s Jacobian in s carries a 1/T


def test_full_gim_runs_on_every_layout_with_probes_and_leaves_them_as_found():
    for family in ("llama", "gpt_neox", "phi3", "gemma3", "qwen2"):
        hf = model(family, "sdpa")
        r = attrib.gim(attrib.LanguageModel(hf), IDS, target=TARGET)
        assert torch.isfinite(r.values).all() and not probes.installed(hf)
    hf = model("llama", "sdpa")
    probes.install(hf)
    attrib.gim(attrib.LanguageModel(hf), IDS, target=TARGET)
    assert probes.installed(hf)                               # installed by the user: left installed
    probes.remove(hf)


def test_gim_refuses_plain_models_and_bad_options():
    with pytest.raises(MethodError, match="needs a language model"):
        attrib.gim(attrib.Model(torch.nn.Linear(2, 2)), torch.ones(1, 2), target=0)
    hf = model("llama", "sdpa")
    with pytest.raises(MethodError, match="softmax_temperature=0 must be a number > 0"):
        attrib.gim(attrib.LanguageModel(hf), IDS, target=TARGET, softmax_temperature=0)


def test_gradient_shap_equals_captum_under_the_same_seeds(leakcheck):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    check = leakcheck(net)
    x = torch.randn(4, 5, dtype=torch.float64)
    base = torch.randn(6, 5, dtype=torch.float64)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)                    # Captum makes σ in the default dtype
    try:
        np.random.seed(3)
        torch.manual_seed(3)
        theirs = GradientShap(net).attribute(x, baselines=base, target=[0, 1, 2, 0], n_samples=7, stdevs=0.3)
    finally:
        torch.set_default_dtype(default)
    ours = attrib.gradient_shap(attrib.Model(net), x, target=[0, 1, 2, 0], baselines=base, n_samples=7, stdevs=0.3,
                                seed=3)
    check.assert_clean()
    torch.testing.assert_close(torch.stack([r.values for r in ours]), theirs, rtol=1e-12, atol=1e-14)


def test_gradient_shap_of_a_linear_model_is_exact_and_its_delta_vanishes_on_average():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 2).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    base = torch.randn(10, 4, dtype=torch.float64)
    results = attrib.gradient_shap(attrib.Model(lin), x, target=1, baselines=base, n_samples=400, seed=1)
    for r, xi in zip(results, x):                            # E[w (x − b)] = w (x − mean b) as samples grow
        torch.testing.assert_close(r.values, lin.weight[1].detach() * (xi - base.mean(0)), rtol=0.1, atol=0.05)
        assert abs(float(r.delta)) < 0.1
    lm = attrib.gradient_shap(attrib.LanguageModel(model("llama", "sdpa")), IDS, target=TARGET, n_samples=3, seed=0)
    assert torch.isfinite(lm.values).all() and lm.values.shape[0] == IDS.shape[1]
    with pytest.raises(MethodError, match="n_samples=0"):
        attrib.gradient_shap(attrib.Model(lin), x, target=1, baselines=base, n_samples=0)


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen3"])
def test_the_fused_tempered_attention_equals_the_rule_on_the_probed_weights(family):
    hf = model(family, "sdpa")
    fused = attrib.gim(attrib.LanguageModel(hf), IDS, target=TARGET)       # attrib_gim attention for the call
    assert hf.config._attn_implementation == "sdpa"
    probes.install(hf)
    try:
        probed = attrib.gim(attrib.LanguageModel(hf), IDS, target=TARGET)  # TemperedSoftmax on the pattern probe
    finally:
        probes.remove(hf)
    # the probed eager attention takes Llama's and Qwen's softmax in float32, the fused backward in float64
    torch.testing.assert_close(fused.values, probed.values, rtol=1e-6, atol=1e-8 * float(probed.values.abs().max()))


def test_gim_on_a_padded_batch_equals_gim_prompt_by_prompt():
    hf = model("llama", "sdpa")
    lm = attrib.LanguageModel(hf)
    prompts = [[5, 17, 23, 9, 41, 12], [8, 30, 2]]
    batch = attrib.gim(lm, prompts, target=TARGET)
    for ids, together in zip(prompts, batch):
        alone = attrib.gim(lm, torch.tensor(ids), target=TARGET)
        torch.testing.assert_close(together.values, alone.values, rtol=1e-7, atol=1e-10)
