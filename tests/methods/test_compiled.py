"""compile=True (attrib/methods/compiled.py): the compiled passes equal the traced ones, shapes in one bucket do not
recompile, what they do not run is refused, and the model is left as it was.

CPU tests run tiny float32 models; their expected values come from the same call with compile=False. The
``gpu`` tests (``pytest -m gpu``) compare bf16 on a SmolLM2-shape model.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import attrib
from attrib.errors import MethodError
from attrib.methods import planning
from attrib.methods.compiled import CompileOptions, compiled_buckets, row_bucket, row_passes, token_bucket

from ..conftest import WordTokenizer, hook_counts, tiny_hf

PROMPTS = ["w3 w14 w15", "w3 w9 w26 w5 w7 w8", "w4 w5 w6 w7 w8 w9 w10 w11 w12"]     # 3, 6 and 9 tokens
OTHERS = ["w5 w6 w7 w8", "w1 w4", "w9 w8 w7 w6 w5 w4 w3 w2 w1 w10 w11"]            # other lengths, same bucket


def graphs() -> int:
    """torch's own count of the graphs dynamo compiled in this process."""
    return counters["stats"]["unique_graphs"]


def assert_close(got, ref, tol: float = 1e-5, summed: bool = False) -> None:
    """Every result's values (and delta) within ``tol`` of the eager one's, relative to its largest value;
    ``summed``: the delta (a sum over every value) relative to the sum of the values' magnitudes (bf16)."""
    got, ref = (x if isinstance(x, list) else [x] for x in (got, ref))
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        assert a.tokens == b.tokens and a.values.shape == b.values.shape
        scale = float(b.values.abs().max())
        assert scale > 0
        assert float((a.values - b.values).abs().max()) <= tol * scale
        assert float((a.scores - b.scores).abs().max()) <= tol * float(b.scores.abs().max())
        if b.delta is not None:
            assert abs(a.info["f_x"] - b.info["f_x"]) <= tol * max(1.0, abs(b.info["f_x"]))
            scale = max(1.0, abs(b.info["f_x"] - b.info["f_baseline"]),
                        float(b.values.double().abs().sum()) if summed else 0.0)
            assert abs(float(a.delta) - float(b.delta)) <= tol * scale


# -- buckets --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows,limit", [(1, 1), (3, 8), (52, 4000), (2894, 4000), (100, 100), (24, 16), (7, 3),
                                        (8680, 6468), (1000, 999)])
