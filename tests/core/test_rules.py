"""The rule engine: a module's local backward replaced for as long as a Rules block is open."""

from __future__ import annotations

import threading

import pytest
import torch

from attrib import RuleError
from attrib.core.rules import Call, Rule, Rules, Scale


def net(inplace: bool = False) -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 4),
                               torch.nn.ReLU(inplace=inplace), torch.nn.Linear(4, 1)).double()


def grad_of(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    model(x).sum().backward()
    return x.grad


X = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.3, -0.7]], dtype=torch.float64)


def test_a_function_rule_replaces_only_its_modules_backward(leakcheck):
    model = net()
    check = leakcheck(model)
    # hand-written chain: replace tanh's derivative by 1 (the straight-through estimator)
    with torch.no_grad():
        h = model[0](X)
        a = model[2](torch.tanh(h))
    mask = (a > 0).double()
    w0, w2, w4 = model[0].weight, model[2].weight, model[4].weight
    expected = ((w4 * mask) @ w2) @ w0
    with Rules([(model[1], lambda g, x, y: g)]):
        got = grad_of(model, X)
    torch.testing.assert_close(got, expected.detach().expand_as(got))
    check.assert_clean()
    torch.testing.assert_close(grad_of(model, X), torch.autograd.functional.jacobian(
        lambda t: model(t).sum(), X))                      # the model is as before once the block closes


def test_the_rule_sees_the_calls_input_and_output_and_parameters_get_no_gradient_through_it():
    model, seen = net(), {}

    def spy(g, x, y):
        seen.update(x=x.clone(), y=y.clone())
        return g * (1 - y * y)                              # tanh's true derivative
    with Rules([(model[1], spy)]):
        got = grad_of(model, X)
    torch.testing.assert_close(got, grad_of(net(), X))
    torch.testing.assert_close(seen["x"], model[0](X).detach())
    torch.testing.assert_close(seen["y"], torch.tanh(seen["x"]))
    model = net()
    with Rules([(model[2], lambda g, x, y: g @ model[2].weight.detach())]):
        model(X).sum().backward()
    assert model[2].weight.grad is None and model[0].weight.grad is not None


def test_an_inplace_module_gets_its_input_as_it_came_in():
    plain, inplace = net(), net(inplace=True)
    with Rules([(plain[3], lambda g, x, y: g * (x > 0))]):
        a = grad_of(plain, X)
    with Rules([(inplace[3], lambda g, x, y: g * (x > 0))]):
        b = grad_of(inplace, X)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, grad_of(net(), X))


def test_scale_keeps_the_modules_backward_at_output_or_input():
    base = grad_of(net(), X)
    model = net()
    with Rules([(model[0], Scale(0.25))]):
        torch.testing.assert_close(grad_of(model, X), base / 4)
    with Rules([(model[4], Scale(0.5, at="input"))]):
        torch.testing.assert_close(grad_of(model, X), base / 2)
    model.zero_grad()
    with Rules([(model[0], Scale(torch.tensor([1.0, 0.0, 0.0, 0.0])))]):   # one output feature only
        got = grad_of(model, X)
    with torch.no_grad():
        h = model[0](X)
    jac = torch.autograd.functional.jacobian(lambda t: model[1:](t).sum(), h)
    torch.testing.assert_close(got, (jac[:, :1] @ model[0].weight[:1]).detach())
    with pytest.raises(RuleError, match="'output' or 'input'"):
        Scale(2.0, at="middle")


def test_a_rule_class_can_use_the_modules_own_backward_with_other_parameters():
    class Positive(Rule):
        def backward(self, grad_output: torch.Tensor, call: Call) -> torch.Tensor:
            return call.vjp(grad_output, params={"weight": call.module.weight.detach().clamp(min=0),
                                                 "bias": call.module.bias.detach()})
    model = net()
    with Rules([(model[4], Positive())]):
        got = grad_of(model, X)
    reference = net()
    with torch.no_grad():
        reference[4].weight.clamp_(min=0)
    torch.testing.assert_close(got, grad_of(reference, X))


def test_a_wrong_shaped_gradient_is_refused_and_the_model_is_clean_after(leakcheck):
    model = net()
    check = leakcheck(model)
    with pytest.raises(RuleError, match=r"returned a gradient of shape \(2, 1\) for an input of shape \(2, 4\)"):
        with Rules([(model[1], lambda g, x, y: g[:, :1])]):
            grad_of(model, X)
    check.assert_clean()
    torch.testing.assert_close(grad_of(model, X), grad_of(net(), X))


def test_outputs_may_change_in_place_after_the_forward_but_an_input_that_does_is_named():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh()).double()
    x = X.clone().requires_grad_(True)
    with Rules([(model[1], lambda g, x_, y: g * (1 - y * y))]):
        y = model(x)
        y.mul_(2)                                          # the rule still reads the output the module gave
        y.sum().backward()
    expected = x.grad.clone()
    x.grad = None
    (2 * model(x)).sum().backward()
    torch.testing.assert_close(expected, x.grad)
    with Rules([(model[1], lambda g, x_, y: g)]):
        h = model[0](x)
        y = model[1](h)
        h.add_(1)
        with pytest.raises(RuleError, match="input of Tanh .*changed in place"):
            y.sum().backward()


def test_bad_rules_and_modules_are_refused_before_anything_is_installed():
    model = net()
    with pytest.raises(RuleError, match="got int"):
        Rules([(model[1], 3)])
    with pytest.raises(RuleError, match="torch.nn.Module"):
        Rules([("tanh", lambda g, x, y: g)])
    with pytest.raises(RuleError, match="two rules"):
        Rules([(model[1], lambda g, x, y: g), (model[1], lambda g, x, y: 2 * g)])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_other_threads_and_no_grad_forwards_are_not_ruled():
    model = net()
    base = grad_of(model, X)
    results = {}

    def other():
        results["other"] = grad_of(model, X)
    with Rules([(model[1], lambda g, x, y: 0 * g)]):
        t = threading.Thread(target=other)
        t.start()
        t.join()
        with torch.no_grad():
            torch.testing.assert_close(model(X), net()(X))
        assert grad_of(model, X).abs().max() == 0
    torch.testing.assert_close(results["other"], base)
