"""Edge attribution patching: a sender's edges sum to its node attribution patching, on every supported layout
of the registry (float64); EAP-IG with one right-Riemann step is EAP and with many steps is complete; pairs
average; the Graph result's API; refusals."""

from __future__ import annotations

import math

import pytest
import torch

import attrib
from attrib.methods.circuits import edge_attribution_patching
from attrib.methods.patching import attribution_patching
from attrib.models.sites import layout_for
from tests.models.test_layouts import FAMILIES

CLEAN = torch.tensor([[5, 17, 23, 9, 41, 12]])
CORRUPTED = torch.tensor([[5, 17, 30, 9, 41, 19]])
SUPPORTED = sorted(set(FAMILIES) - {"gemma2", "gemma3", "bert", "t5"})
# Llama-style RMSNorms compute in float32 even in a float64 model, so sums of many receivers' vector-Jacobian
# products agree with one gradient to float32 precision there
TOL = 1e-5


def build(name: str) -> attrib.LanguageModel:
    torch.manual_seed(0)
    return attrib.LanguageModel(FAMILIES[name]().double().eval())


def edge_sums(graph: attrib.Graph) -> dict[str, float]:
    sums = (graph.scores * graph.edges).sum(1)
    return {s: float(v) for s, v in zip(graph.senders, sums)}


def embedding_node(model: attrib.LanguageModel) -> float:
    """(clean − corrupted) · ∂metric/∂(layer 0's input) at the corrupted run, with plain hooks."""
    hf = model.module
    first = hf.get_submodule(layout_for(model).layers)[0]
    seen = {}

    def grab(module, args, kwargs):
        x = (args[0] if args else kwargs["hidden_states"])
        if "keep" in seen:
            x = x.detach().requires_grad_(True)
            seen["x"] = x
            return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})
        seen["clean"] = x.detach()
        return None

    handle = first.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            hf(CLEAN)
        seen["keep"] = True
        logits = hf(CORRUPTED).logits
        m = logits[0, -1, 7] - logits[0, -1, 8]
        (g,) = torch.autograd.grad(m, seen["x"])
    finally:
        handle.remove()
    return float(((seen["clean"] - seen["x"].detach()) * g).sum())


@pytest.mark.parametrize("name", SUPPORTED)
def test_edges_of_a_sender_sum_to_its_node_attribution_patching(name, leakcheck):
    model = build(name)
    check = leakcheck(model.module)
    graph = edge_attribution_patching(model, CLEAN, CORRUPTED, target=7, contrast=8)
    check.assert_clean()
    nodes = attribution_patching(model, CLEAN, CORRUPTED, target=7, contrast=8, components=("heads", "mlp"))
    sums = edge_sums(graph)
    heads = nodes.scores["heads"].sum(-1)                   # (layers, heads)
    mlps = nodes.scores["mlp"].sum(-1)
    scale = float(heads.abs().max() + mlps.abs().max())
    for layer in range(heads.shape[0]):
        for head in range(heads.shape[1]):
            assert math.isclose(sums[f"L{layer}H{head}"], float(heads[layer, head]), rel_tol=TOL,
                                abs_tol=TOL * scale), (name, layer, head)
        assert math.isclose(sums[f"M{layer}"], float(mlps[layer]), rel_tol=TOL, abs_tol=TOL * scale), (name, layer)
    assert math.isclose(sums["embed"], embedding_node(model), rel_tol=TOL, abs_tol=TOL * scale), name
    assert graph.metric_clean == pytest.approx(nodes.metric_clean) and scale > 1e-6


