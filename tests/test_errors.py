"""One errors module: every error class lives in attrib/errors.py, is exported from attrib, subclasses
AttribError, and each cause has its own class."""

from __future__ import annotations

import ast
import inspect
import pathlib

import pytest
import torch

import attrib
import attrib.errors

ROOT = pathlib.Path(attrib.__file__).parent


def test_every_exception_class_is_defined_in_the_errors_module():
    elsewhere = []
    for path in ROOT.rglob("*.py"):
        if path.name == "errors.py" and path.parent == ROOT:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception")) for b in node.bases):
                elsewhere.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert elsewhere == []


def test_every_error_is_exported_and_an_attrib_error():
    defined = [obj for _, obj in inspect.getmembers(attrib.errors, inspect.isclass)
               if obj.__module__ == "attrib.errors"]
    assert len(defined) == len(attrib.errors.__all__) >= 20
    for cls in defined:
        assert cls.__name__ in attrib.__all__ and getattr(attrib, cls.__name__) is cls
        if issubclass(cls, Warning):             # warnings: one base, itself a UserWarning
            assert issubclass(cls, attrib.AttribWarning) and issubclass(cls, UserWarning)
        else:
            assert issubclass(cls, attrib.AttribError)


@pytest.fixture
def net():
    torch.manual_seed(0)
    return attrib.Model(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)))


def test_out_of_order(net):
    with pytest.raises(attrib.OutOfOrderError) as info:
        with net.trace(torch.ones(1, 2)):
            _ = net[1].output
            _ = net[0].output
    assert type(info.value) is attrib.OutOfOrderError


def test_never_ran():
    class Skips(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)

        def forward(self, x):
            return self.used(x)

    model = attrib.Model(Skips())
    with pytest.raises(attrib.NeverRanError, match="never ran"):
        with model.trace(torch.ones(1, 2)):
            _ = model.unused.output
    assert issubclass(attrib.NeverRanError, attrib.OutOfOrderError)


def test_not_on_path(net):
    with pytest.raises(attrib.NotOnPathError, match="not on the path"):
        with net.trace(torch.ones(1, 2)):
            h = net[0].output
            out = net.output
            with (out * 0 + h.detach().sum()).sum().backward():
                _ = (h * 2).grad


def test_already_traced(net):
    with pytest.raises(attrib.AlreadyTracedError, match="already being traced"):
        with net.trace(torch.ones(1, 2)):
            with net.trace(torch.ones(1, 2)):
                pass
    assert not issubclass(attrib.AlreadyTracedError, attrib.OutOfOrderError)


def test_nested_backward_contexts(net):
    with pytest.raises(attrib.NestedBackwardError, match="cannot be nested"):
        with net.trace(torch.ones(1, 2)):
            out = net.output
            with out.sum().backward(retain_graph=True):
                with out.sum().backward():
                    pass


def test_not_in_trace(net):
    with pytest.raises(attrib.NotInTraceError, match="only inside"):
        _ = net[0].output


def test_read_only_envoy(net):
    with pytest.raises(attrib.ReadOnlyEnvoyError, match="cannot be set"):
        net[0].weight = None
