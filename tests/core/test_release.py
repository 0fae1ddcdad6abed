"""A failed pass frees what it allocated as soon as its exception reaches the caller, without the cycle
collector: errors in the model, in the user's block, in a backward and in a backward context."""

from __future__ import annotations

import weakref

import pytest
import torch

import attrib
from attrib.core.release import is_oom, release

from ..conftest import tiny_hf


class Boom(Exception):
    pass


def first(output):
    return output if isinstance(output, torch.Tensor) else output[0]


def failing_backward(module, args, output):
    new = _FailingBackward.apply(first(output))
    return new if isinstance(output, torch.Tensor) else (new, *output[1:])


class Probe:
    """Forward hooks on a tiny GPT-2: layer 0's output is replaced by a fresh (large) tensor whose weak
    reference is kept; layer 1 raises when ``fail`` says so."""

    def __init__(self, hf: torch.nn.Module) -> None:
        self.refs: list[weakref.ref] = []
        self.fail: BaseException | None = None
        layers = hf.transformer.h
        self.handles = [layers[0].register_forward_hook(self._keep), layers[1].register_forward_hook(self._raise)]

    def _keep(self, module, args, output):
        big = first(output) * 1.0
        self.refs.append(weakref.ref(big))
        return big if isinstance(output, torch.Tensor) else (big, *output[1:])

    def _raise(self, module, args, output):
        if self.fail is not None:
            raise self.fail

    def alive(self) -> int:
        return sum(r() is not None for r in self.refs)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@pytest.fixture
def probed():
    hf = tiny_hf("gpt2")
    probe = Probe(hf)
    yield attrib.Model(hf), hf, probe, torch.tensor([[3, 14, 15, 9, 26, 5]])
    probe.remove()


def test_release_clears_finished_frames_and_chained_exceptions():
    refs = []

    def inner():
        t = torch.ones(10)
        refs.append(weakref.ref(t))
        raise ValueError("inner")

    def outer():
        try:
            inner()
        except ValueError:
            u = torch.ones(10)
            refs.append(weakref.ref(u))
            raise Boom("outer")       # __context__ is the ValueError, whose frames hold t

    with pytest.raises(Boom) as info:
        outer()
    assert [r() is not None for r in refs] == [True, True]    # the exception keeps both frames alive
    release(info.value)
    assert [r() is not None for r in refs] == [False, False]
    assert info.value.__context__.__traceback__ is not None   # the traceback (lines) is kept


def test_error_in_the_model_frees_its_tensors_before_the_caller_sees_it(probed, no_gc):
    model, hf, probe, ids = probed
    probe.fail = Boom("model")
    try:
        with model.trace(ids):
            model.output.save()
    except Boom:
        assert probe.refs and probe.alive() == 0
    else:
        pytest.fail("no error")
    assert probe.alive() == 0


def test_simulated_oom_in_the_model_frees_its_tensors(probed, no_gc):
    model, hf, probe, ids = probed
    probe.fail = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(torch.cuda.OutOfMemoryError) as info:
        with model.trace(ids):
            model.transformer.h[1].output
    assert is_oom(info.value)
    assert probe.refs and probe.alive() == 0


def test_error_in_the_block_while_the_model_is_paused(probed, no_gc):
    model, hf, probe, ids = probed
    try:
        with model.trace(ids):
            model.transformer.h[1].output      # the paused forward holds layer 0's output
            raise Boom("user")
    except Boom:
        assert probe.refs and probe.alive() == 0
    assert probe.alive() == 0


def test_error_in_a_helper_called_from_the_block(probed, no_gc):
    model, hf, probe, ids = probed

    def helper():
        h = model.transformer.h[1].input      # layer 0's output after the probe's hook: the probed tensor
        assert probe.alive() == 1 and h is probe.refs[0]()
        raise Boom(h.shape)

    try:
        with model.trace(ids):
            helper()
    except Boom:
        assert probe.alive() == 0          # the helper's frame (holding h) was cleared
    assert probe.alive() == 0


def test_error_raised_when_the_trace_finishes_the_forward(probed, no_gc):
    model, hf, probe, ids = probed
    probe.fail = Boom("late")
    with pytest.raises(Boom):
        with model.trace(ids):
            model.transformer.h[0].output       # the rest of the forward runs in __exit__ and fails there
    assert probe.alive() == 0


class _FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise Boom("backward")


@pytest.fixture
def backward_fails(probed):
    """Layer 1's output goes through an autograd Function whose backward raises."""
    handle = probed[1].transformer.h[1].register_forward_hook(failing_backward)
    yield probed
    handle.remove()


def test_error_in_the_backward_inside_a_context(backward_fails, no_gc):
    model, hf, probe, ids = backward_fails
    with pytest.raises(Boom):
        with model.trace(ids):
            h = first(model.transformer.h[0].output)
            logits = model.output.logits
            with logits.sum().backward():
                h.grad
    del h, logits                       # the user's own names; attrib holds nothing else
    assert probe.refs and probe.alive() == 0


def test_error_in_the_block_of_a_backward_context(probed, no_gc):
    model, hf, probe, ids = probed
    try:
        with model.trace(ids):
            logits = model.output.logits
            with logits.sum().backward():
                model.transformer.h[1].output   # out of order: raises inside the context
    except attrib.OutOfOrderError:
        pass
    del logits
    assert probe.refs and probe.alive() == 0


def test_error_in_a_plain_backward_outside_contexts(backward_fails, no_gc):
    model, hf, probe, ids = backward_fails
    with pytest.raises(Boom):
        with model.trace(ids):
            model.output.logits.sum().backward()
    assert probe.refs and probe.alive() == 0


def test_the_model_is_reusable_after_each_failure(probed, no_gc):
    model, hf, probe, ids = probed
    probe.fail = Boom("once")
    with pytest.raises(Boom):
        with model.trace(ids):
            model.output.save()
    probe.fail = None
    with model.trace(ids):
        out = model.output.logits.save()
    assert out.shape == (1, 6, 50) and probe.alive() == 1     # the successful run's own value, held by out


def test_release_leaves_running_frames_and_other_closures_alone():
    kept = []

    def factory():
        secret = torch.ones(3)
        kept.append(lambda: secret)          # a closure of a user frame that outlives the error
        raise Boom()

    mine = torch.zeros(2)
    try:
        factory()
    except Boom as err:
        release(err)
    assert mine.shape == (2,)                # this running frame's locals are untouched
    assert torch.equal(kept[0](), torch.ones(3))   # user closures keep their cells


@pytest.mark.parametrize("err, expected", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory."), True),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), True),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
    (ValueError("out of memory"), False),
])
def test_is_oom(err, expected):
    assert is_oom(err) is expected
