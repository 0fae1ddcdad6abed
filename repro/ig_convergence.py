"""Integrated gradients that converge by default: completeness with the logit score on 50 factual prompts.

Checked claims (issue 13; PASS/FAIL rows, ``info`` rows are measurements without a claim):

- **With attrib's defaults** (``attrib.integrated_gradients(model, prompt, target=...)``: logit score,
  ``baseline="auto"``, ``n_steps="auto"``), the completeness error |delta| / |f(x) − f(b)| is within 1% on at
  least 95% of the prompts, and the adaptive steps use on average at most 4× the evaluations of the former
  default (50 Gauss–Legendre steps: 200).
- Measured beside it (``info``): the former default (zero baseline, 50 Gauss–Legendre steps), the pad baseline
  with 50 steps, and ``baseline="auto"`` with 50 steps. On SmolLM2 the zero baseline's path is chaotic near
  α = 0 and the pad baseline's path jumps where the first position (the attention sink) is switched; holding the
  first position makes the path smooth, and the adaptive steps then resolve what 50 fixed nodes cannot.
- A held-out set (``info``): prompts that were not used to tune the adaptive rule, each with the model's own
  top-1 next token as the target.

The prompts are ``repro/facts.py`` (single-token targets the demo model predicts top-1). Run
``python repro/ig_convergence.py [--quick] [--device cpu|cuda]``; the exit status is 1 when a claim fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import attrib

sys.path.insert(0, str(Path(__file__).resolve().parent))   # run as a script or loaded by path
from _report import CLAIM_HEADER, print_table, verdict  # noqa: E402
from facts import FACTS  # noqa: E402

Row = tuple[str, str, str, str]

# Prompts outside repro/facts.py: the adaptive rule was not tuned on them. Target: the model's own top-1.
HELD_OUT = ["The weather today is", "My favourite food is", "She opened the door and saw a", "In the morning I drink",
            "The cat sat on the", "He plays the guitar and the", "Water boils at one hundred", "The sun rises in the",
            "A triangle has three", "The doctor told the patient to", "Birds can fly because they have",
            "The library is a place where you can"]


def relative(results: list[attrib.Attribution]) -> np.ndarray:
    """|delta| / |f(x) − f(b)| of each result."""
    return np.array([abs(float(r.delta)) / max(abs(r.info["f_x"] - r.info["f_baseline"]), 1e-12) for r in results])


def spread(values: np.ndarray, fmt: str = "{:.0f}") -> str:
    """min / median / mean / p95 / max of a sample, as one cell."""
    parts = [("min", values.min()), ("median", np.median(values)), ("mean", values.mean()),
             ("p95", np.percentile(values, 95)), ("max", values.max())]
    return ", ".join(f"{k} {fmt.format(v)}" for k, v in parts)


def run(model: attrib.LanguageModel, prompts: list[str], targets: list[Any], batch: int, **kwargs: Any
        ) -> list[attrib.Attribution]:
    """One result per prompt, ``batch`` prompts per call (each prompt's steps are its own)."""
    out: list[attrib.Attribution] = []
    for s in range(0, len(prompts), batch):
        got = attrib.integrated_gradients(model, prompts[s:s + batch], target=targets[s:s + batch], **kwargs)
        out += got if isinstance(got, list) else [got]
    return out


def top1(model: attrib.LanguageModel, prompts: list[str]) -> list[int]:
    """The model's own next-token prediction for each prompt."""
    ids = []
    for p in prompts:
        enc = model.tokenizer(p, return_tensors="pt").to(model.device)
        with torch.no_grad():
            ids.append(int(model.module(**enc).logits[0, -1].argmax()))
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 prompts, no held-out set (the tests run this)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--tol", type=float, default=0.01, help="the completeness error counted as converged")
    parser.add_argument("--share", type=float, default=0.95, help="the share of prompts that must converge")
    parser.add_argument("--max-mean-evaluations", type=float, default=200.0,
                        help="the mean evaluations allowed per prompt (4x the former 50 steps)")
    parser.add_argument("--batch", type=int, default=4,
                        help="prompts per call (a call runs its rows at once: a round of 10 prompts took 13 GB on the CPU)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    facts = FACTS[:8] if args.quick else FACTS
    prompts, targets = [p for p, _ in facts], [t for _, t in facts]
    model = attrib.load_demo_model(device=args.device)
    rows: list[Row] = []

    auto = run(model, prompts, targets, args.batch)                       # the defaults
    rel, evals = relative(auto), np.array([r.info["evaluations"] for r in auto], dtype=float)
    share = float(np.mean(rel <= args.tol))
    rows.append((f"defaults: |delta|/|f(x)-f(b)| <= {args.tol:.0%}", f">= {args.share:.0%} of prompts",
                 f"{share:.0%} of {len(facts)} ({spread(rel, '{:.1e}')})", "PASS" if share >= args.share else "FAIL"))
    rows.append(("defaults: evaluations per prompt", f"mean <= {args.max_mean_evaluations:.0f}", spread(evals),
                 "PASS" if evals.mean() <= args.max_mean_evaluations else "FAIL"))
    unconverged = sum(not r.info["converged"] for r in auto)
    rows.append(("defaults: prompts that used up max_evaluations", "none silent (each warns)", f"{unconverged}", "info"))

    for name, kwargs in (("former default: zeros, 50 Gauss-Legendre", dict(baseline="zeros", n_steps=50)),
                         ("pad, 50 Gauss-Legendre", dict(baseline="pad", n_steps=50)),
                         ("baseline auto, 50 Gauss-Legendre", dict(n_steps=50))):
        fixed = relative(run(model, prompts, targets, args.batch, **kwargs))
        rows.append((f"{name}: |delta|/|f(x)-f(b)|", "no claim",
                     f"{np.mean(fixed <= args.tol):.0%} within {args.tol:.0%}; {spread(fixed, '{:.1e}')}", "info"))

    if not args.quick:
        held = run(model, HELD_OUT, top1(model, HELD_OUT), args.batch)
        rel_h, ev_h = relative(held), np.array([r.info["evaluations"] for r in held], dtype=float)
        rows.append(("held-out prompts, defaults: |delta|/|f(x)-f(b)|", "no claim",
                     f"{np.mean(rel_h <= args.tol):.0%} of {len(HELD_OUT)} within {args.tol:.0%}; "
                     f"evaluations {spread(ev_h)}", "info"))

    print_table(f"Integrated gradients, logit score: completeness with attrib's defaults ({'quick' if args.quick else 'full'}, "
                f"{model.device}, {str(model.module.dtype).replace('torch.', '')}, {time.perf_counter() - start:.0f} s)",
                CLAIM_HEADER, rows)
    print(f"prompts: repro/facts.py ({len(facts)}); targets single tokens; evaluations count every point the model "
          "ran at, the two end points included (the former default: 52).")
    return verdict(rows)


if __name__ == "__main__":
    sys.exit(main())
