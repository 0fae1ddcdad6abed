"""Integrated gradients on a model dispatched over several devices, against the same model on one device.

Shapes (random weights; nothing is downloaded; untied head, since the maps put it on another device than the
embedding):

- ``--shape 1b`` (default): the Llama-3.2-1B shape (hidden 2048, 16 layers, 32/8 heads, MLP 8192, vocab 128256),
  dispatched as ``device_map="auto"`` spreads it over two GPUs (accelerate's ``dispatch_model``: the embedding
  and layers 0–7 on cuda:0, layers 8–15, the norm and the head on cuda:1). IG of one logit (``--steps`` 32
  Gauss–Legendre points, a ``--tokens`` 256-token random prompt) on the dispatched model and on the same
  weights on cuda:0 alone; prints the largest absolute and relative difference, each run's time and the peak
  memory per GPU.
- ``--shape 8b`` (two GPUs) / ``--shape 70b`` (four GPUs): the Llama-3-8B / 70B shape in bfloat16, made on the
  meta device and materialised layer by layer on its GPU (``to_empty`` and a random init there: no CPU copy of
  the weights), layers split evenly; IG as above, its time and the peak memory per GPU (no one-GPU twin).
- ``--tiny``: a 4-layer, hidden-64 Llama in float64 on the CPU, dispatched with accelerate's hooks on an all-CPU
  map (``force_hooks``); the check the CPU can run.

Run from the repo root::

    python bench/dispatch_check.py                # two GPUs: the issue's Llama-1B check
    python bench/dispatch_check.py --shape 8b     # two GPUs
    python bench/dispatch_check.py --shape 70b    # four GPUs
    python bench/dispatch_check.py --tiny         # CPU
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import transformers  # noqa: E402
from accelerate import dispatch_model  # noqa: E402

import attrib  # noqa: E402

SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
    "70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=128256),
}
GPUS = {"1b": 2, "8b": 2, "70b": 4}
TARGET = 42


def config(shape: str) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(**SHAPES[shape], tie_word_embeddings=False, max_position_embeddings=4096,
                                    bos_token_id=0, eos_token_id=0, pad_token_id=0)


def split_map(n_layers: int, devices: list[Any]) -> dict[str, Any]:
    """Layers split evenly over ``devices`` in order; the embedding on the first, the norm and head on the last."""
    first, last = devices[0], devices[-1]
    out: dict[str, Any] = {"model.embed_tokens": first, "model.rotary_emb": first}
    per = -(-n_layers // len(devices))
    out.update({f"model.layers.{i}": devices[i // per] for i in range(n_layers)})
    out.update({"model.norm": last, "lm_head": last})
    return out


def materialised(shape: str, placement: dict[str, Any], dtype: torch.dtype) -> transformers.LlamaForCausalLM:
    """A random-weight model made on the meta device, each module of ``placement`` materialised on its device."""
    cfg = config(shape)
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(cfg).to(dtype)
    for path, device in placement.items():
        module = hf.get_submodule(path)
        module.to_empty(device=device)
        for name, p in module.named_parameters():
            with torch.no_grad():
                p.fill_(1.0) if "norm" in f"{path}.{name}" else p.normal_(0.0, cfg.initializer_range)
    with torch.device(placement["model.rotary_emb"]):          # its buffers are computed, not loaded: make it anew
        hf.model.rotary_emb = type(hf.model.rotary_emb)(config=cfg)
    return hf.eval()


def ig(model: attrib.LanguageModel, ids: torch.Tensor, steps: int) -> tuple[torch.Tensor, float]:
    """(the attributions (T, d) on the CPU, seconds) of one IG call."""
    sync()
    start = time.perf_counter()
    result = attrib.integrated_gradients(model, ids, target=TARGET, n_steps=steps)
    sync()
    return result.values.detach().double().cpu(), time.perf_counter() - start


def sync() -> None:
    for i in range(torch.cuda.device_count()):
        torch.cuda.synchronize(i)


def peaks() -> str:
    return ", ".join(f"cuda:{i} {torch.cuda.max_memory_allocated(i) / 2**30:.2f} GiB"
                     for i in range(torch.cuda.device_count())) or "(CPU)"


def reset_peaks() -> None:
    for i in range(torch.cuda.device_count()):
        torch.cuda.reset_peak_memory_stats(i)


def compare(reference: torch.Tensor, got: torch.Tensor) -> str:
    diff = float((reference - got).abs().max())
    scale = float(reference.abs().max()) or 1.0
    return f"max |difference| {diff:.3g}, relative to max |attribution| {diff / scale:.3g}"


def against_one_device(shape: str, ids: torch.Tensor, steps: int, dtype: torch.dtype, single: Any,
                       placement: dict[str, Any], force_hooks: bool) -> None:
    """IG on the model on ``single`` alone and dispatched by ``placement``: the difference and both times."""
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config(shape)).to(dtype).eval()
    one = attrib.LanguageModel(copy.deepcopy(hf).to(single))
    ig(one, ids.to(single), steps)                                      # warm-up
    reset_peaks()
    reference, t_one = ig(one, ids.to(single), steps)
    print(f"one device ({single}): {t_one:.2f} s; peak {peaks()}")
    del one
    dispatch_model(hf, placement, main_device=placement["model.embed_tokens"], force_hooks=force_hooks)
    split = attrib.LanguageModel(hf)
    ig(split, ids.to(single), steps)
    reset_peaks()
    got, t_split = ig(split, ids.to(single), steps)
    print(f"dispatched ({sorted({str(d) for d in placement.values()})}): {t_split:.2f} s; peak {peaks()}")
    print(f"input device {split.device}; {compare(reference, got)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["1b", "8b", "70b"], default="1b")
    parser.add_argument("--tiny", action="store_true", help="a tiny model on an all-CPU map (no GPU needed)")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--steps", type=int, default=32)
    args = parser.parse_args()
    shape = "tiny" if args.tiny else args.shape
    torch.manual_seed(1)
    ids = torch.randint(1, SHAPES[shape]["vocab_size"], (1, 16 if args.tiny else args.tokens))
    layers = SHAPES[shape]["num_hidden_layers"]
    print(f"torch {torch.__version__} · transformers {transformers.__version__} · shape {shape} · "
          f"{ids.shape[1]} tokens · {args.steps} steps")
    if args.tiny:
        against_one_device(shape, ids, args.steps, torch.float64, "cpu", split_map(layers, ["cpu", "cpu"]), True)
        return
    needed = GPUS[shape]
    if torch.cuda.device_count() < needed:
        sys.exit(f"--shape {shape} needs {needed} GPUs; this machine has {torch.cuda.device_count()}.")
    placement = split_map(layers, list(range(needed)))
    if shape == "1b":
        against_one_device(shape, ids, args.steps, torch.float32, 0, placement, False)
        return
    hf = materialised(shape, placement, torch.bfloat16)
    dispatch_model(hf, placement, main_device=0)
    model = attrib.LanguageModel(hf)
    ig(model, ids.to(0), args.steps)
    reset_peaks()
    values, seconds = ig(model, ids.to(0), args.steps)
    print(f"dispatched over {needed} GPUs, bfloat16: {seconds:.2f} s; peak {peaks()}; "
          f"finite: {bool(torch.isfinite(values).all())}")


if __name__ == "__main__":
    main()
