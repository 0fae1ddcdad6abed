"""Attribution patching and activation patching: closed forms, plain-hook references on three layouts,
batching, directions, errors, leaks, and the IOI correlation on the demo model."""

from __future__ import annotations

import pytest
import torch

import attrib
from attrib.demo import IOI_CLEAN, IOI_CORRUPTED
from attrib.errors import MethodError
from attrib import PatchingResult
from attrib.methods.patching import activation_patching, attribution_patching
from tests.conftest import attn_name, layers_of, tiny_hf

CLEAN = torch.tensor([[3, 14, 15, 9, 26, 5]])
CORRUPTED = torch.tensor([[3, 14, 40, 9, 26, 7]])
TARGET, CONTRAST = 7, 8
OUT_PROJ = {"gpt2": "attn.c_proj", "llama": "self_attn.o_proj", "neox": "attention.dense"}
N_HEADS = 4


# -- a model linear in every component --------------------------------------------------------------

class LinearAttention(torch.nn.Module):
    """Causal mean of values, then an output projection: linear, mixes positions, has heads."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.v = torch.nn.Linear(d, d)
        self.o_proj = torch.nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        counts = torch.arange(1, x.shape[1] + 1, dtype=x.dtype).view(1, -1, 1)
        return self.o_proj(self.v(x).cumsum(1) / counts), None


class Block(torch.nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.attn = LinearAttention(d)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d, 2 * d), torch.nn.Linear(2 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)[0]
        return x + self.mlp(x)


class LinearLM(torch.nn.Module):
    """Embedding -> tanh (before every component, so it keeps the metric linear in them) -> 3 linear blocks."""

    def __init__(self, d: int = 16, vocab: int = 50) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, d)
        self.layers = torch.nn.ModuleList(Block(d) for _ in range(3))
        self.head = torch.nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.emb(ids))
        for block in self.layers:
            x = block(x)
        return self.head(x)


LINEAR_MAP = {"layers": "layers", "attn": "attn", "mlp": "mlp", "out_proj": "attn.o_proj", "n_heads": N_HEADS}


def linear_model() -> attrib.Model:
    torch.manual_seed(0)
    return attrib.Model(LinearLM().double().eval())


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_closed_form_linear_model(direction, leakcheck):
    model = linear_model()
    check = leakcheck(model.module)
    kw = dict(target=TARGET, contrast=CONTRAST, component_map=LINEAR_MAP, direction=direction)
    approx = attribution_patching(model, CLEAN, CORRUPTED, **kw)
    exact = activation_patching(model, CLEAN, CORRUPTED, **kw)
    check.assert_clean()
    assert set(approx.scores) == {"resid", "attn", "mlp", "heads"}
    for comp in approx.scores:
        assert approx.scores[comp].dtype == torch.float64
        assert approx.scores[comp].shape == exact.scores[comp].shape
        torch.testing.assert_close(approx.scores[comp], exact.scores[comp], atol=1e-10, rtol=0)
        assert exact.scores[comp].abs().max() > 1e-3          # not trivially zero
    # where nothing differs yet (layer 0, position 0: same token, causal), patching changes nothing
    assert exact.scores["resid"][0, 0].abs() < 1e-12
    # the last layer's output at the last position carries the whole metric
    full = exact.metric_clean - exact.metric_corrupted
    expected = full if direction == "denoise" else -full
    assert abs(exact.scores["resid"][-1, -1].item() - expected) < 1e-10
    assert approx.metric_clean == pytest.approx(exact.metric_clean, abs=1e-12)


def test_closed_form_with_a_metric_on_a_plain_model():
    """A metric on any positions' outputs (no target): still linear, so still exact."""
    model = linear_model()
    kw = dict(metric=lambda out: out[:, -1, 3] - 2 * out[:, 2, 5], component_map=LINEAR_MAP)
    approx = attribution_patching(model, CLEAN, CORRUPTED, **kw)
    exact = activation_patching(model, CLEAN, CORRUPTED, **kw)
    assert approx.target == "metric"
    for comp in approx.scores:
        torch.testing.assert_close(approx.scores[comp], exact.scores[comp], atol=1e-10, rtol=0)
    # patching the last layer at position 2 moves the metric's second term only
    assert exact.scores["resid"][-1, 2].abs() > 1e-3


