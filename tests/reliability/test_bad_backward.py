"""Bad uses of backward contexts and gradient edits (``with loss.backward():`` in a trace, ``.grad`` reads and
assignments, the pre-0.5 ``.grad`` form, plain ``backward()`` in a trace): each case raises one clear
AttribError subclass or gives a correct result, and leaves every model clean and computing bit-identical
logits (tests/reliability/badcases.py)."""

from __future__ import annotations

import pytest
import torch

from attrib import (GradientValueError, GraphFreedError, NestedBackwardError, NoGradError, NonScalarLossError,
                    NotOnPathError, OutOfOrderError, PendingGradError)

from . import badcases
from .badcases import IDS, Case, close, correct, error, ids_of, run_case

_one_thread = badcases.one_thread


# -- bodies of backward contexts -------------------------------------------------------------------------
def context(body, loss=lambda logits: logits[0, -1, 3], model_name="gpt2", **kwargs):
    """In a trace of the named LM: read layers 0 and 1 and the logits, then ``with loss.backward(**kwargs):
    body(h0, h1, logits)``."""
    def call(m):
        model = getattr(m, model_name)
        layers = model.transformer.h if model_name == "gpt2" else model.model.layers
        with model.trace(IDS):
            h0 = layers[0].output
            h1 = layers[1].output
            logits = model.output.logits
            with loss(logits).backward(**kwargs):
                return body(h0, h1, logits)
    return call


def nothing(h0, h1, logits):
    return None


def no_grad_loss(m):
    with torch.no_grad():
        with m.gpt2.trace(IDS):
            logits = m.gpt2.output.logits
            with logits.sum().backward():
                pass


def nested_contexts(m):
    with m.gpt2.trace(IDS):
        logits = m.gpt2.output.logits
        with logits.sum().backward(retain_graph=True):
            with logits.sum().backward():
                pass


def freed_graph(m):
    with m.gpt2.trace(IDS):
        h = m.gpt2.transformer.h[0].output
        logits = m.gpt2.output.logits
        with logits.sum().backward():
            h.grad
        with logits.sum().backward():
            h.grad


def assign_grad(value_of):
    def body(h0, h1, logits):
        h1.grad = value_of(h1)
    return body


def never_filled(m):
    with m.gpt2.trace(IDS):
        h = m.gpt2.transformer.h[0].output
        h.grad.save()


def pending_used(m):
    with m.gpt2.trace(IDS):
        h = m.gpt2.transformer.h[0].output
        g = h.grad
        g * 2


def plain_backward(loss_of):
    def call(m):
        with m.gpt2.trace(IDS):
            logits = m.gpt2.output.logits
            loss_of(logits).backward()
    return call


def plain_twice(m):
    with m.gpt2.trace(IDS):
        logits = m.gpt2.output.logits
        logits.sum().backward()
        logits.sum().backward()


def user_leaf(m):
    with m.gpt2.trace(IDS):
        logits = m.gpt2.output.logits
        leaf = torch.ones(3, dtype=torch.float64, requires_grad=True)
        with (logits.sum() + leaf.sum()).backward():
            leaf.grad


def ids_grad(m):
    with m.gpt2.trace(IDS):
        ids = m.gpt2.transformer.wte.input
        logits = m.gpt2.output.logits
        with logits.sum().backward():
            ids.grad


def batch_row_grad(m):
    with m.gpt2.trace(IDS):
        row = m.gpt2.transformer.h[-1].output[0]     # a new tensor the model never uses
        logits = m.gpt2.output.logits
        with logits.sum().backward():
            row.grad


def plain_context(body, **kwargs):
    def call(m):
        with m.mlp.trace(m.x):
            h = m.mlp[0].output
            out = m.mlp.output
            with out[:, 0].sum().backward(**kwargs):
                return body(h, out)
    return call


def cnn_context(body):
    def call(m):
        with m.cnn.trace(m.img):
            h = m.cnn.conv.output
            out = m.cnn.output
            with out[0, 1].backward():
                return body(h, out)
    return call


# -- correct results -------------------------------------------------------------------------------------
def grad_after_context(m):
    with m.gpt2.trace(IDS):
        h = m.gpt2.transformer.h[0].output
        logits = m.gpt2.output.logits
        with logits[0, -1, 3].backward():
            pass
    return h.grad


def check_grad_after_context(m, got):
    hf = m.gpt2.module
    store = []
    handle = hf.transformer.h[0].register_forward_hook(lambda _m, _a, out: store.append(out))
    try:
        logits = hf(IDS).logits
    finally:
        handle.remove()
    close(got, torch.autograd.grad(logits[0, -1, 3], store[0])[0])


def zeroed_grad_flows_back(h0, h1, logits):
    h1.grad[:] = 0
    return h0.grad.clone().save()


