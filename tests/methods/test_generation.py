"""generate_and_attribute: the continuation is Hugging Face's greedy one, the matrix is IG's per-token matrix of
it, batches with continuations of different lengths, Captum's LLMGradientAttribution(target=None) as oracle."""

from __future__ import annotations

import pytest
import torch

import attrib
from attrib.errors import MethodError
from tests.conftest import WordTokenizer, tiny_hf

PROMPTS = ["w3 w14 w15 w9", "w5 w6 w7 w8 w9 w10"]


@pytest.fixture(scope="module")
def lm():
    hf = tiny_hf("gpt2")
    hf.generation_config.pad_token_id = 0
    return attrib.LanguageModel(hf, WordTokenizer())


def greedy(hf, ids: list[int], n: int) -> list[int]:
    """Greedy continuation by hand: argmax of the last logits, appended, n times (no cache, no generate())."""
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            out.append(int(hf(torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids):]


def test_continuation_and_matrix(lm, leakcheck):
    check = leakcheck(lm.module)
    a = attrib.generate_and_attribute(lm, PROMPTS[0], max_new_tokens=4, baseline="zeros", n_steps=20)
    check.assert_clean()
    want = greedy(lm.module, [3, 14, 15, 9], 4)
    assert a.info["generated_ids"] == want
    assert a.output_tokens == [f" w{i}" for i in want]
    assert a.info["generated"] == " " + " ".join(f"w{i}" for i in want)
    assert a.scores.shape == (4, 4) and a.tokens == [" w3", " w14", " w15", " w9"]
    # row r is IG of generated token r's logit on the prompt plus the r tokens before it, those r tokens held
    # at their embeddings (teacher-forced tokens never move), restricted to the prompt's columns
    wte = lm.module.transformer.wte.weight.detach()
    for row, token in enumerate(want):
        ids = torch.tensor([3, 14, 15, 9] + want[:row])
        base = torch.cat([torch.zeros(4, wte.shape[1], dtype=wte.dtype), wte[want[:row]]])
        alone = attrib.integrated_gradients(lm, ids, target=token, baseline=base, n_steps=20)
        torch.testing.assert_close(a.scores[row], alone.scores[:4], rtol=1e-9, atol=1e-12)
    assert a.delta.shape == (4,) and float(a.delta.abs().max()) < 0.05 * float(a.scores.abs().sum())


def test_batch_with_continuations_of_different_lengths(lm):
    full = [greedy(lm.module, [int(w[1:]) for w in p.split()], 5) for p in PROMPTS]
    # prompt 0's first generated token is made the end-of-sequence token; prompt 1 never generates it
    k = 0
    assert full[0][k] not in full[1]
    lm.module.generation_config.eos_token_id = full[0][k]
    try:
        both = attrib.generate_and_attribute(lm, PROMPTS, max_new_tokens=5, baseline="zeros", n_steps=12)
        alone = [attrib.generate_and_attribute(lm, p, max_new_tokens=5, baseline="zeros", n_steps=12) for p in PROMPTS]
    finally:
        lm.module.generation_config.eos_token_id = 0
    assert isinstance(both, list) and [r.info["generated_ids"] for r in both] == [full[0][:k + 1], full[1]]
    assert both[0].scores.shape[0] == k + 1 < both[1].scores.shape[0] == 5
    for got, want in zip(both, alone):
        assert got.tokens == want.tokens and got.output_tokens == want.output_tokens
        torch.testing.assert_close(got.scores, want.scores, rtol=1e-9, atol=1e-12)


def test_keywords_reach_integrated_gradients(lm):
    a = attrib.generate_and_attribute(lm, PROMPTS[1], max_new_tokens=2, score="logprob", baseline="pad",
                                      n_steps=7, rule="riemann_middle")
    assert a.info["rule"] == "riemann_middle" and a.info["n_steps"] == 7 and a.info["baseline"] == "pad"
    b = attrib.integrated_gradients(lm, PROMPTS[1], target=a.info["generated_ids"], per_token=True, score="logprob",
                                    baseline="pad", n_steps=7, rule="riemann_middle")
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=0), r"max_new_tokens must be a positive int, got 0"),
    (dict(max_new_tokens=2.5), r"max_new_tokens must be a positive int, got 2\.5"),
    (dict(target=" w3"), r"generate_and_attribute chooses target= itself"),
    (dict(per_token=False), r"generate_and_attribute chooses per_token= itself"),
])
def test_bad_arguments(lm, kwargs, message, leakcheck):
    check = leakcheck(lm.module)
    with pytest.raises(MethodError, match=message):
        attrib.generate_and_attribute(lm, PROMPTS[0], **kwargs)
    check.assert_clean()


def test_plain_model_is_refused():
    with pytest.raises(MethodError, match=r"needs an attrib\.LanguageModel \(it generates text\), got Model"):
        attrib.generate_and_attribute(attrib.Model(torch.nn.Linear(2, 2)), torch.ones(1, 2))


@pytest.mark.slow
def test_equals_captum_on_the_same_continuation(demo):
    """Captum's LLMGradientAttribution(LayerIntegratedGradients, target=None) generates greedily and attributes
    each generated token's log-probability, teacher-forced, with its default baseline (token id 0 at the prompt's
    positions): the same continuation and the same matrix as score='logprob', baseline=0."""
    from captum.attr import LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput

    prompt = "The capital of France is"
    hf, tok = demo.module, demo.tokenizer
    inp = TextTokenInput(prompt, tok)
    theirs = LLMGradientAttribution(LayerIntegratedGradients(hf, hf.get_input_embeddings()), tok).attribute(
        inp, target=None, n_steps=16, gen_args={"max_new_tokens": 3, "do_sample": False})
    ours = attrib.generate_and_attribute(demo, prompt, max_new_tokens=3, score="logprob", baseline=0, n_steps=16)
    assert ours.output_tokens == [" Paris", ".", "\n"] and theirs.output_tokens == ["Paris", ".", "\\n"]
    assert len(ours.tokens) == theirs.token_attr.shape[1] == len(inp.values) == 5
    torch.testing.assert_close(ours.scores.double(), theirs.token_attr.double().cpu(), rtol=1e-4, atol=1e-5)
    assert float(ours.scores.abs().min()) > 1e-3                 # no row or column trivially zero
