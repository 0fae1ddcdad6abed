"""Overhead of attrib's core against hand-written hooks and NNsight, on "the seed example".

The seed example (NNsight's Gradients page; ``tests/core/test_seed.py`` runs all of its examples): run the model on a prompt, capture the last
decoder layer's output ``h`` and the ``logits``, backpropagate ``logits.sum()`` and get the gradient
w.r.t. ``logits`` and w.r.t. ``h``. Contestants, timed side by side in one run (interleaved
repetitions in a shuffled order, each timed call after an untimed one of the same contestant, median of ``--reps`` after ``--warmup``; ``torch.cuda.synchronize()``
around each call on CUDA; parameters' ``.grad`` set to None, untimed, before every call):

- ``attrib``               ``with model.trace(ids): ... with logits.sum().backward(): ...`` (pruned backward)
- ``hooks (pruned)``       forward hook + ``torch.autograd.grad(logits.sum(), [logits, h])``: the same work
- ``hooks (full)``         forward hook + ``retain_grad()`` + a full backward (parameter grads too)
- ``nnsight``              NNsight doing the seed example, on a deep copy of the model (NNsight(m) leaves a
                           wrapper on every submodule's forward); its backward context runs a real
                           Tensor.backward, so it computes parameter grads too. Skipped when not importable

Run from the repo root (attrib need not be installed)::

    python bench/core_overhead.py --cases tiny-gpt2,demo --device cpu
    python bench/core_overhead.py --cases tiny-gpt2,demo,gpt2-small,llama-1b --device cuda   # bf16, 64 tokens

Cases: tiny-gpt2 (2 layers, d=64, random), demo (SmolLM2-135M via attrib.load_demo_model), gpt2-small
(GPT2Config() shape, random), llama-1b (Llama-3.2-1B shape, random). Nothing is downloaded.
Goal: attrib / hooks(pruned) <= 1.03, read as the paired ratio: the median over repetitions of attrib's time
over the hooks' time in the same repetition, with its 95% confidence interval (``bench.harness.paired``); the
ratio of the two medians is printed beside it. ``match`` checks attrib's (and the others') gradients against hooks(pruned).

``--compare DIR`` adds a contestant ``attrib (DIR)``: the attrib package found in ``DIR`` (an export of an
older commit, e.g. ``git archive REV attrib | tar -x -C DIR``), loaded under another name in the same process
and timed in the same interleaved loop, so that a change's cost is measured against the same noise.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import transformers  # noqa: E402

# nnsight patches torch.Tensor.backward globally at import; attrib restores whatever it finds when a
# trace starts, so either import order works.
try:
    import nnsight  # noqa: E402
    from nnsight.intervention import backward as _nnsight_backward  # noqa: E402
except ImportError:  # nnsight is optional
    nnsight = None  # type: ignore[assignment]

import attrib  # noqa: E402
from bench.harness import cell as harness_cell, header, paired, time_contestants  # noqa: E402

Grads = tuple[torch.Tensor, torch.Tensor]  # (d logits, d h)
DEFAULT_CASES = "tiny-gpt2,demo"
FILLER = ("The capital of France is Paris, and the capital of Italy is Rome. Rivers run to the sea while "
          "the mountains stand still under the sky; people walk in the streets and talk about the weather. ")


def layers_path(hf: torch.nn.Module) -> str:
    """Dotted path of the decoder-layer list (GPT-2: transformer.h, Llama-like: model.layers)."""
    for path in ("transformer.h", "model.layers", "gpt_neox.layers"):
        obj: object = hf
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return path
    raise SystemExit(f"no decoder-layer list found in {type(hf).__name__}")


def resolve(root: object, dotted: str) -> object:
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def build_case(name: str, device: torch.device, dtype: torch.dtype, tokens: int | None
               ) -> tuple[torch.nn.Module, torch.Tensor, attrib.LanguageModel]:
    """(hf module in eval mode, token ids [1, T], attrib wrapper) for one case."""
    torch.manual_seed(0)
    if name == "demo":
        model = attrib.load_demo_model(device=str(device), dtype=dtype)
        hf = model.module.eval()
        if tokens is None and device.type == "cpu":
            ids = model.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
        else:
            ids = model.tokenizer(FILLER * 8, return_tensors="pt")["input_ids"][:, : tokens or 64]
        return hf, ids.to(device), model
    cfg: transformers.PretrainedConfig
    if name == "tiny-gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, bos_token_id=0, eos_token_id=0)
    elif name == "gpt2-small":
        cfg = transformers.GPT2Config()
    elif name == "llama-1b":
        cfg = transformers.LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                                       tie_word_embeddings=True, max_position_embeddings=2048)
    else:
        raise SystemExit(f"unknown case {name!r}; choose from tiny-gpt2, demo, gpt2-small, llama-1b")
    cls = transformers.LlamaForCausalLM if name == "llama-1b" else transformers.GPT2LMHeadModel
    with torch.device(device):
        hf = cls(cfg).to(dtype).eval()
    n = tokens or (64 if device.type == "cuda" else 16)
    ids = torch.randint(0, cfg.vocab_size, (1, n), device=device)
    return hf, ids, attrib.LanguageModel(hf)


def load_compare(folder: str):
    """The attrib package in ``folder``, imported as ``attrib_compare`` (relative imports keep it whole)."""
    import importlib.util

    init = Path(folder) / "attrib" / "__init__.py"
    spec = importlib.util.spec_from_file_location("attrib_compare", init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["attrib_compare"] = module
    spec.loader.exec_module(module)
    return module


def seed_example(model, path: str, ids: torch.Tensor) -> Callable[[], Grads]:
    a_layer = resolve(model, path)[-1]  # type: ignore[index]

    def run_attrib() -> Grads:
        with model.trace(ids):
            h = a_layer.output
            logits = model.output.logits
            with logits.sum().backward():
                g_logits = logits.grad.save()
                g_h = h.grad.save()
        return g_logits, g_h
    return run_attrib


def contestants(hf: torch.nn.Module, ids: torch.Tensor, model: attrib.LanguageModel, compare=None
                ) -> tuple[dict[str, Callable[[], Grads]], list[torch.nn.Module]]:
    """The timed callables, and the modules whose parameters' .grad must be reset between calls."""
    path = layers_path(hf)
    layer = resolve(hf, path)[-1]  # type: ignore[index]
    run_attrib = seed_example(model, path, ids)

    def forward_with_hook() -> tuple[torch.Tensor, torch.Tensor]:
        store: list[torch.Tensor] = []
        handle = layer.register_forward_hook(lambda _m, _a, out: store.append(out))
        try:
            logits = hf(input_ids=ids).logits
        finally:
            handle.remove()
        return store[0], logits

    def run_pruned() -> Grads:
        h, logits = forward_with_hook()
        g_logits, g_h = torch.autograd.grad(logits.sum(), [logits, h])
        return g_logits, g_h

    def run_full() -> Grads:
        h, logits = forward_with_hook()
        h.retain_grad()
        logits.retain_grad()
        # torch.autograd.backward is what Tensor.backward runs; calling it directly keeps nnsight's
        # global Tensor.backward patch (source capture on every call) out of this column.
        torch.autograd.backward(logits.sum())
        return logits.grad, h.grad

    runs: dict[str, Callable[[], Grads]] = {"attrib": run_attrib, "hooks (pruned)": run_pruned,
                                            "hooks (full)": run_full}
    if compare is not None:
        runs["attrib (compare)"] = seed_example(compare.LanguageModel(hf), path, ids)
    if nnsight is not None:
        # NNsight(m) replaces the forward of every submodule of m with an instrumented wrapper that
        # stays in place outside its traces: give it its own copy so the other columns run plain modules.
        nn_copy = copy.deepcopy(hf)
        nn_model = nnsight.NNsight(nn_copy)
        n_layer = resolve(nn_model, path)[-1]  # type: ignore[index]

        def run_nnsight() -> Grads:
            _nnsight_backward.install()  # no-op unless something removed nnsight's Tensor.backward patch
            with nn_model.trace(input_ids=ids):
                h = n_layer.output.save()
                logits = nn_model.output.logits.save()
                with logits.sum().backward():
                    g = logits.grad.save()
                    gh = h.grad.save()
            return g, gh

        runs["nnsight"] = run_nnsight
        return runs, [hf, nn_copy]
    return runs, [hf]


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    rtol = 2e-2 if b.dtype in (torch.bfloat16, torch.float16) else 1e-5
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=rtol,
                                                 atol=rtol * float(b.float().abs().max()) + 1e-12)


