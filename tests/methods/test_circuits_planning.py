"""Edge attribution patching, exact edge patching and circuit faithfulness on the shared planner
(:mod:`attrib.methods.planning`): ``batch_size=None`` gives the scores of any chosen batch size (float64), an
out-of-memory pass under ``batch_size=None`` is halved and retried with the same result and no hook left behind,
and one under a chosen ``batch_size`` reaches the caller."""

from __future__ import annotations

import pytest
import torch

import attrib

from ..conftest import tiny_hf

# five pairs: more rows than the planner's first measured pass (4 rows on a CPU), so planned runs take several
# passes, and EAP-IG's passes mix points of the path
CLEAN = [[3, 14, 15, 9, 26, 5], [3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14], [20, 21, 22, 23, 24, 25],
         [30, 31, 32, 33, 34, 35]]
CORRUPTED = [[3, 14, 7, 9, 26, 5], [3, 8, 5, 6, 7, 9], [9, 10, 20, 12, 13, 14], [20, 21, 40, 23, 24, 41],
             [30, 44, 32, 33, 34, 35]]
TARGET = [[7], [9], [11], [13], [17]]


def model_of(arch: str = "gpt2") -> attrib.LanguageModel:
    return attrib.LanguageModel(tiny_hf(arch))


def eap_ig(model, batch_size):
    return attrib.edge_attribution_patching(model, CLEAN, CORRUPTED, target=TARGET, contrast=8, method="eap-ig",
                                            n_steps=3, per_position=True, batch_size=batch_size)


def eap(model, batch_size):
    return attrib.edge_attribution_patching(model, CLEAN, CORRUPTED, target=TARGET, contrast=8, method="eap",
                                            batch_size=batch_size)


EDGES = [("embed", "L0H1.q"), ("L0H1", "L1H2.q"), ("L0H3", "L1H0.q"), ("M0", "M1"), ("M1", "logits"),
         ("embed", "logits")]


def edges(model, batch_size):
    return attrib.edge_patching(model, CLEAN, CORRUPTED, edges=EDGES, target=TARGET, contrast=8,
                                batch_size=batch_size)


def faithfulness(model, batch_size):
    graph = attrib.edge_attribution_patching(model, CLEAN, CORRUPTED, target=TARGET, contrast=8, batch_size=1)
    return attrib.circuit_faithfulness(model, graph, CLEAN, CORRUPTED, sizes=[0, 3, graph.n_edges],
                                       target=TARGET, contrast=8, batch_size=batch_size)


CALLS = {"eap-ig": eap_ig, "eap": eap, "edge_patching": edges, "circuit_faithfulness": faithfulness}


def assert_same(a, b) -> None:
    if isinstance(a, attrib.Graph):
        torch.testing.assert_close(a.scores, b.scores, rtol=1e-9, atol=1e-13)
        if a.per_position is not None:
            torch.testing.assert_close(a.per_position, b.per_position, rtol=1e-9, atol=1e-13)
    else:
        torch.testing.assert_close(a.metrics, b.metrics, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(a.recovered, b.recovered, rtol=1e-9, atol=1e-12)
    assert a.metric_clean == pytest.approx(b.metric_clean, abs=1e-12)
    assert a.metric_corrupted == pytest.approx(b.metric_corrupted, abs=1e-12)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("method", sorted(CALLS))
def test_planned_passes_give_the_scores_of_any_chosen_batch_size(arch, method):
    model = model_of(arch)
    call = CALLS[method]
    planned = call(model, None)
    if isinstance(planned, attrib.Graph):     # the planned run really was split (a CPU's first pass: 4 rows)
        assert planned.info.get("passes", planned.info.get("forwards")) > 1
    for size in (1, 3):
        assert_same(planned, call(model, size))
    assert_same(planned, call(model, None))   # a later call plans from what the first one measured


class FakeOOM:
    """Layer 1 raises a (simulated) CUDA out-of-memory error for every forward of more than ``limit`` rows."""

    def __init__(self, hf: torch.nn.Module, limit: int) -> None:
        self.limit, self.failed, self.ran = limit, [], []
        self.handle = hf.transformer.h[1].register_forward_pre_hook(self._check)

    def _check(self, module, args):
        rows = args[0].shape[0]
        if rows > self.limit:
            self.failed.append(rows)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        self.ran.append(rows)

    def remove(self) -> None:
        self.handle.remove()


@pytest.mark.parametrize("method", sorted(CALLS))
def test_an_out_of_memory_pass_is_halved_and_gives_the_same_scores(method, leakcheck):
    reference = CALLS[method](model_of(), 1)
    model = model_of()
    check = leakcheck(model.module)
    oom = FakeOOM(model.module, limit=2)
    try:
        planned = CALLS[method](model, None)
    finally:
        oom.remove()
    check.assert_clean()                      # no hook of attrib's left on the model
    assert oom.failed and max(oom.ran) <= 2   # passes did run out of memory, and were retried smaller
    assert_same(planned, reference)
    if isinstance(planned, attrib.Graph):
        assert planned.info.get("rows_per_pass", 2) <= 2


@pytest.mark.parametrize("method", sorted(CALLS))
def test_an_out_of_memory_pass_of_a_chosen_batch_size_reaches_the_caller(method, leakcheck):
    model = model_of()
    check = leakcheck(model.module)
    oom = FakeOOM(model.module, limit=2)
    try:
        with pytest.raises(torch.OutOfMemoryError):
            CALLS[method](model, 3)
    finally:
        oom.remove()
    check.assert_clean()
    assert oom.failed == [3]                  # the first pass of 3 rows, not retried smaller
    assert_same(CALLS[method](model, 1), CALLS[method](model_of(), 1))    # the model still works
