"""CUDA: hooks fire on the caller's thread, streams and devices are the caller's. Run on a GPU machine with
``pytest -m gpu`` (CI has no GPU; the default run deselects the ``gpu`` marker)."""

from __future__ import annotations

import threading

import pytest
import torch

import attrib
from tests.conftest import tiny_hf
from tests.core.reference import reference_grads

pytestmark = pytest.mark.gpu


class StreamProbe(torch.nn.Module):
    """Records the current stream; its parent runs it on a side stream of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.seen: list = []

    def forward(self, x):
        self.seen.append((torch.cuda.current_stream(), threading.get_ident()))
        return self.lin(x)


class Outer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = StreamProbe()
        self.after = StreamProbe()
        self.side = torch.cuda.Stream()

    def forward(self, x):
        with torch.cuda.stream(self.side):
            y = self.inner(x)
        torch.cuda.current_stream().wait_stream(self.side)
        return self.after(y)


def test_streams_are_the_callers_and_the_models():
    net = Outer().cuda()
    model = attrib.Model(net)
    mine = torch.cuda.Stream()
    with torch.cuda.stream(mine):
        with model.trace(torch.randn(2, 4, device="cuda")):
            model.inner.output                      # paused inside the model's side-stream region
            assert torch.cuda.current_stream() == mine
            out = model.output.save()
            with out.sum().backward():
                g = out.grad.save()
    assert net.inner.seen[0][0] == net.side
    assert net.after.seen[0][0] == mine
    assert g.shape == out.shape


def test_grads_on_cuda_match_hooks_and_hooks_fire_on_the_callers_thread():
    hf = tiny_hf("llama", dtype=torch.float32).cuda()
    model = attrib.Model(hf)
    ids = torch.tensor([[3, 14, 15, 9, 26, 5]], device="cuda")
    threads = []
    with model.trace(ids):
        h0 = model.model.layers[0].output
        h0.register_hook(lambda g: threads.append(threading.get_ident()))
        logits = model.output.logits
        with logits[0, -1, 7].backward():
            g = h0.grad.save()
    ref, _, _ = reference_grads(hf, ids, ["model.layers.0"], lambda l: l[0, -1, 7])
    torch.testing.assert_close(g, ref["model.layers.0"], rtol=1e-5, atol=1e-6)
    assert threads == [threading.get_ident()]
