"""Patching each head's query, key and value (components "q", "k", "v"): both patchings equal plain forward
hooks on the projection modules, sliced by hand per layout (separate projections, GPT-2's concatenated c_attn,
GPT-NeoX's per-head fused query_key_value), float64, grouped-query attention included."""

from __future__ import annotations

import pytest
import torch

import attrib
from attrib.methods.patching import activation_patching, attribution_patching
from tests.conftest import layers_of, tiny_hf

CLEAN = torch.tensor([[3, 14, 15, 9, 26, 5]])
CORRUPTED = torch.tensor([[3, 14, 40, 9, 26, 7]])
TARGET, CONTRAST = 7, 8
H, D = 4, 32
DH = D // H


def projection(arch: str, layer: torch.nn.Module, comp: str) -> tuple[torch.nn.Module, callable]:
    """The module whose output holds ``comp`` and a function (head) -> the slice of its last dimension."""
    i = "qkv".index(comp)
    if arch == "llama":                         # 4 query heads, 2 key/value heads, separate projections
        mod = getattr(layer.self_attn, f"{comp}_proj")
        return mod, lambda h: slice(h * DH, (h + 1) * DH)
    if arch == "gpt2":                          # c_attn: q | k | v, each heads × head dim
        return layer.attn.c_attn, lambda h: slice(i * D + h * DH, i * D + (h + 1) * DH)
    return layer.attention.query_key_value, lambda h: slice(h * 3 * DH + i * DH, h * 3 * DH + (i + 1) * DH)


def metric_of(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1, TARGET] - logits[:, -1, CONTRAST]


def reference_activation(arch: str, hf, comp: str) -> torch.Tensor:
    """Denoise: the corrupted run with one head's slice at one position taken from the clean run."""
    layers = layers_of(hf)
    n_heads = 2 if arch == "llama" and comp in "kv" else H
    clean_out = {}
    handles = [projection(arch, layer, comp)[0].register_forward_hook(
        lambda m, a, o, i=i: clean_out.__setitem__(i, o.detach().clone())) for i, layer in enumerate(layers)]
    with torch.no_grad():
        hf(CLEAN)
    for h in handles:
        h.remove()
    with torch.no_grad():
        base = metric_of(hf(CORRUPTED).logits)
    out = torch.zeros(len(layers), n_heads, CLEAN.shape[1], dtype=torch.float64)
    for li, layer in enumerate(layers):
        mod, part = projection(arch, layer, comp)
        for head in range(n_heads):
            for p in range(CLEAN.shape[1]):
                def patch(m, a, o, li=li, head=head, p=p):
                    o = o.clone()
                    o[:, p, part(head)] = clean_out[li][:, p, part(head)]
                    return o
                handle = mod.register_forward_hook(patch)
                try:
                    with torch.no_grad():
                        out[li, head, p] = metric_of(hf(CORRUPTED).logits) - base
                finally:
                    handle.remove()
    return out


def reference_attribution(arch: str, hf, comp: str) -> torch.Tensor:
    """(a_clean − a_corrupted) · ∂metric/∂a at the corrupted run, summed over each head's slice."""
    layers = layers_of(hf)
    n_heads = 2 if arch == "llama" and comp in "kv" else H
    seen: dict[int, torch.Tensor] = {}

    def keep(i):
        def hook(m, a, o):
            seen[i] = o
            return o
        return hook

    mods = [projection(arch, layer, comp)[0] for layer in layers]
    handles = [m.register_forward_hook(keep(i)) for i, m in enumerate(mods)]
    try:
        with torch.no_grad():
            hf(CLEAN)
        clean = {i: v.clone() for i, v in seen.items()}
        m = metric_of(hf(CORRUPTED).logits)
        grads = torch.autograd.grad(m.sum(), [seen[i] for i in range(len(layers))])
    finally:
        for h in handles:
            h.remove()
    out = torch.zeros(len(layers), n_heads, CLEAN.shape[1], dtype=torch.float64)
    for li in range(len(layers)):
        part = projection(arch, layers[li], comp)[1]
        for head in range(n_heads):
            prod = (clean[li] - seen[li].detach()) * grads[li]
            out[li, head] = prod[0, :, part(head)].sum(-1)
    return out


@pytest.mark.parametrize("arch", ["gpt2", "llama", "neox"])
def test_q_k_v_equal_plain_hooks(arch, leakcheck):
    hf = tiny_hf(arch)
    model = attrib.LanguageModel(hf)
    check = leakcheck(hf)
    kw = dict(target=TARGET, contrast=CONTRAST, components=("q", "k", "v"))
    exact = activation_patching(model, CLEAN, CORRUPTED, **kw)
    approx = attribution_patching(model, CLEAN, CORRUPTED, **kw)
    check.assert_clean()
    for comp in "qkv":
        want_exact = reference_activation(arch, hf, comp)
        want_approx = reference_attribution(arch, hf, comp)
        assert exact.scores[comp].shape == want_exact.shape
        torch.testing.assert_close(exact.scores[comp], want_exact, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(approx.scores[comp], want_approx, rtol=1e-9, atol=1e-11)
        assert float(want_exact.abs().max()) > 1e-6              # something was patched (tiny random model)
    if arch == "llama":
        assert exact.scores["q"].shape == (2, 4, 6) and exact.scores["k"].shape == (2, 2, 6)


def test_q_k_v_in_a_batch_of_pairs_and_plots():
    model = attrib.LanguageModel(tiny_hf("llama"))
    clean, corrupted = [CLEAN[0].tolist(), [5, 9, 26, 5]], [CORRUPTED[0].tolist(), [5, 9, 21, 5]]
    batch = attribution_patching(model, clean, corrupted, target=[[7], [9]], components=("k", "heads"))
    alone = attribution_patching(model, torch.tensor([clean[1]]), torch.tensor([corrupted[1]]), target=9,
                                 components=("k", "heads"))
    torch.testing.assert_close(batch.per_pair["k"][1, ..., 2:], alone.scores["k"], rtol=1e-9, atol=1e-12)
    assert batch.scores["k"].shape == (2, 2, 6) and batch.scores["heads"].shape == (2, 4, 6)
    fig = batch.plot("k", position=-1)
    assert fig.axes[0].get_xlabel() == "head"


def test_unknown_component_lists_the_finer_ones():
    model = attrib.LanguageModel(tiny_hf("gpt2"))
    with pytest.raises(attrib.MethodError, match=r"unknown component 'query'; choose from 'resid', 'attn', 'mlp', "
                                                 r"'heads', 'q', 'k', 'v'"):
        attribution_patching(model, CLEAN, CORRUPTED, target=TARGET, components="query")
