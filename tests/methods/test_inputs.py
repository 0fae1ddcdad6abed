"""The method contract (attrib/methods/inputs.py): every method takes the same input forms and keywords, one
rule decides one result or a list, and what a method cannot honour is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients

import attrib
from attrib.methods.inputs import prepare
from tests.conftest import WordTokenizer, stacked, tiny_hf

PROMPT = "w5 w17 w23 w9"
IDS = torch.tensor([5, 17, 23, 9])


@pytest.fixture
def lm():
    return attrib.LanguageModel(tiny_hf("llama"), WordTokenizer())


METHODS = {
    "integrated_gradients": lambda m, x, **k: attrib.integrated_gradients(m, x, baseline="zeros", n_steps=4, **k),
    "saliency": lambda m, x, **k: attrib.saliency(m, x, **k),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_input_form_gives_the_same_attributions(lm, method):
    run = METHODS[method]
    reference = run(lm, PROMPT, target=7)
    encoding = {"input_ids": IDS[None], "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    for form in (IDS, IDS[None], encoding):
        got = run(lm, form, target=7)
        assert isinstance(got, attrib.Attribution)                 # one item, one result
        torch.testing.assert_close(got.values, reference.values, rtol=0, atol=0)
        assert got.tokens == reference.tokens == [" w5", " w17", " w23", " w9"]
    for form in ([PROMPT], IDS[None].repeat(2, 1), [PROMPT, PROMPT]):
        got = run(lm, form, target=7)
        assert isinstance(got, list) and len(got) == len(form)
        torch.testing.assert_close(got[0].values, reference.values, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_right_padded_encodings_are_moved_left(lm, method):
    run = METHODS[method]
    short = run(lm, "w5 w17", target=7)
    encoding = {"input_ids": torch.tensor([[5, 17, 0, 0], [5, 17, 23, 9]]),
                "attention_mask": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])}
    got = run(lm, encoding, target=7)
    assert got[0].tokens == [" w5", " w17"]
    torch.testing.assert_close(got[0].values, short.values, rtol=1e-9, atol=1e-12)


def test_one_target_per_item(lm):
    both = attrib.saliency(lm, [PROMPT, "w1 w2 w3 w4"], target=[" w7", " w8"])
    assert [a.target for a in both] == [" w7", " w8"]
    alone = attrib.saliency(lm, "w1 w2 w3 w4", target=" w8")
    torch.testing.assert_close(both[1].values, alone.values, rtol=1e-9, atol=1e-12)
    with pytest.raises(attrib.TargetError, match="2 targets for 3 inputs"):
        attrib.saliency(lm, [PROMPT] * 3, target=[" w7", " w8"])


def test_the_callers_tokenizer_is_never_changed(lm):
    tok = lm.tokenizer
    attrib.saliency(lm, [PROMPT, "w1 w2"], target=7)
    assert tok.pad_token is None and tok.padding_side == "right"
    assert "pad_token" not in vars(tok) and "padding_side" not in vars(tok)


@pytest.mark.parametrize("method", ["integrated_gradients", "saliency", "attribution_patching", "activation_patching"])
def test_batch_size_is_checked_everywhere(lm, method):
    fn = getattr(attrib, method)
    args = (lm, PROMPT, "w5 w17 w40 w9") if "patching" in method else (lm, PROMPT)
    with pytest.raises(attrib.MethodError, match="batch_size must be a positive int"):
        fn(*args, target=7, batch_size=0)


def test_saliency_batches_give_the_same_values(lm):
    whole = attrib.saliency(lm, [PROMPT, "w1 w2 w3"], target=7, smooth=4, seed=0)
    split = attrib.saliency(lm, [PROMPT, "w1 w2 w3"], target=7, smooth=4, seed=0, batch_size=3)
    for a, b in zip(whole, split):
        torch.testing.assert_close(a.values, b.values, rtol=1e-9, atol=1e-12)


# -- plain models -------------------------------------------------------------------------------------

def captum_ig(forward, x, n_steps):
    """Captum's IG (it rounds its step sizes to float32: agreement is to about 1e-8 relative)."""
    return IntegratedGradients(forward).attribute(x, n_steps=n_steps)


def by_hand(forward, x, n_steps):
    """IG in float64 from torch.autograd alone, Gauss-Legendre nodes (no rounding anywhere)."""
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    total = torch.zeros_like(x)
    for a, w in zip(0.5 * (nodes + 1), 0.5 * weights):
        point = (a * x).requires_grad_(True)
        (grad,) = torch.autograd.grad(forward(point).sum(), point)
        total += w * grad
    return x * total


