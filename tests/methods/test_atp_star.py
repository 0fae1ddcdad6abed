"""AtP*'s fixes: the QK fix equals (exact patched pattern − pattern) · ∂metric/∂pattern computed by hand against
transformers' own eager attention; GradDrop equals the mean of hand-dropped estimates, and |AtP| for nodes of the
last layer; refusals (float64)."""

from __future__ import annotations

import contextlib
import sys

import pytest
import torch

import attrib
from attrib.methods.patching import attribution_patching
from attrib.models import probes
from tests.conftest import layers_of, tiny_hf

CLEAN = torch.tensor([[3, 14, 15, 9, 26, 5]])
CORRUPTED = torch.tensor([[3, 14, 40, 9, 26, 7]])


def attention_of(hf, layer):
    block = layers_of(hf)[layer]
    return getattr(block, "self_attn", None) or getattr(block, "attn", None) or block.attention


@contextlib.contextmanager
def eager_hook(hf, fn):
    """transformers' own eager attention with ``fn(module, query, key)`` → (query, key) applied first."""
    attn = attention_of(hf, 0)
    modeling = sys.modules[type(attn).__module__]
    original = modeling.eager_attention_forward

    def patched(module, query, key, value, attention_mask, **kwargs):
        query, key = fn(module, query, key)
        return original(module, query, key, value, attention_mask, **kwargs)

    modeling.eager_attention_forward = patched
    try:
        yield
    finally:
        modeling.eager_attention_forward = original


def metric_of(logits):
    return logits[:, -1, 7] - logits[:, -1, 8]


def captured_qk(hf, ids):
    seen = {}

    def grab(module, q, k):
        seen[module] = (q.detach().clone(), k.detach().clone())
        return q, k

    with torch.no_grad(), eager_hook(hf, grab):
        hf(ids)
    return seen


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_qk_fix_equals_the_exact_pattern_change_times_its_gradient(arch, leakcheck):
    hf = tiny_hf(arch)
    model = attrib.LanguageModel(hf)
    check = leakcheck(hf)
    fixed = attribution_patching(model, CLEAN, CORRUPTED, target=7, contrast=8, components=("q_rot", "k_rot"),
                                 qk_fix=True)
    plain = attribution_patching(model, CLEAN, CORRUPTED, target=7, contrast=8, components=("q_rot", "k_rot"))
    check.assert_clean()
    probes.remove(model)
    ref = tiny_hf(arch)
    ref.set_attn_implementation("eager")
    clean_qk = captured_qk(ref, CLEAN)
    out = ref(CORRUPTED, output_attentions=True)
    grads = torch.autograd.grad(metric_of(out.logits).sum(), out.attentions)
    for layer, head, q_at, k_at in ((0, 1, 5, 2), (1, 2, 5, 4)):     # the last layer: only the last query matters
        module = attention_of(ref, layer)
        kv = head // (4 // module.config.num_key_value_heads) if arch == "llama" else head

        def new_pattern(fn):
            with torch.no_grad(), eager_hook(ref, fn):
                return ref(CORRUPTED, output_attentions=True).attentions[layer]

        def swap_query(m, q, k):
            if m is module:
                q = q.clone()
                q[:, head, q_at] = clean_qk[m][0][:, head, q_at]
            return q, k

        def swap_key(m, q, k):
            if m is module:
                k = k.clone()
                k[:, kv, k_at] = clean_qk[m][1][:, kv, k_at]
            return q, k

        pattern = out.attentions[layer].detach()
        want_q = float(((new_pattern(swap_query) - pattern) * grads[layer]).sum())
        want_k = float(((new_pattern(swap_key) - pattern) * grads[layer]).sum())
        got_q = float(fixed.scores["q_rot"][layer, head, q_at])
        got_k = float(fixed.scores["k_rot"][layer, kv, k_at])
        # Llama's eager softmax runs in float32, even for a float64 model: 1e-5
        assert got_q == pytest.approx(want_q, rel=1e-5, abs=1e-9) and abs(want_q) > 1e-9, (layer, got_q, want_q)
        assert got_k == pytest.approx(want_k, rel=1e-5, abs=1e-9) and abs(want_k) > 1e-9, (layer, got_k, want_k)
    assert not torch.allclose(fixed.scores["q_rot"], plain.scores["q_rot"])      # the fix changes the estimate
    assert fixed.info["qk_fix"] is True


