"""Issue 9, the methods' and results' unclear errors: each case now gives a correct result or one clear
AttribError naming the argument, and a model that raised is clean and computes the same logits afterwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attrib
from attrib.methods.quadrature import MAX_STEPS, quadrature
from attrib.viz import layer_position_figure
from tests.conftest import tiny_hf

IDS = torch.tensor([[3, 14, 15, 9, 26, 5]])
CORRUPT = torch.tensor([[3, 14, 15, 9, 27, 5]])
PROMPT = "Café ☕ à Zürich 😀👍🏽, déjà vu"      # accents, an emoji split over 3 byte tokens, a skin tone


@pytest.fixture
def lm():
    return attrib.LanguageModel(tiny_hf("gpt2"))        # float64, n_positions = 32, no tokenizer


def logits_of(model: attrib.Model, x: torch.Tensor = IDS) -> torch.Tensor:
    out = model.module(x)
    return (out.logits if hasattr(out, "logits") else out).detach()


def word_tokenizer():
    """"w7" is token 7: a tokenizer that gives no tokens for whitespace."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<pad>": 0, **{f"w{i}": i for i in range(1, 50)}}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<pad>")


@pytest.fixture(scope="module")
def bpe():
    """A real byte-level BPE tokenizer, offline: the demo model's (SmolLM2, GPT-2's scheme, 49152 tokens)."""
    from transformers import AutoTokenizer

    from attrib.models.demo import demo_model_cache_dir

    if not (demo_model_cache_dir() / "tokenizer.json").is_file():
        attrib.load_demo_model(device="cpu")                  # converts the GGUF file once, offline
    return AutoTokenizer.from_pretrained(str(demo_model_cache_dir()), local_files_only=True)


def bpe_model(tokenizer) -> attrib.LanguageModel:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tokenizer), n_positions=64)
    return attrib.LanguageModel(GPT2LMHeadModel(config).double().eval(), tokenizer)


# -- 1 ----------------------------------------------------------------------------------------------------
def test_1_plot_positions_out_of_range_are_refused_not_wrapped(lm, leakcheck):
    check = leakcheck(lm.module)
    before = logits_of(lm)
    r = attrib.activation_patching(lm, IDS, CORRUPT)
    for position in (99, 6, -7):
        with pytest.raises(attrib.PlotError, match=rf"position={position} is outside the prompt of 6 tokens; pass a "
                                                   r"position from -6 to 5"):
            r.plot("heads", position=position)
    for position in (1.5, True, "1"):
        with pytest.raises(attrib.PlotError, match=r"position must be an int .*got"):
            r.plot("heads", position=position)
    with pytest.raises(attrib.PlotError, match=r"position=3 applies to per-head components only"):
        r.plot("resid", position=3)
    with pytest.raises(attrib.PlotError, match=r"positions=6 is outside the prompt of 2 tokens"):
        layer_position_figure(np.ones((2, 1)), ["a", "b"], positions=[6])
    first, last = r.plot("heads", position=-6), r.plot("heads", position=5)      # the ends still work
    assert first.axes[0].get_title().endswith("at position 0 ('3')")
    assert last.axes[0].get_title().endswith("at position 5 ('5')")
    sub = attrib.activation_patching(lm, IDS, CORRUPT, positions=[1])
    with pytest.raises(attrib.PlotError, match=r"position=2 \(prompt position 2\) was not patched; pass one of "
                                               r"the patched positions \[1\]"):
        sub.plot("heads", position=2)
    check.assert_clean()
    torch.testing.assert_close(logits_of(lm), before, rtol=0, atol=0)


def test_1_a_patching_result_refuses_positions_outside_its_tokens():
    with pytest.raises(attrib.InputError, match=r"positions=\[0, 99\] must hold prompt positions, ints from -2 to 1 "
                                                r"for the 2 tokens, got 99"):
        attrib.PatchingResult({"resid": torch.ones(1, 2)}, ["a", "b"], [0, 99], "activation_patching", "denoise",
                              1.0, 0.0, "x")
    r = attrib.PatchingResult({"resid": torch.ones(1, 2)}, ["a", "b"], [0, -1], "activation_patching", "denoise",
                              1.0, 0.0, "x")
    assert r.positions == [0, 1] and "@1 b" in r._repr_html_()


