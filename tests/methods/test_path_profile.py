"""attrib.path_profile: f(α) and df/dα checked against the model run by hand (float64), finite differences,
closed forms, layers, batches, the demo model, bad arguments and leaks."""

from __future__ import annotations

import pytest
import torch

import attrib
from tests.conftest import WordTokenizer, tiny_hf

IDS = torch.tensor([[3, 14, 15, 9, 26, 5]])


def mlp() -> attrib.Model:
    torch.manual_seed(0)
    return attrib.Model(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double())


def by_hand(module: torch.nn.Module, x: torch.Tensor, b: torch.Tensor, alpha: float, target: int) -> float:
    with torch.no_grad():
        return float(module((b + alpha * (x - b))[None])[0, target])


def test_f_is_the_model_at_the_interpolated_point():
    net = mlp()
    torch.manual_seed(1)
    x = torch.randn(1, 4, dtype=torch.float64) * 2
    for baseline, b in (("zeros", torch.zeros(4, dtype=torch.float64)), (0.5, torch.full((4,), 0.5).double())):
        p = attrib.path_profile(net, x, target=1, baseline=baseline, n_points=11)
        assert p.alphas.tolist() == pytest.approx([i / 10 for i in range(11)], abs=1e-15)
        want = [by_hand(net.module, x[0], b, i / 10, 1) for i in range(11)]
        assert p.f.tolist() == pytest.approx(want, rel=1e-12, abs=1e-12)
        assert p.f_x == pytest.approx(by_hand(net.module, x[0], b, 1.0, 1), rel=1e-12)
        assert p.f_baseline == pytest.approx(by_hand(net.module, x[0], b, 0.0, 1), rel=1e-12, abs=1e-12)


def test_rate_is_a_central_finite_difference_of_f():
    net = mlp()
    torch.manual_seed(2)
    x = torch.randn(1, 4, dtype=torch.float64) * 3
    b = torch.zeros(4, dtype=torch.float64)
    alphas = [0.05, 0.3, 0.5, 0.77, 0.95]
    p = attrib.path_profile(net, x, target=0, alphas=alphas)
    h = 1e-5
    want = [(by_hand(net.module, x[0], b, a + h, 0) - by_hand(net.module, x[0], b, a - h, 0)) / (2 * h)
            for a in alphas]
    assert p.rate.tolist() == pytest.approx(want, abs=1e-6)
    assert max(abs(w) for w in want) > 0.1                   # the check is not between two zeros


def test_a_linear_model_has_a_constant_rate_and_no_trapezoid_gap():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2).double()
    x = torch.tensor([[1.0, -2.0, 3.0]], dtype=torch.float64)
    p = attrib.path_profile(attrib.Model(lin), x, target=1, baseline=0.25, n_points=7)
    w = lin.weight[1].detach()
    expected = float(w @ (x[0] - 0.25))
    assert p.rate.tolist() == pytest.approx([expected] * 7, rel=1e-12)
    assert p.f_x - p.f_baseline == pytest.approx(expected, rel=1e-12)
    assert p.trapezoid() == pytest.approx(0.0, abs=1e-12)


def test_custom_alphas_are_honoured_in_ascending_order():
    net = mlp()
    x = torch.ones(1, 4, dtype=torch.float64)
    b = torch.zeros(4, dtype=torch.float64)
    p = attrib.path_profile(net, x, target=0, alphas=[0.7, 0.2, 0.45])
    assert p.alphas.tolist() == [0.2, 0.45, 0.7] and p.alphas.dtype == torch.float64
    assert p.f.tolist() == pytest.approx([by_hand(net.module, x[0], b, a, 0) for a in (0.2, 0.45, 0.7)], rel=1e-12)
    # f(x) and f(b) come from their own rows even when 0 and 1 are not among the points
    assert p.f_x == pytest.approx(by_hand(net.module, x[0], b, 1.0, 0), rel=1e-12)
    assert p.f_baseline == pytest.approx(by_hand(net.module, x[0], b, 0.0, 0), rel=1e-12, abs=1e-12)
    same = attrib.path_profile(net, x, target=0, alphas=torch.tensor([0.45, 0.7, 0.2], dtype=torch.float64))
    assert torch.equal(same.f, p.f) and torch.equal(same.rate, p.rate)


