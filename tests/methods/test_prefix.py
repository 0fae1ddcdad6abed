"""Prefix reuse in activation patching: a chunk of patched rows runs from its first patched position on, on the
receiving run's cached keys and values. Equal to the full forwards in float64 on every causal family of the layout
registry (left-padded pairs of three lengths, every component, chunks that start at every position), shorter
forwards seen by a hook, and off where it would not be exact (a metric callable, a sliding window shorter than the
prompt) or asked off."""

from __future__ import annotations

import pytest
import torch
import transformers

import attrib
from attrib.methods.patching import activation_patching
from attrib.methods.prefix import cache_argument
from tests.models.test_layouts import FAMILIES, SMALL

CAUSAL = sorted(set(FAMILIES) - {"bert", "t5"})
# three pairs of lengths 6, 4 and 5 (left-padded), each differing at its own positions
CLEAN = [[3, 14, 15, 9, 26, 5], [12, 13, 26, 5], [4, 15, 9, 2, 5]]
CORRUPTED = [[3, 14, 40, 9, 26, 7], [12, 41, 26, 5], [8, 15, 9, 21, 5]]
TARGETS, CONTRASTS = [[7], [9], [11]], [[8], [10], [12]]


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.equal(torch.isnan(a), torch.isnan(b))
    assert torch.allclose(a.nan_to_num(), b.nan_to_num(), atol=tol, rtol=tol), (a - b).abs().nan_to_num().max()


def _model(name: str) -> attrib.LanguageModel:
    torch.manual_seed(0)
    return attrib.LanguageModel(FAMILIES[name]().double().eval())


def _seen_widths(model: attrib.LanguageModel) -> tuple[list[int], object]:
    """A hook on the input embedding that records each forward's number of positions."""
    widths: list[int] = []
    embed = model.module.get_input_embeddings()
    handle = embed.register_forward_hook(lambda m, args, out: widths.append(args[0].shape[-1]))
    return widths, handle


@pytest.mark.parametrize("name", CAUSAL)
def test_equals_full_forwards_on_every_family(name, leakcheck):
    model = _model(name)
    check = leakcheck(model.module)
    comps = ("resid", "attn", "mlp", "heads", "q", "k", "v")
    for direction in ("denoise", "noise"):
        kw = dict(target=TARGETS, contrast=CONTRASTS, components=comps, direction=direction, batch_size=5)
        fast = activation_patching(model, CLEAN, CORRUPTED, **kw)
        full = activation_patching(model, CLEAN, CORRUPTED, reuse_prefix=False, **kw)
        assert fast.info["prefix_reuse"] is True and full.info["prefix_reuse"] is False
        for c in comps:
            close(fast.per_pair[c], full.per_pair[c])
        for key in ("metric_clean", "metric_corrupted"):      # (gemma2's eager float64 attention gives NaN for
            close(*(torch.tensor([p[key] for p in r.pairs]) for r in (fast, full)))   # left-padded rows, both ways)
        assert any(abs(v) > 1e-6 for v in fast.per_pair["resid"].nan_to_num().flatten().tolist())
    check.assert_clean()


def test_forwards_start_at_the_first_patched_position():
    """Rows ordered by position: chunks of the last position run one position; the full path runs all six."""
    model = _model("llama")
    widths, handle = _seen_widths(model)
    try:
        activation_patching(model, CLEAN, CORRUPTED, target=TARGETS, components="heads", positions=-1,
                            batch_size=8)
        fast = list(widths)
        widths.clear()
        activation_patching(model, CLEAN, CORRUPTED, target=TARGETS, components="heads", positions=-1,
                            reuse_prefix=False, batch_size=8)
        full = list(widths)
        widths.clear()
        activation_patching(model, CLEAN, CORRUPTED, target=TARGETS, components="resid", batch_size=6)
        chunks = list(widths)
    finally:
        handle.remove()
    # both prompts' embeddings, the source run, the receiving run (which fills the cache), then the patched rows:
    # one position each
    assert fast[:4] == [6] * 4 and fast[4:] and set(fast[4:]) == {1}
    assert set(full) == {6} and len(full) == len(fast) == 4 + 3      # 3 pairs × 2 layers × 4 heads, 8 a pass
    # every position of three pairs × 2 layers, in chunks of 6 rows sorted by position: later chunks are shorter
    patched = chunks[4:]
    assert patched == sorted(patched, reverse=True) and patched[0] == 6 and patched[-1] == 1


def test_multi_token_target_keeps_every_scored_position():
    """A two-token target is scored at the last two positions: a chunk of the prompt's last position still runs
    them both, and the scores equal the full forwards."""
    model = _model("llama")
    clean, corrupted = CLEAN[0], CORRUPTED[0]
    kw = dict(target=[7, 9], components=("resid", "heads"), positions=-1)
    fast = activation_patching(model, torch.tensor([clean]), torch.tensor([corrupted]), **kw)
    full = activation_patching(model, torch.tensor([clean]), torch.tensor([corrupted]), reuse_prefix=False, **kw)
    assert fast.info["prefix_reuse"]
    for c in ("resid", "heads"):
        close(fast.scores[c], full.scores[c])
    assert fast.scores["resid"].abs().max() > 1e-6