def test_row_passes_cover_the_rows_within_the_limit(rows, limit):
    passes = row_passes(rows, limit)
    assert sum(real for real, _ in passes) == rows
    assert len(passes) == -(-rows // limit)                                 # as few passes as the limit allows
    assert len({computed for _, computed in passes}) == 1                   # one shape
    for real, computed in passes:
        assert 0 < real <= computed <= limit
        assert computed == limit or computed == row_bucket(max(r for r, _ in passes))


def test_row_buckets():
    assert [row_bucket(n) for n in (1, 3, 5, 8, 9, 17, 33, 52, 100, 4340, 4353)] == \
        [1, 4, 8, 8, 9, 17, 34, 52, 100, 4352, 4608]
    assert all(n <= row_bucket(n) < n * 17 / 16 + 1 for n in range(9, 5000))   # less than a sixteenth of padding
    assert len({row_bucket(n) for n in range(1025, 2049)}) == 16                  # sixteen shapes per doubling


def test_token_buckets():
    assert [token_bucket(n) for n in (1, 16, 17, 64)] == [16, 16, 32, 64]
    assert token_bucket(33, 32) == 64


# -- equal to the traced passes -------------------------------------------------------------------------------
def test_ig_llama_targets_contrast_prob(models):
    kw = dict(target=["w7", "w8", "w9"], contrast="w11", score="prob", n_steps=6, baseline="zeros", batch_size=4)
    ref = attrib.integrated_gradients(models["llama"], PROMPTS, **kw)
    got = attrib.integrated_gradients(models["llama"], PROMPTS, compile=True, **kw)
    assert_close(got, ref)
    assert got[0].info["compile"] is True and "compile" not in ref[0].info
    assert ("layers", "default", 4, 16, True) in compiled_buckets(models["llama"].module)


@pytest.mark.parametrize("arch,kw", [
    ("gpt2", dict(target="w7 w9", score="logprob")),           # a two-token target: two logits kept
    ("neox", dict(target=["w7", "w30"])),            # one target per prompt
])
def test_ig_other_layouts(models, arch, kw):
    kw = dict(kw, n_steps=6, batch_size=16)                      # 2 prompts × 8 nodes: one pass of 16 rows
    ref = attrib.integrated_gradients(models[arch], PROMPTS[1:], **kw)
    got = attrib.integrated_gradients(models[arch], PROMPTS[1:], compile=True, **kw)
    assert_close(got, ref)
    assert compiled_buckets(models[arch].module)


def test_no_recompile_for_other_lengths_in_the_bucket(models):
    model = models["llama"]
    kw = dict(target="w7", n_steps=6, batch_size=4)
    attrib.integrated_gradients(model, PROMPTS, compile=True, **kw)          # warm: passes of 4 rows, 16 tokens
    before = graphs()
    got = attrib.integrated_gradients(model, OTHERS, compile=True, **kw)
    assert graphs() == before
    assert_close(got, attrib.integrated_gradients(model, OTHERS, **kw))
    torch.compile(lambda t: t + 1)(torch.ones(2))                           # the counter counts a new graph
    assert graphs() == before + 1


def test_saliency_and_smoothgrad(models):
    model = models["llama"]
    for kw in (dict(mode="grad_x_input"), dict(mode="grad", contrast="w2"), dict(smooth=4, seed=3),
               dict(smooth=4, seed=3, smooth_type="vargrad")):
        kw = dict(kw, target="w7", batch_size=4)      # 3 rows: one pass padded to 4; 12 rows: three passes of 4
        ref = attrib.saliency(model, PROMPTS, **kw)
        got = attrib.saliency(model, PROMPTS, compile=True, **kw)
        assert_close(got, ref)
        assert got[0].info["compile"] is True


def test_planned_rows(models):
    """batch_size=None: the planner's measured passes run eagerly, its settled size caps the compiled passes."""
    model = models["llama"]
    hf = model.module
    planning._plans.pop(hf, None)
    before, buckets = graphs(), set(compiled_buckets(hf))
    kw = dict(target="w7", n_steps=6)
    got = attrib.integrated_gradients(model, PROMPTS[2], compile=True, **kw)   # 8 rows: probes of 4 and 4
    assert graphs() == before and set(compiled_buckets(hf)) == buckets
    assert_close(got, attrib.integrated_gradients(model, PROMPTS[2], **kw))
    # a settled plan of 8 rows per pass (9 tokens, bucket 16): compiled passes of 8 · 9 // 16 -> 4 rows
    key = ("ig", "embed", 1, (32,), torch.float32)         # the length is left out: kept as Cost.tokens
    planning._plans[hf] = {key: planning.Cost(lines={"cpu": (0.0, 1.0)}, tokens=9, best=8 * 9)}
    got = attrib.integrated_gradients(model, PROMPTS[2], compile=True, **kw)
    assert_close(got, attrib.integrated_gradients(model, PROMPTS[2], batch_size=8, **kw))
    new = set(compiled_buckets(hf)) - buckets
    assert new <= {("layers", "default", 4, 16, True)} and ("layers", "default", 4, 16, True) in compiled_buckets(hf)
    planning._plans.pop(hf, None)


def test_a_call_that_measured_runs_a_short_rest_eagerly():
    """In a call whose first passes were the planner's measurements, the rows left when it settles run eagerly if
    they are fewer than a planned pass (their shape is that call's alone), compiled otherwise — all of them, also
    when they run as several passes smaller than planned; a call that measured nothing compiles. Decided once."""
    from attrib.methods.compiled_run import Rest
    for answers, rows, total, expected in (
            ((None, None, 1000, 1000), (4, 8, 4, 4), 20, [True, True, True, True]),     # 8 left < 1000: eager
            ((None, None, 12, 12, 12), (4, 8, 10, 10, 10), 42, [True, True, False, False, False]),  # 30 >= 12
            ((1000, 1000), (8, 8), 16, [False, False]),                                  # measured nothing
    ):
        rest = Rest(total)
        seen = []
        for planned, n in zip(answers, rows):
            seen.append(rest.eager(planned))
            rest.ran(n)
        assert seen == expected, (answers, seen)


def test_the_rest_rule_in_a_compiled_call(models, monkeypatch):
    """The same through integrated_gradients(compile=True): a short rest after measured passes compiles nothing."""
    from attrib.methods import compiled, compiled_run
    model = models["llama"]
    hf = model.module
    kw = dict(target="w7", n_steps=14, batch_size=None)             # 16 rows
    ref = attrib.integrated_gradients(model, PROMPTS[2], **kw)
    for answers, compiles in (((None, 1000), False), ((1000,), True)):
        seq = list(answers)
        monkeypatch.setattr(compiled._Passes, "_planned", lambda self, rows: seq.pop(0) if len(seq) > 1 else seq[0])
        before = set(compiled_buckets(hf))
        compiled_run._warm.pop(hf, None)
        got = attrib.integrated_gradients(model, PROMPTS[2], compile=True, **kw)
        assert bool(compiled_buckets(hf)) == compiles, answers
        assert_close(got, ref)
        compiled_run._warm.setdefault(hf, set()).update(before)


def test_whole_model_scope(models):
    model = models["gpt2"]
    kw = dict(target="w7", n_steps=6, batch_size=16)
    ref = attrib.integrated_gradients(model, PROMPTS[1:], **kw)
    got = attrib.integrated_gradients(model, PROMPTS[1:], compile=CompileOptions(scope="model"), **kw)
    assert_close(got, ref)
    assert ("model", "default", 16, 16, True) in compiled_buckets(model.module)
    uncompiled = attrib.integrated_gradients(model, PROMPTS[1:], compile=CompileOptions(scope="none"), **kw)
    assert_close(uncompiled, ref)


# -- refused --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call,match", [
    (lambda m: attrib.integrated_gradients(m, PROMPTS[0], target="w7", compile=True), "n_steps='auto'"),
    (lambda m: attrib.integrated_gradients(m, PROMPTS[0], target="w7", n_steps=4, layer="resid_post.0",
                                           compile=True), "layer="),
    (lambda m: attrib.integrated_gradients(m, PROMPTS[0], target="w7 w8", n_steps=4, per_token=True,
                                           compile=True), "per_token"),
    (lambda m: attrib.integrated_gradients(m, PROMPTS[0], n_steps=4, metric=lambda logits: logits[:, -1, 3],
                                           compile=True), "metric="),
    (lambda m: attrib.saliency(m, PROMPTS[0], metric=lambda logits: logits[:, -1, 3], compile=True), "metric="),
    (lambda m: attrib.saliency(attrib.Model(torch.nn.Linear(3, 2)), torch.ones(1, 3), target=0, compile=True),
     "not an attrib.LanguageModel"),
    (lambda m: attrib.saliency(m, PROMPTS[0], target="w7", compile="yes"), "must be True, False"),
    (lambda m: attrib.saliency(m, PROMPTS[0], target="w7", compile=CompileOptions(mode="fast")), "mode='fast'"),
    (lambda m: attrib.saliency(m, PROMPTS[0], target="w7", compile=CompileOptions(scope="heads")), "scope='heads'"),
    (lambda m: attrib.saliency(m, PROMPTS[0], target="w7", compile=CompileOptions(tokens=0)), "tokens=0"),
    (lambda m: attrib.saliency(m, PROMPTS[0], target="w7", compile=CompileOptions(attention="flash")),
     "attention='flash'"),
])
def test_refused(models, call, match):
    with pytest.raises(MethodError, match=match) as info:
        call(models["llama"])
    assert str(info.value).endswith(".")


