"""LRP: zennit's rules and composites on Linear/conv networks (zennit 0.5.1 as the oracle), AttnLRP and CP-LRP
on transformers (LXT 2.1 in its own environment, where it exists), conservation, every layout of the registry."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

import attrib
from attrib import MethodError
from attrib.core.rules import Rules
from attrib.methods.composites import Composite, composite
from attrib.methods.rules import Epsilon, Pass
from tests.models.test_layouts import FAMILIES, IDS, TARGET, forward_fn
from tests.oracles.zennit_import import import_zennit

ROOT = Path(__file__).resolve().parents[2]
LXT_PYTHON = os.environ.get("ATTRIB_LXT_PYTHON", str(ROOT / ".venv-lxt" / "bin" / "python"))


def cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3), torch.nn.ReLU(inplace=True),
        torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(36, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3),
    ).double().eval()


def zennit_relevance(net, x, target, comp):
    xi = x.clone().requires_grad_(True)
    with comp.context(net):
        out = net(xi)
        seed = torch.zeros_like(out)
        seed[range(len(x)), target] = out[range(len(x)), target].detach()   # relevance starts as the logit
        out.backward(seed)
    return xi.grad


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 3)).double().eval()


@pytest.mark.parametrize("name", ["epsilon", "gamma", "zplus", "epsilon_plus", "epsilon_alpha2_beta1",
                                  "epsilon_gamma_box"])
@pytest.mark.parametrize("make", [cnn, mlp])
def test_zennit_composites_equal_zennit(name, make, leakcheck):
    zennit = import_zennit()
    Z, ZT = zennit.rules, zennit.types
    net = make()
    check = leakcheck(net)
    torch.manual_seed(1)
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64) if make is cnn else torch.randn(3, 6, dtype=torch.float64)
    target = [0, 2, 1]
    base = [(ZT.Activation, Z.Pass()), (ZT.AvgPool, Z.Norm()), (ZT.BatchNorm, Z.Pass())]
    comp = {
        "epsilon": lambda: zennit.composites.LayerMapComposite(base + [(ZT.Linear, Z.Epsilon())]),
        "gamma": lambda: zennit.composites.LayerMapComposite(base + [(ZT.Linear, Z.Gamma())]),
        "zplus": lambda: zennit.composites.LayerMapComposite(base + [(ZT.Linear, Z.ZPlus())]),
        "epsilon_plus": lambda: zennit.composites.EpsilonPlus(),
        "epsilon_alpha2_beta1": lambda: zennit.composites.EpsilonAlpha2Beta1(),
        "epsilon_gamma_box": lambda: zennit.composites.EpsilonGammaBox(low=-3.0, high=3.0),
    }[name]()
    theirs = zennit_relevance(net, x, target, comp)
    options = dict(low=-3.0, high=3.0) if name == "epsilon_gamma_box" else {}
    ours = torch.stack([r.values for r in attrib.lrp(attrib.Model(net), x, target=target, rules=name, **options)])
    check.assert_clean()
    assert float(theirs.abs().max()) > 1e-4
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * float(theirs.abs().max()))


def test_lrp0_without_biases_is_conservative_and_equals_gradient_times_input():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 6, bias=False), torch.nn.ReLU(), torch.nn.Linear(6, 3, bias=False))
    net = net.double()
    x = torch.randn(4, 5, dtype=torch.float64)
    results = attrib.lrp(attrib.Model(net), x, target=1, rules="epsilon", epsilon=0.0)
    logits = net(x)[:, 1].detach()
    for r, logit in zip(results, logits):
        assert abs(float(r.values.sum() - logit)) < 1e-12 and abs(float(r.delta)) < 1e-12
    grad_x_input = attrib.saliency(attrib.Model(net), x, target=1, mode="grad_x_input")
    for r, s in zip(results, grad_x_input):
        torch.testing.assert_close(r.values, s.scores)


def test_epsilon_absorbs_relevance_as_epsilon_grows():
    net = cnn()
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    small = attrib.lrp(attrib.Model(net), x, target=0, rules="epsilon", epsilon=1e-9)
    large = attrib.lrp(attrib.Model(net), x, target=0, rules="epsilon", epsilon=10.0)
    assert float(large.values.abs().sum()) < 0.5 * float(small.values.abs().sum())


def lxt(hf, variant, tmp_path):
    hf.save_pretrained(tmp_path, safe_serialization=True)
    out = tmp_path / "lxt.json"
    proc = subprocess.run([LXT_PYTHON, str(ROOT / "tests" / "oracles" / "lxt_lrp.py"), str(tmp_path), str(out),
                           ",".join(map(str, IDS[0].tolist())), str(TARGET), variant],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.tensor(json.loads(out.read_text())["relevance"], dtype=torch.float64)


@pytest.mark.skipif(not Path(LXT_PYTHON).exists(), reason="no LXT environment (make oracle-env)")
@pytest.mark.parametrize("family,variant", [(f, v) for f in ("llama", "qwen2", "qwen3", "gemma3", "gpt2")
                                            for v in ("attnlrp", "cp-lrp")] + [("bert", "attnlrp")])
def test_attnlrp_and_cp_lrp_equal_lxt(family, variant, tmp_path):
    torch.manual_seed(0)
    hf = FAMILIES[family]().double().eval()
    theirs = lxt(hf, variant, tmp_path)
    x = hf.get_input_embeddings()(IDS).detach().requires_grad_(True)
    with Rules(composite(variant).assign(hf)):
        hf(inputs_embeds=x).logits[0, -1, TARGET].backward()
    ours = (x * x.grad)[0].detach()
    assert float(theirs.abs().max()) > 1e-4
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * float(theirs.abs().max()))
    if family != "bert":                                   # the method gives what the rules give
        r = attrib.lrp(attrib.LanguageModel(hf), IDS, target=TARGET, rules=variant)
        torch.testing.assert_close(r.values, ours.to(r.values.dtype))


SUPPORTED = sorted(FAMILIES)


@pytest.mark.parametrize("family", SUPPORTED)
def test_every_layout_runs_and_cp_lrp_is_conservative_where_nothing_absorbs(family, leakcheck):
    torch.manual_seed(0)
    hf = FAMILIES[family]().double().eval()
    check = leakcheck(hf)
    model = attrib.LanguageModel(hf)
    with torch.no_grad():
        logit = float(forward_fn(hf, family)(IDS)[0])
    attn = attrib.lrp(model, IDS, target=TARGET, rules="attnlrp")
    cp = attrib.lrp(model, IDS, target=TARGET, rules="cp-lrp")
    check.assert_clean()
    assert torch.isfinite(attn.values).all() and torch.isfinite(cp.values).all()
    assert not torch.allclose(attn.values, cp.values)
    saliency = attrib.saliency(model, IDS, target=TARGET, mode="grad_x_input")
    assert not torch.allclose(attn.values, saliency.values)          # the rules changed something
    # random initialization leaves every bias 0; learned position embeddings (GPT-2, OPT, BERT) take a share
    # Gemma 2's logit soft-cap is not conservative; T5's decoder input (the start token) takes a share
    if family not in ("gpt2", "opt", "bert", "gemma2", "t5"):
        assert abs(float(cp.values.sum()) - logit) < 1e-6 * max(1.0, abs(logit))
        assert abs(float(cp.delta)) < 1e-6


def test_bad_rules_are_refused_in_one_sentence():
    net = attrib.Model(cnn())
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    with pytest.raises(MethodError, match="is not one of epsilon, gamma"):
        attrib.lrp(net, x, target=0, rules="epsilonn")
    with pytest.raises(MethodError, match="gamma= sets a parameter of the named zennit-style composites"):
        attrib.lrp(net, x, target=0, rules="attnlrp", gamma=0.5)
    with pytest.raises(MethodError, match="put no rule on any module"):
        attrib.lrp(net, x, target=0, rules=[(torch.nn.LSTM, Epsilon())])


def test_a_composite_of_path_patterns_and_functions():
    net = cnn()
    comp = Composite([("0", Epsilon(0.5)), (lambda path, m: isinstance(m, torch.nn.ReLU), Pass())],
                     first=[(torch.nn.Linear, Epsilon(0.1))])
    got = [(path, repr(rule)) for _, rule, path in comp.assign(net)]
    assert got == [("0", "Epsilon(epsilon=0.5)"), ("1", "Pass(epsilon=1e-10)"), ("3", "Pass(epsilon=1e-10)"),
                   ("6", "Epsilon(epsilon=0.1)"), ("7", "Pass(epsilon=1e-10)")]


def test_transformers_hf_model_gets_rules_on_every_norm_activation_and_projection():
    torch.manual_seed(0)
    hf = FAMILIES["llama"]().double().eval()
    paths = {path: type(rule).__name__ for _, rule, path in composite("attnlrp").assign(hf)}
    for i in range(2):
        for p in ("q_proj", "k_proj", "v_proj"):
            assert paths[f"model.layers.{i}.self_attn.{p}"] == "Scale"
        assert paths[f"model.layers.{i}.mlp.down_proj"] == "Scale"
        assert paths[f"model.layers.{i}.mlp.act_fn"] == "Pass"
        assert paths[f"model.layers.{i}.input_layernorm"] == "FrozenNorm"
    assert paths["model.norm"] == "FrozenNorm"


@pytest.mark.slow
def test_on_the_demo_model_cp_lrp_conserves_the_logit_and_attnlrp_keeps_part_of_it(demo):
    """Measured on 20 factual prompts (docs/rules.md): CP-LRP |Σ relevance − logit| / |logit| ≤ 1.2e-6 (float32);
    AttnLRP keeps 32–37 % of the logit — its softmax rule, in gradient × input form as in LXT, is not
    conservative, and the attention weights' bias absorbs the rest."""
    for text, target in (("The capital of France is", " Paris"), ("The chemical symbol for gold is", " Au")):
        cp = attrib.lrp(demo, text, target=target, rules="cp-lrp")
        attn = attrib.lrp(demo, text, target=target, rules="attnlrp")
        logit = float(cp.values.sum() - cp.delta)
        assert abs(float(cp.values.sum()) - logit) < 1e-5 * abs(logit)
        assert abs(float(attn.values.sum() - attn.delta) - logit) < 1e-4 * abs(logit)   # the same target logit
        assert 0.2 < float(attn.values.sum()) / logit < 0.6


