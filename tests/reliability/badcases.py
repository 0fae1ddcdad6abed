"""The machinery of the bad-input suite (tests/reliability/test_bad_*.py): tiny float64 models shared by every
case, the :class:`Case` record, and :func:`run_case`, which checks a case's error (class, message, form) or
its correct result, that the models are clean afterwards and that they compute bit-identical logits.

A case is data: a callable taking the :class:`Models`, the most specific AttribError subclass it must raise
(or ``None`` for "gives a correct result", then ``check`` compares the result with an independent
computation), and a regex that its message must match (the offending argument, and the user's value where
the message repeats it).
"""

from __future__ import annotations

import contextlib
import functools
import re
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import greenlet
import pytest
import torch

import attrib
from attrib.core import current, patches
from attrib.core.switch import Coroutine
from tests.conftest import WordTokenizer, tiny_hf

IDS = torch.tensor([[3, 14, 15, 9, 26, 5]])
CORRUPT = torch.tensor([[3, 14, 7, 9, 26, 5]])

TORCH_INTERNALS = ("Traceback", 'File "', "torch/", "site-packages", "\n")


class Raises(torch.nn.Module):
    """Identity, except that it raises ValueError for an input whose first element is 13 (a model that
    fails on some inputs, e.g. a data-dependent check)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.detach().flatten()[0]) == 13.0:
            raise ValueError("Raises got the marked input 13")
        return x


class Skips(torch.nn.Module):
    """A model with a submodule that its forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.used = torch.nn.Linear(4, 3)
        self.unused = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


class CNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.head = torch.nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(torch.relu(self.conv(x))).flatten(1))


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and far faster on a busy machine (torch's threads spin-wait)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Models:
    """The models every case may use. ``bare`` wraps the same GPT-2 module as ``gpt2``, without a tokenizer."""

    gpt2: attrib.LanguageModel
    llama: attrib.LanguageModel
    bare: attrib.LanguageModel
    mlp: attrib.Model
    cnn: attrib.Model
    skips: attrib.Model
    raises: attrib.Model
    x: torch.Tensor          # (2, 4) input of mlp, skips and raises
    img: torch.Tensor        # (1, 1, 5, 5) input of cnn

    def modules(self) -> list[torch.nn.Module]:
        return [m.module for m in (self.gpt2, self.llama, self.mlp, self.cnn, self.skips, self.raises)]

    def logits(self) -> list[torch.Tensor]:
        """Each model's output on a fixed input, computed without attrib."""
        with torch.no_grad():
            return [self.gpt2.module(IDS).logits, self.llama.module(IDS).logits, self.mlp.module(self.x),
                    self.cnn.module(self.img), self.skips.module(self.x), self.raises.module(self.x)]


@functools.lru_cache(maxsize=None)
def reference_logits() -> list[torch.Tensor]:
    """The models' logits before any case ran: after every case they must be bit-identical to these."""
    return models().logits()


@functools.lru_cache(maxsize=None)
def models() -> Models:
    """One set per test session (cases never change them: :func:`run_case` checks that after every case)."""
    torch.manual_seed(0)
    gpt2_hf = tiny_hf("gpt2")
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double().eval()
    cnn = CNN().double().eval()
    skips = Skips().double().eval()
    raises = torch.nn.Sequential(torch.nn.Linear(4, 4), Raises(), torch.nn.Linear(4, 3)).double().eval()
    torch.manual_seed(1)
    return Models(gpt2=attrib.LanguageModel(gpt2_hf, WordTokenizer()),
                  llama=attrib.LanguageModel(tiny_hf("llama"), WordTokenizer()),
                  bare=attrib.LanguageModel(gpt2_hf), mlp=attrib.Model(mlp), cnn=attrib.Model(cnn),
                  skips=attrib.Model(skips), raises=attrib.Model(raises),
                  x=torch.randn(2, 4, dtype=torch.float64), img=torch.randn(1, 1, 5, 5, dtype=torch.float64))


@dataclass(frozen=True)
class Case:
    """One bad input: ``call(models)`` raises ``error`` (exactly that class) with a message matching ``match``;
    or, with ``error=None``, returns a result that ``check(models, result)`` verifies independently."""

    name: str
    call: Callable[[Models], Any]
    error: type[attrib.AttribError] | None
    match: str = ""
    check: Callable[[Models, Any], None] | None = None
    max_len: int = 400               # the message stays short: one sentence on what, where and what to do
    param_grads: bool = False        # the case runs a plain backward, which fills parameter .grad (torch's meaning)

    @property
    def verdict(self) -> str:
        return "correct result" if self.error is None else self.error.__name__


def error(name: str, cls: type[attrib.AttribError], match: str, call: Callable[[Models], Any], **kw: Any) -> Case:
    return Case(name, call, cls, match, **kw)


def correct(name: str, call: Callable[[Models], Any], check: Callable[[Models, Any], None]) -> Case:
    return Case(name, call, None, check=check)


def ids_of(cases: list[Case]) -> list[str]:
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return names


# -- cleanliness ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def recording_greenlets() -> Iterator["weakref.WeakSet[Any]"]:
    """Every greenlet attrib creates meanwhile (a fast, exact stand-in for scanning gc.get_objects())."""
    original = Coroutine.__init__
    made: "weakref.WeakSet[Any]" = weakref.WeakSet()

    def init(self: Coroutine, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        made.update(v for v in vars(self).values() if isinstance(v, greenlet.greenlet))

    Coroutine.__init__ = init  # type: ignore[method-assign]
    try:
        yield made
    finally:
        Coroutine.__init__ = original  # type: ignore[method-assign]


def hook_count(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in module.modules())


def snapshot(modules: list[torch.nn.Module]) -> dict[str, Any]:
    """What must be the same after a case: hooks, torch.Tensor's attributes, grad mode, modes, parameter .grad."""
    return {
        "hooks": [hook_count(m) for m in modules],
        "global hooks": (len(torch.nn.modules.module._global_forward_hooks),
                         len(torch.nn.modules.module._global_forward_pre_hooks)),
        "tensor attributes": {k: torch.Tensor.__dict__.get(k) for k in ("backward", "save", "grad")},
        "patch holders": (patches.BACKWARD.count, patches.SAVE.count, patches.GRAD.count),
        "grad mode": torch.is_grad_enabled(),
        "training": [m.training for m in modules],
        "parameter grads": [sum(p.grad is not None for p in m.parameters()) for m in modules],
        "requires_grad": [sum(p.requires_grad for p in m.parameters()) for m in modules],
    }


def assert_clean(modules: list[torch.nn.Module], before: dict[str, Any], made: "weakref.WeakSet[Any]") -> None:
    after = snapshot(modules)
    for key, value in before.items():
        assert after[key] == value, f"{key} changed: {value} -> {after[key]}"
    assert not hasattr(torch.Tensor, "save"), "torch.Tensor.save left behind"
    patched = [f"{type(m).__name__}" for root in modules for m in root.modules() if "forward" in m.__dict__]
    assert patched == [], f"a wrapped forward was left on {patched}"
    assert current.local.traces == [] and current.local.backward is None, "a trace or context is still open"
    claims = getattr(current, "_claims", {})
    assert not any(id(m) in claims for m in modules), "a model is still claimed by a trace"
    live = [g for g in list(made) if g]
    assert live == [], f"{len(live)} greenlet(s) of a trace or context still alive"


def clear_parameter_grads(modules: list[torch.nn.Module]) -> None:
    for m in modules:
        for p in m.parameters():
            p.grad = None


def check_message(case: Case, err: BaseException) -> None:
    msg = str(err)
    assert re.search(case.match, msg), f"{case.name}: message {msg!r} does not match {case.match!r}"
    bad = [s for s in TORCH_INTERNALS if s in msg]
    assert not bad, f"{case.name}: message shows {bad}: {msg!r}"
    assert 20 <= len(msg) < case.max_len, f"{case.name}: message of {len(msg)} characters: {msg!r}"
    assert msg.rstrip().endswith((".", "?", ")")), f"{case.name}: not a sentence: {msg!r}"


def run_case(case: Case) -> None:
    m = models()
    modules = m.modules()
    logits = reference_logits()
    before = snapshot(modules)
    result = None
    try:
        with recording_greenlets() as made:
            try:
                result = case.call(m)
            except Exception as err:     # noqa: BLE001 - the exact class is asserted below
                assert case.error is not None, \
                    f"{case.name}: expected a correct result, got {type(err).__name__}: {err}"
                assert type(err) is case.error, \
                    f"{case.name}: expected {case.error.__name__}, got {type(err).__module__}." \
                    f"{type(err).__name__}: {err}"
                check_message(case, err)
            else:
                assert case.error is None, \
                    f"{case.name}: no error (expected {case.error.__name__}); got {result!r:.200}"
        if case.param_grads:
            clear_parameter_grads(modules)
        assert_clean(modules, before, made)
        after = m.logits()
        for i, (a, b) in enumerate(zip(logits, after)):
            assert torch.equal(a, b), f"{case.name}: model {i} computes other logits after the case"
        if case.check is not None:
            case.check(m, result)
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")


# -- independent computations for "correct result" cases ---------------------------------------------------
def gauss_legendre(n: int) -> tuple[list[float], list[float]]:
    import numpy as np

    x, w = np.polynomial.legendre.leggauss(n)
    return [float(a) for a in 0.5 * (x + 1)], [float(v) for v in 0.5 * w]


def embed_grad(hf: torch.nn.Module, embeds: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor],
               **kwargs: Any) -> torch.Tensor:
    """d score(logits) / d input embeddings, with plain autograd (no attrib)."""
    e = embeds.detach().clone().requires_grad_(True)
    out = score(hf(inputs_embeds=e, **kwargs).logits)
    return torch.autograd.grad(out, e)[0]


def hand_ig(hf: torch.nn.Module, ids: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor], n_steps: int,
            baseline: torch.Tensor | None = None) -> torch.Tensor:
    """Integrated gradients at the input embeddings with Gauss–Legendre nodes: (1, T, d)."""
    x = hf.get_input_embeddings()(ids).detach()
    b = torch.zeros_like(x) if baseline is None else baseline.expand_as(x)
    total = torch.zeros_like(x)
    for a, w in zip(*gauss_legendre(n_steps)):
        total += w * embed_grad(hf, b + a * (x - b), score)
    return (x - b) * total


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a.to(b.dtype), b, rtol=1e-9, atol=1e-11)


def v(value: Any) -> str:
    """A user value's repr as a message regex, not followed by more of a word or number: ``rf"got {v(2.5)}"``."""
    return re.escape(repr(value)) + r"(?!\w|\.\w)"
