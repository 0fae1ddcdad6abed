"""Every method frees what a failed pass allocated before the exception reaches the caller (the cycle
collector off), and a batched method's retry after out-of-memory starts with the failed attempt's
tensors already dead."""

from __future__ import annotations

import weakref

import pytest
import torch

import attrib

from ..conftest import tiny_hf
from ..core.test_release import Boom, Probe

CLEAN, CORRUPTED = torch.tensor([[3, 14, 15, 9, 26, 5]]), torch.tensor([[3, 14, 7, 9, 26, 5]])


def oom() -> torch.cuda.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


@pytest.fixture
def lm():
    hf = tiny_hf("gpt2")
    probe = Probe(hf)
    yield attrib.LanguageModel(hf), probe
    probe.remove()


CALLS = {
    "integrated_gradients": lambda m: attrib.integrated_gradients(m, CLEAN, target=7, n_steps=4),
    "attribution_patching": lambda m: attrib.attribution_patching(m, CLEAN, CORRUPTED, target=7),
    "activation_patching": lambda m: attrib.activation_patching(m, CLEAN, CORRUPTED, target=7, components="resid"),
}


@pytest.mark.parametrize("method", sorted(CALLS))
@pytest.mark.parametrize("error", ["model", "oom"])
def test_a_failed_method_leaves_nothing_alive(lm, no_gc, method, error):
    model, probe = lm
    probe.fail = Boom("in the model") if error == "model" else oom()
    try:
        CALLS[method](model)
    except (Boom, torch.cuda.OutOfMemoryError):
        assert probe.refs and probe.alive() == 0      # while the caller still holds the exception
    else:
        pytest.fail("no error")
    assert probe.alive() == 0
    probe.fail = None
    CALLS[method](model)                                # reusable


def test_a_failed_saliency_on_a_plain_model_leaves_nothing_alive(no_gc):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    refs: list[weakref.ref] = []

    def keep(module, args, output):
        big = output * 1.0
        refs.append(weakref.ref(big))
        return big

    def fail(module, args, output):
        raise oom()

    handles = [net[1].register_forward_hook(keep), net[2].register_forward_hook(fail)]   # big: net[2]'s input
    try:
        with pytest.raises(torch.cuda.OutOfMemoryError):
            attrib.saliency(attrib.Model(net), torch.randn(2, 4, dtype=torch.float64), target=0)
        assert refs and all(r() is None for r in refs)
    finally:
        for h in handles:
            h.remove()


class Oversized:
    """Layer 1 raises a simulated out-of-memory error for batches above ``limit`` rows; layer 0 (through
    the probe) records, at each call, whether every tensor of the earlier failed attempts is dead."""

    def __init__(self, hf: torch.nn.Module, probe: Probe, limit: int) -> None:
        self.probe, self.limit = probe, limit
        self.failed_refs: list[weakref.ref] = []
        self.dead_at_retry: list[bool] = []
        self.sizes: list[int] = []
        self.handles = [hf.transformer.h[0].register_forward_pre_hook(self._start),
                        hf.transformer.h[1].register_forward_hook(self._check)]

    def _start(self, module, args):
        self.sizes.append(args[0].shape[0])
        if self.failed_refs:
            self.dead_at_retry.append(all(r() is None for r in self.failed_refs))

    def _check(self, module, args, output):
        if args[0].shape[0] > self.limit:
            self.failed_refs.extend(self.probe.refs)
            raise oom()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("method", ["integrated_gradients", "activation_patching"])
def test_the_retry_after_out_of_memory_starts_clean(lm, no_gc, method):
    model, probe = lm
    big = Oversized(model.module, probe, limit=2)
    try:
        if method == "integrated_gradients":
            a = attrib.integrated_gradients(model, CLEAN[0], target=7, n_steps=6)   # 8 rows: 8 → 4 → 2
            ref = attrib.integrated_gradients(model, CLEAN[0], target=7, n_steps=6, batch_size=2)
            torch.testing.assert_close(a.values, ref.values, rtol=1e-12, atol=1e-12)
        else:
            r = attrib.activation_patching(model, CLEAN, CORRUPTED, target=7, components="resid")
            assert r.info["batch_size"] == 2     # 12 rows (2 layers × 6 positions): 4 → 2, the most that fits
    finally:
        big.remove()
    # IG: 6 steps + 2 end points = 8 rows: the first planned pass of 4 rows halved to 2, then the reference's
    # 4 passes of 2; patching: the clean and corrupted runs, then 4 halved to 2 and six passes of 2
    assert big.sizes == ([4] + [2] * 8 if method == "integrated_gradients" else [1, 1, 4] + [2] * 6)
    assert big.failed_refs and big.dead_at_retry and all(big.dead_at_retry)
