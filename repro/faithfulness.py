"""Which attribution method is most faithful on the demo model: every method of the library, perturbation curves
over 210 built-in prompts, and the claim of Achtibat et al. 2024 ("AttnLRP: Attention-Aware Layer-Wise Relevance
Propagation for Transformers", ICML 2024) that AttnLRP is more faithful than integrated gradients and gradient ×
input, checked on SmolLM2-135M.

Prompts: the 50 factual-recall prompts of ``repro/facts.py`` and 160 indirect-object prompts (5 templates × 16
name pairs × both orders, Wang et al. 2022's task). Target: the model's top prediction for each prompt. Methods:
integrated gradients (attrib's defaults), saliency (gradient norm), gradient × input, SmoothGrad (× input, 8
samples), AttnLRP, CP-LRP, GIM, DeepLIFT (pad baseline), GradientSHAP (pad baseline, 8 samples), and 3 random
orders. ``attrib.faithfulness`` replaces tokens by the pad token's embedding, most relevant first, and reports the
AOPC of deletion and of insertion, comprehensiveness and sufficiency (docs/rules.md, "Faithfulness").

Checks: the most faithful method beats the random order on deletion AOPC by at least ``--min-margin`` (PASS/FAIL:
the evaluation separates methods at all); the paper's claim, AttnLRP above IG and above gradient × input on
deletion AOPC, is reported as it comes out ("holds" / "does not hold"), not as a pass or fail. The score is the
target's probability (``--score prob``, as ERASER; ``logit`` and ``logprob`` also run: the methods explain that
score and the curves measure it). ``--quick``: 6 prompts. Run ``python repro/faithfulness.py [--quick] [--device
cpu|cuda] [--score prob|logit|logprob] [--plot FILE]``; exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import attrib

sys.path.insert(0, str(Path(__file__).resolve().parent))   # run as a script or loaded by path
from _report import CLAIM_HEADER, print_table, verdict  # noqa: E402
from facts import FACTS  # noqa: E402

Row = tuple[str, ...]

TEMPLATES = ("When {} and {} went to the store, {} gave a drink to",
             "When {} and {} went to the park, {} gave the ball to",
             "After {} and {} went to the shops, {} handed a book to",
             "While {} and {} were at the office, {} sent a letter to",
             "Then {} and {} had a long argument, and afterwards {} said to")
PAIRS = (("Mary", "John"), ("Tom", "James"), ("Anna", "Paul"), ("Kate", "Mark"), ("Sarah", "David"),
         ("Emma", "Peter"), ("Lucy", "Jack"), ("Alice", "Bob"), ("Laura", "Daniel"), ("Rachel", "Michael"),
         ("Sophie", "Thomas"), ("Claire", "Simon"), ("Helen", "George"), ("Julia", "Robert"), ("Emily", "Steven"),
         ("Grace", "Henry"))


def prompts() -> list[str]:
    """The 210 prompts: 50 facts, then 160 indirect-object sentences."""
    ioi = [t.format(a, b, s) for t in TEMPLATES for a, b in PAIRS for s in (a, b)]
    return [text for text, _ in FACTS] + ioi


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 prompts (the tests)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--min-margin", type=float, default=0.0,
                        help="how far IG's deletion AOPC must be above the random order's")
    parser.add_argument("--plot", default=None, help="write the curves to this image file")
    parser.add_argument("--score", default="prob", help="prob (default, as ERASER), logprob or logit")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model = attrib.load_demo_model(device=args.device)
    texts = prompts()
    if args.quick:
        texts = texts[:3] + texts[50:53]
    evaluation = attrib.faithfulness(model, texts, score=args.score)
    print(f"{len(texts)} prompts on the demo model ({model.device}); target: the top prediction; tokens replaced "
          f"by the pad token's embedding, most relevant first; score: {args.score}")
    print_table("Faithfulness (sorted by deletion AOPC; ↑ higher is better, ↓ lower is better)",
                ("method", "AOPC deletion ↑", "AOPC insertion ↑", "comprehensiveness ↑", "sufficiency ↓"),
                [tuple(row.split()) for row in evaluation.table().splitlines()[2:]])
    if args.plot:
        evaluation.plot().savefig(args.plot, dpi=100)
    aopc = {name: value for name, value in evaluation.top(len(evaluation.methods))}
    best = max((name for name in aopc if name != "random"), key=aopc.get)
    margin = aopc[best] - aopc["random"]
    checks: list[Row] = [
        ("the best method beats the random order (deletion AOPC)", "the evaluation separates methods",
         f"{best} {aopc[best]:.3f} vs {aopc['random']:.3f}", "PASS" if margin >= args.min_margin else "FAIL"),
    ]
    for other, label in (("integrated_gradients", "IG"), ("grad_x_input", "gradient × input")):
        holds = aopc["attnlrp"] > aopc[other]
        checks.append((f"AttnLRP more faithful than {label}", "Achtibat et al. 2024: yes",
                       f"{aopc['attnlrp']:.3f} vs {aopc[other]:.3f}", "holds" if holds else "does not hold"))
    print_table(f"Claims ({'quick' if args.quick else 'full'}, {time.perf_counter() - start:.0f} s)", CLAIM_HEADER,
                checks)
    return verdict(checks)


if __name__ == "__main__":
    sys.exit(main())
