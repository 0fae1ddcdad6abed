"""Compiled passes: attrib's traced (eager) IG against ``compile=True``, side by side in one run.

Two cases on a random-weight model of the SmolLM2-135M shape (``bench/ig.py``'s ``build``), IG of one target
logit (token 42 at the last position), zero baseline, Gauss-Legendre steps, ``batch_size=None`` (planned; on a CPU
16 rows a pass unless ``--batch-size 0``: the planner's search for a CPU's fastest size may not end on a small
workload, and compiled passes wait until it has):

- **big**: ``--prompts`` random prompts of ``--tokens`` tokens, ``--steps`` steps, in one call (the scale issue's
  256 × 32 × 32 on CUDA);
- **single**: one prompt of ``--single-tokens`` tokens, ``--single-steps`` steps (64 × 50 on CUDA).

Contestants (``--variants``, comma-separated): ``eager`` (``compile=False``, always run first: its calls settle the
planner's rows, which the compiled passes then use), ``compile`` (``compile=True``: on CUDA the big case's passes
each decoder layer compiled in torch's default mode, the single prompt's the whole model as one CUDA graph), and
for comparison ``model`` (the whole forward as one graph), ``none`` (the direct model
calls without compiling), ``default`` (layers, torch's default mode: no CUDA graphs) and ``liger`` (``compile``
with liger-kernel's RMSNorm / SwiGLU / RoPE; needs the package and CUDA).

Columns: seconds per big call (median of ``--reps`` calls after the first), prompts/s and its share of the FLOP
floor (4 × non-embedding parameters × tokens × steps per prompt at the matmul rate measured here,
``bench/scale.py``'s ``matmul_rate``), warm-up of the big case (each call's seconds above the median call's,
summed over its calls: the goal's "warm-up ≤ 60 s" is on that case, beside its prompts/s), the single prompt's
median ms and its own warm-up (another shape bucket, compiled on its own), and the largest difference of the
attributions from the eager ones relative to the eager ones' largest magnitude (big / single). Below the table:
every call's seconds in order (a compile that a later call pays shows there) and the buckets each variant
compiled.

Compilation is cold: torch's on-disk caches go to a fresh temporary folder unless ``--warm-cache`` is given
(then a second run of the script shows what a warm cache saves).

Run from the repo root::

    python bench/scale_compiled.py --device cuda                           # bf16, the issue's cases
    python bench/scale_compiled.py --device cpu --prompts 4 --tokens 16    # float32, a quick check (minutes)
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

if "--warm-cache" not in sys.argv:      # before torch is imported: cold compilation, measured honestly
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="attrib-inductor-")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable  # noqa: E402

import torch  # noqa: E402

import attrib  # noqa: E402
from attrib.methods.compiled import CompileOptions, compiled_buckets  # noqa: E402
from bench.harness import header, sync  # noqa: E402
from bench.ig import TARGET, build  # noqa: E402
from bench.scale import matmul_rate  # noqa: E402

VARIANTS: dict[str, Any] = {
    "eager": False,
    "compile": True,
    "model": CompileOptions(scope="model"),
    "none": CompileOptions(scope="none"),
    "default": CompileOptions(mode="default"),
    "liger": CompileOptions(liger=True),
}
# (on CUDA: the scale issue's cases, in bf16; elsewhere: a quick float32 check)
DEFAULTS = {"prompts": (256, 4), "tokens": (32, 16), "steps": (32, 8), "single_tokens": (64, 16),
            "single_steps": (50, 8), "reps": (5, 2), "batch_size": (0, 16)}


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def rel_diff(got: Any, ref: Any) -> float:
    """max |got − ref| / max |ref| over every result's values."""
    a = torch.stack([r.values.double().cpu() for r in (got if isinstance(got, list) else [got])])
    b = torch.stack([r.values.double().cpu() for r in (ref if isinstance(ref, list) else [ref])])
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-300))


GOALS = {"prompts/s": 500.0, "warm-up s": 60.0, "single-prompt IG ms": 15.0}   # issue 10, goal 2 (compile=True)