# -- 2 ----------------------------------------------------------------------------------------------------
METHODS = {
    "integrated_gradients": lambda m: attrib.integrated_gradients(m, IDS, target=3, baseline="zeros", n_steps=4),
    "saliency": lambda m: attrib.saliency(m, IDS, target=3),
    "smoothgrad": lambda m: attrib.saliency(m, IDS, target=3, smooth=3, seed=0),
    "attribution_patching": lambda m: attrib.attribution_patching(m, IDS, CORRUPT, target=3),
}


@pytest.mark.parametrize("name", METHODS)
def test_2_inference_mode_is_named(lm, leakcheck, name):
    check = leakcheck(lm.module)
    before = logits_of(lm)
    method = "saliency" if name == "smoothgrad" else name
    with torch.inference_mode():
        with pytest.raises(attrib.NoGradError, match=rf"attrib\.{method}\(\) was called under "
                                                     r"torch\.inference_mode\(\), where no gradients can be "
                                                     r"computed; call it outside that block \(torch\.no_grad\(\) is "
                                                     r"fine"):
            METHODS[name](lm)
    check.assert_clean()
    torch.testing.assert_close(logits_of(lm), before, rtol=0, atol=0)
    with torch.no_grad():                                       # what the message says is fine, is
        under = METHODS[name](lm)
    plain = METHODS[name](lm)
    got, want = under.scores, plain.scores
    for k in (got if isinstance(got, dict) else [None]):
        torch.testing.assert_close(got if k is None else got[k], want if k is None else want[k], rtol=0, atol=0)


def test_2_a_model_built_under_inference_mode_is_named(leakcheck):
    with torch.inference_mode():
        hf = tiny_hf("gpt2")
    model = attrib.LanguageModel(hf)
    check = leakcheck(hf)
    with torch.inference_mode():
        before = logits_of(model)
    with pytest.raises(attrib.NoGradError, match=r"attrib\.saliency\(\) needs gradients through the model, but its "
                                                 r"parameter transformer\.wte\.weight is an inference tensor"):
        attrib.saliency(model, IDS, target=3)
    check.assert_clean()
    with torch.inference_mode():
        torch.testing.assert_close(logits_of(model), before, rtol=0, atol=0)
    with torch.inference_mode():                       # inference tensors as *inputs* are fine
        x = torch.linspace(-1, 1, 3, dtype=torch.float64)[None]
    net = attrib.Model(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh()).double())
    torch.testing.assert_close(attrib.saliency(net, x, target=0).values,
                               attrib.saliency(net, x.clone(), target=0).values)


# -- 3 ----------------------------------------------------------------------------------------------------
def test_3_non_finite_inputs_and_baselines_are_named_before_the_quadrature(lm, leakcheck):
    hf = lm.module
    with torch.no_grad():
        hf.transformer.wte.weight[14, 0] = float("nan")      # the model's embedding of token 14
    check = leakcheck(hf)
    before = logits_of(lm, CORRUPT[:, :1])
    for call in (lambda: attrib.integrated_gradients(lm, IDS, target=3, baseline="zeros", n_steps=4),
                 lambda: attrib.saliency(lm, IDS, target=3),
                 lambda: attrib.attribution_patching(lm, IDS, CORRUPT, target=3)):
        with pytest.raises(attrib.InputError, match=r"the input embeddings contain NaN at positions \[1\] \(tokens "
                                                    r"\['14'\]\), so every attribution would be NaN.*fix or reload"):
            call()
    check.assert_clean()
    torch.testing.assert_close(logits_of(lm, CORRUPT[:, :1]), before, rtol=0, atol=0, equal_nan=True)

    embeds = torch.zeros(1, 6, 32, dtype=torch.float64)
    embeds[0, 2, 0] = float("nan")
    with pytest.raises(attrib.InputError, match=r"a dict of inputs needs 'input_ids', got keys \['inputs_embeds'\] "
                                                r"\(precomputed inputs_embeds are not taken.*pass the token ids"):
        attrib.integrated_gradients(lm, {"inputs_embeds": embeds}, target=3)
    net = attrib.Model(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh()).double())
    x = torch.tensor([[1.0, float("nan"), 0.5]], dtype=torch.float64)
    with pytest.raises(attrib.InputError, match=r"the inputs \(shape \(1, 3\)\) contain 1 NaN of 3 values, the first "
                                                r"at index \(0, 1\).*torch\.nan_to_num"):
        attrib.integrated_gradients(net, x, target=0)