@pytest.mark.parametrize("attention,prompt,seen", [("auto", PROMPTS[2], "eager"), ("model", PROMPTS[2], "sdpa"),
                                                    ("auto", " ".join(f"w{i % 30}" for i in range(40)), "sdpa"),
                                                    ("eager", " ".join(f"w{i % 30}" for i in range(40)), "eager")])
def test_short_compiled_passes_run_the_plain_attention(models, attention, prompt, seen):
    """attention="auto": the plain ("eager") attention for buckets of at most 32 tokens (9 -> 16), the model's own
    SDPA above (40 -> 48); the model's setting is back afterwards, also after an error in the pass."""
    model = models["llama"]
    hf = model.module
    read: list[str] = []
    attn = hf.model.layers[0].self_attn
    handle = attn.register_forward_pre_hook(lambda m, args, kwargs: read.append(m.config._attn_implementation),
                                            with_kwargs=True)
    try:
        kw = dict(target="w7", n_steps=4, batch_size=6)
        got = attrib.integrated_gradients(model, prompt, compile=CompileOptions(attention=attention), **kw)
        assert hf.config._attn_implementation == "sdpa"
        assert read and set(read) == {seen}
        read.clear()
        assert_close(got, attrib.integrated_gradients(model, prompt, **kw))
        assert set(read) == {"sdpa"}                                 # the traced passes: as the model is set

        def fail(m, args, kwargs):
            raise RuntimeError("a failing pass")

        failing = hf.lm_head.register_forward_pre_hook(fail, with_kwargs=True)     # outside the compiled layers
        try:
            with pytest.raises(RuntimeError, match="a failing pass"):
                attrib.integrated_gradients(model, prompt, compile=CompileOptions(attention=attention), **kw)
        finally:
            failing.remove()
        assert hf.config._attn_implementation == "sdpa" and attn.config._attn_implementation == "sdpa"
    finally:
        handle.remove()


