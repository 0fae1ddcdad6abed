"""Faults injected at random (seeded) points of every batched method and of traces: out-of-memory errors,
KeyboardInterrupt, and the model's own exceptions. The promise (docs/methods.md, docs/core.md): with
``batch_size=None`` a batched pass that runs out of memory is halved and retried, giving the un-faulted result;
a size the caller chose is kept and the error reaches the caller, as does any error of a pass that cannot be
halved; every other exception keeps its own type; and after any of them the model is clean and gives the same
results again. (tests/methods/test_failed_pass.py checks that a failed pass's tensors are freed.)"""

from __future__ import annotations

import contextlib
import itertools
import random
import sys
from typing import Any, Callable

import greenlet
import pytest
import torch

import attrib
from attrib.methods import planning
from tests.conftest import WordTokenizer, live_greenlets, tiny_hf

from . import badcases
from .badcases import assert_clean, recording_greenlets, snapshot

_one_thread = badcases.one_thread

PROMPTS = torch.tensor([[3, 14, 15, 9, 26, 5], [7, 1, 15, 9, 2, 5]])
FOUR = torch.tensor([[3, 14, 15, 9, 26, 5], [7, 1, 15, 9, 2, 5], [3, 3, 3, 9, 2, 5], [8, 1, 1, 1, 2, 4]])
CLEAN, CORRUPT = PROMPTS[:1], torch.tensor([[3, 14, 7, 9, 26, 5]])
SEEDS = range(3)


@pytest.fixture
def lm():
    """A fresh model per test: the batch size that fitted is remembered per module, so no test sees another's."""
    return attrib.LanguageModel(tiny_hf("gpt2"), WordTokenizer())


class _Forgetful:
    """A plan store that keeps nothing: every call plans afresh."""

    def setdefault(self, key: Any, default: dict) -> dict:
        return {}


@pytest.fixture(autouse=True)
def same_passes_every_call(monkeypatch):
    """Faults are injected at the k-th pass of a call, found from an unfaulted call: every call must run the
    same passes. So no plan is kept from call to call, and every pass seems to take one second (the CPU
    planner's sizes then depend on nothing that varies from run to run)."""
    ticks = itertools.count()
    monkeypatch.setattr(planning, "clock", lambda: float(next(ticks)))
    monkeypatch.setattr(planning, "_plans", _Forgetful())


METHODS: dict[str, Callable[[attrib.LanguageModel, Any], Any]] = {
    "integrated_gradients": lambda m, bs: attrib.integrated_gradients(m, PROMPTS, target=3, n_steps=6, batch_size=bs),
    "layer_integrated_gradients": lambda m, bs: attrib.integrated_gradients(m, PROMPTS, target=3, n_steps=6,
                                                                            layer="resid_post.0", batch_size=bs),
    "saliency": lambda m, bs: attrib.saliency(m, FOUR, target=3, batch_size=bs),
    "smoothgrad": lambda m, bs: attrib.saliency(m, PROMPTS, target=3, smooth=6, seed=0, batch_size=bs),
    "attribution_patching": lambda m, bs: attrib.attribution_patching(m, CLEAN, CORRUPT, target=3, batch_size=bs),
    "activation_patching": lambda m, bs: attrib.activation_patching(m, CLEAN, CORRUPT, target=3, batch_size=bs,
                                                                    components=("resid", "heads")),
}
GRADIENT_METHODS = [name for name in METHODS if name != "activation_patching"]
LIMIT = 5        # rows a simulated device holds: larger batched passes run out of memory (so there are several)


def values(result: Any) -> list[torch.Tensor]:
    """Every number of a result (or a list of results), for comparisons."""
    if isinstance(result, list):
        return [t for r in result for t in values(r)]
    if isinstance(result, attrib.PatchingResult):
        return [*(result.scores[k] for k in sorted(result.scores)),
                torch.tensor([result.metric_clean, result.metric_corrupted], dtype=torch.float64)]
    return [result.values, result.scores] + ([] if result.delta is None else [result.delta])


def assert_same(a: Any, b: Any, exact: bool = True) -> None:
    for x, y in zip(values(a), values(b), strict=True):
        if exact:
            assert torch.equal(x, y)
        else:      # other batch sizes: each row's pass is the same, the floating-point order may differ
            torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)


def batched_pass() -> bool:
    """Whether the current forward is one of a method's batched passes (those that batch_size splits): the
    method's frames are those of the greenlet that runs the trace's block, the parent of the model's."""
    let, frame = greenlet.getcurrent(), sys._getframe(1)
    while True:
        while frame is not None:
            if frame.f_code.co_name in ("run_rows", "_patched"):
                return True
            frame = frame.f_back
        let = let.parent
        if let is None:
            return False
        frame = let.gr_frame