def test_metric_callable_runs_every_position():
    """A metric may read any position's logits, so it gets them all (no reuse), and it gets the same scores."""
    model = _model("gpt2")
    seen = []

    def metric(logits: torch.Tensor) -> torch.Tensor:
        seen.append(logits.shape[1])
        return logits[:, 2, 7] - logits[:, -1, 8]

    result = activation_patching(model, torch.tensor([CLEAN[0]]), torch.tensor([CORRUPTED[0]]), metric=metric,
                                 components="resid")
    assert result.info["prefix_reuse"] is False and set(seen) == {6}
    # the patch at position 0 of the last layer moves logits[:, 2] only through position 0's own value: nonzero
    assert result.scores["resid"][:, :3].abs().max() > 1e-6


BIDIRECTIONAL = {
    "gemma": lambda: transformers.GemmaConfig(**{**SMALL, "num_hidden_layers": 3}, head_dim=8,
                                              use_bidirectional_attention=True),
    "gemma3": lambda: transformers.Gemma3TextConfig(**{**SMALL, "num_hidden_layers": 3}, head_dim=8,
                                                    use_bidirectional_attention=True),
    "roberta": lambda: transformers.RobertaConfig(num_hidden_layers=3, hidden_size=32, intermediate_size=64,
                                                  num_attention_heads=4, vocab_size=60, max_position_embeddings=70,
                                                  pad_token_id=0),        # a ForCausalLM head, is_decoder=False
}


@pytest.mark.parametrize("name", sorted(BIDIRECTIONAL))
def test_models_that_attend_both_ways_run_every_position(name):
    """A patch changes earlier positions there (checked on the model), so the prefix is not reused, and the scores
    are those of full forwards."""
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(BIDIRECTIONAL[name]()).double().eval()
    first = [hf(torch.tensor([[3, 14, 15, ids]])).logits[0, 0] for ids in (9, 40)]
    assert (first[0] - first[1]).abs().max() > 1e-6            # position 0 sees position 3
    model = attrib.LanguageModel(hf)
    kw = dict(target=TARGETS, contrast=CONTRASTS, components=("resid",), batch_size=5)
    got = activation_patching(model, CLEAN, CORRUPTED, **kw)
    full = activation_patching(model, CLEAN, CORRUPTED, reuse_prefix=False, **kw)
    assert got.info["prefix_reuse"] is False
    close(got.per_pair["resid"], full.per_pair["resid"])


def test_remote_code_models_run_every_position():
    """A model class outside transformers (remote code) may take a cache of its own form: no cache is passed."""
    torch.manual_seed(0)
    base = FAMILIES["llama"]().double().eval()
    remote = type("RemoteLlama", (type(base),), {"__module__": "transformers_modules.someone.model"})
    base.__class__ = remote
    got = activation_patching(attrib.LanguageModel(base), CLEAN, CORRUPTED, target=TARGETS, components="resid")
    assert got.info["prefix_reuse"] is False


def test_every_pass_holds_a_cache_so_the_first_measures_the_most():
    """Passes that start at 0 fill an empty cache: the planner's first (measured) passes hold every position's keys
    and values, as the later passes' caches do."""
    model = _model("llama")
    seen = []
    handle = model.module.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((kwargs["input_ids"].shape[1], kwargs.get(cache_argument(m)))),
        with_kwargs=True)
    try:
        activation_patching(model, CLEAN, CORRUPTED, target=TARGETS, components="resid", batch_size=6)
    finally:
        handle.remove()
    patched = seen[2:]                                         # after the source and the receiving run
    assert patched[0][0] == 6 and patched[-1][0] == 1
    assert all(cache is not None for _, cache in patched)


def test_short_sliding_window_turns_it_off():
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(transformers.MistralConfig(**SMALL, sliding_window=3))
    model = attrib.LanguageModel(hf.double().eval())
    result = activation_patching(model, CLEAN, CORRUPTED, target=TARGETS, components="resid")
    assert result.info["prefix_reuse"] is False
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(transformers.MistralConfig(**SMALL, sliding_window=16))
    model = attrib.LanguageModel(hf.double().eval())
    assert activation_patching(model, CLEAN, CORRUPTED, target=TARGETS, components="resid").info["prefix_reuse"]


@pytest.mark.parametrize("name", CAUSAL)
def test_rotated_queries_keys_and_patterns(name, leakcheck):
    """Sites read through attention probes (queries and keys after rotary embeddings, the pattern) see the suffix's
    queries against every key, and patch them to the same scores."""
    model = _model(name)
    comps = ("q_rot", "k_rot", "pattern")
    kw = dict(target=TARGETS, contrast=CONTRASTS, components=comps, batch_size=7)
    fast = activation_patching(model, CLEAN, CORRUPTED, **kw)
    full = activation_patching(model, CLEAN, CORRUPTED, reuse_prefix=False, **kw)
    assert fast.info["prefix_reuse"]
    for c in comps:
        close(fast.per_pair[c], full.per_pair[c])
        assert fast.per_pair[c].nan_to_num().abs().max() > 1e-8


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["llama", "gpt2", "qwen3"])
def test_equals_full_forwards_on_cuda(name):
    """The same on a GPU in float32 (the cache's gather and the shorter forwards run as CUDA kernels)."""
    torch.manual_seed(0)
    model = attrib.LanguageModel(FAMILIES[name]().float().eval().cuda())
    kw = dict(target=TARGETS, contrast=CONTRASTS, components=("resid", "heads", "k"), batch_size=9)
    fast = activation_patching(model, CLEAN, CORRUPTED, **kw)
    full = activation_patching(model, CLEAN, CORRUPTED, reuse_prefix=False, **kw)
    assert fast.info["prefix_reuse"]
    for c in ("resid", "heads", "k"):
        close(fast.per_pair[c], full.per_pair[c], tol=1e-5)
