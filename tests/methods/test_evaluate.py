"""attrib.faithfulness: curves and scores recomputed by hand with plain forwards, an order that must beat its
reverse, the result's file round trip and plot, and refusals."""

from __future__ import annotations

import math

import pytest
import torch
import transformers

import attrib
from attrib import MethodError
from attrib.results import Attribution

PROMPTS = [[5, 9, 3, 7, 1], [4, 8, 2, 6]]
REPLACE = 0                                           # the replacement token id


def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=12, n_positions=16, bos_token_id=0,
                                     eos_token_id=0, pad_token_id=0)
    return transformers.GPT2LMHeadModel(config).double().eval()


def fixed(orders):
    """A 'method' whose token scores rank each prompt's positions in the given order (first = most relevant)."""
    def fn(model, prompts, target=None, score="logit"):
        out = []
        for ids, order in zip(prompts, orders):
            scores = torch.zeros(len(ids), dtype=torch.float64)
            scores[torch.tensor(order)] = torch.arange(len(ids), 0, -1, dtype=torch.float64)
            out.append(Attribution([str(i) for i in ids], scores, scores, None, "t", "fixed"))
        return out
    return fn


def logit(hf, embeds, target):
    with torch.no_grad():
        return float(hf(inputs_embeds=embeds.unsqueeze(0)).logits[0, -1, target])


def test_the_scores_equal_a_hand_computation_with_plain_forwards():
    hf = tiny()
    orders = [[2, 0, 4, 1, 3], [3, 1, 0, 2]]
    e = attrib.faithfulness(attrib.LanguageModel(hf), PROMPTS, {"fixed": fixed(orders)}, n_random=0,
                            replace=REPLACE, bins=(0.2, 0.5))
    emb = hf.get_input_embeddings().weight.detach()
    aopc_d, aopc_i, comp, suff = [], [], [], []
    for ids, order in zip(PROMPTS, orders):
        with torch.no_grad():
            target = int(hf(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        x, b = emb[torch.tensor(ids)], emb[REPLACE].expand(len(ids), -1)
        n = len(ids)
        dele, ins = [], []
        for k in range(n + 1):
            d, i = x.clone(), b.clone()
            d[order[:k]] = b[order[:k]]
            i[order[:k]] = x[order[:k]]
            dele.append(logit(hf, d, target))
            ins.append(logit(hf, i, target))
        aopc_d.append(sum(dele[0] - v for v in dele[1:]) / n)
        aopc_i.append(sum(v - ins[0] for v in ins[1:]) / n)
        at = [max(1, math.ceil(q * n)) for q in (0.2, 0.5)]
        comp.append(sum(dele[0] - dele[k] for k in at) / 2)
        suff.append(sum(dele[0] - ins[k] for k in at) / 2)
    for got, want in ((e.aopc_deletion, aopc_d), (e.aopc_insertion, aopc_i), (e.comprehensiveness, comp),
                      (e.sufficiency, suff)):
        assert abs(float(got[0]) - sum(want) / 2) < 1e-10
    assert abs(float(e.deletion[0, 0])) < 1e-12 and abs(float(e.insertion[0, 0])) < 1e-12


def test_the_order_by_true_effect_beats_its_reverse_and_random_is_reported():
    hf = tiny()
    emb = hf.get_input_embeddings().weight.detach()
    effects = []
    for ids in PROMPTS:
        with torch.no_grad():
            target = int(hf(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        x = emb[torch.tensor(ids)]
        full = logit(hf, x, target)
        drop = []
        for p in range(len(ids)):
            d = x.clone()
            d[p] = emb[REPLACE]
            drop.append(full - logit(hf, d, target))
        effects.append(drop)
    best = [sorted(range(len(d)), key=lambda p: -d[p]) for d in effects]
    worst = [list(reversed(o)) for o in best]
    e = attrib.faithfulness(attrib.LanguageModel(hf), PROMPTS, {"best": fixed(best), "worst": fixed(worst)},
                            replace=REPLACE, n_random=4)
    assert e.methods == ["best", "worst", "random"]
    assert float(e.aopc_deletion[0]) > float(e.aopc_deletion[1])
    assert float(e.comprehensiveness[0]) > float(e.comprehensiveness[1])
    assert e.top(1)[0][0] == "best"


def test_builtin_methods_the_file_round_trip_and_the_plot(tmp_path):
    hf = tiny()
    e = attrib.faithfulness(attrib.LanguageModel(hf), PROMPTS, ["grad_x_input", "attnlrp", "gim"], replace=REPLACE,
                            n_random=2)
    assert e.methods == ["grad_x_input", "attnlrp", "gim", "random"] and e.n_prompts == 2
    assert all(name in e.table() for name in e.methods)
    e.save(tmp_path / "e.safetensors")
    back = attrib.load(tmp_path / "e.safetensors")
    torch.testing.assert_close(back.aopc_deletion, e.aopc_deletion)
    assert back.methods == e.methods
    fig = e.plot()
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) >= 4


def test_bad_arguments_are_refused():
    model = attrib.LanguageModel(tiny())
    with pytest.raises(MethodError, match="are not among integrated_gradients"):
        attrib.faithfulness(model, PROMPTS, ["lrp2"])
    with pytest.raises(MethodError, match="non-empty list of prompts"):
        attrib.faithfulness(model, [], ["saliency"])
    with pytest.raises(MethodError, match="2 entries for 1 prompts"):
        attrib.faithfulness(model, PROMPTS[:1], ["saliency"], target=[1, 2])