def test_grad_drop_is_the_mean_of_hand_dropped_estimates():
    hf = tiny_hf("gpt2")
    model = attrib.LanguageModel(hf)
    star = attribution_patching(model, CLEAN, CORRUPTED, target=7, contrast=8, components=("heads",), grad_drop=True)
    plain = attribution_patching(model, CLEAN, CORRUPTED, target=7, contrast=8, components=("heads",))
    blocks = hf.transformer.h
    seen = {}
    hooks = [b.attn.c_proj.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(("z", i), a[0]))
             for i, b in enumerate(blocks)]
    with torch.no_grad():
        hf(CLEAN)
    clean_z = {k: v.clone() for k, v in seen.items()}
    total = torch.zeros_like(star.scores["heads"])
    for drop in range(len(blocks)):
        zero = [blocks[drop].attn.register_forward_hook(lambda m, a, o: (o[0].register_hook(torch.zeros_like), o)[1]),
                blocks[drop].mlp.register_forward_hook(lambda m, a, o: (o.register_hook(torch.zeros_like), o)[1])]
        try:
            logits = hf(CORRUPTED).logits
            zs = [seen[("z", i)] for i in range(len(blocks))]
            gs = torch.autograd.grad(metric_of(logits).sum(), zs)
        finally:
            for h in zero:
                h.remove()
        for i, (z, g) in enumerate(zip(zs, gs)):
            est = ((clean_z[("z", i)] - z.detach()) * g)[0].view(6, 4, 8).sum(-1).T     # (heads, positions)
            total[i] += est.abs()
    for h in hooks:
        h.remove()
    torch.testing.assert_close(star.scores["heads"], total / (len(blocks) - 1), rtol=1e-9, atol=1e-12)
    # the last layer's heads: dropping an earlier layer changes nothing, dropping their own layer zeroes them
    torch.testing.assert_close(star.scores["heads"][-1], plain.scores["heads"][-1].abs(), rtol=1e-9, atol=1e-12)


def test_qk_fix_needs_query_or_key_components():
    model = attrib.LanguageModel(tiny_hf("gpt2"))
    with pytest.raises(attrib.MethodError, match="qk_fix=True fixes the estimates of queries and keys: add 'q_rot'"):
        attribution_patching(model, CLEAN, CORRUPTED, target=7, components="heads", qk_fix=True)


def test_key_fix_is_exact_where_the_pattern_saturates():
    """A query that puts all its weight on one key (A ≈ 1), whose score then drops by 30: the softmax is exact in
    log space (a naive 1 − A + A·e^δ cancels to 0 there)."""
    from attrib.methods.atp_star import key_fix

    q = torch.tensor([[[[1.0]], [[1.0]]]], dtype=torch.float32)                 # (rows, positions, heads, d)
    k = torch.tensor([[[[0.0]], [[20.0]]]], dtype=torch.float32)                # key 1 leads by 20
    k_new = torch.tensor([[[[0.0]], [[-10.0]]]], dtype=torch.float32)           # … then trails by 10
    valid = torch.tensor([[[True, False], [True, True]]])
    pattern = torch.softmax(torch.tensor([[[[0.0, float("-inf")]], [[0.0, 20.0]]]]), -1)
    grad = torch.tensor([[[[0.0, 0.0]], [[1.0, 0.0]]]])                         # ∂m/∂A at (query 1, key 0)
    got = key_fix(q, k, k_new, pattern, grad, valid, 1.0)[0, 0, 1]
    want = torch.softmax(torch.tensor([0.0, -10.0], dtype=torch.float64), -1)[0] - torch.softmax(
        torch.tensor([0.0, 20.0], dtype=torch.float64), -1)[0]
    assert torch.isfinite(got) and float(got) == pytest.approx(float(want), rel=1e-5)


def test_qk_fix_refuses_softcapped_scores():
    from tests.models.test_layouts import FAMILIES

    torch.manual_seed(0)
    model = attrib.LanguageModel(FAMILIES["gemma2"]().double().eval())
    with pytest.raises(attrib.MethodError, match="caps its scores"):
        attribution_patching(model, CLEAN, CORRUPTED, target=7, components="q_rot", qk_fix=True)
    probes.remove(model)
