"""attrib.saliency: Captum as the oracle (float64), closed forms, batching, bad input, leaks, the demo model."""

from __future__ import annotations

import contextlib

import pytest
import torch

import attrib
from tests.conftest import stacked
from attrib.errors import MethodError
from attrib.methods.saliency import saliency

from ..conftest import ARCHS, tiny_hf

captum_attr = pytest.importorskip("captum.attr")

PROMPT = "w3 w14 w15 w9 w26 w5"
TOL = dict(rtol=1e-5, atol=1e-8)


def word_tokenizer():
    """Word-level tokenizer for the tiny models' 50-token vocabulary: ``"w7"`` is token 7, ``<pad>`` is 0."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<pad>": 0, **{f"w{i}": i for i in range(1, 50)}}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<pad>")


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


def tiny_lm(arch: str, tokenizer) -> attrib.LanguageModel:
    return attrib.LanguageModel(tiny_hf(arch), tokenizer)


def ids_of(text: str) -> torch.Tensor:
    return torch.tensor([[int(w[1:]) for w in text.split()]])


def embeds_of(hf, text: str) -> torch.Tensor:
    with torch.no_grad():
        return hf.get_input_embeddings()(ids_of(text))


def score_of(hf, target: int, contrast: int | None = None, score: str = "logit"):
    """Captum's forward: input embeddings → the target score at the last position, one per row."""
    def forward(embeds: torch.Tensor) -> torch.Tensor:
        logits = hf(inputs_embeds=embeds).logits[:, -1]
        logits = torch.log_softmax(logits, -1) if score == "logprob" else logits
        out = logits[:, target]
        return out if contrast is None else out - logits[:, contrast]
    return forward


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """NoiseTunnel builds its σ tensor with ``torch.tensor(stdev)`` (the default dtype): make it float64 like ours."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# -- Captum oracle on language models ------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode", ["grad", "grad_x_input"])
def test_matches_captum_on_embeddings(arch, mode, tokenizer):
    model = tiny_lm(arch, tokenizer)
    x = embeds_of(model.module, PROMPT)
    method = captum_attr.Saliency if mode == "grad" else captum_attr.InputXGradient
    kwargs = {"abs": False} if mode == "grad" else {}
    expected = method(score_of(model.module, 7)).attribute(x.clone().requires_grad_(), **kwargs)[0]
    got = saliency(model, PROMPT, target=" w7", mode=mode)
    assert got.tokens == PROMPT.split()
    torch.testing.assert_close(got.values, expected, **TOL)
    reduced = expected.sum(-1) if mode == "grad_x_input" else expected.norm(dim=-1)
    torch.testing.assert_close(got.scores, reduced, **TOL)


def test_contrast_logprob_and_default_target_match_captum(tokenizer):
    model = tiny_lm("llama", tokenizer)
    x = embeds_of(model.module, PROMPT)
    expected = captum_attr.Saliency(score_of(model.module, 7, 11, "logprob")).attribute(x.clone().requires_grad_(), abs=False)[0]
    got = saliency(model, PROMPT, target=" w7", contrast=" w11", score="logprob")
    torch.testing.assert_close(got.values, expected, **TOL)
    with torch.no_grad():
        top = int(model.module(ids_of(PROMPT)).logits[0, -1].argmax())
    expected = captum_attr.Saliency(score_of(model.module, top)).attribute(x.clone().requires_grad_(), abs=False)[0]
    torch.testing.assert_close(saliency(model, PROMPT).values, expected, **TOL)


@pytest.mark.parametrize("smooth_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
@pytest.mark.parametrize("mode", ["grad", "grad_x_input"])
def test_noise_tunnel_matches_captum(smooth_type, mode, tokenizer):
    model = tiny_lm("neox", tokenizer)
    x = embeds_of(model.module, PROMPT)
    sigma = 0.2 * float(x.max() - x.min())
    method = captum_attr.Saliency if mode == "grad" else captum_attr.InputXGradient
    kwargs = {"abs": False} if mode == "grad" else {}
    torch.manual_seed(123)
    with default_dtype(torch.float64):
        expected = captum_attr.NoiseTunnel(method(score_of(model.module, 7))).attribute(
            x.clone(), nt_type=smooth_type, nt_samples=5, stdevs=sigma, **kwargs)[0]
    options = dict(target=" w7", mode=mode, smooth=5, noise=0.2, smooth_type=smooth_type)
    torch.manual_seed(123)
    from_global = saliency(model, PROMPT, **options)
    from_seed = saliency(model, PROMPT, seed=123, **options)
    torch.testing.assert_close(from_global.values, expected, **TOL)
    torch.testing.assert_close(from_seed.values, expected, **TOL)
    plain = saliency(model, PROMPT, target=" w7", mode=mode)
    assert not torch.allclose(from_seed.values, plain.values), "the noise changed nothing"


# -- generic modules ------------------------------------------------------------------------------------------

def mlp() -> attrib.Model:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    return attrib.Model(net.double().eval())


@pytest.mark.parametrize("mode", ["grad", "grad_x_input"])
def test_generic_module_matches_captum(mode):
    net = mlp()
    x = torch.randn(4, 5, dtype=torch.float64)
    method = captum_attr.Saliency if mode == "grad" else captum_attr.InputXGradient
    kwargs = {"abs": False} if mode == "grad" else {}
    expected = method(net.module).attribute(x.clone().requires_grad_(), target=1, **kwargs)
    got = saliency(net, x, target=1, mode=mode)
    torch.testing.assert_close(stacked(got), expected, **TOL)
    torch.testing.assert_close(stacked(got, "scores"), expected if mode == "grad_x_input" else expected.abs(), **TOL)
    with torch.no_grad():
        top = net.module(x).argmax(-1)
    expected = method(net.module).attribute(x.clone().requires_grad_(), target=top, **kwargs)
    torch.testing.assert_close(stacked(saliency(net, x, mode=mode)), expected, **TOL)  # target=None: predicted class
    by_callable = saliency(net, x, target=lambda out: out[:, 1], mode=mode)
    torch.testing.assert_close(stacked(by_callable), stacked(got), **TOL)
    expected = method(lambda z: torch.log_softmax(net.module(z), -1)).attribute(
        x.clone().requires_grad_(), target=2, **kwargs)
    torch.testing.assert_close(stacked(saliency(net, x, target=2, score="logprob", mode=mode)), expected, **TOL)


def test_generic_vargrad_matches_captum():
    net = mlp()
    x = torch.randn(1, 5, dtype=torch.float64)
    torch.manual_seed(5)
    with default_dtype(torch.float64):
        expected = captum_attr.NoiseTunnel(captum_attr.Saliency(net.module)).attribute(
            x.clone(), nt_type="vargrad", nt_samples=6, stdevs=0.15 * float(x.max() - x.min()), target=2, abs=False)
    got = saliency(net, x, target=2, smooth=6, smooth_type="vargrad", seed=5)
    torch.testing.assert_close(stacked(got), expected, **TOL)


def test_linear_closed_form():
    lin = torch.nn.Linear(4, 2).double()
    w, v = lin.weight.detach()
    x = torch.randn(3, 4, dtype=torch.float64)
    net = attrib.Model(lin)
    torch.testing.assert_close(stacked(saliency(net, x, target=0, contrast=1)), (w - v).expand(3, 4), **TOL)
    torch.testing.assert_close(stacked(saliency(net, x, target=0)), w.expand(3, 4), **TOL)
    torch.testing.assert_close(stacked(saliency(net, x, target=0, mode="grad_x_input")), w * x, **TOL)
    # SmoothGrad of a linear model: every sample has the same gradient, so smoothgrad = w and vargrad = 0
    torch.testing.assert_close(stacked(saliency(net, x, target=0, smooth=4, seed=0)), w.expand(3, 4), **TOL)
    assert stacked(saliency(net, x, target=0, smooth=4, smooth_type="vargrad")).abs().max() < 1e-12


# -- batches ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_batch_equals_one_prompt_at_a_time(arch, tokenizer):
    model = tiny_lm(arch, tokenizer)
    prompts = [PROMPT, "w7 w8 w20"]
    for mode in ("grad", "grad_x_input"):
        batch = saliency(model, prompts, mode=mode)          # target=None: each prompt's own top token
        assert isinstance(batch, list) and len(batch) == 2
        for prompt, got in zip(prompts, batch):
            alone = saliency(model, prompt, mode=mode)
            assert got.tokens == alone.tokens == prompt.split() and got.target == alone.target
            torch.testing.assert_close(got.values, alone.values, **TOL)
            torch.testing.assert_close(got.scores, alone.scores, **TOL)
    # rows = prompts × samples: with zero noise every sample is the clean input
    smooth = saliency(model, prompts, target=" w7", smooth=3, noise=0.0)
    for prompt, got in zip(prompts, smooth):
        torch.testing.assert_close(got.values, saliency(model, prompt, target=" w7").values, **TOL)


SHORT = "w29 w42 w44"  # with the pad token's embedding its range would be 26% wider


def test_batched_smoothgrad_uses_each_prompts_own_noise_scale(tokenizer):
    """The padded prompt's samples: σ from its own tokens (not the padding), noise rows in prompt × sample order."""
    model = tiny_lm("gpt2", tokenizer)  # absolute positions: also checks that padding does not shift them
    n, pad, hidden = 3, 3, model.module.config.n_embd
    got = saliency(model, [PROMPT, SHORT], target=" w7", smooth=n, noise=0.1, seed=4)[1]
    z = torch.normal(0.0, torch.ones(2 * n, 6, hidden, dtype=torch.float64), generator=torch.Generator().manual_seed(4))
    x = embeds_of(model.module, SHORT)
    noisy = x + 0.1 * (x.max() - x.min()) * z[n:, pad:]
    expected = captum_attr.Saliency(score_of(model.module, 7)).attribute(noisy.requires_grad_(), abs=False).mean(0)
    torch.testing.assert_close(got.values, expected, **TOL)


