"""``make demo``: integrated gradients on the offline demo model (SmolLM2-135M-Instruct).

Run with ``python -m attrib.demo [--prompt TEXT] [--target TEXT] [--out DIR]``. It attributes the logit of
the target (" Paris" for "The capital of France is") to the prompt's tokens with integrated gradients at
its defaults (baseline "auto", adaptive steps), prints the top tokens and the completeness delta, and writes the token heatmap as a PNG. Then it runs the
seed page's gradient example: every decoder layer's output is read in a trace, ``with score.backward():``
reads their gradients in reverse order, and the gradient norm per layer and position is printed and
written as a second heatmap. Last, attribution patching on eight indirect-object-identification (IOI) pairs in
one batch prints the heads that matter most and writes their layer × head heatmap.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import attrib
from attrib.viz.labels import quoted
from attrib.viz.heatmap import layer_position_figure


def residual_gradient_norms(model: attrib.LanguageModel, prompt: str) -> tuple[torch.Tensor, list[str], str]:
    """Gradient norm of the top next-token logit w.r.t. each layer's output: (layers, positions)."""
    layers = model.model.layers
    with model.trace(prompt):
        hidden = [layer.output for layer in layers]
        logits = model.output.logits
        top = int(logits[0, -1].argmax())
        with logits[0, -1, top].backward():
            norms = [h.grad[0].norm(dim=-1).save() for h in reversed(hidden)]
    ids = model.tokenize(prompt)["input_ids"][0].tolist()
    tokens = [model.tokenizer.decode([i]) for i in ids]
    return torch.stack(norms[::-1]).detach().cpu(), tokens, model.tokenizer.decode([top])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="The capital of France is")
    parser.add_argument("--target", default=" Paris")
    parser.add_argument("--out", default="demo_output")
    parser.add_argument("--dpi", type=int, default=120)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    model = attrib.load_demo_model()
    print(f"loaded the demo model on {model.device} in {time.perf_counter() - start:.1f} s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    # The defaults: the logit, baseline "auto" (pad everywhere but the first position, the attention sink) and
    # adaptive steps until the completeness error is within 1% (docs/methods.md, "Defaults").
    ig = attrib.integrated_gradients(model, args.prompt, target=args.target)
    took = time.perf_counter() - start
    change = ig.info["f_x"] - ig.info["f_baseline"]
    print(f"\nintegrated gradients of the logit of {quoted(ig.target)} (baseline {ig.info['baseline']!r}, "
          f"{ig.info['evaluations']} evaluations of {ig.info['rule']}, {took:.1f} s)")
    for token, value in ig.top(len(ig.tokens)):
        print(f"  {token!r:>14} {value:+9.3f}")
    print(f"completeness: sum {float(ig.scores.sum()):+.3f}, f(x) - f(baseline) {change:+.3f}, "
          f"delta {float(ig.delta):+.4f} ({ig.info['completeness']:.2%})")
    fig = ig.plot()
    path = out / "integrated_gradients.png"
    fig.savefig(path, dpi=args.dpi)
    print(f"wrote {path}\n")
    norms, tokens, top = residual_gradient_norms(model, args.prompt)
    print(f"prompt {args.prompt!r} -> top next token {top!r}")
    print("gradient norm of that logit w.r.t. each layer's output (rows: layers, columns: tokens)")
    width = max(8, *(len(repr(t)) for t in tokens))
    print("layer " + "".join(f"{repr(t):>{width + 1}}" for t in tokens))
    for i, row in enumerate(norms.tolist()):
        print(f"{i:>5} " + "".join(f"{v:>{width + 1}.3f}" for v in row))
    fig = layer_position_figure(norms.numpy(), tokens, colorbar_label="‖∂ logit / ∂ residual‖",
                                title=f"Residual-stream gradient norm of the logit of {top!r}")
    path = out / "residual_grad_norms.png"
    fig.savefig(path, dpi=args.dpi)
    print(f"wrote {path}\n")
    ioi_heads(model, out, args.dpi)
    return 0


IOI_CLEAN = "When Mary and John went to the store, John gave a drink to"
IOI_CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
_IOI_TEMPLATES = (("When {} and {} went to the store, {} gave a drink to", "Mary", "John"),
                  ("When {} and {} went to the park, {} gave the ball to", "Tom", "James"),
                  ("After {} and {} went to the shops, {} handed a book to", "Anna", "Paul"),
                  ("While {} and {} were at the office, {} sent a letter to", "Kate", "Mark"))


def ioi_pairs() -> tuple[list[str], list[str], list[str], list[str]]:
    """Eight IOI pairs of 14 tokens each on the demo model's tokenizer (Wang et al. 2022's task, as in the
    TransformerLens and NNsight tutorials): (clean prompts, corrupted prompts, answers, other names). In each
    clean prompt the subject is repeated and the answer is the other name (the indirect object); its corrupted
    prompt repeats the indirect object instead. Pair 0 is (IOI_CLEAN, IOI_CORRUPTED).

    >>> clean, corrupted, answers, others = ioi_pairs()
    >>> clean[1], answers[1], others[1]
    ('When Mary and John went to the store, Mary gave a drink to', ' John', ' Mary')
    """
    clean, corrupted, answers, others = [], [], [], []
    for text, a, b in _IOI_TEMPLATES:
        for subject, answer in ((b, a), (a, b)):
            clean.append(text.format(a, b, subject))
            corrupted.append(text.format(a, b, answer))
            answers.append(f" {answer}")
            others.append(f" {subject}")
    return clean, corrupted, answers, others


def ioi_heads(model: attrib.LanguageModel, out: Path, dpi: int) -> None:
    """Attribution patching of every head's output on eight IOI pairs in one batch; prints the top heads of
    the mean, writes a heatmap."""
    clean, corrupted, answers, others = ioi_pairs()
    start = time.perf_counter()
    result = attrib.attribution_patching(model, clean, corrupted, target=answers, contrast=others,
                                         components=("heads",))
    print(f"attribution patching, IOI, {result.n_pairs} pairs in one batch, e.g. {clean[0]!r} with the repeated name "
          f"swapped:\nlogit(answer) - logit(other name) is {result.metric_clean:+.2f} on the clean prompts and "
          f"{result.metric_corrupted:+.2f} on the corrupted ones (mean; {time.perf_counter() - start:.2f} s); the "
          "heads whose clean output changes it most when patched in:")
    for _, (layer, head, position), value in result.top(5):
        print(f"  layer {layer:>2} head {head} at {result.tokens[position]!r:>8} (position {position:>2}) {value:+.3f}")
    fig = result.plot("heads", position=-1)
    path = out / "attribution_patching_heads.png"
    fig.savefig(path, dpi=dpi)
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
