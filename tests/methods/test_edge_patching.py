"""Exact edge patching and circuit faithfulness: equal to EAP where the model is linear in each receiver's input,
one edge equal to a hand-written GPT-2 computation, the full circuit recovers the clean run and the empty one
the corrupted run on every supported layout (float64)."""

from __future__ import annotations

import math

import pytest
import torch

import attrib
from tests.models.test_layouts import FAMILIES

CLEAN = torch.tensor([[5, 17, 23, 9, 41, 12]])
CORRUPTED = torch.tensor([[5, 17, 30, 9, 41, 19]])


class BilinearAttention(torch.nn.Module):
    """Causal (q · k) v without softmax or norm: linear in each of q, k and v when the other two are held."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (torch.nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)    # noqa: E731
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        scores = (q @ k.transpose(-1, -2)).tril() / t
        return self.o_proj((scores @ v).transpose(1, 2).reshape(b, t, d))


class Block(torch.nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.attn = BilinearAttention(d, heads)
        self.mlp = torch.nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class TinyLM(torch.nn.Module):
    def __init__(self, layers: int, d: int = 16, heads: int = 4, vocab: int = 60) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, d)
        self.layers = torch.nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.head = torch.nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        for block in self.layers:
            x = block(x)
        return self.head(x)


MAP = {"layers": "layers", "attn": "attn", "mlp": "mlp", "o_proj": "attn.o_proj", "n_heads": 4,
       "qkv": ("attn.q_proj", "attn.k_proj", "attn.v_proj")}


def tiny(layers: int) -> attrib.Model:
    torch.manual_seed(1)
    return attrib.Model(TinyLM(layers).double().eval())


@pytest.mark.parametrize("layers", [1, 2])
def test_eap_equals_exact_edge_patching_where_the_model_is_linear_in_the_receiver(layers, leakcheck):
    model = tiny(layers)
    check = leakcheck(model.module)
    kw = dict(target=7, contrast=8, component_map=MAP)
    eap = attrib.edge_attribution_patching(model, CLEAN, CORRUPTED, **kw)
    last = layers - 1          # receivers in the last layer and the logits: nothing nonlinear after them
    edges = [(s, r) for s, r, _ in eap.top(eap.n_edges) if r == "logits" or r.startswith(f"L{last}")]
    exact = attrib.edge_patching(model, CLEAN, CORRUPTED, edges=edges, **kw)
    check.assert_clean()
    assert exact.n_edges == len(edges) > 10
    for s, r in edges:
        assert math.isclose(exact.score(s, r), eap.score(s, r), rel_tol=1e-9, abs_tol=1e-12), (s, r)
    assert max(abs(exact.score(s, r)) for s, r in edges) > 1e-3


def test_eap_differs_from_exact_where_the_model_is_not_linear():
    model = tiny(2)
    kw = dict(target=7, contrast=8, component_map=MAP)
    eap = attrib.edge_attribution_patching(model, CLEAN, CORRUPTED, **kw)
    edges = [(s, r) for s, r, _ in eap.top(40) if r.startswith("L0")][:5]     # into layer 0: layer 1 multiplies
    exact = attrib.edge_patching(model, CLEAN, CORRUPTED, edges=edges, **kw)
    assert max(abs(exact.score(s, r) - eap.score(s, r)) for s, r in edges) > 1e-6


def test_one_edge_equals_a_hand_written_gpt2_forward():
    torch.manual_seed(0)
    hf = FAMILIES["gpt2"]().double().eval()
    model = attrib.LanguageModel(hf)
    exact = attrib.edge_patching(model, CLEAN, CORRUPTED, edges=[("L0H1", "L1H2.q")], target=7, contrast=8)
    h0, h1 = hf.transformer.h
    dh = 8
    seen = {}
    grab = h0.attn.c_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("z0", a[0].detach().clone()))
    with torch.no_grad():
        hf(CLEAN)
        clean_z = seen["z0"]
        hf(CORRUPTED)
        corrupted_z = seen["z0"]
    grab.remove()
    w_o = h0.attn.c_proj.weight
    delta = (clean_z[..., dh:2 * dh] - corrupted_z[..., dh:2 * dh]) @ w_o[dh:2 * dh]   # head 1's write, clean − corr

    fixed = {}

    def patch_q(module, args):                                    # ln_1's input is the stream layer 1 reads
        ln = h1.ln_1
        normed = torch.nn.functional.layer_norm(args[0] + delta, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
        c_attn = h1.attn.c_attn                                  # Conv1D: x @ weight + bias (not called: hooked)
        fixed["q"] = (normed @ c_attn.weight + c_attn.bias)[..., 2 * dh:3 * dh]   # head 2's query columns

    def replace(module, args, out):
        out = out.clone()
        out[..., 2 * dh:3 * dh] = fixed["q"]
        return out

    handles = [h1.ln_1.register_forward_pre_hook(patch_q), h1.attn.c_attn.register_forward_hook(replace)]
    try:
        with torch.no_grad():
            logits = hf(CORRUPTED).logits
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        plain = hf(CORRUPTED).logits
    want = float((logits[0, -1, 7] - logits[0, -1, 8]) - (plain[0, -1, 7] - plain[0, -1, 8]))
    assert math.isclose(exact.score("L0H1", "L1H2.q"), want, rel_tol=1e-9, abs_tol=1e-13) and abs(want) > 1e-8


SUPPORTED = ["gpt2", "gpt_neox", "llama", "opt", "phi3", "qwen2"]


@pytest.mark.parametrize("name", SUPPORTED)
def test_full_circuit_is_clean_and_empty_circuit_is_corrupted(name, leakcheck):
    torch.manual_seed(0)
    model = attrib.LanguageModel(FAMILIES[name]().double().eval())
    check = leakcheck(model.module)
    graph = attrib.edge_attribution_patching(model, CLEAN, CORRUPTED, target=7, contrast=8)
    f = attrib.circuit_faithfulness(model, graph, CLEAN, CORRUPTED, sizes=[0, 25, graph.n_edges], target=7,
                                    contrast=8, batch_size=2)
    check.assert_clean()
    assert abs(float(f.recovered[0])) < 1e-6 and abs(float(f.recovered[-1]) - 1) < 1e-6, (name, f.recovered)
    assert f.metrics[-1] == pytest.approx(f.metric_clean, abs=1e-8)
    assert f.metrics[0] == pytest.approx(f.metric_corrupted, abs=1e-8)
    assert not math.isclose(float(f.recovered[1]), 0.0, abs_tol=1e-9)      # 25 edges recover something


def test_faithfulness_result_api(tmp_path):
    model = tiny(2)
    kw = dict(target=7, contrast=8, component_map=MAP)
    graph = attrib.edge_attribution_patching(model, CLEAN, CORRUPTED, **kw)
    f = attrib.circuit_faithfulness(model, graph, CLEAN, CORRUPTED, sizes=[0, 5, 50, graph.n_edges], **kw)
    assert f.sizes == [0, 5, 50, graph.n_edges]
    k = f.smallest(0.99)
    i = f.sizes.index(k)
    assert float(f.recovered[i]) >= 0.99 and all(float(r) < 0.99 for r in f.recovered[:i])
    assert f.smallest(float(f.recovered.max()) + 1) is None
    path = tmp_path / "f.safetensors"
    f.save(path)
    back = attrib.load(path)
    assert isinstance(back, attrib.Faithfulness) and torch.equal(back.recovered, f.recovered)
    fig = f.plot()
    assert fig.axes[0].get_ylabel() == "share of the metric recovered"
    assert str(f).startswith("faithfulness of eap circuits")


def test_bad_arguments():
    model = tiny(1)
    kw = dict(target=7, component_map=MAP)
    with pytest.raises(attrib.MethodError, match="there is no edge from 'M0' to 'L0H1.q'"):
        attrib.edge_patching(model, CLEAN, CORRUPTED, edges=[("M0", "L0H1.q")], **kw)
    with pytest.raises(attrib.MethodError, match="'L9H1' is not a sender of this model"):
        attrib.edge_patching(model, CLEAN, CORRUPTED, edges=[("L9H1", "logits")], **kw)
    with pytest.raises(attrib.MethodError, match="edges must be a non-empty list"):
        attrib.edge_patching(model, CLEAN, CORRUPTED, edges=[], **kw)
    with pytest.raises(attrib.MethodError, match="graph must be an attrib.Graph"):
        attrib.circuit_faithfulness(model, "graph", CLEAN, CORRUPTED, sizes=[1], **kw)
    graph = attrib.edge_attribution_patching(model, CLEAN, CORRUPTED, **kw)
    with pytest.raises(attrib.MethodError, match="sizes must be a non-empty list of edge counts"):
        attrib.circuit_faithfulness(model, graph, CLEAN, CORRUPTED, sizes=[-1], **kw)


def test_faithfulness_edge_cases():
    model = tiny(1)
    kw = dict(target=7, component_map=MAP)
    graph = attrib.edge_attribution_patching(model, CLEAN, CORRUPTED, **kw)
    with pytest.raises(attrib.MethodError, match="the metric is .* on both the clean and the corrupted prompts"):
        attrib.circuit_faithfulness(model, graph, CLEAN, CLEAN, sizes=[0, 5], **kw)
    f = attrib.Faithfulness([50, 10, 0], torch.tensor([1.0, 0.7, 0.0]), torch.zeros(3), 1.0, 0.0, "eap", 50)
    assert f.smallest(0.5) == 10 and f.smallest(0.0) == 0                 # the smallest size, whatever the order
    with pytest.raises(attrib.MethodError, match="'L0H0' is not a receiver of this model"):
        attrib.edge_patching(model, CLEAN, CORRUPTED, edges=[("L0H0", "L0H0")], **kw)