# -- bad input and leaks -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, words", [
    (dict(mode="gradient"), "mode"),
    (dict(smooth_type="smoothgrad2"), "smooth_type"),
    (dict(smooth=-1), "smooth"),
    (dict(smooth=2.5), "smooth"),
    (dict(noise=-0.1), "noise"),
    (dict(noise=float("nan")), "noise"),
])
def test_bad_arguments_raise(kwargs, words, tokenizer, leakcheck):
    model = tiny_lm("gpt2", tokenizer)
    check = leakcheck(model.module)
    with pytest.raises(MethodError, match=words) as info:
        saliency(model, PROMPT, target=" w7", **kwargs)
    assert isinstance(info.value, attrib.AttribError)
    assert str(info.value).count(". ") == 0 and str(info.value).endswith(".")  # one sentence
    check.assert_clean()


def test_integer_input_without_embedding_raises():
    net = attrib.Model(torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Flatten(), torch.nn.Linear(12, 2)))
    with pytest.raises(MethodError, match="attribute to an embedding"):
        saliency(net, torch.tensor([[1, 2, 3]]), target=0)


def test_no_leaks_after_a_call_and_after_an_error_in_the_trace(tokenizer, leakcheck):
    model = tiny_lm("llama", tokenizer)
    check = leakcheck(model.module)
    saliency(model, [PROMPT, "w1 w2"], target=" w7", smooth=2, seed=0)
    check.assert_clean()
    with pytest.raises(attrib.AttribError, match="shape"):
        saliency(model, PROMPT, target=" w7", metric=lambda logits: logits[:, -1])  # (batch, vocab)
    check.assert_clean()
    assert all(p.grad is None for p in model.module.parameters()), "parameter gradients were computed"


# -- the demo model ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_demo_model_paris(demo):
    prompt = "The capital of France is"
    n_tokens = len(demo.tokenizer(prompt)["input_ids"])
    grad = saliency(demo, prompt, target=" Paris")
    gxi = saliency(demo, prompt, target=" Paris", mode="grad_x_input")
    hidden = demo.module.config.hidden_size
    for a in (grad, gxi):
        assert len(a.tokens) == n_tokens and a.scores.shape == (n_tokens,)
        assert a.values.shape == (n_tokens, hidden)
        assert torch.isfinite(a.values).all() and torch.isfinite(a.scores).all()
        assert a.target == " Paris"
    assert (grad.scores > 0).all()
    torch.testing.assert_close(gxi.scores, gxi.values.sum(-1))
    with torch.no_grad():
        embeds = demo.module.get_input_embeddings()(demo.tokenize(prompt)["input_ids"])[0]
    torch.testing.assert_close(gxi.values, grad.values * embeds)
