"""Scale: attrib's goals for datasets and big models, each a row measured side by side in one run.

Case ``planner`` (issue 10, goal 1: the default rows per pass ≥ 0.95 × the best explicit ``batch_size``):
IG of one target logit (token 42 at the last position) for ``--prompts`` random prompts of ``--tokens``
tokens, ``--steps`` Gauss-Legendre points, zero baseline, in one call, on a random-weight model of the
SmolLM2-135M shape (``bench/ig.py``'s ``build``). Contestants:

- ``default, first call``  ``batch_size=None`` on a model with no plan yet (the plan is dropped before each
                           call): two measured passes, then the planned size
- ``default``              ``batch_size=None`` with the plan of an earlier call
- ``batch_size=B``         each explicit size of ``--sizes`` (rows per pass)
- ``hand-chunked C``       the same work by hand, no attrib: embeddings of every point of every prompt in
                           chunks of C rows, one forward with ``logits_to_keep=1``, ``torch.autograd.grad`` of
                           the summed target logits w.r.t. the points, weighted sum (parameters frozen)
- ``hand-chunked C, compiled``  (``--compiled``, CUDA) the same with the model under ``torch.compile``; the
                           first call's time (compilation) is printed as its warm-up

Columns: seconds per call (median), prompts/s, and the speed relative to the best explicit size: the median
over repetitions of (best explicit's time / the contestant's time) in the same round, with its 95% interval
(``bench.harness.paired``). Goal: the default ≥ 0.95. Below the table: the plan
attrib kept (bytes per row, fixed bytes, rows it plans now; CPU: the size it settled on) and the FLOP floor:
4 × non-embedding parameters × tokens × steps per prompt (a forward and a backward to the inputs, no weight
gradients) at the matmul rate measured on this device (bf16 8192² on CUDA, float32 2048² on CPU).

Case ``long`` (goal 4, CUDA): IG of one target logit on one ``--long-tokens`` (8,192) token prompt with a
random-weight Llama-3-8B-shape model in bf16 made directly on the card, ``--steps`` steps, ``batch_size=None``:
whether it completes, its time, peak memory and every pass the planner tried (rows).

Run from the repo root::

    python bench/scale.py --device cpu          # float32, 4 prompts × 16 tokens, 32 steps (about 5 minutes)
    python bench/scale.py --device cuda         # bf16, 256 prompts × 32 tokens, 32 steps (the issue's case)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import attrib  # noqa: E402
from attrib.methods import planning  # noqa: E402
from bench.harness import header, paired, time_contestants  # noqa: E402
from bench.ig import TARGET, build, gauss_legendre  # noqa: E402


def matmul_rate(device: torch.device) -> float:
    """FLOP/s of a large matmul in the model's compute dtype on ``device`` (the best of a few)."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, (time.perf_counter() - t) / 4)
    return 2 * n ** 3 / best


def hand_chunked(hf: torch.nn.Module, ids: torch.Tensor, steps: int, chunk: int) -> Callable[[], torch.Tensor]:
    """The IG work of every prompt by hand, ``chunk`` rows (points × prompts) per forward."""
    emb = hf.get_input_embeddings()
    nodes, weights = gauss_legendre(steps)
    n, t = ids.shape

    def run() -> torch.Tensor:
        with torch.no_grad():
            x = emb(ids)                                                     # (n, t, d)
        alphas = torch.tensor(nodes, dtype=torch.float32, device=ids.device)
        w = torch.tensor(weights, dtype=torch.float32, device=ids.device)
        prompt = torch.arange(n, device=ids.device).repeat_interleave(steps)
        step = torch.arange(steps, device=ids.device).repeat(n)
        total = torch.zeros(n, t, x.shape[-1], dtype=torch.float32, device=ids.device)
        for start in range(0, n * steps, chunk):
            p, s = prompt[start:start + chunk], step[start:start + chunk]
            path = (alphas[s].view(-1, 1, 1) * x[p].float()).to(x.dtype).requires_grad_(True)
            out = hf(inputs_embeds=path, logits_to_keep=1).logits[:, -1, TARGET].sum()
            (g,) = torch.autograd.grad(out, path)
            total.index_add_(0, p, g.float() * w[s].view(-1, 1, 1))
        return total * x.float()

    return run