def test_3_quadrature_advice_only_for_finite_inputs_and_never_the_rule_in_use(leakcheck):
    """|x − 0.5|^½ has an infinite gradient at 0.5, the middle Gauss–Legendre node of n = 3 (x: 0 → 1)."""
    net = attrib.Model(torch.nn.Identity())
    score = lambda out: (out - 0.5).abs().sqrt().sum(-1)        # noqa: E731
    x = torch.ones(1, 1, dtype=torch.float64)
    with pytest.raises(attrib.NonFiniteAttributionError) as info:
        attrib.integrated_gradients(net, x, target=score, baseline="zeros", n_steps=3)
    message = str(info.value)
    assert "with finite inputs (baseline='zeros', rule='gausslegendre')" in message
    assert "rule='gausslegendre' (never" not in message and "another n_steps" in message
    with pytest.raises(attrib.NonFiniteAttributionError, match=r"rule='riemann_middle'\); use rule='gausslegendre'"):
        attrib.integrated_gradients(net, x, target=score, baseline="zeros", n_steps=1, rule="riemann_middle")   # its node: 0.5
    assert torch.isfinite(attrib.integrated_gradients(net, x, target=score, baseline="zeros", n_steps=4).values).all()

    lm = attrib.LanguageModel(tiny_hf("gpt2"))
    with torch.no_grad():
        lm.module.transformer.ln_f.weight[0] = float("nan")   # finite embeddings, a NaN score
    check = leakcheck(lm.module)
    with pytest.raises(attrib.NonFiniteAttributionError, match=r"because the target score on the inputs has 1 NaN of 1 "
                                                               r"values.*check its weights"):
        attrib.integrated_gradients(lm, IDS, target=3, baseline="zeros", n_steps=2)
    check.assert_clean()


# -- 4 ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_middle"])
def test_4_n_steps_has_an_upper_bound(lm, leakcheck, rule):
    check = leakcheck(lm.module)
    before = logits_of(lm)
    with pytest.raises(attrib.MethodError, match=rf"n_steps=1000000 is more than the {MAX_STEPS} interpolation points"
                                                 rf".*pass n_steps <= {MAX_STEPS}"):
        attrib.integrated_gradients(lm, IDS, target=3, baseline="zeros", n_steps=10**6, rule=rule)
    for bad in (0, 2.5, "50", True):
        with pytest.raises(attrib.MethodError, match=r"n_steps must be a positive integer or 'auto', got"):
            attrib.integrated_gradients(lm, IDS, target=3, baseline="zeros", n_steps=bad, rule=rule)
    check.assert_clean()
    torch.testing.assert_close(logits_of(lm), before, rtol=0, atol=0)
    alphas, weights = quadrature(rule, MAX_STEPS)                 # the largest allowed is quick to set up
    assert len(alphas) == MAX_STEPS and abs(sum(weights) - 1) < 1e-9
    nodes, w = np.polynomial.legendre.leggauss(1500)              # the O(n^2) nodes past 1000 are numpy's
    a, b = quadrature("gausslegendre", 1500)
    np.testing.assert_allclose(a, 0.5 * (nodes + 1), rtol=0, atol=1e-14)
    np.testing.assert_allclose(b, 0.5 * w, rtol=0, atol=1e-13)
    same = attrib.integrated_gradients(lm, IDS, target=3, baseline="zeros", n_steps=np.int64(4), rule=rule)    # numpy ints are ints
    torch.testing.assert_close(same.values, attrib.integrated_gradients(lm, IDS, target=3, baseline="zeros", n_steps=4, rule=rule).values)


