"""Property test: random sequences of forward reads/edits and gradient reads/edits either match the
plain-hook reference exactly or raise OutOfOrderError at the first illegal step — never hang, never None."""

from __future__ import annotations


import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attrib
from tests.conftest import no_hang, tiny_hf

# Modules whose output is a tensor, in execution order.
MODULES = ["transformer.wte", "transformer.wpe", "transformer.h.0.mlp", "transformer.h.0",
           "transformer.h.1.mlp", "transformer.h.1", "transformer.ln_f", "lm_head"]
HF = tiny_hf("gpt2")
MODEL = attrib.Model(HF)
IDS = torch.tensor([[3, 14, 15, 9, 26]])


def loss_of(logits: torch.Tensor) -> torch.Tensor:
    return logits[0, -1, 7] + 0.25 * logits[0, 2, 11]


def envoy(path: str):
    obj = MODEL
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def run_attrib(fwd, bwd):
    """Returns (forward values read, grads read, error step or None)."""
    values, grads = {}, []
    step = 0
    try:
        with MODEL.trace(IDS):
            for idx, scale in fwd:
                e = envoy(MODULES[idx])
                v = e.output
                if scale is not None:
                    e.output = v * scale
                values[idx] = e.output
                step += 1
            logits = MODEL.output.logits
            with loss_of(logits).backward():
                for idx, scale in bwd:
                    t = values[idx]
                    g = t.grad
                    assert g is not None
                    grads.append((idx, g.clone()))
                    if scale is not None:
                        t.grad[:] = g * scale
                    step += 1
    except attrib.OutOfOrderError:
        return values, grads, step
    return values, grads, None


def legal_prefix(fwd, bwd):
    """How many steps are legal under the rules: values in execution order, an assignment only while the
    model is paused at that module (right after its first read), gradients in reverse execution order."""
    pos, seen = -1, set()
    n = 0
    for idx, scale in fwd:
        if idx not in seen and idx < pos:
            return n, False
        if idx in seen and scale is not None and idx != pos:
            return n, False
        pos = max(pos, idx)
        seen.add(idx)
        n += 1
    cur = None
    for idx, _ in bwd:
        if cur is not None and idx > cur:
            return n, False
        cur = idx
        n += 1
    return n, True


def total_scales(ops):
    """Product of the edit scales per module (edits compound on the current value)."""
    out = {}
    for idx, scale in ops:
        out[idx] = out.get(idx, 1.0) * (1.0 if scale is None else scale)
    return out


def expected_reads(pre, bwd):
    """Each gradient read returns the value flowing in, times the edits already made to it."""
    applied, out = {}, []
    for idx, scale in bwd:
        out.append((idx, pre[idx] * applied.get(idx, 1.0)))
        applied[idx] = applied.get(idx, 1.0) * (1.0 if scale is None else scale)
    return out


def reference(fwd, bwd):
    """The same edits with plain hooks; returns the gradient flowing into each read value (pre-edit)."""
    fwd_scale, grad_scale = total_scales(fwd), total_scales(bwd)
    store, seen_grads, handles = {}, {}, []
    for idx in fwd_scale:
        def hook(m, a, out, idx=idx):
            out = out * fwd_scale[idx]
            store[idx] = out
            return out
        handles.append(HF.get_submodule(MODULES[idx]).register_forward_hook(hook))
    try:
        logits = HF(input_ids=IDS).logits
    finally:
        for h in handles:
            h.remove()
    for idx in grad_scale:
        def ghook(g, idx=idx):
            seen_grads[idx] = g.clone()
            return g * grad_scale[idx]
        store[idx].register_hook(ghook)
    torch.autograd.grad(loss_of(logits), list(store.values()), allow_unused=True)
    return seen_grads


op = st.tuples(st.integers(0, len(MODULES) - 1), st.sampled_from([None, 0.0, 2.0, -1.5]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fwd=st.lists(op, min_size=1, max_size=6), bwd_picks=st.lists(
    st.tuples(st.integers(0, 5), st.sampled_from([None, 0.0, 3.0])), max_size=5))
def test_random_reads_and_edits_match_hooks_or_raise_out_of_order(fwd, bwd_picks):
    # gradient reads pick among the values read in the forward
    read = list(dict.fromkeys(i for i, _ in fwd))
    bwd = [(read[k % len(read)], s) for k, s in bwd_picks]
    n_legal, all_legal = legal_prefix(fwd, bwd)
    with no_hang(20):
        values, grads, error_step = run_attrib(fwd, bwd)
    if all_legal:
        assert error_step is None
    else:
        assert error_step == n_legal, (error_step, n_legal)
        if error_step < len(fwd):
            return                                   # the trace stopped in the forward
        bwd = bwd[: n_legal - len(fwd)]
    expected = expected_reads(reference(fwd, bwd), bwd)
    assert [i for i, _ in grads] == [i for i, _ in expected]
    for (_, g), (_, want) in zip(grads, expected):
        torch.testing.assert_close(g, want, rtol=1e-10, atol=1e-12)
    assert not torch.Tensor.__dict__.get("save") and "grad" not in torch.Tensor.__dict__