class Faults:
    """A hook on GPT-2's last layer (one call per forward pass): records each pass's rows and whether it is
    batched; raises ``error()`` at pass ``at`` (forward, or that pass's backward when ``in_backward``), and a
    simulated out-of-memory error for every batched pass of more than ``limit`` rows."""

    def __init__(self, hf: torch.nn.Module, at: int | None = None, error: Callable[[], BaseException] | None = None,
                 in_backward: bool = False, limit: int | None = None) -> None:
        self.at, self.error, self.in_backward, self.limit = at, error, in_backward, limit
        self.passes: list[tuple[int, bool]] = []      # (rows, batched) of each pass that ran its layer
        self.grad_passes: list[tuple[int, bool]] = []  # the same, of the passes with a backward (in their order)
        self.backwards = 0
        self.fired = 0
        self.handle = hf.transformer.h[-1].register_forward_hook(self._forward)

    def _forward(self, module, args, output):
        rows, batched = args[0].shape[0], batched_pass()
        if self.limit is not None and batched and rows > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated): {rows} rows")
        index = len(self.passes)
        self.passes.append((rows, batched))
        if index == self.at and self.error is not None and not self.in_backward:
            self.fired += 1
            raise self.error()
        if self.in_backward:
            out = output if isinstance(output, torch.Tensor) else output[0]
            if out.requires_grad:
                self.grad_passes.append((rows, batched))
                new = _Backward.apply(out, self)
                return new if isinstance(output, torch.Tensor) else (new, *output[1:])
        return None

    def backward_called(self) -> None:
        index = self.backwards
        self.backwards += 1
        if index == self.at and self.error is not None:
            self.fired += 1
            raise self.error()

    def remove(self) -> None:
        self.handle.remove()


class _Backward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, faults):
        ctx.faults = faults
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.faults.backward_called()
        return grad, None


@contextlib.contextmanager
def injected(hf: torch.nn.Module, **kwargs: Any):
    faults = Faults(hf, **kwargs)
    try:
        yield faults
    finally:
        faults.remove()


@contextlib.contextmanager
def clean_after(model: attrib.Model):
    """The model is clean after the block, whatever the block raised."""
    before = snapshot([model.module])
    with recording_greenlets() as made:
        try:
            yield
        finally:
            assert_clean([model.module], before, made)


def oom() -> BaseException:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")


def cuda_oom() -> BaseException:
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")


# -- out of memory -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_out_of_memory_at_a_random_pass_with_batch_size_none(lm, method, seed):
    """A batched pass is halved and retried (the un-faulted result); a pass that cannot be halved (one row, or
    not batched) lets the error reach the caller."""
    run = METHODS[method]
    with injected(lm.module, limit=LIMIT) as counting:       # the passes of a run under the simulated memory limit
        reference = run(lm, None)
    passes = counting.passes
    assert any(batched for _, batched in passes) or method == "attribution_patching"
    at = random.Random(f"{method}-{seed}").randrange(len(passes))
    rows, batched = passes[at]
    error = oom if seed % 2 else cuda_oom
    with clean_after(lm), injected(lm.module, at=at, error=error, limit=LIMIT) as faults:
        if batched and rows > 1:
            result = run(lm, None)
            assert_same(result, reference, exact=False)
            assert faults.fired == 1 and len(faults.passes) > len(passes)      # the failed rows ran again, halved
        else:
            with pytest.raises(torch.OutOfMemoryError, match="simulated"):
                run(lm, None)
            assert faults.fired == 1
    assert_same(run(lm, None), reference, exact=False)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_out_of_memory_with_a_chosen_batch_size_reaches_the_caller(lm, method, seed):
    run = METHODS[method]
    with injected(lm.module) as counting:
        reference = run(lm, 2)
    if method in ("attribution_patching",):
        assert [r for r, _ in counting.passes] == [1, 1]        # one forward per prompt, whatever batch_size is
    else:
        assert sum(b for _, b in counting.passes) >= 2 and max(r for r, _ in counting.passes) <= 2
    at = random.Random(f"{method}-{seed}").randrange(len(counting.passes))
    with clean_after(lm), injected(lm.module, at=at, error=oom) as faults:
        with pytest.raises(torch.OutOfMemoryError, match="simulated"):
            run(lm, 2)
    assert faults.fired == 1 and len(faults.passes) == at + 1        # no retry: it stopped at the failed pass
    assert_same(run(lm, 2), reference)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_out_of_memory_in_a_random_backward(lm, method, seed):
    """Out of memory in the backward of a pass: retried like the forward's when that pass is batched."""
    run = METHODS[method]
    with injected(lm.module, in_backward=True) as counting:
        reference = run(lm, None)
    assert counting.backwards == len(counting.grad_passes) >= 1
    at = random.Random(f"{method}-{seed}").randrange(counting.backwards)
    rows, batched = counting.grad_passes[at]
    with clean_after(lm), injected(lm.module, at=at, error=oom, in_backward=True) as faults:
        if batched and rows > 1:
            assert_same(run(lm, None), reference, exact=False)
        else:
            with pytest.raises(torch.OutOfMemoryError, match="simulated"):
                run(lm, None)
    assert faults.fired == 1
    assert_same(run(lm, None), reference, exact=False)


