"""activation_patching(compile=True) (attrib/methods/compiled_patching.py): the compiled patched forwards equal the
traced ones on every layout's components, other prompts of the same shape replay the same graphs, what is not
compiled is refused, and the model is left as it was (also after an error).

Expected values come from the same call with compile=False (the traced path, itself checked against plain hooks in
tests/methods/test_patching.py). Tiny float32 models; one model per layout, shared: what one test compiles, the
next finds warm.
"""

from __future__ import annotations

import pytest
import torch
import transformers

import attrib
from attrib.errors import MethodError
from attrib.methods.compiled import CompileOptions, compiled_buckets

from ..conftest import WordTokenizer, hook_counts
from .test_compiled import fail_compiling, graphs, smollm2

ALL = ("resid", "attn", "mlp", "heads", "q", "k", "v")


def assert_same(got, ref, tol: float = 1e-5) -> None:
    """Every pair's scores within ``tol`` of the largest of the scores and the metrics (a score is a difference
    of two metrics: float32 rounds it to the metrics' size, 3e-8 where q's patches move the metric 1e-4)."""
    assert set(got.scores) == set(ref.scores)
    metrics = max(float(torch.as_tensor(m).abs().max()) for m in (ref.metric_clean, ref.metric_corrupted))
    for c in ref.scores:
        a, b = (r.scores[c] if r.per_pair is None else r.per_pair[c] for r in (got, ref))
        assert float(b.nan_to_num().abs().max()) > 0, c
        assert torch.equal(a.isnan(), b.isnan()), c
        assert float((a - b).nan_to_num().abs().max()) <= tol * max(float(b.nan_to_num().abs().max()), metrics), c
    for a, b in ((got.metric_clean, ref.metric_clean), (got.metric_corrupted, ref.metric_corrupted)):
        assert torch.allclose(torch.as_tensor(a), torch.as_tensor(b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "neox"])
def test_compiled_equals_traced_on_every_component(models, arch, leakcheck):
    """Pairs of two lengths (left padding, a mask, shifted positions), every component with heads, q, k and v
    (grouped keys and values on Llama, a fused projection on GPT-2 and GPT-NeoX), both directions."""
    model = models[arch]
    leakcheck(model.module)
    hooks = hook_counts(model.module)
    clean, corrupted = ["w3 w14 w15 w9 w8", "w4 w6 w7"], ["w3 w20 w15 w9 w8", "w4 w11 w7"]
    for direction in ("denoise", "noise"):
        kw = dict(target="w7", contrast="w9", components=ALL, direction=direction, batch_size=64)
        got = attrib.activation_patching(model, clean, corrupted, compile=True, **kw)
        assert_same(got, attrib.activation_patching(model, clean, corrupted, **kw))
    assert any(b[-1] == "patching" for b in compiled_buckets(model.module))
    assert hook_counts(model.module) == hooks


def test_other_prompts_of_the_same_shape_replay_the_graphs(models):
    model = models["llama"]
    kw = dict(target="w7", components=("resid", "heads"), batch_size=64)
    attrib.activation_patching(model, "w3 w14 w15 w9", "w3 w20 w15 w9", compile=True, **kw)
    before = graphs()
    got = attrib.activation_patching(model, "w5 w1 w2 w8", "w5 w1 w30 w8", compile=True, **kw)
    assert graphs() == before
    assert_same(got, attrib.activation_patching(model, "w5 w1 w2 w8", "w5 w1 w30 w8", **kw))


def test_planned_passes_measure_eagerly_then_compile(models, monkeypatch):
    """batch_size=None: the planner's measured passes run traced; once it has settled, a call compiles."""
    from attrib.methods import compiled_patching
    model = models["gpt2"]
    kw = dict(target="w7", components=("resid", "attn"))
    ref = attrib.activation_patching(model, "w3 w14 w15", "w3 w20 w15", reuse_prefix=False, **kw)   # its plan
    ran = []
    original = compiled_patching._PatchPasses._pass
    monkeypatch.setattr(compiled_patching._PatchPasses, "_pass", lambda self, chunk, planned: ran.append(len(chunk))
                        or original(self, chunk, planned))
    monkeypatch.setattr(compiled_patching._PatchPasses, "_planned", lambda self, rows: 1000)     # settled
    got = attrib.activation_patching(model, "w3 w14 w15", "w3 w20 w15", compile=True, **kw)
    assert ran == [12]                                  # 2 components × 2 layers × 3 positions, one pass
    assert_same(got, ref)
    ran.clear()
    monkeypatch.setattr(compiled_patching._PatchPasses, "_planned", lambda self, rows: None)     # measuring
    assert_same(attrib.activation_patching(model, "w3 w14 w15", "w3 w20 w15", compile=True, **kw), ref)
    assert ran == []