def test_a_float64_model_keeps_its_own_attention_by_default():
    """The plain attention's float32 softmax turns a float64 mask into -inf, so a padding row that sees no key is
    NaN: attention="auto" keeps the model's own in float64 (3 tokens, padded to 16), and the result is eager's."""
    model = attrib.LanguageModel(tiny_hf("llama", dtype=torch.float64), WordTokenizer())
    kw = dict(target="w7", n_steps=4, batch_size=4)
    got = attrib.integrated_gradients(model, PROMPTS[0], compile=True, **kw)
    ref = attrib.integrated_gradients(model, PROMPTS[0], **kw)
    assert bool(torch.isfinite(got.values).all())
    assert_close(got, ref, tol=1e-6)


def test_liger_refused_without_the_package(models):
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is not None:
        pytest.skip("liger-kernel is installed here")
    with pytest.raises(MethodError, match="liger-kernel"):
        attrib.saliency(models["llama"], PROMPTS[0], target="w7", batch_size=1, compile=CompileOptions(liger=True))


def fail_compiling(monkeypatch) -> None:
    """Every compile from here on fails in its backend (``ValueError: no kernels today``)."""
    from attrib.methods import compiled_run

    def backend(graph, inputs):
        raise ValueError("no kernels today")

    monkeypatch.setattr(compiled_run, "_compile", lambda scope, mode: torch.compile(compiled_run._call_layer,
                                                                                     backend=backend))


def test_a_failed_compile_is_one_error(models, monkeypatch):
    fail_compiling(monkeypatch)
    hf = models["llama"].module
    flags = [p.requires_grad for p in hf.parameters()]
    with pytest.raises(MethodError, match=r"torch.compile .* failed on LlamaForCausalLM \(ValueError: no kernels today"):
        attrib.saliency(models["llama"], PROMPTS[0], target="w7", batch_size=1, compile=True)
    assert [p.requires_grad for p in hf.parameters()] == flags
    assert not any("_compiled_call_impl" in m.__dict__ for m in hf.modules())


# -- the model afterwards -------------------------------------------------------------------------------------
def test_model_is_left_clean(models, leakcheck):
    model = models["neox"]
    hf = model.module
    leakcheck(hf)                                     # hooks, torch patches, greenlets, open traces: checked at the end
    frozen = next(hf.parameters())
    frozen.requires_grad_(False)                      # a mixed set of flags comes back as it was
    flags = [p.requires_grad for p in hf.parameters()]
    hooks = hook_counts(hf)
    ids = torch.tensor([[3, 9, 26, 5]])
    with torch.no_grad():
        logits = hf(ids).logits

    def attributes() -> list[str]:
        return [name for m in hf.modules() for name in ("_compiled_call_impl", "forward") if name in m.__dict__]

    try:
        kw = dict(target="w7", n_steps=6, batch_size=16)
        attrib.integrated_gradients(model, PROMPTS[1:], compile=True, **kw)
        assert [p.requires_grad for p in hf.parameters()] == flags and hook_counts(hf) == hooks
        assert attributes() == []
        # a pass that fails inside the model's forward, with the compiled layers installed
        handle = hf.gpt_neox.final_layer_norm.register_forward_hook(lambda *_: (_ for _ in ()).throw(KeyError("x")))
        try:
            with pytest.raises(KeyError):
                attrib.integrated_gradients(model, PROMPTS[1:], compile=True, **kw)
        finally:
            handle.remove()
        assert [p.requires_grad for p in hf.parameters()] == flags and hook_counts(hf) == hooks
        assert attributes() == []
        with torch.no_grad():
            assert torch.equal(hf(ids).logits, logits)
        with model.trace(ids):                        # traces still work: nothing compiled is left on the model
            out = model.output.logits.save()
        assert torch.equal(out, logits)
    finally:
        frozen.requires_grad_(True)


# -- GPU: bf16 on a SmolLM2-shape model (pytest -m gpu) ---------------------------------------------------------
def smollm2(device: str, dtype: torch.dtype) -> attrib.LanguageModel:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                                   num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
                                   max_position_embeddings=2048)
    with torch.device(device):
        hf = transformers.LlamaForCausalLM(cfg)
    return attrib.LanguageModel(hf.to(dtype).eval())


