"""Reproduce the two fixes of Kramár, Lieberum, Shah & Nanda 2024, "AtP*: An efficient and scalable method for
localizing LLM behaviour to components" (arXiv:2403.00745): the QK fix (recompute the attention softmax exactly
for query and key patches) and GradDrop (drop each layer's gradient in turn) reduce attribution patching's false
negatives against activation patching.

Setup: the demo model (SmolLM2-135M), IOI pair(s) from ``attrib.demo.ioi_pairs``, denoising, metric
logit(answer) − logit(other name). Nodes: each head's query after the rotary embedding at the last position,
each key/value head's key at every position (QK fix), each head's output (GradDrop). The truth is activation
patching of the same nodes. Measures, as the paper's: the rank correlation (Spearman) of |estimate| with
|effect|, and the false negatives among the true top-k nodes: those the estimate does not rank in its own top
k (the paper counts the true top nodes an estimate would miss at a budget of verification).

Claims checked (PASS/FAIL): with the QK fix, keys and queries have no more false negatives and a rank
correlation at least as high; with GradDrop, heads have no more false negatives. ``--quick``: the last position
only (keys and heads too). Run ``python repro/atp_star.py [--quick] [--device cpu|cuda]``; exit status 1 when a claim fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import attrib
from attrib.demo import ioi_pairs

sys.path.insert(0, str(Path(__file__).resolve().parent))   # run as a script or loaded by path
from _report import CLAIM_HEADER, print_table, verdict  # noqa: E402

Row = tuple[str, ...]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def false_negatives(estimate: torch.Tensor, truth: torch.Tensor, k: int) -> int:
    """How many of the k largest |truth| the estimate does not rank among its own k largest."""
    top_true = set(truth.abs().argsort(descending=True)[:k].tolist())
    top_est = set(estimate.abs().argsort(descending=True)[:k].tolist())
    return len(top_true - top_est)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the last position only (the tests)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--k", type=int, default=10, help="the true top-k nodes whose misses are counted")
    parser.add_argument("--slack", type=int, default=0, help="false negatives the fixed estimate may add")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model = attrib.load_demo_model(device=args.device)
    clean, corrupted, answers, others = (part[:1] for part in ioi_pairs())
    kw = dict(target=answers, contrast=others)
    rows: list[Row] = []
    checks: list[Row] = []
    setups = [("queries (q_rot), last position", "q_rot", -1, "qk_fix"),
              (f"keys (k_rot), {'last position' if args.quick else 'every position'}", "k_rot",
               -1 if args.quick else None, "qk_fix"),
              (f"head outputs, {'last position' if args.quick else 'every position'}", "heads",
               -1 if args.quick else None, "grad_drop")]
    for title, component, positions, fix in setups:
        truth = attrib.activation_patching(model, clean, corrupted, components=component, positions=positions, **kw)
        plain = attrib.attribution_patching(model, clean, corrupted, components=component, positions=positions, **kw)
        fixed = attrib.attribution_patching(model, clean, corrupted, components=component, positions=positions,
                                            **{fix: True}, **kw)
        t, a, f = (r.scores[component].double().flatten() for r in (truth, plain, fixed))
        stats = {name: (spearman(v.abs(), t.abs()), false_negatives(v, t, args.k)) for name, v in
                 (("AtP", a), (f"AtP + {fix}", f))}
        for name, (rho, fn) in stats.items():
            rows.append((title, name, str(t.numel()), f"{rho:+.3f}", f"{fn} of {args.k}"))
        (rho_a, fn_a), (rho_f, fn_f) = stats.values()
        checks.append((f"{fix}: no more false negatives on {component}", "fewer false negatives",
                       f"{fn_f} vs AtP {fn_a} of the true top {args.k}",
                       "PASS" if fn_f <= fn_a + args.slack else "FAIL"))
        if fix == "qk_fix":
            checks.append((f"qk_fix: rank correlation on {component}", "better estimates of query/key effects",
                           f"Spearman {rho_f:+.3f} vs AtP {rho_a:+.3f}", "PASS" if rho_f >= rho_a else "FAIL"))
    print(f"IOI on the demo model ({model.device}), pair {clean[0]!r}: activation patching is the truth")
    print_table("Attribution patching with and without AtP*'s fixes", ("nodes", "estimate", "n", "Spearman |.|",
                                                                      "false negatives"), rows)
    print_table(f"Kramár et al. 2024 claims ({'quick' if args.quick else 'full'}, {time.perf_counter() - start:.0f} s)",
                CLAIM_HEADER, checks)
    return verdict(checks)


if __name__ == "__main__":
    sys.exit(main())
