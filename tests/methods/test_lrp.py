"""LRP: zennit's rules and composites on Linear/conv networks (zennit 0.5.1 as the oracle), AttnLRP and CP-LRP
on transformers (LXT 2.1 in its own environment, where it exists), conservation, every layout of the registry."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import transformers

import attrib
from attrib import MethodError
from attrib.core.rules import Rules
from attrib.methods.composites import Composite, composite
from attrib.methods.rules import Epsilon, Pass
from tests.models.test_layouts import FAMILIES, IDS, TARGET
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


@pytest.mark.parametrize("name", ["epsilon", "gamma", "zplus", "epsilon_plus", "epsilon_alpha2_beta1",
                                  "epsilon_gamma_box"])
def test_zennit_composites_equal_zennit(name, leakcheck):
    zennit = import_zennit()
    Z, ZT = zennit.rules, zennit.types
    net = cnn()
    check = leakcheck(net)
    torch.manual_seed(1)
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
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


SUPPORTED = sorted(set(FAMILIES) - {"mixtral", "gemma2", "t5"})


@pytest.mark.parametrize("family", SUPPORTED)
def test_every_layout_runs_and_cp_lrp_is_conservative_where_nothing_absorbs(family, leakcheck):
    torch.manual_seed(0)
    hf = FAMILIES[family]().double().eval()
    check = leakcheck(hf)
    model = attrib.LanguageModel(hf)
    logit = float(hf(input_ids=IDS).logits[0, -1, TARGET])
    attn = attrib.lrp(model, IDS, target=TARGET, rules="attnlrp")
    cp = attrib.lrp(model, IDS, target=TARGET, rules="cp-lrp")
    check.assert_clean()
    assert torch.isfinite(attn.values).all() and torch.isfinite(cp.values).all()
    assert not torch.allclose(attn.values, cp.values)
    saliency = attrib.saliency(model, IDS, target=TARGET, mode="grad_x_input")
    assert not torch.allclose(attn.values, saliency.values)          # the rules changed something
    # random initialization leaves every bias 0; learned position embeddings (GPT-2, OPT, BERT) take a share
    if family not in ("gpt2", "opt", "bert"):
        assert abs(float(cp.values.sum()) - logit) < 1e-6 * max(1.0, abs(logit))
        assert abs(float(cp.delta)) < 1e-6


@pytest.mark.parametrize("family,match", [("mixtral", "mixture-of-experts"), ("gemma2", "soft-capping"),
                                          ("t5", "encoder's only")])
def test_models_the_rules_cannot_cover_are_refused(family, match, leakcheck):
    torch.manual_seed(0)
    hf = FAMILIES[family]().double().eval()
    check = leakcheck(hf)
    with pytest.raises(MethodError, match=match):
        attrib.lrp(attrib.LanguageModel(hf), IDS, target=TARGET)
    check.assert_clean()


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
    assert transformers.__version__ >= "4.45"
