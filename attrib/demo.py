"""``make demo``: the seed page's gradient example on the offline demo model (SmolLM2-135M-Instruct).

Run with ``python -m attrib.demo [--prompt TEXT] [--out DIR]``. It traces the prompt, reads every
decoder layer's output (the residual stream), opens ``with score.backward():`` on the logit of the
model's top next token, reads the layers' gradients in reverse order, prints the gradient norm per
layer and position, and writes the same table as a PNG heatmap.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import attrib
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
    parser.add_argument("--out", default="demo_output")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    model = attrib.load_demo_model()
    print(f"loaded the demo model on {model.device} in {time.perf_counter() - start:.1f} s")
    norms, tokens, top = residual_gradient_norms(model, args.prompt)
    print(f"prompt {args.prompt!r} -> top next token {top!r}")
    print("gradient norm of that logit w.r.t. each layer's output (rows: layers, columns: tokens)")
    width = max(8, *(len(repr(t)) for t in tokens))
    print("layer " + "".join(f"{repr(t):>{width + 1}}" for t in tokens))
    for i, row in enumerate(norms.tolist()):
        print(f"{i:>5} " + "".join(f"{v:>{width + 1}.3f}" for v in row))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig = layer_position_figure(norms.numpy(), tokens, colorbar_label="‖∂ logit / ∂ residual‖",
                                title=f"Residual-stream gradient norm of the logit of {top!r}")
    path = out / "residual_grad_norms.png"
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