def measure_compiled(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[dict[str, str]]:
    """Print the markdown table (see the module docstring) for ``args.variants`` on ``device`` in ``dtype``, and the
    goals of ``compile=True``; returns the rows."""
    hf = build("smollm2", device, dtype)
    model = attrib.LanguageModel(hf)
    vocab = hf.config.vocab_size
    torch.manual_seed(1)
    ids = torch.randint(1, vocab, (args.prompts, args.tokens), device=device)
    one = torch.randint(1, vocab, (args.single_tokens,), device=device)

    def ig(inputs: torch.Tensor, steps: int, compile: Any) -> Callable[[], Any]:
        return lambda: attrib.integrated_gradients(model, inputs, target=TARGET, n_steps=steps, baseline="zeros",
                                                   rule="gausslegendre", batch_size=args.batch_size, compile=compile)

    names = ["eager"] + [v for v in args.variants.split(",") if v and v != "eager"]
    rows, calls, reference = [], [], {}
    for name in names:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
        before = set(compiled_buckets(hf))
        row = {"contestant": f"attrib {name}" if name != "compile" else "attrib compile=True"}
        try:
            seconds = {}
            results = {}
            for case, inputs, steps in (("big", ids, args.steps), ("single", one, args.single_steps)):
                run = ig(inputs, steps, VARIANTS[name])
                times = []
                for _ in range(1 + args.reps):
                    t, out = timed(run, device)
                    times.append(t)
                results[case], seconds[case] = out, times
                calls.append(f"{name} {case}: " + ", ".join(f"{t:.3f}" for t in times) + " s")
        except Exception as err:  # noqa: BLE001 - a variant that fails is reported, the others still run
            text = str(err).splitlines()[0][:120].replace("|", "/") if str(err) else ""
            rows.append({**row, "s per big call": f"failed: {type(err).__name__}: {text}"})
            continue
        big, single = (statistics.median(seconds[c][1:]) for c in ("big", "single"))
        # per case, every call's time above the median call's: a compile that a later call pays (the planner's
        # first call measures eagerly, the second compiles) counts too
        warm = {c: sum(max(0.0, t - statistics.median(seconds[c][1:])) for t in seconds[c]) for c in seconds}
        if name == "eager":
            reference = results
        diff = "–" if name == "eager" else \
            f"{rel_diff(results['big'], reference['big']):.1e} / {rel_diff(results['single'], reference['single']):.1e}"
        rows.append({**row, "s per big call": f"{big:.3f}", "prompts/s": f"{args.prompts / big:.1f}",
                     "% of FLOP floor": "", "warm-up s": f"{warm['big']:.1f}", "single warm-up s": f"{warm['single']:.1f}", "single-prompt IG ms": f"{single * 1e3:.1f}",
                     "max rel. diff vs eager (big / single)": diff,
                     "buckets": "; ".join(f"{r}×{t}{' masked' if m else ''}" for s, mode, r, t, m in
                                          sorted(set(compiled_buckets(hf)) - before)) or "–"})
    params = sum(p.numel() for n, p in hf.named_parameters() if "embed" not in n)
    rate = matmul_rate(device)
    floor = rate / (4 * params * args.tokens * args.steps)
    for row in rows:
        if row.get("prompts/s"):
            row["% of FLOP floor"] = f"{100 * float(row['prompts/s']) / floor:.0f}%"
    cols = ["contestant", "s per big call", "prompts/s", "% of FLOP floor", "warm-up s", "single-prompt IG ms",
            "single warm-up s",
            "max rel. diff vs eager (big / single)", "buckets"]
    per_pass = "planned (batch_size=None)" if args.batch_size is None else f"batch_size={args.batch_size}"
    print(f"\n### compiled: IG, SmolLM2-135M shape, {str(dtype).removeprefix('torch.')}: big = {args.prompts} "
          f"prompts × {args.tokens} tokens × {args.steps} steps in one call; single = 1 prompt × "
          f"{args.single_tokens} tokens × {args.single_steps} steps; rows per pass {per_pass}\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(row.get(c, "") for c in cols) + " |")
    print(f"\nFLOP floor: 4 × {params / 1e6:.0f}M non-embedding parameters × {args.tokens} tokens × {args.steps} steps "
          f"per prompt at {rate / 1e12:.2f} TFLOP/s = {floor:.0f} prompts/s. Inductor cache: "
          f"{'warm (--warm-cache)' if args.warm_cache else 'cold, ' + os.environ['TORCHINDUCTOR_CACHE_DIR']}.")
    print("\nEvery call in order (first, then the timed ones):\n")
    for line in calls:
        print(f"- {line}")
    print(f"\n{goals(rows)}")
    return rows


def goals(rows: list[dict[str, str]]) -> str:
    """Goal 2 of the scale issue, for the ``compile=True`` row: met or not, each."""
    row = next((r for r in rows if r["contestant"] == "attrib compile=True"), None)
    wanted = f"≥ {GOALS['prompts/s']:.0f} prompts/s, warm-up ≤ {GOALS['warm-up s']:.0f} s, single prompt ≤ " \
             f"{GOALS['single-prompt IG ms']:.0f} ms"
    if row is None or not row.get("prompts/s"):
        return f"Goal 2 ({wanted}): no compile=True row{' (failed)' if row else ''}."
    parts = []
    for key, bound in GOALS.items():
        value = float(row[key])
        met = value >= bound if key == "prompts/s" else value <= bound
        parts.append(f"{key} {value:g}: {'**met**' if met else '**not met**'}")
    return (f"Goal 2 ({wanted}; the warm-up is the big case's), compile=True: " + "; ".join(parts) +
            f". The single prompt's bucket compiled in {row.get('single warm-up s', '?')} s of its own.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prompts", type=int)
    parser.add_argument("--tokens", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--single-tokens", type=int)
    parser.add_argument("--single-steps", type=int)
    parser.add_argument("--variants", default="eager,compile", help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--reps", type=int, help="timed calls after the first (default 5 on CUDA, 2 on CPU)")
    parser.add_argument("--batch-size", type=int, help="rows per pass, 0 for planned (default: planned on CUDA; 16 on "
                        "a CPU, whose planner may not settle on a small workload, and compiled passes wait for it)")
    parser.add_argument("--warm-cache", action="store_true", help="keep torch's on-disk compile caches")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    for name, (on_cuda, elsewhere) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, on_cuda if cuda else elsewhere)
    args.batch_size = args.batch_size or None
    print(header(device, args.reps, 1, {"attrib": attrib.__version__}))
    measure_compiled(args, device, torch.bfloat16 if cuda else torch.float32)


if __name__ == "__main__":
    main()