def measure(name: str, device: torch.device, dtype: torch.dtype, tokens: int | None, reps: int, warmup: int,
            compare=None) -> dict[str, str]:
    hf, ids, model = build_case(name, device, dtype, tokens)
    runs, modules = contestants(hf, ids, model, compare)
    params = [p for m in modules for p in m.parameters()]

    def reset() -> None:
        for p in params:
            p.grad = None

    raw: dict[str, list[float]] = {}
    med, failed, first = time_contestants(runs, device, reps, warmup, before=reset, raw=raw)
    ref = first.get("hooks (pruned)")
    mismatch = [k for k, g in first.items() if ref is not None and not (close(g[0], ref[0]) and close(g[1], ref[1]))]

    def cell(key: str) -> str:
        return harness_cell(med, failed, key, digits=2)

    def ratio(a: str, b: str) -> str:
        return f"{med[a] / med[b]:.3f}" if a in med and b in med else "–"

    def pair(a: str, b: str) -> str:
        got = paired(raw, a, b) if a in med and b in med else None
        return "–" if got is None else f"{got[0]:.3f} [{got[1]:.3f}, {got[2]:.3f}]"

    extra = {} if compare is None else {
        "compare ms": cell("attrib (compare)"), "compare / hooks(pruned), paired": pair("attrib (compare)", "hooks (pruned)"),
        "attrib / compare, paired": pair("attrib", "attrib (compare)")}
    return {"case": name, "tokens": str(ids.shape[-1]), "dtype": str(dtype).removeprefix("torch."),
            **extra, "attrib ms": cell("attrib"), "hooks (pruned) ms": cell("hooks (pruned)"),
            "hooks (full) ms": cell("hooks (full)"), "nnsight ms": cell("nnsight") if nnsight else "n/a",
            "attrib / hooks(pruned), paired [95% CI]": pair("attrib", "hooks (pruned)"),
            "attrib / hooks(pruned), medians": ratio("attrib", "hooks (pruned)"),
            "attrib / nnsight": ratio("attrib", "nnsight"),
            "hooks(full) / hooks(pruned)": ratio("hooks (full)", "hooks (pruned)"),
            "match": ("NO: " + ", ".join(mismatch)) if mismatch else "yes" if ref and "attrib" in first else "–"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT_CASES, help="comma list of tiny-gpt2, demo, gpt2-small, llama-1b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--tokens", type=int, default=None, help="prompt length (default 64 on CUDA, 16 on CPU)")
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compare", default=None, help="a folder holding another attrib/ to time alongside")
    args = parser.parse_args(argv)
    compare = load_compare(args.compare) if args.compare else None
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    nn_version = nnsight.__version__ if nnsight is not None else "not installed"
    print(header(device, args.reps, args.warmup, {"nnsight": nn_version}), flush=True)
    rows = [measure(c.strip(), device, dtype, args.tokens, args.reps, args.warmup, compare)
            for c in args.cases.split(",") if c.strip()]
    cols = list(rows[0])
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(row[c] for c in cols) + " |")


if __name__ == "__main__":
    main()