def mlp() -> attrib.Model:
    torch.manual_seed(0)
    return attrib.Model(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double())


@pytest.mark.parametrize("score", ["logit", "logprob", "prob"])
def test_ig_on_a_plain_model_honours_score_and_contrast(score):
    net = mlp()
    x = torch.randn(3, 4, dtype=torch.float64)
    fn = {"logit": lambda o: o, "logprob": lambda o: torch.log_softmax(o, -1),
          "prob": lambda o: torch.softmax(o, -1)}[score]
    ref = captum_ig(lambda inp: fn(net.module(inp))[:, 2] - fn(net.module(inp))[:, 0], x, 9)
    got = attrib.integrated_gradients(net, x, target=2, contrast=0, score=score, baseline="zeros", n_steps=9)
    torch.testing.assert_close(stacked(got), ref, rtol=1e-7, atol=1e-12)
    assert got[0].target == "'2' − '0'"


def test_ig_on_a_plain_model_honours_a_metric():
    net = mlp()
    x = torch.randn(2, 4, dtype=torch.float64)
    metric = lambda logits: logits[:, 1] * logits[:, 2]     # noqa: E731
    ref = captum_ig(lambda inp: metric(net.module(inp)), x, 7)
    got = attrib.integrated_gradients(net, x, metric=metric, baseline="zeros", n_steps=7)
    torch.testing.assert_close(stacked(got), ref, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("score", ["prob", "logprob"])
def test_probabilities_of_a_float64_model_stay_float64(score):
    """Scores promote the logits' dtype, never demote it: a float64 model's prob / logprob IG equals a float64
    hand-written IG to rounding (a cast to float32 would leave about 1e-6)."""
    model = attrib.LanguageModel(tiny_hf("llama"))
    hf, ids = model.module, torch.tensor([[5, 17, 23, 9]])
    x = hf.get_input_embeddings()(ids).detach()
    fn = torch.softmax if score == "prob" else torch.log_softmax
    ref = by_hand(lambda e: fn(hf(inputs_embeds=e).logits[:, -1], -1)[:, 7], x, 8)
    got = attrib.integrated_gradients(model, ids, target=7, score=score, baseline="zeros", n_steps=8)
    torch.testing.assert_close(got.values, ref[0], rtol=1e-12, atol=1e-15)


def test_a_callable_target_has_one_label_in_every_method():
    net = mlp()
    x = torch.randn(1, 4, dtype=torch.float64)
    f = lambda out: out[:, 0]     # noqa: E731
    assert attrib.integrated_gradients(net, x, target=f, baseline="zeros", n_steps=2).target == "metric"
    assert attrib.saliency(net, x, target=f).target == "metric"


def test_one_row_gives_one_result_and_more_rows_a_list():
    net = mlp()
    assert isinstance(attrib.saliency(net, torch.randn(1, 4, dtype=torch.float64), target=0), attrib.Attribution)
    many = attrib.saliency(net, torch.randn(3, 4, dtype=torch.float64), target=[0, 1, 2])
    assert [a.target for a in many] == ["0", "1", "2"]


def test_top_of_an_image_result_names_elements():
    torch.manual_seed(0)
    cnn = attrib.Model(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(),
                                           torch.nn.Linear(8, 3)).double())
    a = attrib.saliency(cnn, torch.randn(1, 1, 4, 4, dtype=torch.float64), target=1)
    top = a.top(3)
    assert a.values.shape == (1, 4, 4) and len(top) == 3
    flat = a.scores.flatten()
    assert top[0][1] == pytest.approx(float(flat[flat.abs().argmax()]))
    assert top[0][0].startswith("(0, ") and len(eval(top[0][0])) == 3
    assert "top:" in str(a)


def test_refused_rather_than_ignored():
    net = mlp()
    x = torch.randn(1, 4, dtype=torch.float64)
    with pytest.raises(attrib.TargetError, match="one class id per row"):
        attrib.integrated_gradients(net, x, target=[0, 1, 2, 0, 1])
    with pytest.raises(attrib.TargetError, match="subtract inside the metric"):
        attrib.saliency(net, x, metric=lambda o: o[:, 0], contrast=1)
    with pytest.raises(attrib.InputError, match="no tokenizer"):
        attrib.saliency(net, "some text")
    with pytest.raises(attrib.MethodError, match="attrib.Model or attrib.LanguageModel"):
        prepare(net.module, x)