# Passes that ran unbatched before (their out-of-memory error was not halved): layer IG's values of the layer on
# the inputs and on the baseline (passes 0 and 1), and the prediction pass of target=None (pass 0).
UNBATCHED_BEFORE = {
    "layer IG value on the inputs": (lambda m, bs: attrib.integrated_gradients(
        m, FOUR, target=3, n_steps=2, layer="resid_post.0", batch_size=bs), 0),
    "layer IG value on the baseline": (lambda m, bs: attrib.integrated_gradients(
        m, FOUR, target=3, n_steps=2, layer="resid_post.0", baseline="pad", batch_size=bs), 1),
    "IG prediction of target=None": (lambda m, bs: attrib.integrated_gradients(
        m, FOUR, target=None, n_steps=2, batch_size=bs), 0),
    "saliency prediction of target=None": (lambda m, bs: attrib.saliency(m, FOUR, target=None, batch_size=bs), 0),
}


@pytest.mark.parametrize("name", sorted(UNBATCHED_BEFORE))
def test_out_of_memory_in_a_value_or_prediction_pass_is_halved(lm, name):
    """Each such pass is batched like the method's other passes: with batch_size=None an out-of-memory error
    halves it and the result is the un-faulted one; with a chosen batch_size it runs in batches of that size and
    the error reaches the caller with its own type (never turned into an attrib error)."""
    run, at = UNBATCHED_BEFORE[name]
    with injected(lm.module) as counting:
        reference = run(lm, None)
    assert counting.passes[at] == (4, True)
    with clean_after(lm), injected(lm.module, at=at, error=cuda_oom) as faults:
        assert_same(run(lm, None), reference, exact=False)
    assert faults.fired == 1 and faults.passes[at + 1] == (2, True) and faults.passes[at + 2] == (2, True)
    with injected(lm.module) as counting:
        chosen = run(lm, 2)
    assert counting.passes[at] == (2, True) and counting.passes[at + 1] == (2, True)
    assert_same(chosen, reference, exact=False)
    with clean_after(lm), injected(lm.module, at=at, error=oom) as faults:
        with pytest.raises(torch.OutOfMemoryError, match="simulated") as info:
            run(lm, 2)
    assert type(info.value) is torch.OutOfMemoryError and faults.fired == 1


def test_the_models_own_exception_in_layer_igs_baseline_pass_keeps_its_type(lm):
    """The model raising on the baseline (and not on the inputs) is the model's error, not an attrib one."""
    run, at = UNBATCHED_BEFORE["layer IG value on the baseline"]
    reference = run(lm, None)
    with clean_after(lm), injected(lm.module, at=at, error=lambda: ModelBug("the model refused the baseline")):
        with pytest.raises(ModelBug, match="refused the baseline") as info:
            run(lm, None)
    assert type(info.value) is ModelBug
    assert_same(run(lm, None), reference)


# -- KeyboardInterrupt ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("method, where", [(m, "forward") for m in sorted(METHODS)]
                         + [(m, "backward") for m in sorted(GRADIENT_METHODS)])
def test_keyboard_interrupt_in_a_random_pass_of_a_method(lm, method, seed, where):
    """From a module's forward or from a backward, in any pass of the method's batch loop."""
    run = METHODS[method]
    with injected(lm.module, in_backward=where == "backward") as counting:
        reference = run(lm, 3)
    n = counting.backwards if where == "backward" else len(counting.passes)
    at = random.Random(f"{method}-{seed}-{where}").randrange(n)
    with clean_after(lm), injected(lm.module, at=at, error=KeyboardInterrupt, in_backward=where == "backward") as f:
        with pytest.raises(KeyboardInterrupt):
            run(lm, 3)
    assert f.fired == 1
    assert_same(run(lm, 3), reference)


