"""Issue 9, the core's unclear errors: each is now a correct result or one clear AttribError, and the model is
clean and gives the same output afterwards."""

from __future__ import annotations

import warnings

import pytest
import torch

import attrib
from tests.conftest import tiny_hf

IDS = torch.tensor([[3, 14, 15, 9, 26, 5]])
X = torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(2, 3)


def mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()


@pytest.fixture
def lm():
    return attrib.LanguageModel(tiny_hf("gpt2").double())


def test_ctx_from_an_earlier_backward_call_is_refused(lm, leakcheck):
    check = leakcheck(lm.module)
    before = lm.module(IDS).logits.detach()
    emb = lm.module.transformer.wte.weight
    emb.grad = None
    with pytest.raises(attrib.PlainBackwardError,
                       match=r"`ctx = loss\.backward\(\)` runs a plain backward.*`with ctx:`.*write `with loss\.backward\(\):`"):
        with lm.trace(IDS):
            h = lm.transformer.h[0].output
            loss = lm.output.logits[0, -1, 3]
            ctx = loss.backward()
            with ctx:
                h.grad
    assert emb.grad is None                         # refused before any backward ran
    check.assert_clean()
    torch.testing.assert_close(lm.module(IDS).logits.detach(), before, rtol=0, atol=0)
    assert isinstance(attrib.PlainBackwardError("x"), TypeError)   # what Python raises for `with None:`


def test_a_stored_backward_result_that_no_with_enters_is_torchs(lm):
    with lm.trace(IDS):
        res = lm.output.logits[0, -1, 3].backward()
        other = res
    assert res is None and other is None


def test_a_plain_backward_in_a_trace_still_fills_leaf_grads(lm):
    emb = lm.module.transformer.wte.weight
    emb.grad = None
    with lm.trace(IDS):
        lm.output.logits[0, -1, 3].backward()       # a statement: torch's meaning
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_a_shape_changing_in_place_gradient_edit_is_refused(lm, leakcheck):
    check = leakcheck(lm.module)
    before = lm.module(IDS).logits.detach()
    with pytest.raises(attrib.GradientValueError,
                       match=r"gradient of model\.transformer\.h\[0\]\.output.*changed in place to shape \(1, 1, 6, 32\)"
                             r".*expected shape \(1, 6, 32\)"):
        with lm.trace(IDS):
            out = lm.transformer.h[0].output
            h = out[0] if isinstance(out, tuple) else out
            with lm.output.logits[0, -1, 3].backward():
                h.grad.unsqueeze_(0)
    check.assert_clean()
    torch.testing.assert_close(lm.module(IDS).logits.detach(), before, rtol=0, atol=0)


def test_a_value_preserving_in_place_edit_still_works():
    net = attrib.Model(mlp())
    with net.trace(X):
        h = net[0].output
        with net.output.sum().backward():
            h.grad.mul_(0)                          # same shape: allowed, and it reaches the input side
        w = net.module[0].weight
    assert h.grad.abs().sum() == 0
    assert w.grad is None


def test_meta_device_model_is_refused(leakcheck):
    with torch.device("meta"):
        module = torch.nn.Linear(3, 1)
    net = attrib.Model(module)
    check = leakcheck(module)
    with pytest.raises(attrib.InputError, match=r"on the meta device.*load its weights first"):
        with net.trace(torch.ones(2, 3)):
            net.output.save()
    check.assert_clean()


def test_a_torch_compiled_model_is_traced_through_its_original_module():
    module = mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = torch.compile(module)
        net = attrib.Model(compiled)
        assert net.module is module
        with net.trace(X):
            h = net[0].output.save()
            y = net.output.save()
        torch.testing.assert_close(h, module[0](X))
        torch.testing.assert_close(y, module(X))
        torch.testing.assert_close(compiled(X), module(X))        # the compiled object still runs


