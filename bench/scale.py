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

Case ``compiled`` (goal 2: ≥ 500 prompts/s, warm-up ≤ 60 s, single prompt ≤ 15 ms): ``bench/scale_compiled.py``'s
table: eager against ``compile=True`` and the same without CUDA graphs (``--variants``), the big call of the planner
case and one prompt of 64 tokens × 50 steps (``--single-tokens``, ``--single-steps``): prompts/s, % of the FLOP
floor, warm-up seconds, single-prompt ms, max difference from eager; then the goals, met or not. CUDA; on the CPU
only with ``--cpu-compile`` (4 prompts × 16 tokens × 8 steps: inductor on a few cores takes minutes).

Case ``dispatch`` (goal 3: a model dispatched over GPUs equals its one-GPU result; ``bench/scale_dispatch.py``):
the Llama-1B shape (``--shape 8b`` / ``70b``: bf16) on ``cuda:0`` and the same weights dispatched over every
visible GPU (one GPU: ``cuda:0`` and CPU offload), IG of one logit, ``--dispatch-tokens`` 256 tokens, ``--steps``:
seconds, peak per GPU, max difference. On the CPU: ``--tiny`` (a 4-layer float64 Llama on an all-CPU map).

Case ``distributed`` (goal 6: ``torchrun --nproc-per-node 4 -m attrib run`` ≥ 3.6× one GPU;
``bench/scale_distributed.py``): a local model folder and a JSONL of ``--dataset-prompts`` prompts, ``attrib run``
in one process and under ``torch.distributed.run`` in 2, 4, ... (every visible GPU; 2 on the CPU; ``--nprocs``),
``--chunk`` prompts a call (64 on CUDA, 8 on the CPU): wall seconds, prompts/s, speed-up (whole command, less the
startup, steady), and whether each run's results equal the one-process run's.

Run from the repo root::

    python bench/scale.py --device cpu          # float32, 4 prompts × 16 tokens, 32 steps (about 5 minutes)
    python bench/scale.py --device cuda         # bf16, every case this machine can run (the issue's sizes)
    python bench/scale.py --device cpu --cases distributed,dispatch --tiny --steps 8    # a quick check
