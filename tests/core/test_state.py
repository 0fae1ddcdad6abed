"""Grad mode, autocast, inference mode and context variables: the model sees the state in force at the
user's ``with model.trace(...)`` line, and the user's block keeps its own while the model is paused."""

from __future__ import annotations

import contextvars

import torch

import attrib

LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("LABEL", default="unset")


class Probe(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.seen: list = []

    def forward(self, x):
        self.seen.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"), LABEL.get()))
        return self.lin(x)


class Outer(torch.nn.Module):
    """Runs ``inner`` under torch.no_grad() and autocast(enabled=False); records the state after it."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Probe()
        self.after = Probe()
        self.flags: list = []

    def forward(self, x):
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            y = self.inner(x)
            self.flags.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))
        return self.after(y + x)


def test_model_state_inside_its_own_no_grad_region_does_not_leak_to_the_user():
    net = Outer()
    model = attrib.Model(net)
    x = torch.randn(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with model.trace(x):
            assert torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
            model.inner.output                 # paused inside the model's no_grad/autocast-off region
            assert torch.is_grad_enabled(), "the model's no_grad leaked into the user's block"
            assert torch.is_autocast_enabled("cpu"), "the model's autocast-off leaked into the user's block"
            out = model.output.save()
        assert torch.is_autocast_enabled("cpu")
    assert net.flags == [(False, False)], "the model's own region lost its state across the pause"
    assert net.inner.seen == [(False, False, "unset")]
    assert net.after.seen == [(True, True, "unset")]
    assert out.dtype == torch.bfloat16 and out.requires_grad


def test_trace_under_no_grad_and_context_variables():
    net = Outer()
    model = attrib.Model(net)
    token = LABEL.set("caller")
    try:
        with torch.no_grad():
            with model.trace(torch.randn(1, 4)):
                out = model.output.save()
    finally:
        LABEL.reset(token)
    assert not out.requires_grad
    assert net.after.seen == [(False, False, "caller")]


def test_trace_under_inference_mode():
    net = Outer()
    model = attrib.Model(net)
    with torch.inference_mode():
        with model.trace(torch.randn(1, 4)):
            out = model.output.save()
    assert out.is_inference()


def test_bare_backward_returns_none_and_runs_synchronously():
    net = torch.nn.Linear(3, 1)
    model = attrib.Model(net)
    with model.trace(torch.ones(1, 3)):
        out = model.output
        result = out.sum().backward()
        assert net.weight.grad is not None           # already done on the next line
    assert result is None
    assert torch.equal(net.weight.grad, torch.ones(1, 3))


def test_backward_used_in_with_returns_a_context():
    net = torch.nn.Linear(3, 1)
    model = attrib.Model(net)
    with model.trace(torch.ones(1, 3)):
        out = model.output
        with out.sum().backward() as ctx:
            assert type(ctx).__name__ == "BackwardContext"
    assert net.weight.grad is None
