"""Attention probes (q_rot, k_rot, pattern): the probed model computes eager attention, the pattern equals
Hugging Face's output_attentions, rotated queries and keys reproduce it, edits take effect, both patchings of
the pattern equal hand-written references, and remove() gives the model back as it was (float64)."""

from __future__ import annotations

import contextlib
import sys

import pytest
import torch

import attrib
from attrib.methods.patching import activation_patching, attribution_patching
from attrib.models import probes
from attrib.models.sites import site
from tests.conftest import layers_of, tiny_hf

ARCHS = ["gpt2", "llama", "neox"]
IDS = torch.tensor([[3, 14, 15, 9, 26, 5]])
CLEAN, CORRUPTED = IDS, torch.tensor([[3, 14, 40, 9, 26, 7]])


def eager_copy(arch: str) -> torch.nn.Module:
    hf = tiny_hf(arch)
    hf.set_attn_implementation("eager")
    return hf


def metric_of(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1, 7] - logits[:, -1, 8]


@pytest.mark.parametrize("arch", ARCHS)
def test_probed_model_is_eager_attention_and_pattern_is_output_attentions(arch, leakcheck):
    hf = tiny_hf(arch)
    model = attrib.LanguageModel(hf)
    sdpa = hf(IDS).logits.detach()
    where = [site(model, f"pattern.{i}") for i in range(2)]
    assert probes.installed(hf)
    check = leakcheck(hf)
    with torch.no_grad(), model.trace(IDS):
        patterns = [w.read(model).save() for w in where]
        out = model.output.logits.save()
    check.assert_clean()
    ref = eager_copy(arch)
    with torch.no_grad():
        want = ref(IDS, output_attentions=True)
    torch.testing.assert_close(out, want.logits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, sdpa, rtol=1e-6, atol=1e-6)       # SDPA differs by rounding only
    for got, attn in zip(patterns, want.attentions):                  # (batch, heads, q, k) there
        torch.testing.assert_close(got, attn.transpose(1, 2), rtol=1e-12, atol=1e-12)
    probes.remove(model)
    assert not probes.installed(hf) and not any("attrib_probes" in n for n, _ in hf.named_modules())
    assert torch.equal(hf(IDS).logits.detach(), sdpa)                  # back to SDPA, bit for bit


