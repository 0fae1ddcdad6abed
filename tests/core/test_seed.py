"""Every code example of NNsight's Gradients page (the page the project started from), run as written with only the import and the
model changed, executed through ``exec`` (the ``with`` detection must work without source files).

Transformers 5 decoder layers return a Tensor, not a tuple, so the page's ``h[-1].output[0]``
(the hidden states inside a tuple in transformers 4) is ``h[-1].output`` here; ``LAYER`` is
substituted with the model's last-layer path.
"""

from __future__ import annotations

import pytest
import torch

import attrib
from tests.conftest import tiny_hf

SUMMARY = """
with model.trace(input):
    hidden_states = LAYER.output.save()
    logits = model.output.logits.save()
    with logits.sum().backward():
        grad = logits.grad.save()
    with hidden_states.sum().backward():
        hidden_states.grad[:] = 0
"""

ACCESS = """
with model.trace(prompt):
    logits = model.output.logits
    with logits.sum().backward():
        grad = logits.grad.save()
print(grad)
"""

RETAIN = """
with model.trace(prompt):
    hidden_states = LAYER.output.save()
    hidden_states.retain_grad()
    logits = model.output.logits.save()
    logits.sum().backward()
print(hidden_states.grad)
"""

MULTIPLE = """
with model.trace(prompt):
    hidden_states = LAYER.output.save()
    hidden_states.retain_grad()
    logits = model.output.logits
    logits.sum().backward(retain_graph=True)
    print(hidden_states.grad)
    logits.sum().backward(retain_graph=True)
    print(hidden_states.grad)
    logits.sum().backward()
print(hidden_states.grad)
"""

INTERVENE = """
with model.trace(prompt) as tracer:
    hidden_states = LAYER.output.save()
    logits = model.output.logits
    with logits.sum().backward():
        logits_grad = logits.grad.save() #  <-reverse order
        hidden_states_grad_before = hidden_states.grad.clone().save()
        hidden_states.grad[:] = 0
        hidden_states_grad_after = hidden_states.grad.save()
print("Before", hidden_states_grad_before)
print("After", hidden_states_grad_after)
"""


def run(code: str, model: attrib.LanguageModel | attrib.Model, layer: str, prompt) -> tuple[dict, list]:
    printed: list = []
    namespace = {"model": model, "prompt": prompt, "input": prompt, "torch": torch,
                 "print": lambda *args: printed.append(args[-1])}
    exec(compile(code.replace("LAYER", layer), "<seed example>", "exec"), namespace)
    return namespace, printed


def reference_hidden_grad(hf: torch.nn.Module, layer: torch.nn.Module, kwargs: dict) -> torch.Tensor:
    """d logits.sum() / d last layer output with plain hooks and retain_grad."""
    store = {}
    handle = layer.register_forward_hook(lambda m, a, out: store.setdefault("h", out))
    try:
        logits = hf(**kwargs).logits
    finally:
        handle.remove()
    store["h"].retain_grad()
    logits.sum().backward()
    hf.zero_grad(set_to_none=True)
    return store["h"].grad


CASES = [pytest.param("tiny", id="tiny-gpt2-float64"),
         pytest.param("demo", id="smollm2-135m", marks=pytest.mark.slow)]


@pytest.fixture(params=CASES)
def setup(request):
    if request.param == "tiny":
        hf = tiny_hf("gpt2")
        model = attrib.Model(hf)
        prompt = torch.tensor([[3, 14, 15, 9, 26, 5]])
        return model, "model.transformer.h[-1]", prompt, hf.transformer.h[-1], {"input_ids": prompt}
    model = request.getfixturevalue("demo")
    prompt = "The capital of France is"
    return model, "model.model.layers[-1]", prompt, model.module.model.layers[-1], model.tokenize(prompt)


def test_summary_example(setup, leakcheck):
    model, layer, prompt, layer_module, kwargs = setup
    check = leakcheck(model.module)
    ns, _ = run(SUMMARY, model, layer, prompt)
    assert torch.equal(ns["grad"], torch.ones_like(ns["logits"]))
    check.assert_clean()