# -- plain-hook references -------------------------------------------------------------------------

def module_of(hf: torch.nn.Module, arch: str, comp: str, layer: int) -> torch.nn.Module:
    block = layers_of(hf)[layer]
    if comp == "resid":
        return block
    if comp in ("attn", "mlp"):
        return getattr(block, attn_name(arch) if comp == "attn" else "mlp")
    return block.get_submodule(OUT_PROJ[arch])


def logit_diff(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1, TARGET] - logits[:, -1, CONTRAST]


def capture(hf, arch, ids, comps, patch=None):
    """Forward with plain hooks: {(comp, layer): tensor} and the metric. ``patch=(comp, layer, fn)`` replaces
    that component's value by fn(value)."""
    got, handles = {}, []

    def out_hook(key):
        def hook(module, args, output):
            first = output[0] if isinstance(output, tuple) else output
            if patch is not None and patch[:2] == key:
                first = patch[2](first)
                output = (first, *output[1:]) if isinstance(output, tuple) else first
            got[key] = first
            return output
        return hook

    def pre_hook(key):
        def hook(module, args):
            x = args[0]
            if patch is not None and patch[:2] == key:
                x = patch[2](x)
            got[key] = x
            return (x, *args[1:])
        return hook

    for comp in comps:
        for layer in range(len(layers_of(hf))):
            m = module_of(hf, arch, comp, layer)
            key = (comp, layer)
            handles.append(m.register_forward_pre_hook(pre_hook(key)) if comp == "heads"
                           else m.register_forward_hook(out_hook(key)))
    try:
        out = hf(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return got, logit_diff(out.logits)


def hook_attribution(hf, arch, comps, source, receiving):
    with torch.no_grad():
        other, _ = capture(hf, arch, source, comps)
    with torch.enable_grad():
        acts, metric = capture(hf, arch, receiving, comps)
        keys = list(acts)
        grads = dict(zip(keys, torch.autograd.grad(metric.sum(), [acts[k] for k in keys])))
    out = {}
    for comp in comps:
        rows = []
        for layer in range(len(layers_of(hf))):
            prod = ((other[(comp, layer)] - acts[(comp, layer)].detach()) * grads[(comp, layer)])[0]
            rows.append(prod.unflatten(-1, (N_HEADS, -1)).sum(-1).T if comp == "heads" else prod.sum(-1))
        out[comp] = torch.stack(rows)
    return out


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_attribution_equals_plain_hooks(arch, direction, leakcheck):
    hf = tiny_hf(arch)
    model = attrib.LanguageModel(hf)
    check = leakcheck(hf)
    comps = ("resid", "attn", "mlp", "heads")
    got = attribution_patching(model, CLEAN, CORRUPTED, target=TARGET, contrast=CONTRAST, direction=direction)
    check.assert_clean()
    source, receiving = (CLEAN, CORRUPTED) if direction == "denoise" else (CORRUPTED, CLEAN)
    ref = hook_attribution(hf, arch, comps, source, receiving)
    for comp in comps:
        torch.testing.assert_close(got.scores[comp], ref[comp], atol=1e-10, rtol=0)
        assert ref[comp].abs().max() > 1e-4
    assert got.scores["heads"].shape == (2, N_HEADS, CLEAN.shape[1])
    assert got.direction == direction and got.method == "attribution_patching"


@pytest.mark.parametrize("comp", ["resid", "attn", "mlp", "heads"])
def test_activation_equals_plain_hooks(arch, comp):
    hf = tiny_hf(arch)
    model = attrib.Model(hf)   # a plain attrib.Model works too (HF module, token ids)
    layer, pos, head = 0, 3, 2
    res = activation_patching(model, CLEAN, CORRUPTED, target=TARGET, contrast=CONTRAST, components=comp,
                              positions=[pos, -1])
    with torch.no_grad():
        clean_acts, m_clean = capture(hf, arch, CLEAN, [comp])
        _, m_corr = capture(hf, arch, CORRUPTED, [])
        src = clean_acts[(comp, layer)]

        def put(value):
            value = value.clone()
            if comp == "heads":
                width = value.shape[-1] // N_HEADS
                value[:, pos, head * width:(head + 1) * width] = src[:, pos, head * width:(head + 1) * width]
            else:
                value[:, pos] = src[:, pos]
            return value

        _, m_patched = capture(hf, arch, CORRUPTED, [comp], patch=(comp, layer, put))
    expected = float(m_patched - m_corr)
    got = res.scores[comp][layer, head, 0] if comp == "heads" else res.scores[comp][layer, 0]
    assert abs(float(got) - expected) < 1e-10
    assert res.positions == [pos, CLEAN.shape[1] - 1]
    assert res.metric_clean == pytest.approx(float(m_clean), abs=1e-12)
    assert res.metric_corrupted == pytest.approx(float(m_corr), abs=1e-12)


def test_batched_equals_unbatched(arch):
    model = attrib.LanguageModel(tiny_hf(arch))
    kw = dict(target=TARGET, contrast=CONTRAST)
    one = activation_patching(model, CLEAN, CORRUPTED, batch_size=1, **kw)
    many = activation_patching(model, CLEAN, CORRUPTED, batch_size=1000, **kw)
    odd = activation_patching(model, CLEAN, CORRUPTED, batch_size=7, **kw)
    assert one.info["forwards"] == 2 * (3 + N_HEADS) * CLEAN.shape[1] and many.info["forwards"] == 1
    for comp in one.scores:
        torch.testing.assert_close(one.scores[comp], many.scores[comp], atol=1e-10, rtol=0)
        torch.testing.assert_close(odd.scores[comp], many.scores[comp], atol=1e-10, rtol=0)


def test_noise_direction_semantics(gpt2):
    model, hf, _ = gpt2
    kw = dict(target=TARGET, contrast=CONTRAST, components=("resid", "mlp"))
    den = activation_patching(model, CLEAN, CORRUPTED, direction="denoise", **kw)
    noi = activation_patching(model, CLEAN, CORRUPTED, direction="noise", **kw)
    gap = den.metric_clean - den.metric_corrupted
    assert abs(gap) > 1e-3
    assert (noi.metric_clean, noi.metric_corrupted) == (den.metric_clean, den.metric_corrupted)
    # the last layer's output at the last position: denoising restores the clean metric, noising destroys it
    assert den.scores["resid"][-1, -1].item() == pytest.approx(gap, abs=1e-10)
    assert noi.scores["resid"][-1, -1].item() == pytest.approx(-gap, abs=1e-10)
    # noise of (clean, corrupted) is denoise of (corrupted, clean): receive the clean run, take corrupted values
    swapped = activation_patching(model, CORRUPTED, CLEAN, direction="denoise", **kw)
    for comp in noi.scores:
        torch.testing.assert_close(noi.scores[comp], swapped.scores[comp], atol=1e-10, rtol=0)
    approx = attribution_patching(model, CORRUPTED, CLEAN, direction="denoise", **kw)
    noise = attribution_patching(model, CLEAN, CORRUPTED, direction="noise", **kw)
    for comp in noise.scores:
        torch.testing.assert_close(noise.scores[comp], approx.scores[comp], atol=1e-10, rtol=0)


def test_metric_callable_positions_and_map(gpt2):
    model, hf, _ = gpt2
    base = attribution_patching(model, CLEAN, CORRUPTED, target=TARGET, contrast=CONTRAST)
    via_metric = attribution_patching(model, CLEAN, CORRUPTED, metric=logit_diff)
    subset = attribution_patching(model, CLEAN, CORRUPTED, target=TARGET, contrast=CONTRAST, positions=[-1, 2])
    mapped = attribution_patching(model, CLEAN, CORRUPTED, target=TARGET, contrast=CONTRAST, component_map={
        "layers": "transformer.h", "attn": "attn", "mlp": "mlp", "out_proj": "attn.c_proj", "n_heads": N_HEADS})
    for comp in base.scores:
        torch.testing.assert_close(via_metric.scores[comp], base.scores[comp], atol=1e-10, rtol=0)
        torch.testing.assert_close(mapped.scores[comp], base.scores[comp], atol=0, rtol=0)
        torch.testing.assert_close(subset.scores[comp], base.scores[comp][..., [2, 5]], atol=0, rtol=0)
    assert subset.positions == [2, 5]


def test_target_none_is_clean_prediction(gpt2):
    model, hf, _ = gpt2
    with torch.no_grad():
        top = int(hf(input_ids=CLEAN).logits[0, -1].argmax())
    got = attribution_patching(model, CLEAN, CORRUPTED, components="resid")
    ref = attribution_patching(model, CLEAN, CORRUPTED, target=top, components="resid")
    torch.testing.assert_close(got.scores["resid"], ref.scores["resid"], atol=0, rtol=0)


def test_result_api(gpt2):
    model, hf, _ = gpt2
    res = activation_patching(model, CLEAN, CORRUPTED, target=TARGET, contrast=CONTRAST)
    assert isinstance(res, PatchingResult)
    assert res.tokens == [str(i) for i in CLEAN[0].tolist()]
    top = res.top(4)
    assert len(top) == 4 and abs(top[0][2]) >= abs(top[-1][2])
    comp, index, value = top[0]
    scores = res.scores[comp]
    assert scores[index].item() == pytest.approx(value)   # positions == axis here (all positions)
    assert max(v.abs().max().item() for v in res.scores.values()) == pytest.approx(abs(value))
    assert "activation_patching (denoise)" in str(res)
    d = res.to_dict()
    assert d["scores"]["heads"] and d["direction"] == "denoise"
    import matplotlib.pyplot as plt

    for fig in (res.plot("resid"), res.plot("heads"), res.plot("heads", position=-1)):
        assert fig.axes[0].images
        plt.close(fig)
    with pytest.raises(attrib.PlotError, match="was not patched"):
        activation_patching(model, CLEAN, CORRUPTED, target=TARGET, components="heads", positions=0).plot(
            "heads", position=-1)


def test_top_reports_prompt_positions(gpt2):
    model, _, _ = gpt2
    res = attribution_patching(model, CLEAN, CORRUPTED, target=TARGET, components="resid", positions=[4, 5])
    for comp, index, value in res.top(3):
        assert index[-1] in (4, 5)
        assert res.scores[comp][index[0], res.positions.index(index[1])].item() == value


# -- errors and leaks -----------------------------------------------------------------------------

def test_different_lengths_raise(gpt2, leakcheck):
    model, hf, _ = gpt2
    check = leakcheck(hf)
    for fn in (attribution_patching, activation_patching):
        with pytest.raises(MethodError, match="same number of tokens.*clean has 6.*corrupted has 5"):
            fn(model, CLEAN, CORRUPTED[:, :5], target=TARGET)
    check.assert_clean()


def test_unknown_layout_names_what_it_looked_for():
    model = linear_model()
    with pytest.raises(attrib.LayoutError) as err:
        attribution_patching(model, CLEAN, CORRUPTED, target=TARGET)
    for path in ("transformer.h", "model.layers", "gpt_neox.layers", "component_map"):
        assert path in str(err.value)
    with pytest.raises(attrib.LayoutError, match="component_map\\['mlp'\\]='ffn'"):
        attribution_patching(model, CLEAN, CORRUPTED, target=TARGET, component_map={**LINEAR_MAP, "mlp": "ffn"})
    with pytest.raises(attrib.LayoutError, match="needs component_map\\['o_proj'\\]"):
        attribution_patching(model, CLEAN, CORRUPTED, target=TARGET, component_map={"layers": "layers"},
                             components="heads")


def test_bad_arguments(gpt2, leakcheck):
    model, hf, _ = gpt2
    check = leakcheck(hf)
    with pytest.raises(MethodError, match="unknown component 'neurons'"):
        attribution_patching(model, CLEAN, CORRUPTED, target=TARGET, components=("resid", "neurons"))
    with pytest.raises(MethodError, match="direction='both'"):
        activation_patching(model, CLEAN, CORRUPTED, target=TARGET, direction="both")
    with pytest.raises(MethodError, match="position 6 is outside"):
        activation_patching(model, CLEAN, CORRUPTED, target=TARGET, positions=6)
    with pytest.raises(MethodError, match="batch_size"):
        activation_patching(model, CLEAN, CORRUPTED, target=TARGET, batch_size=0)
    with pytest.raises(MethodError, match="clean has 2 prompts and corrupted has 3 prompts: patching needs one"):
        attribution_patching(model, torch.cat([CLEAN, CLEAN]), torch.cat([CORRUPTED] * 3), target=TARGET)
    check.assert_clean()


def test_leaks_after_error_inside_trace(gpt2, leakcheck):
    model, hf, _ = gpt2
    check = leakcheck(hf)
    bad = lambda logits: logits[:, -1]          # (batch, vocab), not (batch,)
    for fn in (attribution_patching, activation_patching):
        with pytest.raises(attrib.AttribError, match="shape \\(batch,\\)"):
            fn(model, CLEAN, CORRUPTED, metric=bad)
        check.assert_clean()
    res = attribution_patching(model, CLEAN, CORRUPTED, target=TARGET)   # usable afterwards
    check.assert_clean()
    assert res.scores["resid"].abs().sum() > 0


def test_frozen_weights_still_get_gradients(gpt2):
    model, hf, _ = gpt2
    ref = attribution_patching(model, CLEAN, CORRUPTED, target=TARGET, contrast=CONTRAST)
    hf.requires_grad_(False)
    frozen = attribution_patching(model, CLEAN, CORRUPTED, target=TARGET, contrast=CONTRAST)
    for comp in ref.scores:
        torch.testing.assert_close(frozen.scores[comp], ref.scores[comp], atol=1e-10, rtol=0)


# -- the demo model: IOI ---------------------------------------------------------------------------



@pytest.mark.slow
def test_ioi_heads_correlation_on_demo(demo, leakcheck):
    """Attribution vs activation patching of all 30 × 9 head outputs at the final position (denoise,
    logit difference ' Mary' − ' John'). Measured on CPU, float32 (torch 2.13, transformers 5.24):
    Pearson r = 0.986; top head L23H3 in both (+7.10 estimated, +6.40 exact). Asserted: r >= 0.88."""
    check = leakcheck(demo.module)
    n_clean = demo.tokenize(IOI_CLEAN)["input_ids"].shape[1]
    assert n_clean == demo.tokenize(IOI_CORRUPTED)["input_ids"].shape[1] == 14
    kw = dict(target=" Mary", contrast=" John", components="heads", positions=-1)
    approx = attribution_patching(demo, IOI_CLEAN, IOI_CORRUPTED, **kw)
    exact = activation_patching(demo, IOI_CLEAN, IOI_CORRUPTED, **kw)
    check.assert_clean()
    assert approx.scores["heads"].shape == exact.scores["heads"].shape == (30, 9, 1)
    assert exact.metric_clean > 0 > exact.metric_corrupted           # the model does IOI
    assert exact.target == approx.target == "' Mary' − ' John'"
    x, y = approx.scores["heads"].flatten(), exact.scores["heads"].flatten()
    r = torch.corrcoef(torch.stack([x, y]))[0, 1].item()
    print(f"\nIOI heads at the final position: Pearson(attribution, activation) = {r:.4f}")
    assert r >= 0.88
    assert approx.top(1)[0][1] == exact.top(1)[0][1]
    with pytest.raises(MethodError, match="same number of tokens"):
        attribution_patching(demo, IOI_CLEAN, "When Mary and John went to the store, Mary Ann gave a drink to",
                             **kw)
