"""Reproduce Hanna, Pezzelle & Belinkov 2024, "Have Faith in Faithfulness: Going Beyond Circuit Overlap When
Finding Model Mechanisms" (COLM 2024, arXiv:2403.17806): at equal circuit size, circuits found with edge
attribution patching with integrated gradients (EAP-IG) are more faithful than those found with plain edge
attribution patching (EAP, Syed et al. 2023).

Setup: the demo model (SmolLM2-135M: 30 layers × 9 heads, 3 key/value heads; 70,651 edges from the embeddings,
heads and MLPs to every head's query / key / value, every MLP and the logits), IOI with ``attrib.demo.ioi_pairs``,
metric logit(answer) − logit(other name), denoising. Both methods score every edge; the circuit of size k is the k
edges of largest |score|; its faithfulness is the share of the clean − corrupted metric gap that the clean run
keeps when every edge outside the circuit reads its corrupted sender value (the paper's evaluation,
``attrib.circuit_faithfulness``). On a subset of edges (the top edges of both methods) exact edge patching gives
the true effect each score estimates.

Claims checked (PASS/FAIL): EAP-IG is at least as faithful as EAP at the smallest size, and its mean |1 − share|
over the sizes is lower; EAP-IG's scores correlate with exact edge patching at least as well as EAP's on the
subset. ``--quick``: two pairs, three sizes, 40 exact edges. Run ``python repro/ioi_circuit.py [--quick]
[--device cpu|cuda]``; exit status 1 when a claim fails.
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


def pearson(a: list[float], b: list[float]) -> float:
    return float(torch.corrcoef(torch.tensor([a, b], dtype=torch.float64))[0, 1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two pairs, three sizes, 40 exact edges (the tests)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--steps", type=int, default=5, help="EAP-IG's integration steps (the paper: 5)")
    parser.add_argument("--min-margin", type=float, default=0.0,
                        help="how much lower EAP-IG's mean |1 − share| must be than EAP's")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model = attrib.load_demo_model(device=args.device)
    clean, corrupted, answers, others = ioi_pairs()
    n_pairs, sizes, n_exact = (2, [100, 1000, 10000], 40) if args.quick else \
        (8, [50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000], 200)
    data = (clean[:n_pairs], corrupted[:n_pairs])
    kw = dict(target=answers[:n_pairs], contrast=others[:n_pairs])
    timings = {}
    graphs = {}
    for method in ("eap", "eap-ig"):
        t = time.perf_counter()
        extra = {"n_steps": args.steps} if method == "eap-ig" else {}
        graphs[method] = attrib.edge_attribution_patching(model, *data, method=method, **extra, **kw)
        timings[method] = time.perf_counter() - t
    g = graphs["eap"]
    print(f"IOI on the demo model ({model.device}), {n_pairs} pairs: metric {g.metric_clean:+.3f} clean, "
          f"{g.metric_corrupted:+.3f} corrupted; {g.n_edges} edges scored in {timings['eap']:.1f} s (EAP) and "
          f"{timings['eap-ig']:.1f} s (EAP-IG, {args.steps} steps)")
    curves = {m: attrib.circuit_faithfulness(model, graphs[m], *data, sizes=sizes, batch_size=8, **kw).recovered
              for m in graphs}
    print_table("Faithfulness: share of the metric recovered by the circuit of the k top edges",
                ("edges", "EAP", "EAP-IG"), [(str(k), f"{float(curves['eap'][i]):.3f}",
                                               f"{float(curves['eap-ig'][i]):.3f}") for i, k in enumerate(sizes)])
    subset = list(dict.fromkeys([e[:2] for e in graphs["eap-ig"].top(n_exact // 2)] +
                                [e[:2] for e in graphs["eap"].top(n_exact)]))[:n_exact]
    t = time.perf_counter()
    exact = attrib.edge_patching(model, *data, edges=subset, batch_size=64, **kw)
    t_exact = time.perf_counter() - t
    truth = [exact.score(s, r) for s, r in subset]
    agreement = {m: pearson([graphs[m].score(s, r) for s, r in subset], truth) for m in graphs}
    errors = {m: float(torch.tensor([graphs[m].score(s, r) - v for (s, r), v in zip(subset, truth)]).norm()
                       / torch.tensor(truth).norm()) for m in graphs}
    print_table(f"Against exact edge patching of {len(subset)} top edges ({t_exact:.1f} s)",
                ("method", "Pearson r", "rel. error"),
                [(m, f"{agreement[m]:+.3f}", f"{errors[m]:.3f}") for m in graphs])
    gap = {m: float((1 - curves[m]).abs().mean()) for m in curves}
    checks: list[Row] = [
        ("EAP-IG at least as faithful at the smallest size", "EAP-IG circuits more faithful at equal size",
         f"{float(curves['eap-ig'][0]):.3f} vs EAP {float(curves['eap'][0]):.3f} at {sizes[0]} edges",
         "PASS" if curves["eap-ig"][0] >= curves["eap"][0] else "FAIL"),
        ("EAP-IG closer to full faithfulness over the sizes", "EAP-IG circuits more faithful at equal size",
         f"mean |1 - share| {gap['eap-ig']:.3f} vs EAP {gap['eap']:.3f}",
         "PASS" if gap["eap-ig"] + args.min_margin <= gap["eap"] else "FAIL"),
        ("EAP-IG tracks exact edge patching at least as well", "EAP-IG scores are better estimates",
         f"Pearson r {agreement['eap-ig']:+.3f} vs EAP {agreement['eap']:+.3f}",
         "PASS" if agreement["eap-ig"] >= agreement["eap"] else "FAIL"),
    ]
    print_table(f"Hanna et al. 2024 claims ({'quick' if args.quick else 'full'}, {time.perf_counter() - start:.0f} s)",
                CLAIM_HEADER, checks)
    return verdict(checks)


if __name__ == "__main__":
    sys.exit(main())