@pytest.mark.parametrize("bad", ["a", True, 0, 2.0])
def test_4_batch_size_and_positions_are_checked_in_every_method(lm, leakcheck, bad):
    check = leakcheck(lm.module)
    calls = {
        "integrated_gradients": lambda **k: attrib.integrated_gradients(lm, IDS, target=3, baseline="zeros", n_steps=2, **k),
        "saliency": lambda **k: attrib.saliency(lm, IDS, target=3, **k),
        "attribution_patching": lambda **k: attrib.attribution_patching(lm, IDS, CORRUPT, **k),
        "activation_patching": lambda **k: attrib.activation_patching(lm, IDS, CORRUPT, **k),
    }
    for call in calls.values():
        with pytest.raises(attrib.MethodError, match=rf"batch_size must be a positive int or None .*got "
                                                     rf"{bad!r}; pass e\.g\. batch_size=32"):
            call(batch_size=bad)
    for positions in (1.5, np.float64(1.5), np.array(1.5), torch.tensor(1.5)):
        for name in ("attribution_patching", "activation_patching"):
            with pytest.raises(attrib.MethodError, match=r"positions must be ints .*in positions="):
                calls[name](positions=positions)
    check.assert_clean()
    a = calls["activation_patching"](batch_size=np.int64(3), positions=np.array(-1))      # numpy ints work
    assert a.positions == [5] and a.info["batch_size"] == 3


def test_4_layer_ig_baselines_are_checked_against_the_inputs(lm, leakcheck):
    check = leakcheck(lm.module)
    before = logits_of(lm)
    with pytest.raises(attrib.MethodError, match=r"baseline='foo' is not 'auto', 'zeros', 'pad', a token id or a tensor .*"
                                                 r"with layer='resid_post\.0' the baseline is still given at the "
                                                 r"inputs"):
        attrib.integrated_gradients(lm, IDS, target=3, n_steps=2, layer="resid_post.0", baseline="foo")
    with pytest.raises(attrib.MethodError, match=r"baseline has shape \(3, 5\); expected the prompt embeddings' shape "
                                                 r"\(1, 6, 32\) \(or \(6, 32\)\) \(with layer='resid_post\.0'"):
        attrib.integrated_gradients(lm, IDS, target=3, n_steps=2, layer="resid_post.0", baseline=torch.zeros(3, 5))
    check.assert_clean()
    torch.testing.assert_close(logits_of(lm), before, rtol=0, atol=0)

    torch.manual_seed(0)
    net = attrib.Model(torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Flatten(),
                                           torch.nn.Linear(12, 2)).double())
    ids = torch.tensor([[1, 2, 3]])
    check = leakcheck(net.module)
    def ig(baseline):
        return attrib.integrated_gradients(net, ids, target=0, n_steps=4, layer="0", baseline=baseline)

    for baseline, match in (
            ("foo", r"baseline='foo' with layer='0': integer inputs take 'zeros', an id or a tensor of integer ids "
                    r"like the inputs, of their shape \(1, 3\)"),
            (torch.zeros(5, 5, dtype=torch.long), r"baseline=<tensor of shape \(5, 5\), torch\.int64> with layer='0': "
                                                  r"the baseline is an input, so it must be integer ids like the "
                                                  r"inputs, of their shape \(1, 3\)"),
            (torch.zeros(1, 3), r"baseline=<tensor of shape \(1, 3\), torch\.float32> with layer='0'.*integer ids"),
            (99, r"baseline=99 with layer='0' holds id 99, outside the model's embedding of 10 rows; the baseline "
                 r"is still an input, so pass ids from 0 to 9")):
        with pytest.raises(attrib.MethodError, match=match):
            ig(baseline)
    check.assert_clean()
    torch.testing.assert_close(ig(torch.zeros(1, 3, dtype=torch.long)).values, ig("zeros").values, rtol=0, atol=0)
    torch.testing.assert_close(ig(torch.zeros(3, dtype=torch.long)).values, ig(0).values, rtol=0, atol=0)


