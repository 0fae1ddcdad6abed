"""TransformerLens' attribution-patching demo (Nanda 2023), section by section, as attrib calls.

The demo patches IOI (eight prompt pairs, denoising, the normalised logit difference) at ever finer places and
compares attribution patching with activation patching at each: the residual stream, the attention and MLP
layer outputs, every head's output, and every head's output by component (query, key, value, pattern). Each
section here is one call of ``attrib.attribution_patching`` and one of ``attrib.activation_patching`` on the
lists of pairs, with the component names of attrib's sites (``resid`` = the residual stream leaving a layer,
``heads`` = each head's output ``z``; ``q``/``k``/``v`` = the projections, ``q_rot``/``k_rot`` the query and key
after the rotary embedding the demo model has and GPT-2 has not, ``pattern`` = the attention weights).
The demo's last section, head-to-head paths (a sender head's output as a later head's query, key or value reads
it), is one call of ``attrib.edge_attribution_patching``; its largest head-to-head edges are then checked
against exact ``attrib.edge_patching`` of those edges (one patched forward per edge and pair).

Printed per section: the Pearson correlation of the two methods and the largest activation-patching effects.
``--quick`` uses one pair and patches the last position only (half a minute on CPU); the default uses all eight
pairs, every position for the layer-level sections and the last position for the per-head ones (several
minutes on CPU). Exit status 1 when a section's two methods disagree in sign on the largest effect.
"""

from __future__ import annotations

import argparse
import sys

import torch

import attrib
from attrib.demo import ioi_pairs

SECTIONS = [("residual stream", ("resid",)), ("layer outputs", ("attn", "mlp")), ("head outputs", ("heads",)),
            ("heads by component", ("q", "k", "v", "q_rot", "k_rot", "pattern"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="one pair, last position only")
    args = parser.parse_args(argv)
    model = attrib.load_demo_model(device=args.device)
    clean, corrupted, answers, others = (part[:1] if args.quick else part for part in ioi_pairs())
    kw = dict(target=answers, contrast=others)
    ok = True
    print(f"IOI on the demo model, {len(clean)} pair(s), denoising; scores normalised by the clean − corrupted gap")
    print("| section | component | patches | Pearson r (attribution vs activation) | largest activation effect |")
    print("|---|---|---|---|---|")
    for title, components in SECTIONS:
        per_head = title.startswith("head")
        positions = -1 if args.quick or per_head else None
        approx = attrib.attribution_patching(model, clean, corrupted, components=components, positions=positions, **kw)
        exact = attrib.activation_patching(model, clean, corrupted, components=components, positions=positions, **kw)
        gap = exact.metric_clean - exact.metric_corrupted
        for c in components:
            a, e = approx.scores[c].double().flatten() / gap, exact.scores[c].double().flatten() / gap
            r = float(torch.corrcoef(torch.stack([a, e]))[0, 1])
            top = int(e.abs().argmax())
            index = tuple(int(i) for i in torch.unravel_index(torch.tensor(top), exact.scores[c].shape))
            where = f"L{index[0]}" + (f"H{index[1]}" if len(index) == 3 else "") + \
                f" @{exact.positions[index[-1]]}"
            print(f"| {title} | {c} | {e.numel()} | {r:+.3f} | {where} {float(e[top]):+.3f} |")
            ok &= bool(torch.sign(a[top]) == torch.sign(e[top]))
    ok &= head_paths(model, clean, corrupted, kw, 4 if args.quick else 12)
    return 0 if ok else 1


def head_paths(model: attrib.Model, clean: list, corrupted: list, kw: dict, k: int) -> bool:
    """The head-to-head section: edge attribution patching of every edge, then the ``k`` largest edges from a head
    to a later head's query, key or value patched exactly; one table row, True when their signs agree."""
    graph = attrib.edge_attribution_patching(model, clean, corrupted, **kw)
    senders = torch.tensor([s.startswith("L") for s in graph.senders])
    receivers = torch.tensor([r.endswith((".q", ".k", ".v")) for r in graph.receivers])
    paths = graph.edges & senders[:, None] & receivers[None, :]
    s, r = paths.nonzero(as_tuple=True)
    order = graph.scores[s, r].abs().argsort(descending=True)[:k]
    edges = [(graph.senders[int(s[i])], graph.receivers[int(r[i])]) for i in order]
    exact = attrib.edge_patching(model, clean, corrupted, edges=edges, **kw)
    gap = exact.metric_clean - exact.metric_corrupted
    a = torch.tensor([graph.score(*e) for e in edges], dtype=torch.float64) / gap
    e = torch.tensor([exact.score(*e) for e in edges], dtype=torch.float64) / gap
    r_ae = float(torch.corrcoef(torch.stack([a, e]))[0, 1])
    top = int(e.abs().argmax())
    print(f"| head-to-head paths | head → q/k/v | {int(paths.sum())} (exact: top {k}) | {r_ae:+.3f} | "
          f"{edges[top][0]}→{edges[top][1]} {float(e[top]):+.3f} |")
    return bool(torch.sign(a[top]) == torch.sign(e[top]))


if __name__ == "__main__":
    sys.exit(main())