def test_edges_follow_the_model_order():
    graph = edge_attribution_patching(build("gpt2"), CLEAN, CORRUPTED, target=7)
    assert graph.n_edges == 110                            # counted by hand in the module docstring
    with pytest.raises(attrib.InputError, match="there is no edge from 'L1H0' to 'L0H2.q'"):
        graph.score("L1H0", "L0H2.q")
    neox = edge_attribution_patching(build("gpt_neox"), CLEAN, CORRUPTED, target=7)
    assert neox.info["parallel_residual"] is True
    s, r = neox.senders.index("L0H0"), neox.receivers.index("M0")
    assert not bool(neox.edges[s, r])                      # a parallel MLP does not read its layer's attention
    llama = edge_attribution_patching(build("llama"), CLEAN, CORRUPTED, target=7)
    assert "L0KV1.k" in llama.receivers and "L0H3.q" in llama.receivers and len(llama.receivers) == 2 * (4 + 4 + 1) + 1


def test_eap_ig_one_right_step_is_eap_and_many_steps_are_complete():
    model = build("llama")
    eap = edge_attribution_patching(model, CLEAN, CORRUPTED, target=7, contrast=8)
    one = edge_attribution_patching(model, CLEAN, CORRUPTED, target=7, contrast=8, method="eap-ig",
                                    rule="riemann_right", n_steps=1)
    torch.testing.assert_close(one.scores, eap.scores, rtol=1e-12, atol=1e-14)
    many = edge_attribution_patching(model, CLEAN, CORRUPTED, target=7, contrast=8, method="eap-ig", n_steps=24)
    total = edge_sums(many)["embed"]                      # IG from clean to corrupted embeddings: complete
    assert math.isclose(total, many.metric_clean - many.metric_corrupted, rel_tol=1e-6)
    assert not math.isclose(edge_sums(eap)["embed"], eap.metric_clean - eap.metric_corrupted, rel_tol=1e-3)


def test_pairs_average():
    model = build("gpt2")
    clean = [CLEAN[0].tolist(), [3, 4, 5, 6]]
    corrupted = [CORRUPTED[0].tolist(), [3, 8, 5, 6]]
    both = edge_attribution_patching(model, clean, corrupted, target=[[7], [9]])
    alone = [edge_attribution_patching(model, torch.tensor([c]), torch.tensor([k]), target=t)
             for c, k, t in zip(clean, corrupted, (7, 9))]
    torch.testing.assert_close(both.scores, (alone[0].scores + alone[1].scores) / 2, rtol=1e-9, atol=1e-12)


def test_graph_api(tmp_path):
    graph = edge_attribution_patching(build("gpt2"), CLEAN, CORRUPTED, target=7)
    top = graph.top(3)
    assert len(top) == 3 and abs(top[0][2]) >= abs(top[1][2]) >= abs(top[2][2]) > 0
    assert graph.score(top[0][0], top[0][1]) == top[0][2]
    kept = graph.circuit(threshold=abs(top[2][2]))
    assert kept[:3] == top and all(abs(v) >= abs(top[2][2]) for _, _, v in kept)
    assert graph.circuit(k=5) == graph.top(5)
    with pytest.raises(attrib.InputError, match="circuit\\(\\) takes k=... .* or threshold=..."):
        graph.circuit(k=3, threshold=0.1)
    path = tmp_path / "g.safetensors"
    graph.save(path)
    back = attrib.load(path)
    assert isinstance(back, attrib.Graph) and back.top(5) == graph.top(5) and back.senders == graph.senders
    dot = graph.to_dot(4)
    assert dot.startswith("digraph") and dot.count("->") == 4 and f'"{top[0][0]}" -> "{top[0][1]}"' in dot
    fig = graph.plot(k=10)
    assert fig.axes[0].get_title() == "10 edges" and len(fig.axes[0].lines) == 10
    assert "edges" in graph._repr_html_() and str(graph).startswith("eap graph of 11 senders")


@pytest.mark.parametrize("name, message", [("gemma2", "norms after each sublayer"), ("bert", "post-norm"),
                                           ("t5", "encoder-decoder")])
def test_unsupported_families_are_refused(name, message):
    with pytest.raises(attrib.MethodError, match=message):
        edge_attribution_patching(build(name), CLEAN, CORRUPTED, target=7)


