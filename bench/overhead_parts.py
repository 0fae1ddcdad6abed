"""Where attrib's overhead on the seed example comes from: the hand-written seed example with one piece of
attrib's machinery added at a time, timed side by side and read as paired ratios to the plain version.

Pieces: the backward, the forward, or both run in a fresh greenlet (as a trace and a backward context run
them); tensor hooks on the loss, the logits and ``h`` with a private copy of each gradient read (as a backward
context does); a wrapper around the ``forward`` of every module with children; autograd's device threads left
on (that is the ``hooks (pruned)`` column of ``bench/core_overhead.py``); and attrib itself. The baseline,
"step", runs its backward with ``torch.autograd.set_multithreading_enabled(False)`` like attrib.

    python bench/overhead_parts.py --cases tiny-gpt2 --device cpu
    python bench/overhead_parts.py --cases gpt2-small,llama-1b --device cuda
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import greenlet  # noqa: E402
import torch  # noqa: E402

from bench.core_overhead import build_case, layers_path, resolve, seed_example  # noqa: E402
from bench.harness import header, paired, time_contestants  # noqa: E402


def parts(case: str, device: torch.device, dtype: torch.dtype, tokens: int | None
          ) -> tuple[dict[str, Callable[[], Any]], torch.nn.Module]:
    hf, ids, model = build_case(case, device, dtype, tokens)
    path = layers_path(hf)
    layer = resolve(hf, path)[-1]  # type: ignore[index]
    containers = [m for m in hf.modules() if m._modules and not isinstance(m, (torch.nn.ModuleList, torch.nn.ModuleDict))]

    def forward() -> tuple[torch.Tensor, torch.Tensor]:
        store: list[Any] = []
        handle = layer.register_forward_hook(lambda _m, _a, out: store.append(out))
        try:
            logits = hf(input_ids=ids).logits
        finally:
            handle.remove()
        h = store[0][0] if isinstance(store[0], tuple) else store[0]
        return h, logits

    def backward(h: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.autograd.set_multithreading_enabled(False):
            return torch.autograd.grad(logits.sum(), [logits, h])

    def backward_hooked(h: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
        got: dict[str, torch.Tensor] = {}
        loss = logits.sum()
        handles = [t.register_hook(lambda g, k=k: got.__setitem__(k, g.clone()))
                   for k, t in (("logits", logits), ("h", h), ("loss", loss))]
        try:
            with torch.autograd.set_multithreading_enabled(False):
                torch.autograd.grad((loss,), [loss, logits, h], (torch.ones_like(loss),), allow_unused=True)
        finally:
            for handle in handles:
                handle.remove()
        return got["logits"], got["h"]

    def step() -> tuple[torch.Tensor, ...]:
        return backward(*forward())

    def in_greenlet(fn: Callable[[], Any]) -> Any:
        return greenlet.greenlet(fn).switch()

    def backward_in_greenlet() -> tuple[torch.Tensor, ...]:
        h, logits = forward()
        return in_greenlet(lambda: backward(h, logits))

    def both_in_greenlets() -> tuple[torch.Tensor, ...]:
        h, logits = in_greenlet(forward)
        return in_greenlet(lambda: backward(h, logits))

    def wrapped() -> tuple[torch.Tensor, ...]:
        for m in containers:
            inner = m.forward
            m.__dict__["forward"] = lambda *a, inner=inner, **k: inner(*a, **k)
        try:
            return step()
        finally:
            for m in containers:
                m.__dict__.pop("forward", None)

    def patched() -> tuple[torch.Tensor, ...]:
        from attrib.core.patches import BACKWARD, GRAD, SAVE
        for patch in (BACKWARD, SAVE, GRAD):
            patch.acquire()
        try:
            return step()
        finally:
            for patch in (GRAD, SAVE, BACKWARD):
                patch.release()

    def everything() -> tuple[torch.Tensor, ...]:
        from attrib.core.patches import BACKWARD, GRAD, SAVE
        for patch in (BACKWARD, SAVE, GRAD):
            patch.acquire()
        for m in containers:
            inner = m.forward
            m.__dict__["forward"] = lambda *a, inner=inner, **k: inner(*a, **k)
        try:
            h, logits = in_greenlet(forward)
            return in_greenlet(lambda: backward_hooked(h, logits))
        finally:
            for m in containers:
                m.__dict__.pop("forward", None)
            for patch in (GRAD, SAVE, BACKWARD):
                patch.release()

    def threads_on() -> tuple[torch.Tensor, ...]:
        h, logits = forward()
        return torch.autograd.grad(logits.sum(), [logits, h])

    runs = {
        "step": step,
        "backward in a greenlet": backward_in_greenlet,
        "forward in a greenlet": lambda: backward(*in_greenlet(forward)),
        "both in greenlets": both_in_greenlets,
        "tensor hooks + private copies": lambda: backward_hooked(*forward()),
        f"a wrapper on {len(containers)} modules with children": wrapped,
        "torch.Tensor patched (backward, save, grad)": patched,
        "all of the above but threads": everything,
        "autograd threads on (hooks pruned)": threads_on,
        "attrib": seed_example(model, path, ids),
    }
    return runs, hf


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="tiny-gpt2")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=None)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(header(device, args.reps, args.warmup, {}), flush=True)
    for case in args.cases.split(","):
        runs, hf = parts(case.strip(), device, dtype, args.tokens)
        params = list(hf.parameters())

        def reset() -> None:
            for p in params:
                p.grad = None

        raw: dict[str, list[float]] = {}
        med, failed, _ = time_contestants(runs, device, args.reps, args.warmup, before=reset, raw=raw)
        print(f"\n{case}\n\n| added to step | ms | / step, paired [95% CI] |\n|---|---|---|")
        for key in runs:
            if key in failed:
                print(f"| {key} | {failed[key]} | – |")
                continue
            got = paired(raw, key, "step")
            cell = "–" if got is None else f"{got[0]:.3f} [{got[1]:.3f}, {got[2]:.3f}]"
            print(f"| {key} | {med[key]:.3f} | {cell} |")


if __name__ == "__main__":
    main()
