"""Baselines of the path methods, above all the default ``baseline="auto"`` (pad everywhere but the first
prompt position) and the defaults of integrated gradients that rest on it."""

from __future__ import annotations

import pytest
import torch

import attrib
from attrib.methods.baselines import baseline_for
from attrib.methods.inputs import prepare
from tests.conftest import tiny_hf

IDS = torch.tensor([[3, 14, 15, 9, 26, 5]])
PAD = 2


def lm() -> attrib.LanguageModel:
    hf = tiny_hf("llama")
    hf.config.pad_token_id = PAD
    return attrib.LanguageModel(hf)


def test_auto_holds_the_first_position_and_pads_the_rest():
    model = lm()
    prep = prepare(model, IDS, target=7)
    b = baseline_for(prep, "auto")
    emb = model.module.get_input_embeddings().weight.detach()
    assert model.pad_id == PAD
    torch.testing.assert_close(b[0, 0], emb[3])                      # the first token's own embedding
    torch.testing.assert_close(b[0, 1:], emb[PAD].expand(5, -1))     # the pad embedding everywhere else
    torch.testing.assert_close(baseline_for(prep, "pad")[0, 0], emb[PAD])   # "pad" moves the first one too


def test_auto_moves_the_only_token_of_a_one_token_prompt():
    model = lm()
    b = baseline_for(prepare(model, IDS[:, :1], target=7), "auto")
    torch.testing.assert_close(b[0, 0], model.module.get_input_embeddings().weight[PAD].detach())


def test_auto_holds_each_prompts_own_first_token_under_left_padding():
    model = lm()
    prep = prepare(model, [IDS[0], IDS[0, 2:]], target=7)       # two lengths: the short one is padded
    b = baseline_for(prep, "auto")
    emb = model.module.get_input_embeddings().weight.detach()
    for i, first in enumerate((3, 15)):
        keep = prep.keep[i]
        torch.testing.assert_close(b[i, keep[0]], emb[first])
        torch.testing.assert_close(b[i, keep[1:]], emb[PAD].expand(len(keep) - 1, -1))
        others = torch.ones(b.shape[1], dtype=torch.bool)
        others[keep] = False                                       # padding keeps its own values
        torch.testing.assert_close(b[i, others], prep.x[i, others])


def test_auto_is_zeros_on_a_plain_model():
    net = attrib.Model(torch.nn.Linear(3, 1))
    x = torch.tensor([[1.0, 2.0, 3.0]])
    assert baseline_for(prepare(net, x, target=0), "auto").tolist() == [[0.0, 0.0, 0.0]]


def test_the_first_token_gets_no_attribution_and_completeness_holds():
    model = lm()
    a = attrib.integrated_gradients(model, IDS, target=7)               # the defaults
    assert a.info["baseline"] == "auto" and a.info["n_steps"] == "auto" and a.info["rule"] == "gausskronrod"
    assert float(a.values[0].abs().max()) == 0.0 and float(a.values[1:].abs().max()) > 0
    diff = a.info["f_x"] - a.info["f_baseline"]
    assert abs(float(a.delta)) <= 0.01 * abs(diff) and a.info["completeness"] == pytest.approx(abs(float(a.delta)) / abs(diff))
    # the same baseline by hand: a tensor holding the first embedding and pad elsewhere
    emb = model.module.get_input_embeddings().weight.detach()
    by_hand = torch.cat([emb[3:4], emb[PAD].expand(5, -1)])
    fixed = attrib.integrated_gradients(model, IDS, target=7, baseline=by_hand, n_steps=64)
    auto_fixed = attrib.integrated_gradients(model, IDS, target=7, n_steps=64)
    torch.testing.assert_close(auto_fixed.values, fixed.values, rtol=1e-12, atol=1e-12)


def test_a_named_rule_alone_runs_captums_fifty_steps():
    model = lm()
    a = attrib.integrated_gradients(model, IDS, target=7, method="riemann_right", baseline="zeros")
    assert a.info["n_steps"] == 50 and a.info["evaluations"] == 52 and a.info["rule"] == "riemann_right"
    with pytest.raises(attrib.MethodError, match=r"n_steps='auto' chooses its own nodes"):
        attrib.integrated_gradients(model, IDS, target=7, n_steps="auto", rule="gausslegendre")


def test_sixteen_bit_models_default_to_fifty_fixed_steps():
    hf = tiny_hf("llama", dtype=torch.bfloat16)
    hf.config.pad_token_id = PAD
    a = attrib.integrated_gradients(attrib.LanguageModel(hf), IDS, target=7)
    assert a.info["n_steps"] == 50 and a.info["rule"] == "gausslegendre" and a.info["baseline"] == "auto"
    b = attrib.integrated_gradients(attrib.LanguageModel(hf), IDS, target=7, n_steps="auto", tol=0.5)
    assert b.info["n_steps"] == "auto"                 # asked for: adaptive in bfloat16 too