@pytest.fixture(scope="module")
def gpu_model() -> attrib.LanguageModel:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    return smollm2("cuda", torch.bfloat16)


@pytest.mark.gpu
def test_gpu_bf16_smollm2_shape(gpu_model):
    torch.manual_seed(1)
    # every pass padded (none of 32 tokens): a pass without padding has no mask, another graph (docs/methods.md)
    ids = [torch.randint(1, 49152, (n,)).tolist() for n in (30, 20, 27, 31)]
    kw = dict(target=42, n_steps=16, baseline="zeros", batch_size=72)    # one pass of 4 × 18 rows
    ref = attrib.integrated_gradients(gpu_model, ids, **kw)
    got = attrib.integrated_gradients(gpu_model, ids, compile=True, **kw)
    # bf16 through 30 random layers: the 20-token prompt (12 padding tokens compiled, 11 eager) differed by 3.9%
    # of its largest score on an H100; the float32 test below holds the same code to 1e-3. The delta sums ~10,000
    # bf16 values: compared relative to the sum of their magnitudes (the whole model as one graph, H200: 0.036)
    assert_close(got, ref, tol=5e-2, summed=True)
    assert ("model", "reduce-overhead", 72, 32, True) in compiled_buckets(gpu_model.module)   # CUDA graphs: one graph
    before = graphs()
    other = [torch.randint(1, 49152, (n,)).tolist() for n in (17, 31, 24, 30)]      # the same bucket of 32 tokens
    got = attrib.integrated_gradients(gpu_model, other, compile=True, **kw)
    assert graphs() == before
    assert_close(got, attrib.integrated_gradients(gpu_model, other, **kw), tol=3e-2, summed=True)
    for kw in (dict(target=42, batch_size=4), dict(target=42, smooth=4, seed=0, batch_size=16)):
        assert_close(attrib.saliency(gpu_model, ids, compile=True, **kw), attrib.saliency(gpu_model, ids, **kw),
                     tol=3e-2)


@pytest.mark.gpu
def test_gpu_float32_equals_the_traced_passes():
    """The same prompts in float32 on the GPU: compiled (CUDA graphs, padded buckets) equals eager to 1e-3."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = smollm2("cuda", torch.float32)
    torch.manual_seed(1)
    ids = [torch.randint(1, 49152, (n,)).tolist() for n in (30, 20, 27, 31)]
    kw = dict(target=42, n_steps=16, baseline="zeros", batch_size=72)
    assert_close(attrib.integrated_gradients(model, ids, compile=True, **kw),
                 attrib.integrated_gradients(model, ids, **kw), tol=1e-3)


@pytest.mark.gpu
def test_gpu_planned_single_prompt(gpu_model):
    """batch_size=None on CUDA: eager probes, then compiled passes (CUDA graphs); one prompt of 64 tokens, 50 steps."""
    torch.manual_seed(2)
    ids = torch.randint(1, 49152, (64,))
    kw = dict(target=42, n_steps=50, baseline="zeros")
    ref = attrib.integrated_gradients(gpu_model, ids, **kw)
    for _ in range(3):
        assert_close(attrib.integrated_gradients(gpu_model, ids, compile=True, **kw), ref, tol=3e-2)
    # 52 rows, no padding; CUDA graphs, so the whole model as one graph (scope "auto")
    assert ("model", "reduce-overhead", 52, 64, False) in compiled_buckets(gpu_model.module)


def test_padded_rows_of_a_roberta_style_model_equal_eager():
    """The compiled passes' position ids of left-padded rows start at padding_idx + 1 on a RoBERTa-style position
    table, as the eager passes' (from 0 they moved the attributions by 14–57% of the largest)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.RobertaConfig(is_decoder=True, num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                        num_attention_heads=4, vocab_size=60, max_position_embeddings=70,
                                        pad_token_id=0)
    lm = attrib.LanguageModel(transformers.RobertaForCausalLM(config).double().eval())
    prompts, kw = [[3, 14, 15, 9], [12, 13]], dict(target=[7, 9], n_steps=4)
    eager = attrib.integrated_gradients(lm, prompts, **kw)
    passes = attrib.integrated_gradients(lm, prompts, compile=CompileOptions(scope="none"), batch_size=8, **kw)
    for e, g in zip(eager, passes):
        assert e.values.abs().max() > 1e-3
        torch.testing.assert_close(g.values, e.values, rtol=1e-10, atol=1e-12)
