"""integrated_gradients(n_steps="auto"): adaptive Gauss–Kronrod steps per prompt, checked against closed forms
and against fixed rules where those converge."""

from __future__ import annotations

import warnings

import pytest
import torch

import attrib
from tests.conftest import tiny_hf

IDS = torch.tensor([[3, 14, 15, 9, 26, 5]])


def mlp() -> attrib.Model:
    torch.manual_seed(0)
    return attrib.Model(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double())


def test_a_linear_model_needs_one_round_and_gives_the_closed_form():
    torch.manual_seed(0)
    net = attrib.Model(torch.nn.Linear(3, 2).double())
    x = torch.randn(1, 3, dtype=torch.float64)
    a = attrib.integrated_gradients(net, x, target=1, n_steps="auto")
    torch.testing.assert_close(a.values, x[0] * net.module.weight[1].detach(), rtol=1e-12, atol=1e-12)
    assert a.info["evaluations"] == 4 * 15 + 2 and a.info["converged"] is True and a.info["n_steps"] == "auto"


def test_an_mlp_matches_a_converged_fixed_rule():
    net = mlp()
    x = torch.randn(3, 4, dtype=torch.float64) * 2
    auto = attrib.integrated_gradients(net, x, target=0, n_steps="auto", tol=1e-6)
    fixed = attrib.integrated_gradients(net, x, target=0, n_steps=200)
    for a, f in zip(auto, fixed):
        assert a.info["converged"] is True
        torch.testing.assert_close(a.values, f.values, rtol=1e-6, atol=1e-9)


def test_layer_and_per_token_ig_converge_on_a_tiny_gpt2():
    lm = attrib.LanguageModel(tiny_hf("gpt2").double())
    for kwargs in (dict(layer="resid_post.0"), dict(target=[7, 9], per_token=True)):
        kwargs = {"target": 7, **kwargs}
        a = attrib.integrated_gradients(lm, IDS, n_steps="auto", tol=1e-4, **kwargs)
        f = attrib.integrated_gradients(lm, IDS, n_steps=400, **kwargs)
        diff = abs(a.info["f_x"] - a.info["f_baseline"])
        assert a.info["converged"] is True
        assert float(a.delta.abs().max()) <= 1e-4 * diff
        torch.testing.assert_close(a.scores, f.scores, rtol=1e-3, atol=1e-6 * diff)


def test_each_prompt_of_a_batch_refines_on_its_own():
    net = mlp()
    x = torch.tensor([[0.01, 0.0, 0.0, 0.0], [300.0, -400.0, 250.0, 100.0]], dtype=torch.float64)
    small, large = attrib.integrated_gradients(net, x, target=0, n_steps="auto", tol=1e-8)
    assert small.info["evaluations"] < large.info["evaluations"]
    assert small.info["converged"] and large.info["converged"]


def test_a_budget_that_runs_out_warns_with_the_measured_error():
    net = mlp()
    x = torch.tensor([[30.0, -40.0, 25.0, 10.0]], dtype=torch.float64)
    with pytest.warns(attrib.ConvergenceWarning, match=r"max_evaluations=32 on item 0 before reaching tol=1e-12: "
                                                       r"the completeness error is .* of \|f\(x\) − f\(b\)\|"):
        a = attrib.integrated_gradients(net, x, target=0, n_steps="auto", tol=1e-12, max_evaluations=32)
    assert a.info["converged"] is False and a.info["evaluations"] == 32


def test_no_warning_when_converged():
    with warnings.catch_warnings():
        warnings.simplefilter("error", attrib.ConvergenceWarning)
        attrib.integrated_gradients(mlp(), torch.ones(1, 4, dtype=torch.float64), target=0, n_steps="auto")


@pytest.mark.parametrize("kwargs, match", [
    (dict(tol=0), r"tol=0 must be a number between 0 and 1"),
    (dict(tol="a"), r"tol='a' must be a number"),
    (dict(max_evaluations=10), r"max_evaluations=10 must be an int of at least 17"),
    (dict(max_evaluations=True), r"max_evaluations=True must be an int"),
])
def test_bad_auto_options_are_refused(kwargs, match):
    with pytest.raises(attrib.MethodError, match=match):
        attrib.integrated_gradients(mlp(), torch.ones(1, 4, dtype=torch.float64), target=0, n_steps="auto", **kwargs)