def test_bad_arguments():
    model = build("gpt2")
    with pytest.raises(attrib.MethodError, match="method='acdc' is not one of 'eap', 'eap-ig'"):
        edge_attribution_patching(model, CLEAN, CORRUPTED, target=7, method="acdc")
    with pytest.raises(attrib.MethodError, match="n_steps= and rule= choose the points of method='eap-ig'"):
        edge_attribution_patching(model, CLEAN, CORRUPTED, target=7, n_steps=5)


def test_single_edges_equal_a_hand_written_gpt2_computation():
    """Edges L0H1 → L1H2.q, L0H1 → M0 and M0 → logits, by plain hooks and autograd on GPT-2's own modules."""
    model = build("gpt2")
    hf = model.module
    graph = edge_attribution_patching(model, CLEAN, CORRUPTED, target=7, contrast=8)
    h0, h1 = hf.transformer.h
    seen: dict[str, torch.Tensor] = {}
    hooks = [h0.attn.c_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("z0", a[0])),
             h0.mlp.register_forward_hook(lambda m, a, o: seen.__setitem__("mlp0", o)),
             h0.attn.register_forward_hook(lambda m, a, o: seen.__setitem__("attn0", o[0])),
             h1.register_forward_pre_hook(lambda m, a: seen.__setitem__("resid1", a[0])),
             h1.attn.c_attn.register_forward_hook(lambda m, a, o: seen.__setitem__("qkv1", o)),
             h1.register_forward_hook(lambda m, a, o: seen.__setitem__("out1", o[0] if isinstance(o, tuple) else o))]
    try:
        with torch.no_grad():
            hf(CLEAN)
        clean = {k: v.clone() for k, v in seen.items()}
        logits = hf(CORRUPTED).logits
        metric = logits[0, -1, 7] - logits[0, -1, 8]
    finally:
        for h in hooks:
            h.remove()
    d, dh = 32, 8
    w_o = hf.transformer.h[0].attn.c_proj.weight                      # Conv1D: (in = heads · d_head, out = hidden)
    head1 = lambda z: z[..., dh:2 * dh] @ w_o[dh:2 * dh]             # noqa: E731 - head 1's write to the stream
    delta_head = (head1(clean["z0"]) - head1(seen["z0"])).detach()
    delta_mlp = (clean["mlp0"] - seen["mlp0"]).detach()
    g_qkv, g_mlp, g_out = torch.autograd.grad(metric, [seen["qkv1"], seen["mlp0"], seen["out1"]], retain_graph=True)
    only = torch.zeros_like(g_qkv)
    only[..., 2 * dh:3 * dh] = g_qkv[..., 2 * dh:3 * dh]             # head 2's query columns of c_attn
    (g_q2,) = torch.autograd.grad(seen["qkv1"], seen["resid1"], only, retain_graph=True)
    (g_m0,) = torch.autograd.grad(seen["mlp0"], seen["attn0"], g_mlp, retain_graph=True)
    want = {("L0H1", "L1H2.q"): (delta_head * g_q2).sum(), ("L0H1", "M0"): (delta_head * g_m0).sum(),
            ("M0", "logits"): (delta_mlp * g_out).sum()}
    for (s, r), value in want.items():
        assert math.isclose(graph.score(s, r), float(value), rel_tol=1e-9, abs_tol=1e-13), (s, r)
    assert all(abs(float(v)) > 1e-6 for v in want.values())
    assert d == hf.config.n_embd