# -- 5 ----------------------------------------------------------------------------------------------------
def test_5_prompts_past_learned_positions_are_refused_rotary_ones_run(leakcheck):
    model = attrib.LanguageModel(tiny_hf("gpt2"), word_tokenizer())       # n_positions = 32
    check = leakcheck(model.module)
    before = logits_of(model)
    long_text, long_ids = " ".join(["w3"] * 40), torch.full((1, 40), 3)
    with pytest.raises(attrib.InputError, match=r"the prompt 'w3 w3 .*' takes 40 tokens, more than the model's context "
                                                r"of 32 positions \(the rows of its position embedding "
                                                r"transformer\.wpe\); shorten it to at most 32 tokens"):
        with model.trace(long_text):
            pass
    with pytest.raises(attrib.InputError, match=r"model\.trace\(\)'s input_ids of shape \(1, 40\) takes 40 "
                                                r"tokens, more than the model's context of 32"):
        with model.trace(input_ids=long_ids):
            pass
    with pytest.raises(attrib.InputError, match=r"model\.trace\(\)'s inputs_embeds of shape \(1, 40, 32\) "
                                                r"takes 40 tokens"):
        with model.trace(inputs_embeds=torch.zeros(1, 40, 32, dtype=torch.float64)):
            pass
    with pytest.raises(attrib.InputError, match=r"the longest of the 2 prompts takes 40 tokens"):
        with model.trace(["w1 w2", long_text]):
            pass
    for call in (lambda: attrib.integrated_gradients(model, long_text, target=3, baseline="zeros", n_steps=2),
                 lambda: attrib.saliency(model, long_ids, target=3),
                 lambda: attrib.attribution_patching(model, long_ids, long_ids, target=3)):
        with pytest.raises(attrib.InputError, match=r"the prompt takes 40 tokens, more than the model's context of 32"):
            call()
    with pytest.raises(attrib.InputError, match=r"the prompt and target take 33 tokens"):   # a 2-token target
        attrib.integrated_gradients(model, long_ids[:, :32], target="w3 w4", baseline="zeros", n_steps=2)
    check.assert_clean()
    torch.testing.assert_close(logits_of(model), before, rtol=0, atol=0)
    with model.trace(long_ids[:, :32]):                                     # exactly the context: runs
        out = model.output.logits.save()
    assert out.shape == (1, 32, 50)

    llama = attrib.LanguageModel(tiny_hf("llama"), word_tokenizer())       # rotary: max_position_embeddings = 32
    with llama.trace(long_text):
        longer = llama.output.logits.save()
    torch.testing.assert_close(longer, llama.module(long_ids).logits.detach())
    assert attrib.integrated_gradients(llama, long_text, target=3, baseline="zeros", n_steps=2).values.shape == (40, 32)


# -- 6 ----------------------------------------------------------------------------------------------------
def test_6_metric_shape_message_reports_the_callers_numbers(lm, leakcheck):
    check = leakcheck(lm.module)
    before = logits_of(lm)

    def two_columns(logits):
        return logits[:, -1, :2]

    with pytest.raises(attrib.TargetError, match=r"metric=two_columns must return one score per row of its logits, "
                                                 r"shape \(batch,\), but for logits of shape \(4, 6, 50\) \(your 1 "
                                                 r"input copied into 4 rows, one per interpolation step.*returned "
                                                 r"shape \(4, 2\)"):
        attrib.integrated_gradients(lm, IDS, metric=two_columns, baseline="zeros", n_steps=4)
    # the numbers of the pass that failed: the first, measured pass of 4 rows (attrib/methods/planning.py)
    with pytest.raises(attrib.TargetError, match=r"\(your 2 inputs copied into 4 rows.*returned shape \(\)"):
        attrib.integrated_gradients(lm, torch.cat([IDS, CORRUPT]), metric=lambda lg: lg.sum(), baseline="zeros", n_steps=4)
    with pytest.raises(attrib.TargetError, match=r"logits of shape \(1, 6, 50\) \(your 1 input, one row each\) it "
                                                 r"returned shape \(1, 2\)"):
        attrib.saliency(lm, IDS, metric=two_columns)
    check.assert_clean()
    torch.testing.assert_close(logits_of(lm), before, rtol=0, atol=0)