@pytest.mark.parametrize("where", ["in_place_root", "in_place_layer", "wrapped_child"])
def test_a_read_inside_compiled_code_is_refused(where, leakcheck):
    module = mlp()
    before = module(X).detach()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if where == "in_place_root":
            module.compile()
            read, culprit = (lambda net: net[2].output), r"because model was compiled"
        elif where == "in_place_layer":
            module[0].compile()
            read, culprit = (lambda net: net[0].output), r"because model\[0\] was compiled"
        else:
            module[2] = torch.compile(module[2])
            read, culprit = (lambda net: net[2]._orig_mod.output), r"because model\[2\] was compiled"
        net = attrib.Model(module)
        check = leakcheck(module)
        with pytest.raises(attrib.CompiledModuleError, match=culprit + r".*cannot pause mid-forward"):
            with net.trace(X):
                read(net).save()
        check.assert_clean()
        torch.testing.assert_close(module(X).detach(), before)


def test_reading_a_compiled_layer_output_from_outside_it_works():
    """The pause of a ``torch.compile(child)``'s output falls outside the compiled code: allowed."""
    module = mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module[0] = torch.compile(module[0])
        net = attrib.Model(module)
        with net.trace(X):
            h = net[0].output.save()
    torch.testing.assert_close(h, module[0]._orig_mod(X))


def test_setting_an_attribute_on_the_wrapper_is_refused():
    net = attrib.Model(mlp())
    with pytest.raises(attrib.ReadOnlyEnvoyError, match=r"model\.head cannot be set through attrib.*model\.module"):
        net.head = torch.nn.Linear(4, 1)
    assert "head" not in vars(net) and not hasattr(net.module, "head")
    assert isinstance(net[0], attrib.core.envoy.Envoy)


@pytest.mark.parametrize("index", [1.5, None, (0, 1)])
def test_indexing_with_a_non_integer_is_refused(index):
    net = attrib.Model(mlp())
    with pytest.raises(attrib.ModulePathError, match=r"model\[.*\] is not a submodule: index model with an integer"):
        net[index]


@pytest.mark.parametrize("value, what", [
    (torch.zeros(2, 4, dtype=torch.float32), r"dtype torch\.float32; expected dtype torch\.float64"),
    (torch.zeros(2, 5, dtype=torch.float64), r"shape \(2, 5\); expected shape \(2, 4\)"),
    (torch.zeros(2, 4, dtype=torch.float64, device="meta"), r"device meta; expected device cpu"),
])
def test_a_module_value_assigned_another_shape_dtype_or_device_is_refused(value, what, leakcheck):
    module = mlp()
    net = attrib.Model(module)
    check = leakcheck(module)
    before = module(X).detach()
    with pytest.raises(attrib.ValueEditError, match=r"model\[0\]\.output was assigned a tensor of " + what):
        with net.trace(X):
            net[0].output = value
    check.assert_clean()
    torch.testing.assert_close(module(X).detach(), before, rtol=0, atol=0)
    with net.trace(X):                                   # the same shape, dtype and device: replaced
        net[0].output = torch.zeros(2, 4, dtype=torch.float64)
        y = net.output.save()
    torch.testing.assert_close(y, module[2](torch.tanh(torch.zeros(2, 4, dtype=torch.float64))))


@pytest.mark.parametrize("in_context", [True, False])
def test_backward_inputs_that_are_not_tensors_are_refused(in_context):
    net = attrib.Model(mlp())
    with pytest.raises(attrib.GradientValueError, match=r"backward\(inputs=\.\.\.\) takes tensors"):
        with net.trace(X):
            loss = net.output.sum()
            if in_context:
                with loss.backward(inputs=[3]):
                    pass
            else:
                loss.backward(inputs=[3])


def test_a_float32_input_to_a_float64_model_names_the_dtypes(leakcheck):
    module = mlp()
    net = attrib.Model(module)
    check = leakcheck(module)
    with pytest.raises(attrib.InputError, match=r"input tensor of shape \(2, 3\) is torch\.float32, but the model's "
                                                r"parameters are torch\.float64.*\.to\(torch\.float64\)"):
        with net.trace(X.float()):
            net.output.save()
    check.assert_clean()