def test_site_selectors_put_rules_where_the_layout_says():
    torch.manual_seed(0)
    hf = FAMILIES["llama"]().double().eval()
    comp = Composite([("site:mlp_out.*", Pass()), ("site:q.0", Epsilon(0.5))])
    got = {path: repr(rule) for _, rule, path in comp.assign(hf)}
    assert got == {"model.layers.0.self_attn.q_proj": "Epsilon(epsilon=0.5)", "model.layers.0.mlp": "Pass(epsilon=1e-10)",
                   "model.layers.1.mlp": "Pass(epsilon=1e-10)"}
    gpt2 = FAMILIES["gpt2"]().double().eval()
    with pytest.raises(attrib.RuleError, match="part of a fused projection"):
        Composite([("site:q.0", Pass())]).assign(gpt2)


def test_soft_caps_get_the_identity_rule():
    from attrib.core.rules import Call
    from attrib.methods.rules import SoftcapLogits, softcap_identity

    s = torch.tensor([-80.0, -3.0, 0.0, 2.0, 45.0], dtype=torch.float64, requires_grad=True)
    z = softcap_identity(s, 50.0)
    torch.testing.assert_close(z, 50.0 * torch.tanh(s / 50.0))
    z.backward(torch.ones_like(z))
    expected = torch.where(s == 0, torch.ones_like(s), 50.0 * torch.tanh(s / 50.0) / s).detach()
    torch.testing.assert_close(s.grad, expected)
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 3, bias=False).double()
    x = torch.randn(2, 4, dtype=torch.float64)
    logits = head(x).detach()
    t = torch.tanh(logits / 30.0)
    g = torch.randn(2, 3, dtype=torch.float64)
    arriving = g * (1 - t * t)                                    # what the cap's own backward hands the head
    got = SoftcapLogits(30.0).backward(arriving, Call(head, "lm_head", x, logits))
    torch.testing.assert_close(got, (g * 30.0 * t / logits) @ head.weight.detach())