def test_6_nan_baseline_message_is_a_summary(lm, leakcheck):
    check = leakcheck(lm.module)
    before = logits_of(lm)
    baseline = torch.zeros(6, 32, dtype=torch.float64)
    baseline[1, 1] = baseline[4, 0] = float("nan")
    with pytest.raises(attrib.MethodError) as info:
        attrib.integrated_gradients(lm, IDS, target=3, n_steps=2, baseline=baseline)
    message = str(info.value)
    assert message == ("baseline (a tensor of shape (6, 32)) contains 2 NaN of 192 values, the first at index (1, 1), "
                       "which makes every attribution NaN; pass a finite baseline.")
    check.assert_clean()
    torch.testing.assert_close(logits_of(lm), before, rtol=0, atol=0)


def test_6_whitespace_prompts(bpe, leakcheck):
    words = attrib.LanguageModel(tiny_hf("gpt2"), word_tokenizer())
    check = leakcheck(words.module)
    with pytest.raises(attrib.InputError, match=r"the prompt \('   '\) is whitespace-only and tokenizes to no tokens"):
        attrib.saliency(words, "   ", target=3)
    with pytest.raises(attrib.InputError, match=r"prompt 1 of the list \(' \\n '\) is whitespace-only"):
        attrib.saliency(words, ["w3", " \n "], target=3)
    with pytest.raises(attrib.InputError, match=r"the prompt is empty \(''\)"):
        attrib.saliency(words, "", target=3)
    check.assert_clean()
    model = bpe_model(bpe)                                     # byte-level BPE has tokens for whitespace
    a = attrib.saliency(model, "  \n ", target=3)
    assert len(a.tokens) >= 1 and "".join(a.tokens) == "  \n " and torch.isfinite(a.scores).all()


def test_6_token_labels_join_back_into_the_prompt(bpe):
    model = bpe_model(bpe)
    singles = [bpe.decode([i]) for i in bpe(PROMPT)["input_ids"]]
    assert any("\ufffd" in s for s in singles)                # the case: pieces of the emoji decode to '�'
    a = attrib.saliency(model, PROMPT, target=" Paris")
    assert "".join(a.tokens) == PROMPT and "\ufffd" not in "".join(a.tokens)
    assert "😀" in a.tokens and " à" in a.tokens and "é" in "".join(a.tokens[:3])
    clean, corrupt = "I 😀 Zürich", "I 😡 Zürich"                  # 6 tokens each
    r = attrib.activation_patching(model, clean, corrupt, components="resid")
    assert "".join(r.tokens) == clean and r.tokens[2] == "😀"
    assert a.plot() is not None and "😀" in a._repr_html_()


# -- 7 ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["integrated_gradients", "saliency"])
def test_7_image_attributions_have_top_plot_html_and_files(method, tmp_path):
    torch.manual_seed(0)
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 64, 5)).double().eval()
    image = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    kwargs = {"n_steps": 8} if method == "integrated_gradients" else {}
    a = getattr(attrib, method)(attrib.Model(cnn), image, target=1, **kwargs)
    assert a.scores.shape == (3, 8, 8)
    top = a.top(4)
    flat = a.scores.abs().flatten().argsort(descending=True)[:4]
    for (label, value), j in zip(top, flat.tolist()):
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(j), (3, 8, 8)))
        assert label == str(index) and value == float(a.scores[index])
    fig = a.plot()
    assert [ax.get_title() for ax in fig.axes[:3]] == ["[0, :, :]", "[1, :, :]", "[2, :, :]"]
    assert fig.axes[0].images[0].get_array().shape == (8, 8, 4)
    page = a._repr_html_()
    assert page.count("<table") == 3 and "[2, :, :]" in page
    assert "top:" in str(a) and a.to_dict()["scores"][0][0][0] == float(a.scores[0, 0, 0])
    a.save(tmp_path / "a.safetensors")
    back = attrib.load(tmp_path / "a.safetensors")
    assert back.top(4) == top
    torch.testing.assert_close(back.values, a.values, rtol=0, atol=0)