@pytest.mark.parametrize("arch", ARCHS)
def test_rotated_query_and_key_give_the_pattern(arch):
    hf = tiny_hf(arch)
    model = attrib.LanguageModel(hf)
    where = [site(model, n) for n in ["q.1", "q_rot.1", "k_rot.1", "pattern.1"]]     # probes before the trace
    with torch.no_grad(), model.trace(IDS):
        q, q_rot, k_rot, pattern = [w.read(model).save() for w in where]
    assert q_rot.shape == q.shape == (1, 6, 4, 8)
    k_all = k_rot.repeat_interleave(q_rot.shape[2] // k_rot.shape[2], dim=2)
    scores = torch.einsum("bqhd,bkhd->bqhk", q_rot, k_all) / 8 ** 0.5
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    want = torch.softmax(scores.masked_fill(~causal[None, :, None, :], float("-inf")), -1)
    # Llama's and GPT-NeoX's eager attention take the softmax in float32, even for a float64 model
    torch.testing.assert_close(pattern, want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(q_rot[:, 0], q[:, 0])                   # position 0 is not rotated
    rotated = not torch.allclose(q_rot[:, 1:], q[:, 1:])
    assert rotated == (arch != "gpt2")                                 # GPT-2 has no rotary embedding
    probes.remove(model)


def test_left_padded_rows_stay_finite_and_equal_alone():
    model = attrib.LanguageModel(tiny_hf("llama"))
    where = site(model, "pattern.1")
    enc = model.pad([[3, 14, 15, 9], [26, 5]])
    with torch.no_grad(), model.trace(**model.call_kwargs(enc["input_ids"], enc["attention_mask"])):
        pattern = where.read(model).save()
        both = model.output.logits.save()
    with torch.no_grad(), model.trace(torch.tensor([[26, 5]])):
        alone = model.output.logits.save()
    assert torch.isfinite(both).all() and torch.isfinite(pattern).all()
    torch.testing.assert_close(both[1, 2:], alone[0], rtol=1e-10, atol=1e-12)
    assert float(pattern[1, 2:, :, :2].abs().max()) == 0                # no weight on the padding
    probes.remove(model)


@contextlib.contextmanager
def hand_patched_weights(hf, layer: int, head: int, position: int, row: torch.Tensor):
    """The family's eager attention, with head ``head``'s weights at query ``position`` of layer ``layer`` set to
    ``row``: written against transformers' own function, not attrib's probe."""
    attn = layers_of(hf)[layer]
    attn = getattr(attn, "self_attn", None) or getattr(attn, "attn", None) or attn.attention
    modeling = sys.modules[type(attn).__module__]
    original = modeling.eager_attention_forward

    def patched(module, query, key, value, attention_mask, **kwargs):
        out, weights = original(module, query, key, value, attention_mask, **kwargs)
        if module is not attn:
            return out, weights
        weights = weights.clone()
        weights[:, head, position] = row
        values = value.repeat_interleave(weights.shape[1] // value.shape[1], dim=1)
        return torch.matmul(weights, values).transpose(1, 2).contiguous(), weights

    modeling.eager_attention_forward = patched
    try:
        yield
    finally:
        modeling.eager_attention_forward = original


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_patching_the_pattern_equals_hand_written_references(arch, leakcheck):
    hf = tiny_hf(arch)
    model = attrib.LanguageModel(hf)
    check = leakcheck(hf)
    kw = dict(target=7, contrast=8, components=("pattern", "q_rot", "k_rot"))
    exact = activation_patching(model, CLEAN, CORRUPTED, **kw)
    approx = attribution_patching(model, CLEAN, CORRUPTED, **kw)
    check.assert_clean()
    assert exact.scores["pattern"].shape == (2, 4, 6)
    assert exact.scores["k_rot"].shape == ((2, 2, 6) if arch == "llama" else (2, 4, 6))
    ref = eager_copy(arch)
    with torch.no_grad():
        clean = ref(CLEAN, output_attentions=True).attentions
        base = metric_of(ref(CORRUPTED).logits)
    corrupt = ref(CORRUPTED, output_attentions=True)
    grads = torch.autograd.grad(metric_of(corrupt.logits).sum(), corrupt.attentions)
    for layer in range(2):
        # attribution: (pattern_clean − pattern_corrupted) · ∂metric/∂pattern, summed over the keys
        want = ((clean[layer] - corrupt.attentions[layer].detach()) * grads[layer]).sum(-1)[0]   # (heads, q)
        torch.testing.assert_close(approx.scores["pattern"][layer], want, rtol=1e-9, atol=1e-12)
        for head in (0, 3):
            for position in (2, 5):
                with torch.no_grad(), hand_patched_weights(ref, layer, head, position, clean[layer][:, head, position]):
                    got = metric_of(ref(CORRUPTED).logits) - base
                assert abs(float(exact.scores["pattern"][layer, head, position]) - float(got)) < 1e-10
    assert float(exact.scores["pattern"].abs().max()) > 1e-6
    probes.remove(model)


def test_ig_at_the_pattern_and_layouts_without_probes():
    model = attrib.LanguageModel(tiny_hf("gpt2"))
    a = attrib.integrated_gradients(model, IDS, target=7, layer="pattern.1", baseline="zeros", n_steps=32)
    assert a.values.shape == (6, 4, 6)                                  # positions, heads, keys
    assert abs(float(a.delta)) < 1e-3 * abs(a.info["f_x"] - a.info["f_baseline"]) + 1e-9
    probes.remove(model)
    plain = attrib.Model(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(attrib.LayoutError):
        site(plain, "pattern.0")


def test_probes_inside_a_running_trace_are_refused_cleanly(leakcheck):
    hf = tiny_hf("llama")
    model = attrib.LanguageModel(hf)
    check = leakcheck(hf)
    with pytest.raises(attrib.OutOfOrderError, match=r"must happen before a trace starts, not inside one; ask for the "
                                                    r"site, or call attrib\.models\.probes\.install\(model\)"):
        with torch.no_grad(), model.trace(IDS):
            site(model, "pattern.0").read(model)
    check.assert_clean()
    assert not probes.installed(hf)
    probes.install(model)                        # the public way, then a trace reads it
    with torch.no_grad(), model.trace(IDS):
        p = site(model, "pattern.0").read(model).save()
    assert p.shape == (1, 6, 4, 6)
    probes.remove(model)


def test_every_family_of_the_registry():
    """Probes on every layout: the probed model equals the family's eager attention, the pattern's rows sum to 1
    and equal output_attentions where the family returns them."""
    from tests.models.test_layouts import FAMILIES, trace_args

    for name in sorted(FAMILIES):
        torch.manual_seed(0)
        hf = FAMILIES[name]().double().eval()
        torch.manual_seed(0)
        ref = FAMILIES[name]().double().eval()
        ref.set_attn_implementation("eager")
        model = attrib.LanguageModel(hf)
        where = site(model, "pattern.1")
        args, kwargs = trace_args(name)
        with torch.no_grad(), model.trace(*args, **kwargs):
            pattern = where.read(model).save()
            out = model.output.logits.save()
        with torch.no_grad():
            want = ref(*args, **kwargs, output_attentions=True)
        torch.testing.assert_close(out, want.logits, rtol=1e-6, atol=1e-7, msg=name)
        torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)), msg=name)
        attentions = want.encoder_attentions if name == "t5" else want.attentions
        torch.testing.assert_close(pattern, attentions[1].transpose(1, 2), rtol=1e-6, atol=1e-7, msg=name)
        probes.remove(model)
        assert not probes.installed(hf), name


def test_two_models_sharing_a_config_are_probed_each_on_its_own():
    a = tiny_hf("llama")
    b = type(a)(a.config).double().eval()            # the same config object
    ma, mb = attrib.LanguageModel(a), attrib.LanguageModel(b)
    site(ma, "pattern.0")
    assert probes.installed(a) and not probes.installed(b)
    where = site(mb, "pattern.0")                      # installs b's own probes
    with torch.no_grad(), mb.trace(IDS):
        p = where.read(mb).save()
    assert p.shape == (1, 6, 4, 6) and probes.installed(b)
    probes.remove(ma)
    probes.remove(mb)