def test_gemma2_attention_with_the_cap_rule_computes_what_the_model_computes(leakcheck):
    from attrib.methods.composites import _attention_softcap
    from attrib.models import probes

    torch.manual_seed(0)
    hf = FAMILIES["gemma2"]().double().eval()
    check = leakcheck(hf)
    with torch.no_grad():
        plain = hf(input_ids=IDS).logits
    with _attention_softcap(hf):
        assert probes.installed(hf)
        with torch.no_grad():
            capped = hf(input_ids=IDS).logits
    assert not probes.installed(hf)
    check.assert_clean()
    torch.testing.assert_close(capped, plain, rtol=1e-10, atol=1e-10)
    torch.manual_seed(0)
    huge = FAMILIES["gemma2"]().double().eval()
    huge.config.attn_logit_softcapping = huge.config.final_logit_softcapping = 1e8   # caps that do nothing
    torch.manual_seed(0)
    none = FAMILIES["gemma2"]().double().eval()
    none.config.attn_logit_softcapping = none.config.final_logit_softcapping = None
    a = attrib.lrp(attrib.LanguageModel(huge), IDS, target=TARGET, rules="attnlrp")
    b = attrib.lrp(attrib.LanguageModel(none), IDS, target=TARGET, rules="attnlrp")
    torch.testing.assert_close(a.values, b.values, rtol=1e-6, atol=1e-9)


def test_mixtral_gets_the_uniform_rule_on_its_routing_and_expert_products():
    torch.manual_seed(0)
    hf = FAMILIES["mixtral"]().double().eval()
    attn = {path: rule for _, rule, path in composite("attnlrp").assign(hf)}
    cp = {path: rule for _, rule, path in composite("cp-lrp").assign(hf)}
    for i in range(2):
        moe = f"model.layers.{i}.mlp"
        assert (attn[moe].factor, attn[moe].at) == (0.5, "output")
        assert (attn[f"{moe}.experts"].factor, attn[f"{moe}.experts"].at) == (0.5, "input")
        assert type(attn[f"{moe}.experts.act_fn"]).__name__ == "Pass"
        assert (cp[f"{moe}.gate"].factor, cp[f"{moe}.gate"].at) == (0.0, "input")
        assert cp[f"{moe}.experts.act_fn"].factor == 0.0 and moe not in cp