MODULES = ["transformer.wte", "transformer.wpe", "transformer.h.0.attn", "transformer.h.0.mlp", "transformer.h.0",
           "transformer.h.1.attn", "transformer.h.1.mlp", "transformer.h.1", "transformer.ln_f", "lm_head"]


def envoy(model: attrib.Model, path: str):
    obj = model
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def raising(error: Callable[[], BaseException]):
    def hook(module, args, output):
        raise error()
    return hook


def first(value):
    return value if isinstance(value, torch.Tensor) else value[0]


def traced(model: attrib.Model, stop: tuple[str, int] | None = None,
           error: Callable[[], BaseException] = KeyboardInterrupt) -> list[torch.Tensor]:
    """Read every module of MODULES in order, then the gradients of the layers in reverse order; raise
    ``error`` in the block at ``stop`` = ("forward", i) after the i-th read, or ("backward", i) after the i-th
    gradient read."""
    saved = []
    with model.trace(CLEAN):
        outs = []
        for i, path in enumerate(MODULES):
            outs.append(first(envoy(model, path).output))
            saved.append(outs[-1].detach().clone().save())
            if stop == ("forward", i):
                raise error()
        logits = model.output.logits
        with logits[0, -1, 3].backward():
            for i, out in enumerate(reversed(outs[2:])):
                saved.append(out.grad.clone().save())
                if stop == ("backward", i):
                    raise error()
    return saved


@pytest.mark.parametrize("seed", range(6))
def test_keyboard_interrupt_at_a_random_point_of_a_trace_block(lm, seed):
    reference = traced(lm)
    rng = random.Random(seed)
    stop = ("forward", rng.randrange(len(MODULES))) if seed % 2 else ("backward", rng.randrange(len(MODULES) - 2))
    with clean_after(lm):
        with pytest.raises(KeyboardInterrupt):
            traced(lm, stop)
    again = traced(lm)
    assert len(again) == len(reference) and all(torch.equal(a, b) for a, b in zip(again, reference))


@pytest.mark.parametrize("seed", range(4))
def test_keyboard_interrupt_from_a_random_module_of_a_trace(lm, seed):
    """KeyboardInterrupt from the model's own code (a module's forward hook) while the block waits for a value."""
    reference = traced(lm)
    module = lm.module.get_submodule(MODULES[random.Random(seed).randrange(len(MODULES))])
    handle = module.register_forward_hook(raising(KeyboardInterrupt))
    try:
        with clean_after(lm):
            with pytest.raises(KeyboardInterrupt):
                traced(lm)
    finally:
        handle.remove()
    again = traced(lm)
    assert all(torch.equal(a, b) for a, b in zip(again, reference, strict=True))


# -- the model's own exceptions -----------------------------------------------------------------------------
class ModelBug(ValueError):
    pass


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_models_own_exception_in_a_method_keeps_its_type(lm, method, seed):
    run = METHODS[method]
    with injected(lm.module) as counting:
        reference = run(lm, 3)
    at = random.Random(f"{method}-{seed}-bug").randrange(len(counting.passes))
    with clean_after(lm), injected(lm.module, at=at, error=lambda: ModelBug("the model's own check failed")):
        with pytest.raises(ModelBug, match="own check failed"):
            run(lm, 3)
    assert_same(run(lm, 3), reference)


@pytest.mark.parametrize("seed", range(6))
def test_the_models_own_exception_mid_trace_keeps_its_type(lm, seed):
    """A module that raises ValueError on its call: the user sees ValueError (not an attrib wrapper), at any
    point of the block, and the next trace gives the same values."""
    reference = traced(lm)
    rng = random.Random(seed)
    path = MODULES[rng.randrange(len(MODULES))]
    handle = lm.module.get_submodule(path).register_forward_hook(raising(lambda: ModelBug(f"{path} refused its input")))
    try:
        with clean_after(lm):
            with pytest.raises(ModelBug, match="refused its input") as info:
                traced(lm)
    finally:
        handle.remove()
    assert type(info.value) is ModelBug
    again = traced(lm)
    assert all(torch.equal(a, b) for a, b in zip(again, reference, strict=True))


def test_the_users_exception_in_a_backward_context_keeps_its_type(lm):
    reference = traced(lm)
    with clean_after(lm):
        with pytest.raises(ModelBug):
            traced(lm, ("backward", 3), error=lambda: ModelBug("user code"))
    assert all(torch.equal(a, b) for a, b in zip(traced(lm), reference, strict=True))


def test_no_greenlet_outlives_the_faults():
    """The full scan (gc), once, after every fault above."""
    assert live_greenlets() == []