CASES: list[Case] = [
    error("non-scalar loss", NonScalarLossError, r"loss of shape \(1, 6, 50\) and no gradient.*loss\.sum\(\)",
          context(nothing, loss=lambda logits: logits)),
    error("gradient= of the wrong shape", GradientValueError, r"backward\(gradient=\.\.\.\) expected shape \(\) like "
          r"the loss, got \(3,\)", context(nothing, gradient=torch.ones(3, dtype=torch.float64))),
    error("plain gradient= of the wrong shape", GradientValueError, r"backward\(gradient=\.\.\.\) expected shape "
          r"\(\).*got \(2,\)", plain_context(lambda h, out: None, gradient=torch.ones(2, dtype=torch.float64))),
    error("loss computed without grad", NoGradError, r"needs a loss that requires grad.*torch\.no_grad\(\)",
          no_grad_loss),
    error("integer loss", NoGradError, r"needs a loss that requires grad",
          context(nothing, loss=lambda lg: lg.argmax())),
    error("nested contexts", NestedBackwardError, r"backward contexts cannot be nested", nested_contexts),
    error("second context over a freed graph", GraphFreedError, r"already freed; pass retain_graph=True", freed_graph),
    error("gradients in execution order", OutOfOrderError, r"gradient of model\.transformer\.h\[1\]\.output was read "
          r"after the backward pass had computed it \(it was at model\.transformer\.h\[0\]\.output\)",
          context(lambda h0, h1, lg: (h0.grad, h1.grad))),
    error("gradient read again after moving on", OutOfOrderError, r"gradient of model\.transformer\.h\[1\]\.output was"
          r" read after", context(lambda h0, h1, lg: (h1.grad, h0.grad, h1.grad))),
    error("llama gradients in execution order", OutOfOrderError, r"gradient of model\.model\.layers\[1\]\.output was "
          r"read after", context(lambda h0, h1, lg: (h0.grad, h1.grad), model_name="llama")),
    error("plain gradients in execution order", OutOfOrderError, r"gradient of model\.output was read after.*it was "
          r"at model\[0\]\.output", plain_context(lambda h, out: (h.grad, out.grad))),
    error("gradient of a detached value", NotOnPathError, r"gets no gradient from this backward: it does not require "
          r"grad", context(lambda h0, h1, lg: h0.detach().grad)),
    error("gradient of a value off the loss's path", NotOnPathError, r"not on the path from the loss",
          context(lambda h0, h1, lg: (h0 * 2).grad)),
    error("gradient of a batch row of a layer output", NotOnPathError, r"not on the path from the loss.*output\[0\]",
          batch_row_grad),
    error("gradient of the token ids", NotOnPathError, r"model\.transformer\.wte\.input gets no gradient.*does not "
          r"require grad", ids_grad),
    error("gradient of a user's leaf", NotOnPathError, r"leaf that was not read in the trace.*backward\(inputs=\[",
          user_leaf),
    error("gradient set to a float", GradientValueError, r"gradient of model\.transformer\.h\[1\]\.output must be set "
          r"to a tensor, got float", context(assign_grad(lambda h: 3.0))),
    error("gradient set to None", GradientValueError, r"gradient of model\.transformer\.h\[1\]\.output must be set to "
          r"a tensor, got NoneType", context(assign_grad(lambda h: None))),
    error("gradient set to another dtype", GradientValueError, r"gradient of model\.transformer\.h\[1\]\.output was "
          r"assigned a tensor of dtype torch\.float32; expected dtype torch\.float64",
          context(assign_grad(lambda h: torch.zeros(1, 6, 32)))),
    error("gradient set to another shape", GradientValueError, r"assigned a tensor of shape \(3,\); expected shape "
          r"\(1, 6, 32\)", context(assign_grad(lambda h: torch.zeros(3, dtype=torch.float64)))),
    error("llama gradient set to another shape", GradientValueError, r"gradient of model\.model\.layers\[1\]\.output "
          r"was assigned a tensor of shape \(6, 32\)", context(assign_grad(lambda h: torch.zeros(6, 32,
                                                                                              dtype=torch.float64)),
                                                               model_name="llama")),
    error("CNN gradient set to another shape", GradientValueError, r"gradient of model\.conv\.output was assigned a "
          r"tensor of shape \(1, 2, 4, 4\); expected shape \(1, 2, 5, 5\)",
          cnn_context(lambda h, out: setattr(h, "grad", torch.zeros(1, 2, 4, 4, dtype=torch.float64)))),
    error("promised gradient never filled", NoGradError, r"\.grad was read before any backward.*no backward reached it",
          never_filled),
    error("promised gradient used before its backward", PendingGradError, r"read before any backward ran.*\(mul used "
          r"it\)", pending_used),
    error("plain backward of a detached loss", NoGradError, r"backward\(\) was called on a tensor that does not require"
          r" grad", plain_backward(lambda logits: logits.detach().sum())),
    error("plain backward of a non-scalar", NonScalarLossError, r"backward\(\) was called on a non-scalar tensor",
          plain_backward(lambda logits: logits)),
    error("plain backward twice", GraphFreedError, r"already freed; pass retain_graph=True", plain_twice,
          param_grads=True),
    # correct results
    correct("a value's .grad after its context", grad_after_context, check_grad_after_context),
    correct("a zeroed gradient flows back as zero", context(zeroed_grad_flows_back),
            lambda m, got: close(got, torch.zeros(1, 6, 32, dtype=torch.float64))),
]


@pytest.mark.parametrize("case", CASES, ids=ids_of(CASES))
def test_bad_backward_use(case):
    run_case(case)
