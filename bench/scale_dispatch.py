"""``bench/scale.py --cases dispatch`` (issue 10, goal 3): IG on a model dispatched over several devices against the
same weights on one device, as a table row each.

The model (random weights, untied head; ``bench/dispatch_check.py``'s shapes and helpers) is made on the meta device
and materialised on one device when it fits there (half the card's memory at most), IG is run on it (the reference),
then its modules are moved where ``split_map`` puts them (layers split evenly, the embedding on the first device,
the norm and head on the last) and accelerate's ``dispatch_model`` places its hooks; IG again on the same weights.
Where the weights do not fit one card, they are materialised where the map puts them and there is no reference.

- ``--shape 1b`` (default on CUDA): the Llama-3.2-1B shape in float32; ``8b`` / ``70b``: Llama-3-8B / 70B in bf16.
  Devices: every visible GPU; with one GPU, ``cuda:0`` and the CPU (accelerate then keeps the CPU half's weights
  on the CPU and runs those layers on ``cuda:0``, loading their weights for each call: CPU offload).
- ``--shape tiny`` (``--tiny``; the default on the CPU): 4 layers, hidden 64, float64, on an all-CPU map with
  accelerate's hooks (``force_hooks``).

IG of one logit (token 42), ``--dispatch-tokens`` (256) random tokens, ``--steps`` Gauss-Legendre points,
``batch_size=None``; seconds = median of ``--reps`` calls after one warm-up call.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

import attrib
from bench.dispatch_check import GPUS, SHAPES, TARGET, materialised, split_map

NAMES = {"tiny": "tiny Llama (4 layers, hidden 64)", "1b": "Llama-1B shape", "8b": "Llama-3-8B shape",
         "70b": "Llama-3-70B shape"}


def _weights_bytes(shape: str, dtype: torch.dtype) -> int:
    s = SHAPES[shape]
    h, m, v, layers = s["hidden_size"], s["intermediate_size"], s["vocab_size"], s["num_hidden_layers"]
    kv = h * s["num_key_value_heads"] // s["num_attention_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * m + 2 * h
    return (layers * per_layer + 2 * v * h + h) * torch.finfo(dtype).bits // 8


def _sync() -> None:
    for i in range(torch.cuda.device_count()):
        torch.cuda.synchronize(i)


def _timed(model: attrib.LanguageModel, ids: torch.Tensor, steps: int, reps: int, gpus: int
           ) -> tuple[torch.Tensor, float, str]:
    """(attributions on the CPU, median seconds of ``reps`` calls after a warm-up, peak memory of each of ``gpus``)."""
    def call() -> tuple[torch.Tensor, float]:
        _sync()
        start = time.perf_counter()
        values = attrib.integrated_gradients(model, ids, target=TARGET, n_steps=steps).values
        _sync()
        return values.detach().double().cpu(), time.perf_counter() - start

    call()
    for i in range(gpus):
        torch.cuda.reset_peak_memory_stats(i)
    runs = [call() for _ in range(max(1, reps))]
    peak = " / ".join(f"{torch.cuda.max_memory_allocated(i) / 2**30:.1f}" for i in range(gpus))
    return runs[0][0], statistics.median(t for _, t in runs), (f"{peak} GiB" if peak else "– (CPU)")


def _where(placement: dict[str, Any], layers: int, offload: bool) -> str:
    spans: list[tuple[Any, int, int]] = []
    for i in range(layers):
        d = placement[f"model.layers.{i}"]
        if spans and spans[-1][0] == d:
            spans[-1] = (d, spans[-1][1], i)
        else:
            spans.append((d, i, i))
    name = {d: (f"`cuda:{d}`" if isinstance(d, int) else f"`{d}`") for d, _, _ in spans}
    parts = [f"layers {a}–{b}{' + head' if d == placement['lm_head'] and k == len(spans) - 1 else ''} on {name[d]}"
             for k, (d, a, b) in enumerate(spans)]
    return ", ".join(parts) + (" (CPU offload: run on `cuda:0`)" if offload else "") + " (`dispatch_model`)"


def measure_dispatch(args: argparse.Namespace, device: torch.device) -> None:
    shape = args.shape or ("1b" if device.type == "cuda" else "tiny")
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if shape != "tiny" and not gpus:
        print(f"\n### dispatch: the {shape} shape needs CUDA; on the CPU run `--cases dispatch --tiny`.")
        return
    dtype = torch.float64 if shape == "tiny" else torch.float32 if shape == "1b" else torch.bfloat16
    layers = SHAPES[shape]["num_hidden_layers"]
    weights = _weights_bytes(shape, dtype)
    card = torch.cuda.get_device_properties(0).total_memory if gpus else 0
    if shape == "tiny":
        devices: list[Any] = ["cpu", "cpu"]
    elif gpus == 1:
        devices = [0, "cpu"]
    else:
        devices = list(range(gpus))
    if gpus and weights / gpus > 0.75 * card:           # the weights must fit on the GPUs (offload is no way out)
        print(f"\n### dispatch: the {shape} shape ({weights / 2**30:.0f} GiB of weights) needs {GPUS[shape]} GPUs; "
              f"this machine has {gpus}.")
        return
    placement = split_map(layers, devices)
    first = devices[0]
    torch.manual_seed(1)
    ids = torch.randint(1, SHAPES[shape]["vocab_size"], (1, 16 if shape == "tiny" else args.dispatch_tokens))
    ids = ids.to("cpu" if first == "cpu" else f"cuda:{first}")
    twin = shape == "tiny" or weights <= 0.5 * card
    on_gpus = 0 if shape == "tiny" else gpus
    title = f"{NAMES[shape]}, {str(dtype).removeprefix('torch.')}"
    rows = []
    if twin:
        torch.manual_seed(0)
        hf = materialised(shape, {path: first for path in placement}, dtype)
        reference, seconds, peak = _timed(attrib.LanguageModel(hf), ids, args.steps, args.reps, on_gpus)
        rows.append((title, f"one device (`{ids.device}`)", seconds, peak, "–"))
        for path, d in placement.items():
            hf.get_submodule(path).to(d if d == "cpu" else f"cuda:{d}")
        _sync()
        if gpus:
            torch.cuda.empty_cache()
    else:
        hf = materialised(shape, placement, dtype)
        reference = None
    from accelerate import dispatch_model

    dispatch_model(hf, placement, main_device=first, force_hooks=shape == "tiny")
    got, seconds, peak = _timed(attrib.LanguageModel(hf), ids, args.steps, args.reps, on_gpus)
    if reference is None:
        versus = f"finite: {bool(torch.isfinite(got).all())} (no one-device reference: too big for one card)"
    else:
        diff = float((got - reference).abs().max())
        versus = f"max difference {diff:.1e} ({diff / (float(reference.abs().max()) or 1.0):.1e} of the largest " \
                 "attribution)"
    rows.append((title, _where(placement, layers, "cpu" in devices and gpus > 0), seconds, peak, versus))
    print(f"\n### dispatch: IG of one logit, {ids.shape[1]} tokens, {args.steps} steps, batch_size=None, median of "
          f"{args.reps} after 1 warm-up\n")
    print(f"| model | placement | IG, {ids.shape[1]} tokens, {args.steps} steps | peak per GPU | vs one device |")
    print("|---|---|---|---|---|")
    for model, where, secs, mem, vs in rows:
        print(f"| {model} | {where} | {secs:.2f} s | {mem} | {vs} |")
    print("\nGoal 3: the dispatched model's attributions equal the one-device ones (up to rounding).")