def test_per_position_scores_sum_to_the_edge_scores(tmp_path):
    model = build("llama")
    clean = [CLEAN[0].tolist(), [3, 4, 5, 6]]
    corrupted = [CORRUPTED[0].tolist(), [3, 8, 5, 6]]
    graph = edge_attribution_patching(model, clean, corrupted, target=[[7], [9]], per_position=True)
    assert graph.per_position.shape == (len(graph.senders), len(graph.receivers), 6) and len(graph.tokens) == 6
    torch.testing.assert_close(graph.per_position.sum(-1), graph.scores, rtol=1e-9, atol=1e-12)
    alone = edge_attribution_patching(model, torch.tensor([clean[1]]), torch.tensor([corrupted[1]]), target=9,
                                      per_position=True)
    first = edge_attribution_patching(model, torch.tensor([clean[0]]), torch.tensor([corrupted[0]]), target=7,
                                      per_position=True)
    # the 4-token pair sits at the last 4 positions of the longest prompt: the mean of the two pairs there
    torch.testing.assert_close(graph.per_position[..., 2:], (first.per_position[..., 2:] + alone.per_position) / 2,
                               rtol=1e-9, atol=1e-12)
    path = tmp_path / "g.safetensors"
    graph.save(path)
    back = attrib.load(path)
    assert torch.equal(back.per_position, graph.per_position) and back.tokens == graph.tokens


def test_under_no_grad_and_refused_under_inference_mode():
    model = build("gpt2")
    plain = edge_attribution_patching(model, CLEAN, CORRUPTED, target=7, method="eap-ig", n_steps=3)
    with torch.no_grad():                             # the method turns gradients on where it needs them
        under = edge_attribution_patching(model, CLEAN, CORRUPTED, target=7, method="eap-ig", n_steps=3)
        star = attribution_patching(model, CLEAN, CORRUPTED, target=7, components=("heads",), grad_drop=True)
    torch.testing.assert_close(under.scores, plain.scores, rtol=0, atol=0)
    assert star.scores["heads"].abs().sum() > 0
    with torch.inference_mode(), pytest.raises(attrib.NoGradError, match="edge_attribution_patching\\(\\) was called "
                                                                          "under torch.inference_mode"):
        edge_attribution_patching(model, CLEAN, CORRUPTED, target=7)


def test_positions_keep_only_those_senders_values():
    model = build("gpt2")
    every = edge_attribution_patching(model, CLEAN, CORRUPTED, target=7, per_position=True)
    some = edge_attribution_patching(model, CLEAN, CORRUPTED, target=7, positions=[2, -1], per_position=True)
    assert some.tokens == [every.tokens[2], every.tokens[5]]
    torch.testing.assert_close(some.per_position, every.per_position[..., [2, 5]], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(some.scores, every.per_position[..., [2, 5]].sum(-1), rtol=1e-9, atol=1e-12)
    # the prompts differ at positions 2 and 5 only: the embeddings carry nothing elsewhere, later senders do
    torch.testing.assert_close(some.scores[0], every.scores[0], rtol=1e-9, atol=1e-12)
    assert not torch.allclose(some.scores[1:], every.scores[1:])


def test_eap_in_chunks_of_pairs_equals_one_pass():
    model = build("llama")
    clean = [CLEAN[0].tolist(), [3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]]
    corrupted = [CORRUPTED[0].tolist(), [3, 8, 5, 6, 7, 9], [9, 10, 20, 12, 13, 14]]
    whole = edge_attribution_patching(model, clean, corrupted, target=[[7], [9], [11]])
    for size in (1, 2):
        part = edge_attribution_patching(model, clean, corrupted, target=[[7], [9], [11]], batch_size=size)
        torch.testing.assert_close(part.scores, whole.scores, rtol=1e-9, atol=1e-12)
        assert part.metric_corrupted == pytest.approx(whole.metric_corrupted, abs=1e-12)


def test_per_position_with_extra_left_padding():
    model = build("gpt2")
    padded = {"input_ids": torch.tensor([[0] + CLEAN[0].tolist()]), "attention_mask": torch.tensor([[0] + [1] * 6])}
    padded_c = {"input_ids": torch.tensor([[0] + CORRUPTED[0].tolist()]), "attention_mask": torch.tensor([[0] + [1] * 6])}
    plain = edge_attribution_patching(model, CLEAN, CORRUPTED, target=7, per_position=True)
    extra = edge_attribution_patching(model, padded, padded_c, target=7, per_position=True)
    torch.testing.assert_close(extra.per_position, plain.per_position, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(extra.per_position.sum(-1), extra.scores, rtol=1e-9, atol=1e-12)