def test_a_batch_gives_one_profile_per_item_equal_to_single_runs():
    net = mlp()
    torch.manual_seed(3)
    x = torch.randn(2, 4, dtype=torch.float64)
    both = attrib.path_profile(net, x, target=0, n_points=5)
    assert isinstance(both, list) and len(both) == 2
    for i in range(2):
        alone = attrib.path_profile(net, x[i:i + 1], target=0, n_points=5)
        torch.testing.assert_close(both[i].f, alone.f, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(both[i].rate, alone.rate, rtol=1e-12, atol=1e-12)
    one_row = attrib.path_profile(net, x, target=0, n_points=5, batch_size=1)
    torch.testing.assert_close(one_row[1].rate, both[1].rate, rtol=1e-12, atol=1e-12)


def test_a_batch_of_two_prompts_on_a_language_model():
    model = attrib.LanguageModel(tiny_hf("gpt2"), WordTokenizer())
    both = attrib.path_profile(model, ["w5 w17 w23", "w1 w2"], target=" w7", baseline="zeros", n_points=4)
    assert [p.tokens for p in both] == [[" w5", " w17", " w23"], [" w1", " w2"]]
    for prompt, got in zip(["w5 w17 w23", "w1 w2"], both):
        alone = attrib.path_profile(model, prompt, target=" w7", baseline="zeros", n_points=4)
        torch.testing.assert_close(got.f, alone.f, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(got.rate, alone.rate, rtol=1e-9, atol=1e-9)
        ids = torch.tensor([[int(w[1:]) for w in prompt.split()]])
        with torch.no_grad():
            assert got.f_x == pytest.approx(float(model.module(ids).logits[0, -1, 7]), rel=1e-9)


def test_layer_moves_the_layers_value_between_its_two_runs():
    hf = tiny_hf("gpt2")
    model = attrib.LanguageModel(hf)
    block = hf.transformer.h[0]
    seen = {}

    def capture(name):
        def hook(_, __, out):
            seen[name] = (out[0] if isinstance(out, tuple) else out).detach()
        return hook

    with torch.no_grad():
        handle = block.register_forward_hook(capture("x"))
        hf(IDS)
        handle.remove()
        zeros = torch.zeros(1, IDS.shape[1], 32, dtype=torch.float64)
        handle = block.register_forward_hook(capture("b"))
        hf(inputs_embeds=zeros)
        handle.remove()

    def f(alpha: float) -> float:
        def replace(_, __, out):
            value = seen["b"] + alpha * (seen["x"] - seen["b"])
            return (value, *out[1:]) if isinstance(out, tuple) else value
        handle = block.register_forward_hook(replace)
        try:
            with torch.no_grad():
                return float(hf(IDS).logits[0, -1, 7])
        finally:
            handle.remove()

    p = attrib.path_profile(model, IDS, target=7, baseline="zeros", layer="resid_post.0", alphas=[0.0, 0.4, 1.0])
    assert p.info["layer"] == "resid_post.0"
    assert p.f.tolist() == pytest.approx([f(0.0), f(0.4), f(1.0)], rel=1e-10)
    h = 1e-5
    assert float(p.rate[1]) == pytest.approx((f(0.4 + h) - f(0.4 - h)) / (2 * h), abs=1e-6)
    assert abs(f(1.0) - f(0.0)) > 1e-3


def test_integer_inputs_profile_their_embedding_layer():
    torch.manual_seed(0)
    net = attrib.Model(torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Flatten(),
                                           torch.nn.Linear(12, 1)).double())
    x = torch.tensor([[1, 2, 3]])
    p = attrib.path_profile(net, x, target=0, layer="0", n_points=3)      # "auto": zeros ids
    with torch.no_grad():
        assert p.f_x == pytest.approx(float(net.module(x)[0, 0]), rel=1e-12)
        assert p.f_baseline == pytest.approx(float(net.module(torch.zeros_like(x))[0, 0]), rel=1e-12)
    assert p.trapezoid() == pytest.approx(0.0, abs=1e-12)                 # linear after the embedding


class Normalize(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True)                         # NaN at x = 0, like RMSNorm without eps


def test_nan_at_the_zero_baseline_is_kept_not_raised():
    torch.manual_seed(0)
    net = attrib.Model(torch.nn.Sequential(Normalize(), torch.nn.Linear(3, 1)).double())
    p = attrib.path_profile(net, torch.tensor([[1.0, 2.0, -1.0]], dtype=torch.float64), target=0, n_points=5)
    assert torch.isnan(p.rate[0]) and torch.isnan(p.f[0])
    assert torch.isfinite(p.rate[1:]).all() and torch.isfinite(p.f[1:]).all()
    assert all(a > 0 for a, _ in p.steepest(5)) and len(p.steepest(5)) == 4


def test_the_demo_model_matches_the_hugging_face_logits(demo):
    prompt = "The capital of France is"
    ids = demo.tokenizer(prompt, return_tensors="pt")["input_ids"]
    paris = demo.tokenizer(" Paris")["input_ids"]
    assert len(paris) == 1
    pad = torch.full_like(ids, demo.pad_id)
    auto = torch.cat([ids[:, :1], pad[:, 1:]], dim=1)
    with torch.no_grad():
        logit = {name: float(demo.module(t).logits[0, -1, paris[0]]) for name, t in
                 (("x", ids), ("pad", pad), ("auto", auto))}
    p = attrib.path_profile(demo, prompt, target=" Paris", baseline="pad", alphas=[0.0, 1.0])
    assert p.target == " Paris" and p.tokens[-1] == " is" and p.info["baseline"] == "pad"
    assert float(p.f[1]) == pytest.approx(logit["x"], abs=1e-4) and p.f_x == pytest.approx(logit["x"], abs=1e-4)
    assert float(p.f[0]) == pytest.approx(logit["pad"], abs=1e-4)
    a = attrib.path_profile(demo, prompt, target=" Paris", alphas=[0.0])               # baseline="auto"
    assert a.f_baseline == pytest.approx(logit["auto"], abs=1e-4) and a.info["baseline"] == "auto"


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_points=1), r"n_points=1 must be an int from 2 to 10000 .*; pass e\.g\. n_points=101"),
    (dict(n_points="a"), r"n_points='a' must be an int from 2 to 10000"),
    (dict(n_points=2.5), r"n_points=2\.5 must be an int"),
    (dict(alphas=[1.5]), r"alphas=\[1\.5\] holds 1\.5, outside \[0, 1\] .*; pass floats in \[0, 1\]"),
    (dict(alphas=[-0.1, 0.5]), r"holds -0\.1, outside \[0, 1\]"),
    (dict(alphas=[]), r"alphas=\[\] is empty; pass a 1-D sequence of floats in \[0, 1\]"),
    (dict(alphas=[float("nan")]), r"alphas=\[nan\] holds nan, not a finite number; pass floats in \[0, 1\]"),
    (dict(alphas="a"), r"alphas='a' is not a sequence of numbers"),
    (dict(alphas=[[0.1, 0.2]]), r"has shape \(1, 2\), not one dimension"),
    (dict(alphas=[0.5], n_points=11), r"n_points=11 and alphas= were both given.*pass one of them"),
])
def test_bad_arguments(kwargs, match, leakcheck):
    net = mlp()
    check = leakcheck(net.module)
    with pytest.raises(attrib.MethodError, match=match):
        attrib.path_profile(net, torch.ones(1, 4, dtype=torch.float64), target=0, **kwargs)
    check.assert_clean()


def test_no_hooks_left_after_a_call_or_an_error_inside_the_passes(leakcheck):
    model = attrib.LanguageModel(tiny_hf("gpt2"))
    check = leakcheck(model.module)
    attrib.path_profile(model, IDS, target=7, n_points=3)
    check.assert_clean()
    with pytest.raises(attrib.TargetError, match="must return one score per row"):
        attrib.path_profile(model, IDS, metric=lambda logits: logits.sum(), n_points=3)
    check.assert_clean()
    assert all(p.grad is None for p in model.module.parameters())


def test_info_and_result_type():
    p = attrib.path_profile(mlp(), torch.ones(1, 4, dtype=torch.float64), target=0, score="logit", n_points=3)
    assert isinstance(p, attrib.PathProfile)
    assert p.info == {"baseline": "auto", "layer": "input", "score": "logit", "n_points": 3}