def test_accessing_gradients_prints_ones(setup):
    model, layer, prompt, _, kwargs = setup
    _, printed = run(ACCESS, model, layer, prompt)
    (grad,) = printed
    vocab = model.module.config.vocab_size
    assert grad.shape == (1, kwargs["input_ids"].shape[-1], vocab)
    assert torch.equal(grad, torch.ones_like(grad))


def test_bare_backward_with_retain_grad(setup):
    model, layer, prompt, layer_module, kwargs = setup
    _, printed = run(RETAIN, model, layer, prompt)
    (grad,) = printed
    expected = reference_hidden_grad(model.module, layer_module, kwargs)
    torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-6)
    assert grad.abs().sum() > 0


def test_multiple_bare_backwards_accumulate_1x_2x_3x(setup):
    model, layer, prompt, layer_module, kwargs = setup
    _, printed = run(MULTIPLE, model, layer, prompt)
    one, two, three = printed
    expected = reference_hidden_grad(model.module, layer_module, kwargs)
    torch.testing.assert_close(one, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(two, 2 * expected, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(three, 3 * expected, rtol=1e-6, atol=1e-5)


def test_intervening_zeroes_in_place(setup):
    model, layer, prompt, layer_module, kwargs = setup
    ns, printed = run(INTERVENE, model, layer, prompt)
    before, after = printed
    expected = reference_hidden_grad(model.module, layer_module, kwargs)
    torch.testing.assert_close(before, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(after, torch.zeros_like(after))
    assert torch.equal(ns["logits_grad"], torch.ones_like(ns["logits_grad"]))
    assert before.abs().sum() > 0


def test_seed_example_under_python_dash_c(tmp_path):
    """`python -c` has no source file to read; the with-detection uses bytecode."""
    import subprocess
    import sys

    code = (
        "import torch, attrib\n"
        "from tests.conftest import tiny_hf\n"
        "model = attrib.Model(tiny_hf('gpt2'))\n"
        "prompt = torch.tensor([[3, 14, 15]])\n"
        + INTERVENE.replace("LAYER", "model.transformer.h[-1]").replace(
            'print("Before", hidden_states_grad_before)\nprint("After", hidden_states_grad_after)',
            "print(bool(hidden_states_grad_before.abs().sum() > 0), bool(hidden_states_grad_after.abs().sum() == 0))")
    )
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "True True"


# The page's "syntax prior to v0.5" note: .grad read first, a plain .backward() called later in the trace.
PRE_05 = """
with model.trace("Hello World") as tracer:
    hidden_states = LAYER.output.save()
    hidden_states_grad = LAYER.output.grad.save()
    model.output.logits.sum().backward()
print(hidden_states)
print(hidden_states_grad)
"""


def test_pre_05_syntax_reads_the_gradient_of_a_later_backward(setup, leakcheck):
    model, layer, prompt, layer_module, kwargs = setup
    check = leakcheck(model.module)
    code = PRE_05 if isinstance(prompt, str) else PRE_05.replace('"Hello World"', "prompt")
    ns, printed = run(code, model, layer, prompt)
    if not isinstance(prompt, str):
        expected = reference_hidden_grad(model.module, layer_module, kwargs)
    else:
        expected = reference_hidden_grad(model.module, layer_module, model.tokenize("Hello World"))
    torch.testing.assert_close(printed[1], expected, rtol=1e-6, atol=1e-6)
    assert printed[1].abs().sum() > 0
    check.assert_clean()


def test_pre_05_syntax_without_a_backward_is_an_error(setup, leakcheck):
    model, layer, prompt, _, _ = setup
    check = leakcheck(model.module)
    code = """
with model.trace(prompt):
    g = LAYER.output.grad.save()
"""
    with pytest.raises(attrib.AttribError, match=r"no backward reached it"):
        run(code, model, layer, prompt)
    check.assert_clean()
    ns, _ = run(ACCESS, model, layer, prompt)             # reusable afterwards