"""

from __future__ import annotations

import argparse
import gc
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
        def call() -> Any:
            return attrib.integrated_gradients(model, ids, target=TARGET, n_steps=args.steps, baseline="zeros",
                                               rule="gausslegendre", batch_size=batch_size)

        def first() -> Any:
            # a fresh plan for this call, and the plan "default" has made back afterwards: interleaved with this
            # contestant, "default" would otherwise keep timing the search of a young plan (its second call)
            kept = planning._plans.pop(hf, None)
            try:
                return call()
            finally:
                if kept is None:
                    planning._plans.pop(hf, None)
                else:
                    planning._plans[hf] = kept
        return first if fresh else call

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
        settled = "–" if cost.best is None else f"{cost.best // cost.tokens} rows"
        cap = "none" if cost.cap is None else f"{cost.cap[0]} rows of {cost.cap[1]} tokens"
        print(f"\nplan kept for {key[0]!r} (measured at {cost.tokens} tokens a row): {lines}; rows that fit now "
              f"{cost.fits()}, CPU size settled on {settled}, cap {cap}")
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


def measure_compiled(args: argparse.Namespace, device: torch.device) -> None:
    """Goal 2: ``bench/scale_compiled.py``'s table (its functions, imported here) at this run's sizes."""
    if device.type != "cuda" and not args.cpu_compile:
        print("\n### compiled: CUDA only here (inductor on a few CPU cores takes minutes); pass --cpu-compile to run "
              "it on the CPU at 4 prompts × 16 tokens × 8 steps.")
        return
    from bench import scale_compiled

    cuda = device.type == "cuda"
    sizes = argparse.Namespace(**{k: v[0 if cuda else 1] for k, v in scale_compiled.DEFAULTS.items()})
    if cuda:
        sizes.prompts, sizes.tokens, sizes.steps = args.prompts, args.tokens, args.steps
    sizes.single_tokens = args.single_tokens or sizes.single_tokens
    sizes.single_steps = args.single_steps or sizes.single_steps
    sizes.batch_size = sizes.batch_size or None
    sizes.reps, sizes.variants, sizes.warm_cache = args.reps, args.variants, args.warm_cache
    scale_compiled.measure_compiled(sizes, device, torch.bfloat16 if cuda else torch.float32)


CASES = ("planner", "long", "compiled", "dispatch", "distributed")


def default_cases(device: torch.device) -> str:
    """On CUDA every case this machine can run (distributed needs two GPUs); on the CPU the planner."""
    if device.type != "cuda":
        return "planner"
    return ",".join(c for c in CASES if c != "distributed" or torch.cuda.device_count() > 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cases", help=f"comma list of {', '.join(CASES)} (default: all on CUDA, planner on a CPU)")
    parser.add_argument("--prompts", type=int)
    parser.add_argument("--tokens", type=int)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--sizes", help="explicit batch sizes (rows per pass), comma-separated")
    parser.add_argument("--chunks", help="hand-chunked rows per pass, comma-separated")
    parser.add_argument("--compiled", action="store_true", help="also the hand-chunked work under torch.compile")
    parser.add_argument("--long-tokens", type=int, default=8192)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    group = parser.add_argument_group("compiled")
    group.add_argument("--variants", default="eager,compile,default", help="bench/scale_compiled.py's variants")
    group.add_argument("--single-tokens", type=int)
    group.add_argument("--single-steps", type=int)
    group.add_argument("--warm-cache", action="store_true", help="keep torch's on-disk compile caches")
    group.add_argument("--cpu-compile", action="store_true", help="run the compiled case on a CPU too (slow)")
    group = parser.add_argument_group("dispatch and distributed")
    group.add_argument("--shape", choices=["tiny", "1b", "8b", "70b"], help="dispatch: the model (default 1b on CUDA)")
    group.add_argument("--tiny", action="store_true", help="tiny models: dispatch --shape tiny, distributed 2 layers")
    group.add_argument("--dispatch-tokens", type=int, default=256)
    group.add_argument("--dataset-prompts", type=int, help="distributed: prompts (default 1024 on CUDA, 32 on a CPU)")
    group.add_argument("--chunk", type=int, help="distributed: attrib run --chunk (default 64 on CUDA, 8 on a CPU)")
    group.add_argument("--nprocs", help="distributed: process counts, comma-separated (default 1, 2, 4, ... GPUs)")
    group.add_argument("--keep", action="store_true", help="distributed: keep the model and run folders")
    group.add_argument("--no-startup", action="store_true", help="distributed: no startup runs (less startup: –)")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    args.prompts = args.prompts or (256 if cuda else 4)
    args.tokens = args.tokens or (32 if cuda else 16)
    args.sizes = args.sizes or ("1024,2048,4096,8704" if cuda else "16,32,64,136")
    args.chunks = args.chunks or ("2048" if cuda else "64")
    args.shape = "tiny" if args.tiny else args.shape
    if not cuda:
        torch.set_num_threads(max(1, torch.get_num_threads()))
    print(header(device, args.reps, args.warmup, {"attrib": attrib.__version__}))
    for case in (args.cases or default_cases(device)).split(","):
        if case == "planner":
            measure_planner(args, device, dtype)
        elif case == "long":
            if cuda:
                measure_long(args, device)
            else:
                print("\n### long prompt: CUDA only (a Llama-3-8B shape on one card).")
        elif case == "compiled":
            measure_compiled(args, device)
        elif case == "dispatch":
            from bench.scale_dispatch import measure_dispatch

            measure_dispatch(args, device)
        elif case == "distributed":
            from bench.scale_distributed import measure_distributed

            measure_distributed(args, device)
        else:
            raise SystemExit(f"unknown case {case!r}; known: {', '.join(CASES)}")
        torch._dynamo.reset()             # compiled graphs (and their CUDA graph pools) go before the next case
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