@pytest.mark.parametrize("kw, match", [
    (dict(components=("q_rot",)), r"components \['q_rot'\] are read through attention probes"),
    (dict(compile="yes"), r"compile='yes' must be True, False"),
    (dict(compile=CompileOptions(liger=True)), r"CompileOptions\(liger=True\) applies to integrated gradients'"),
    (dict(compile=CompileOptions(attention="eager", tokens=8)),
     r"CompileOptions\(attention='eager', tokens=8\) applies to integrated gradients'"),
])
def test_refused(models, kw, match):
    with pytest.raises(MethodError, match=match):
        attrib.activation_patching(models["llama"], "w3 w14 w15", "w3 w20 w15", target="w7",
                                   **{"compile": True, **kw})


def test_a_plain_model_is_refused():
    from .test_patching import CLEAN, CORRUPTED, LINEAR_MAP, linear_model
    with pytest.raises(MethodError, match="compile=True runs activation patching's forwards .* not an "
                                          "attrib.LanguageModel"):
        attrib.activation_patching(linear_model(), CLEAN, CORRUPTED, target=1, component_map=LINEAR_MAP, compile=True)


def test_a_failed_compile_is_one_error_and_leaves_no_hooks(models, monkeypatch):
    fail_compiling(monkeypatch)
    hf = models["neox"].module
    hooks = hook_counts(hf)
    with pytest.raises(MethodError, match=r"torch.compile .* failed on GPTNeoXForCausalLM \(ValueError: no kernels"):
        # (a length no other test compiles: dynamo would find their graphs, and not call this backend)
        attrib.activation_patching(models["neox"], "w3 w14 w15 w16 w17 w18 w19", "w3 w20 w15 w16 w17 w18 w19",
                                   target="w7", batch_size=8, compile=True)
    assert hook_counts(hf) == hooks
    assert not any("_compiled_call_impl" in m.__dict__ for m in hf.modules())


@pytest.mark.gpu
def test_gpu_float32_smollm2_shape():
    """On CUDA, 30 layers, float32: compiled equals traced to 1e-3 of the metrics' scale (bf16's rounding alone
    moves a score by several percent of the largest: bench/patching.py --cases compiled reports it)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = smollm2("cuda", torch.float32)
    torch.manual_seed(3)
    clean = torch.randint(1, 49152, (1, 10))
    corrupted = clean.clone()
    corrupted[0, 2] = 777
    kw = dict(target=42, contrast=43, components=("resid", "attn", "mlp", "heads"))
    kw_full = dict(kw, reuse_prefix=False)      # every position, as the compiled passes (the prefix has its own plan)
    ref = attrib.activation_patching(model, clean, corrupted, **kw_full)         # settles the plan
    ref = attrib.activation_patching(model, clean, corrupted, **kw_full)
    got = attrib.activation_patching(model, clean, corrupted, compile=True, **kw)
    assert any(b[-1] == "patching" for b in compiled_buckets(model.module))
    assert_same(got, ref, tol=1e-3)


def test_passes_stay_within_the_batch_size_and_buckets_list_with_ig(models):
    """A compiled pass pads its rows to a bucket but never past batch_size (5 rows ran as 8 before); the buckets
    of IG and of patching on one model list together (sorting mixed their last fields: TypeError); info says so."""
    model = models["gpt2"]
    prompt, other = "w3 w14 w15 w9 w8 w2", "w3 w20 w15 w9 w8 w2"
    kw = dict(target="w7", components=("resid", "attn"), batch_size=5)      # 2 × 2 × 6 = 24 rows: 5 × 4 + 4
    got = attrib.activation_patching(model, prompt, other, compile=True, **kw)
    assert_same(got, attrib.activation_patching(model, prompt, other, **kw))
    assert got.info["compile"] is True
    rows = [b[2] for b in compiled_buckets(model.module) if b[-1] == "patching" and b[3] == 6]
    assert rows and max(rows) <= 5
    attrib.integrated_gradients(model, prompt, target="w7", n_steps=3, batch_size=5, compile=True)
    kinds = {b[-1] for b in compiled_buckets(model.module)}
    assert "patching" in kinds and kinds & {True, False}


def test_one_graph_however_many_layers(monkeypatch):
    """Each layer's hooks differ only in their key number, a tensor input: the layers share one graph."""
    from attrib.methods import compiled_run
    made: dict[tuple, object] = {}

    def eager_compile(scope, mode):            # dynamo's guards and graphs, without inductor's kernels
        if (scope, mode) not in made:
            fn = compiled_run._call_layer if scope == "layers" else compiled_run._call_model
            made[(scope, mode)] = torch.compile(fn, backend="eager", dynamic=False)
        return made[(scope, mode)]

    monkeypatch.setattr(compiled_run, "_compile", eager_compile)
    for layers in (2, 6):
        torch.manual_seed(0)
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            num_hidden_layers=layers, hidden_size=32, intermediate_size=64, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=50, max_position_embeddings=32)).eval()
        model = attrib.LanguageModel(hf, WordTokenizer())
        before = graphs()
        kw = dict(target="w7", components=("resid", "attn", "mlp", "heads", "q", "k"), batch_size=4096)
        got = attrib.activation_patching(model, "w3 w14 w15 w9", "w3 w20 w15 w9", compile=True, **kw)
        assert graphs() - before == 1, layers
        assert_same(got, attrib.activation_patching(model, "w3 w14 w15 w9", "w3 w20 w15 w9", **kw))