def measure_planner(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
    hf = build("smollm2", device, dtype)
    for p in hf.parameters():
        p.requires_grad_(False)
    model = attrib.LanguageModel(hf)
    torch.manual_seed(1)
    ids = torch.randint(1, hf.config.vocab_size, (args.prompts, args.tokens), device=device)
    rows = args.prompts * (args.steps + 2)

    def ig(batch_size: int | None, fresh: bool = False) -> Callable[[], Any]:
        def run() -> Any:
            if fresh:
                planning._plans.pop(hf, None)
            return attrib.integrated_gradients(model, ids, target=TARGET, n_steps=args.steps, baseline="zeros",
                                               rule="gausslegendre", batch_size=batch_size)
        return run

    runs: dict[str, Callable[[], Any]] = {"default, first call": ig(None, fresh=True), "default": ig(None)}
    sizes = [int(s) for s in args.sizes.split(",")]
    for size in sizes:
        runs[f"batch_size={size}"] = ig(size)
    for chunk in [int(c) for c in args.chunks.split(",")]:
        runs[f"hand-chunked {chunk}"] = hand_chunked(hf, ids, args.steps, chunk)
    warm_up = ""
    if args.compiled and device.type == "cuda":
        compiled = torch.compile(hf)
        chunk = int(args.chunks.split(",")[-1])
        run = hand_chunked(compiled, ids, args.steps, chunk)
        t = time.perf_counter()
        run()
        torch.cuda.synchronize(device)
        warm_up = f"compiled warm-up (first call): {time.perf_counter() - t:.1f} s"
        runs[f"hand-chunked {chunk}, compiled"] = run
    raw: dict[str, list[float]] = {}
    med, failed, _ = time_contestants(runs, device, args.reps, args.warmup, raw=raw)
    explicit = {k: v for k, v in med.items() if k.startswith("batch_size=")}
    best = min(explicit, key=explicit.__getitem__) if explicit else None
    print(f"\n### planner: IG, {args.prompts} prompts × {args.tokens} tokens, {args.steps} steps "
          f"({rows} rows), SmolLM2-135M shape, {str(dtype).removeprefix('torch.')}\n")
    print(f"| contestant | s per call | prompts/s | speed × best explicit ({best or '–'}), paired median [95% CI] |")
    print("|---|---|---|---|")
    for key in runs:
        if key in failed:
            print(f"| {key} | {failed[key]} | | |")
            continue
        ms = med[key]
        pair = paired(raw, best, key) if best else None
        speed = "–" if pair is None else f"{pair[0]:.3f} [{pair[1]:.3f}, {pair[2]:.3f}]"
        print(f"| {key} | {ms / 1e3:.3f} | {args.prompts / (ms / 1e3):.1f} | {speed} |")
    for key, cost in planning._plans.get(hf, {}).items():
        lines = ", ".join(f"{name}: {per_row / 2**20:.2f} MiB a row + {fixed / 2**20:.0f} MiB"
                          for name, (fixed, per_row) in cost.lines.items()) or "not measured"
        print(f"\nplan kept for {key[0]!r}: {lines}; rows that fit now {cost.fits()}, CPU size settled on "
              f"{cost.best}, cap {cost.cap}")
    params = sum(p.numel() for n, p in hf.named_parameters() if "embed" not in n)
    rate = matmul_rate(device)
    floor = rate / (4 * params * args.tokens * args.steps)
    print(f"\nFLOP floor: 4 × {params / 1e6:.0f}M non-embedding parameters × {args.tokens} tokens × {args.steps} "
          f"steps per prompt at the measured matmul rate {rate / 1e12:.1f} TFLOP/s = {floor:.0f} prompts/s")
    if warm_up:
        print(warm_up)


def measure_long(args: argparse.Namespace, device: torch.device) -> None:
    """Goal 4: IG on an 8,192-token prompt, Llama-3-8B shape, bf16, one GPU, ``batch_size=None``."""
    from bench.dispatch_check import SHAPES, materialised, split_map

    layers = SHAPES["8b"]["num_hidden_layers"]
    hf = materialised("8b", split_map(layers, [device]), torch.bfloat16)
    model = attrib.LanguageModel(hf)
    torch.manual_seed(1)
    ids = torch.randint(1, SHAPES["8b"]["vocab_size"], (1, args.long_tokens), device=device)
    sizes: list[int] = []
    original = planning.Planner.next_rows

    def recorded(self: planning.Planner, remaining: int) -> int:
        sizes.append(original(self, remaining))
        return sizes[-1]

    planning.Planner.next_rows = recorded         # type: ignore[method-assign]
    try:
        torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        result = attrib.integrated_gradients(model, ids, target=TARGET, n_steps=args.steps)
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    finally:
        planning.Planner.next_rows = original     # type: ignore[method-assign]
    total = torch.cuda.get_device_properties(device).total_memory
    print(f"\n### long prompt: IG, Llama-3-8B shape, bf16, {args.long_tokens} tokens, {args.steps} steps, "
          f"batch_size=None, one card of {total / 2**30:.0f} GiB\n")
    print("| result | seconds | peak GiB | passes tried (rows each, in order) | finite |")
    print("|---|---|---|---|---|")
    print(f"| ok | {seconds:.1f} | {torch.cuda.max_memory_allocated(device) / 2**30:.1f} | {sizes} | "
          f"{bool(torch.isfinite(result.values).all())} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cases", default="planner")
    parser.add_argument("--prompts", type=int)
    parser.add_argument("--tokens", type=int)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--sizes", help="explicit batch sizes (rows per pass), comma-separated")
    parser.add_argument("--chunks", help="hand-chunked rows per pass, comma-separated")
    parser.add_argument("--compiled", action="store_true", help="also the hand-chunked work under torch.compile")
    parser.add_argument("--long-tokens", type=int, default=8192)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    args.prompts = args.prompts or (256 if cuda else 4)
    args.tokens = args.tokens or (32 if cuda else 16)
    args.sizes = args.sizes or ("1024,2048,4096,8704" if cuda else "16,32,64,136")
    args.chunks = args.chunks or ("2048" if cuda else "64")
    if not cuda:
        torch.set_num_threads(max(1, torch.get_num_threads()))
    print(header(device, args.reps, args.warmup, {"attrib": attrib.__version__}))
    for case in args.cases.split(","):
        if case == "planner":
            measure_planner(args, device, dtype)
        elif case == "long" and cuda:
            measure_long(args, device)
        else:
            raise SystemExit(f"unknown case {case!r} on {device}; known: planner, long (CUDA)")


if __name__ == "__main__":
    main()
