"""NNsight's attribution-patching tutorial (IOI, eight prompt pairs, every head's output), written the attrib way.

The tutorial (nnsight.net, "Attribution Patching", after Nanda 2023) runs one trace with two invokes: the clean
prompts, whose per-layer head outputs it saves, and the corrupted prompts, whose head outputs and their
gradients under the normalised IOI metric it saves; the score of a head at a position is
(clean − corrupted) · gradient. Its gradients arrive last layer first (a backward pass runs backwards), and the
tutorial zips that list with the forward-ordered activations, so layer l's activations meet layer L−1−l's
gradients. Here the same trace is written with attrib's invokes and an ordered backward context, the gradients
are put back in forward order, and the result is checked against one call of
``attrib.attribution_patching`` on the lists of pairs. The misaligned pairing is computed too, to show how far
it is from the aligned scores.

Run ``python examples/nnsight_attribution_patching.py`` (demo model, CPU, a few seconds); exit status 1 when
the trace and the one-call result disagree.
"""

from __future__ import annotations

import argparse
import sys

import torch

import attrib
from attrib.demo import ioi_pairs
from attrib.models.sites import site


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    model = attrib.load_demo_model(device=args.device)
    clean, corrupted, answers, others = ioi_pairs()
    n_layers = model.module.config.num_hidden_layers
    answer_ids = torch.tensor([[model.tokenizer(a)["input_ids"][0], model.tokenizer(o)["input_ids"][0]]
                               for a, o in zip(answers, others)], device=model.device)

    def logit_diff(logits: torch.Tensor) -> torch.Tensor:
        """The mean over the pairs of logit(answer) − logit(other name) at the last position."""
        last = logits[:, -1]
        rows = torch.arange(len(last), device=last.device)
        return (last[rows, answer_ids[:, 0]] - last[rows, answer_ids[:, 1]]).mean()

    with torch.no_grad():
        with model.trace(clean):
            clean_baseline = float(logit_diff(model.output.logits).save())
        with model.trace(corrupted):
            corrupted_baseline = float(logit_diff(model.output.logits).save())
    print(f"IOI, {len(clean)} pairs: mean logit difference {clean_baseline:+.3f} clean, {corrupted_baseline:+.3f} "
          "corrupted")

    heads = [site(model, f"z.{layer}") for layer in range(n_layers)]   # each head's output: o_proj's input
    with model.trace() as tracer:
        with tracer.invoke(clean):
            clean_z = [h.read(model).save() for h in heads]
        with tracer.invoke(corrupted):
            values = [h.module_value(model) for h in heads]
            corrupted_z = [h.take(v).save() for h, v in zip(heads, values)]
            metric = (logit_diff(model.output.logits) - corrupted_baseline) / (clean_baseline - corrupted_baseline)
            with metric.backward():
                # gradients arrive in the order the backward computes them: the last layer first
                backward_order = [heads[i].take(values[i].grad).save() for i in reversed(range(n_layers))]
    grads = backward_order[::-1]                                            # forward order again
    # (layers, heads, positions), summed over the head dimension and over the pairs (the metric is their mean)
    with torch.no_grad():
        scores = torch.stack([((c - k) * g).sum(-1).sum(0).T for c, k, g in zip(clean_z, corrupted_z, grads)])
        misaligned = torch.stack([((c - k) * g).sum(-1).sum(0).T
                                  for c, k, g in zip(clean_z, corrupted_z, backward_order)])

    one_call = attrib.attribution_patching(model, clean, corrupted, target=answers, contrast=others,
                                           components="heads")
    normalised = one_call.scores["heads"] / (one_call.metric_clean - one_call.metric_corrupted)
    gap = float((scores.float() - normalised.float()).abs().max())
    scale = float(normalised.abs().max())
    r = torch.corrcoef(torch.stack([misaligned.flatten(), scores.flatten()]).double())[0, 1]
    print(f"trace with invokes vs attrib.attribution_patching on the lists: max |difference| {gap:.2e} (largest "
          f"|score| {scale:.3f})")
    print(f"the tutorial's pairing (gradients in backward order zipped with forward activations) against the "
          f"aligned scores: Pearson r = {float(r):+.2f}")
    print("top heads (layer, head, position of the longest prompt, normalised score):")
    for _, (layer, head, position), value in one_call.top(5):
        share = value / (one_call.metric_clean - one_call.metric_corrupted)
        print(f"  L{layer:>2}H{head} at {one_call.tokens[position]!r:>8} {share:+.3f}")
    return 0 if gap <= 1e-4 * max(scale, 1.0) else 1


if __name__ == "__main__":
    sys.exit(main())
