"""Invokes in one forward against one trace per prompt: NNsight's batching form, timed side by side.

Work per prompt (the attribution-patching tutorials' shape): read a middle layer's output, take the
logit difference of two tokens at the last position, backpropagate it in a backward context and save the
layer's gradient. Contestants, interleaved in a shuffled order (``bench/harness.py``), median of ``--reps``:

- ``invokes``      ``with model.trace() as tracer:`` and one ``with tracer.invoke(prompt):`` per prompt: one
                   batched forward and one backward per invoke through the shared graph
- ``per prompt``   one ``with model.trace(prompt):`` per prompt (what the invokes ran before they were batched)
- ``one batch``    one trace of the list of prompts, the metric summed over rows, one backward: the hand-batched
                   ideal (rows are independent, so each row's gradient is the same)

``--body edit``: forward only (zero the layer's last position, save the last logits). ``match``: the invokes'
results equal the per-prompt ones (max |difference| / max |value|).

    python bench/invokes.py --device cpu                       # SmolLM2-135M shape, random, float32
    python bench/invokes.py --device cuda --prompts 8,32       # bf16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import transformers  # noqa: E402

import attrib  # noqa: E402
from bench.harness import header, paired, time_contestants  # noqa: E402
from tests.conftest import WordTokenizer  # noqa: E402


def build(device: torch.device, dtype: torch.dtype) -> attrib.LanguageModel:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                                   num_key_value_heads=3, vocab_size=50, tie_word_embeddings=True)
    with torch.device(device):
        hf = transformers.LlamaForCausalLM(cfg).to(dtype).eval()
    return attrib.LanguageModel(hf, WordTokenizer())


def contestants(model: attrib.LanguageModel, prompts: list[str], body: str = "grad") -> dict:
    layer = model.model.layers[15]
    if body == "edit":
        return edit_contestants(model, prompts, layer)

    def gradient() -> torch.Tensor:
        """In an open trace or invoke: the layer's gradient of the logit difference at the last position."""
        h = layer.output
        logits = model.output.logits
        with (logits[0, -1, 7] - logits[0, -1, 9]).backward():
            return h.grad.save()

    def invokes() -> list[torch.Tensor]:
        grads = []
        with model.trace() as tracer:
            for prompt in prompts:
                with tracer.invoke(prompt):
                    grads.append(gradient())
        return grads

    def per_prompt() -> list[torch.Tensor]:
        grads = []
        for prompt in prompts:
            with model.trace(prompt):
                grads.append(gradient())
        return grads

    def one_batch() -> list[torch.Tensor]:
        with model.trace(prompts):
            h = layer.output
            logits = model.output.logits
            with (logits[:, -1, 7] - logits[:, -1, 9]).sum().backward():
                g = h.grad.save()
        return list(g.split(1))

    return {"invokes": invokes, "per prompt": per_prompt, "one batch": one_batch}


def edit_contestants(model: attrib.LanguageModel, prompts: list[str], layer) -> dict:
    """Forward only: zero the last position of the middle layer's output, save the last position's logits."""

    def edited() -> torch.Tensor:
        layer.output[:, -1] = 0
        return model.output.logits[:, -1].detach().save()

    def invokes() -> list[torch.Tensor]:
        out = []
        with model.trace() as tracer:
            for prompt in prompts:
                with tracer.invoke(prompt):
                    out.append(edited())
        return out

    def per_prompt() -> list[torch.Tensor]:
        out = []
        for prompt in prompts:
            with model.trace(prompt):
                out.append(edited())
        return out

    def one_batch() -> list[torch.Tensor]:
        with model.trace(prompts):
            layer.output[:, -1] = 0
            return list(model.output.logits[:, -1].detach().save().split(1))

    return {"invokes": invokes, "per prompt": per_prompt, "one batch": one_batch}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prompts", default="8", help="comma list of prompt counts")
    parser.add_argument("--tokens", type=int, default=14)
    parser.add_argument("--body", default="grad,edit", help="grad (a backward context per invoke), edit (forward only)")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build(device, dtype)
    print(header(device, args.reps, args.warmup, {}), flush=True)
    print("\n| body | prompts × tokens | invokes ms | per prompt ms | one batch ms | per prompt / invokes, paired [95% CI] | "
          "invokes / one batch, paired | match |\n|---|---|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(1)
    cases = [(body, int(n)) for body in args.body.split(",") for n in args.prompts.split(",")]
    for body, n in cases:
        prompts = [" ".join(f"w{int(i)}" for i in torch.randint(0, 50, (args.tokens,), generator=gen)) for _ in range(n)]
        runs = contestants(model, prompts, body)
        params = list(model.module.parameters())
        raw: dict[str, list[float]] = {}
        med, failed, first = time_contestants(runs, device, args.reps, args.warmup,
                                              before=lambda: [setattr(p, "grad", None) for p in params], raw=raw)
        speed = paired(raw, "per prompt", "invokes")
        cost = paired(raw, "invokes", "one batch")
        got, want = torch.cat(first["invokes"]).float(), torch.cat(first["per prompt"]).float()
        gap = float((got - want).abs().max() / want.abs().max())
        fmt = (lambda p: "–" if p is None else f"{p[0]:.2f}× [{p[1]:.2f}, {p[2]:.2f}]")
        print(f"| {body} | {n} × {args.tokens} | {med['invokes']:.1f} | {med['per prompt']:.1f} | {med['one batch']:.1f} | "
              f"{fmt(speed)} | {fmt(cost)} | {gap:.1e} |", flush=True)


if __name__ == "__main__":
    main()
