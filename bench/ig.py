"""Integrated gradients: attrib against the eager ideal and Captum, side by side in one run.

Cases (random weights unless said otherwise; nothing is downloaded):

- ``ig-smollm2`` / ``ig-llama1b``: IG of one target logit (token 42 at the last position) w.r.t. the input
  embeddings of a ``--tokens`` prompt, ``--steps`` Gauss-Legendre points, zero baseline, in the
  SmolLM2-135M shape (hidden 576, 30 layers, 9/3 heads, MLP 1536, vocab 49152, tied) and the
  Llama-3.2-1B shape (hidden 2048, 16 layers, 32/8 heads, MLP 8192, vocab 128256, tied). Contestants:

  - ``attrib``            ``attrib.integrated_gradients(model, ids, target=42, n_steps=..., batch_size=None)``
  - ``eager ideal``       the project's anchor ideal, re-implemented here: one batched forward over all points of the embedding path with the
                          parameters frozen, ``logits[:, -1, target].sum()``, ``torch.autograd.grad`` w.r.t.
                          the path only. Like the anchor it computes every position's logits.
  - ``ideal keep-1``      the same with ``logits_to_keep=1`` (only the last position's logits, which is what
                          attrib computes): the least work IG can do at this size
  - ``Captum ibs=N``      ``LayerIntegratedGradients`` on the embedding layer as in the anchor
                          (forward ``model(input_ids).logits[:, -1, :]``, parameters left requiring grad),
                          ``internal_batch_size`` = steps and a small one (steps // 5: 10 for 50 steps)

  Every contestant uses the same zero baseline: Captum's baseline is token ids 0, so the embedding row of
  token 0 is set to zero (the prompts never contain token 0). ``match``: attrib's attributions (T × d)
  against Captum's (ibs = steps) and against the eager ideal's, ``allclose`` with rtol = atol/max|ref| =
  1e-4 (float32/64) or 3e-2 (bf16/fp16); the cell shows the largest difference relative to max|ref|.
  Goals (``docs/performance.md``): attrib / eager ideal ≤ 1.05,
  attrib / best Captum ≤ 0.65.

- ``matrix-smollm2``: the outputs × inputs matrix of a teacher-forced continuation (the anchor
  the project's per-token anchor: a 40-token prompt, ``--out-tokens`` random continuation tokens,
  ``--steps`` points, SmolLM2-135M shape, the demo model's tokenizer). ``attrib.integrated_gradients(...,
  per_token=True, score="logprob")`` against Captum ``LLMGradientAttribution`` over
  ``LayerIntegratedGradients`` (one IG run per output token, ``internal_batch_size`` = steps, as in the
  anchor; its target is each token's log-probability, hence ``score="logprob"``). The tokenizer is read,
  offline, from ``attrib.models.demo.demo_model_cache_dir()``; where that folder is missing the prompt
  is 40 random ids and Captum's column is the loop LLMGradientAttribution runs (``LayerIntegratedGradients``
  once per output token with the same forward function), which the header then says.
  Goal: Captum / attrib ≥ 10.

- ``adaptive-smollm2`` / ``adaptive-demo`` (``bench/ig_adaptive.py``, issue 13): IG of one target logit on a
  batch of ``--prompts`` prompts in one call, attrib against itself: ``zeros GL50`` (``baseline="zeros",
  n_steps=50``, the former default), ``auto GL50`` (``n_steps=50``), ``auto GL200`` (``n_steps=200``) and
  ``auto adaptive`` (``n_steps="auto"``, baseline ``"auto"``: the defaults in float32/64). Columns: ms per
  prompt, evaluations per prompt, the completeness error |delta| / |f(x) − f(b)| (median, max), prompts
  within 1%, prompts not converged. ``adaptive-smollm2``: random weights, SmolLM2-135M shape, ``--tokens``
  random ids per prompt; ``adaptive-demo``: the demo model's real weights (float32, CPU only, skipped unless
  cached) on ``repro/facts.py``. Defaults: 8 prompts on CUDA; 4 prompts (of 8 tokens for the random model)
  and 128 rows per pass (``--batch-size``) on CPU.

Timing as in ``bench/core_overhead.py``: contestants interleaved in a shuffled order, each timed call after
an untimed call of the same contestant, median of ``--reps`` after ``--warmup`` rounds,
``torch.cuda.synchronize()`` around every call on CUDA. attrib's tqdm bar (calls over two seconds) goes to
stderr; the tables go to stdout.

Run from the repo root (attrib need not be installed)::

    python bench/ig.py --device cpu                       # float32, small sizes (IG cases: a few minutes on 2 cores)
    python bench/ig.py --device cuda                      # bf16, 64 tokens, 50 steps, 32-token matrix, 8 prompts
    python bench/ig.py --device cpu --cases adaptive-smollm2,adaptive-demo --reps 3   # 4 prompts, 8 tokens
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import attrib  # noqa: E402
from bench.harness import cell, header, ratio, time_contestants  # noqa: E402
from bench.ig_adaptive import CASES as ADAPTIVE_CASES, TITLE as ADAPTIVE_TITLE, measure_adaptive  # noqa: E402

try:
    import captum  # noqa: E402
    from captum.attr import LayerIntegratedGradients  # noqa: E402
except ImportError:  # Captum is a test/bench dependency
    captum = None  # type: ignore[assignment]

SHAPES = {
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152),
    "llama1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                    num_key_value_heads=8, vocab_size=128256),
}
TARGET = 42
# The anchor's prompt: 40 tokens with the SmolLM2 tokenizer.
PROMPT = ("In the quiet town by the river, the old clockmaker opened his shop every morning at seven, "
          "greeting the baker, the postman and the children who walked past on their way to school. ")


def build(shape: str, device: torch.device, dtype: torch.dtype) -> transformers.LlamaForCausalLM:
    """A random-weight Llama of ``shape``, tied embeddings, the embedding row of token 0 set to zero."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**SHAPES[shape], tie_word_embeddings=True, max_position_embeddings=2048)
    with torch.device(device):
        hf = transformers.LlamaForCausalLM(cfg)
    hf = hf.to(dtype).eval()
    with torch.no_grad():
        hf.get_input_embeddings().weight[0].zero_()  # Captum's baseline ids 0 -> the zero baseline
    return hf


def gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Captum's Gauss-Legendre nodes and weights on [0, 1]."""
    x, w = np.polynomial.legendre.leggauss(n)
    return 0.5 * (x + 1), 0.5 * w


def close(a: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> str:
    """'yes (err)' / 'NO (err)', err = max |a − ref| / max |ref|; the tolerance follows the model's ``dtype``
    (attrib sums steps in float32 even for a bf16 model, so the results' own dtypes may differ)."""
    tol = 3e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-4
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    if a.shape != ref.shape:
        return f"NO (shape {tuple(a.shape)} vs {tuple(ref.shape)})"
    scale = float(ref.abs().max()) or 1.0
    err = float((a - ref).abs().max()) / scale
    ok = bool(torch.isfinite(a).all()) and torch.allclose(a, ref, rtol=tol, atol=tol * scale)
    return f"{'yes' if ok else 'NO'} ({err:.1e})"


# -- IG on one target logit ----------------------------------------------------------------------
def measure_ig(shape: str, device: torch.device, dtype: torch.dtype, tokens: int, steps: int, small_ibs: int,
               reps: int, warmup: int) -> dict[str, str]:
    hf = build(shape, device, dtype)
    params = list(hf.parameters())
    vocab = hf.config.vocab_size
    torch.manual_seed(1)
    ids = torch.randint(1, vocab, (1, tokens)).to(device)  # never token 0 (the baseline token)
    model = attrib.LanguageModel(hf)
    emb = hf.get_input_embeddings()
    nodes, weights = gauss_legendre(steps)
    alphas = torch.tensor(nodes, dtype=dtype, device=device).view(-1, 1, 1)
    w = torch.tensor(weights, dtype=dtype, device=device).view(-1, 1, 1)

    def run_attrib() -> torch.Tensor:
        return attrib.integrated_gradients(model, ids[0], target=TARGET, n_steps=steps, rule="gausslegendre",
                                           baseline="zeros", batch_size=None).values

    def eager_ideal(keep_all: bool) -> torch.Tensor:
        for p in params:
            p.requires_grad_(False)
        try:
            x = emb(ids).detach()
            base = torch.zeros_like(x)
            path = (base + alphas * (x - base)).requires_grad_(True)
            kw = {} if keep_all else {"logits_to_keep": 1}
            out = hf(inputs_embeds=path, **kw).logits[:, -1, TARGET].sum()
            (g,) = torch.autograd.grad(out, path)
            return ((g * w).sum(0) * (x - base)[0])
        finally:
            for p in params:
                p.requires_grad_(True)

    runs: dict[str, Callable[[], Any]] = {"attrib": run_attrib, "ideal": lambda: eager_ideal(True),
                                          "ideal keep-1": lambda: eager_ideal(False)}
    if captum is not None:
        def fwd(input_ids: torch.Tensor) -> torch.Tensor:
            return hf(input_ids=input_ids).logits[:, -1, :]

        lig = LayerIntegratedGradients(fwd, emb)
        zeros = torch.zeros_like(ids)
        for ibs in dict.fromkeys((steps, small_ibs)):
            runs[f"captum {ibs}"] = (lambda ibs=ibs: lig.attribute(ids, baselines=zeros, target=TARGET,
                                                                  n_steps=steps, method="gausslegendre",
                                                                  internal_batch_size=ibs)[0])
    med, failed, first = time_contestants(runs, device, reps, warmup)
    captums = [k for k in med if k.startswith("captum")]
    best = min(captums, key=med.__getitem__) if captums else None
    match = []
    if "attrib" in first:
        if f"captum {steps}" in first:
            match.append("Captum " + close(first["attrib"], first[f"captum {steps}"], dtype))
        if "ideal" in first:
            match.append("ideal " + close(first["attrib"], first["ideal"], dtype))
    row = {"case": f"ig-{shape}", "dtype": str(dtype).removeprefix("torch."), "tokens": str(tokens),
           "steps": str(steps), "attrib ms": cell(med, failed, "attrib"), "eager ideal ms": cell(med, failed, "ideal"),
           "ideal keep-1 ms": cell(med, failed, "ideal keep-1")}
    if captum is not None:
        row["Captum ibs=steps ms"] = cell(med, failed, f"captum {steps}")
        row["Captum small ibs ms"] = f"{cell(med, failed, f'captum {small_ibs}')} (ibs={small_ibs})"
    else:
        row["Captum ibs=steps ms"] = row["Captum small ibs ms"] = "captum not installed"
    row.update({"attrib / ideal (≤1.05)": ratio(med, "attrib", "ideal"),
                "attrib / ideal keep-1": ratio(med, "attrib", "ideal keep-1"),
                "attrib / best Captum (≤0.65)": ratio(med, "attrib", best),
                "match": " · ".join(match) or "–"})
    return row


# -- outputs × inputs matrix ---------------------------------------------------------------------
def demo_tokenizer() -> tuple[Any, str]:
    """The demo model's tokenizer from its cache folder (offline), or (None, why not)."""
    from attrib.models.demo import demo_model_cache_dir

    folder = demo_model_cache_dir()
    if not (folder / "tokenizer_config.json").is_file():
        return None, f"no demo tokenizer at {folder} (run attrib.load_demo_model() once there)"
    try:
        return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True), ""
    except Exception as err:  # noqa: BLE001
        return None, f"demo tokenizer unreadable: {type(err).__name__}: {err}"


def measure_matrix(device: torch.device, dtype: torch.dtype, n_out: int, steps: int, reps: int, warmup: int,
                   notes: list[str]) -> dict[str, str]:
    hf = build("smollm2", device, dtype)
    vocab = hf.config.vocab_size
    tok, why = demo_tokenizer()
    torch.manual_seed(2)
    if tok is not None:
        prompt_ids = tok(PROMPT)["input_ids"]
        # as the anchor: random ids, decoded and encoded again, so that they are the tokenizer's own tokens
        cont = tok(tok.decode(torch.randint(100, 40000, (n_out + 8,)).tolist()), add_special_tokens=False)["input_ids"]
        cont_ids = cont[:n_out]
    else:
        prompt_ids = torch.randint(1, vocab, (40,)).tolist()
        cont_ids = torch.randint(1, vocab, (n_out,)).tolist()
    ids = torch.tensor(prompt_ids, device=device)
    n_in, n_out = len(prompt_ids), len(cont_ids)
    model = attrib.LanguageModel(hf, tok)

    def run_attrib() -> torch.Tensor:
        return attrib.integrated_gradients(model, ids, target=cont_ids, score="logprob", n_steps=steps,
                                           rule="gausslegendre", baseline="zeros", per_token=True).scores

    runs: dict[str, Callable[[], Any]] = {"attrib": run_attrib}
    label = "Captum"
    if captum is not None:
        if tok is not None:
            from captum.attr import LLMGradientAttribution, TextTokenInput

            label = "Captum LLMGradientAttribution"
            llm = LLMGradientAttribution(LayerIntegratedGradients(hf, hf.get_input_embeddings()), tok)
            inp = TextTokenInput(PROMPT, tok)  # baselines = token 0, whose embedding is zero here
            assert inp.to_model_input().flatten().tolist() == prompt_ids
            target = torch.tensor(cont_ids)

            def run_captum() -> torch.Tensor:
                return llm.attribute(inp, target=target, n_steps=steps, method="gausslegendre",
                                     internal_batch_size=steps).token_attr
        else:
            label = "Captum LayerIntegratedGradients loop"
            notes.append(f"matrix-smollm2: {why}; the Captum column runs LayerIntegratedGradients once per output "
                         "token with LLMGradientAttribution's forward function (what it does), on 40 random ids.")
            prompt = ids.view(1, -1)
            cont_t = torch.tensor(cont_ids, device=device)

            def forward(input_ids: torch.Tensor, k: int) -> torch.Tensor:
                full = torch.cat([input_ids, cont_t[:k].expand(input_ids.shape[0], -1)], dim=1)
                return torch.log_softmax(hf(full).logits[:, -1], dim=1)[..., cont_ids[k]]

            lig = LayerIntegratedGradients(forward, hf.get_input_embeddings())
            zeros = torch.zeros_like(prompt)

            def run_captum() -> torch.Tensor:
                rows = []
                for k in range(n_out):
                    a = lig.attribute(prompt, baselines=zeros, additional_forward_args=(k,), n_steps=steps,
                                      method="gausslegendre", internal_batch_size=steps).detach()
                    rows.append((a[:, :-k] if k else a).sum(-1))
                return torch.cat(rows, dim=0)
        runs["captum"] = run_captum
    med, failed, first = time_contestants(runs, device, reps, warmup)
    match = close(first["attrib"], first["captum"], dtype) if "attrib" in first and "captum" in first else "–"
    if dtype in (torch.bfloat16, torch.float16) and "attrib" in first:
        # in 16-bit both sides carry rounding noise: measure each against attrib in float32
        hf.float()
        ref = run_attrib().float()
        err = {k: float((first[k].float() - ref).abs().max() / ref.abs().max()) for k in ("attrib", "captum")
               if k in first}
        match += " · vs float32: " + ", ".join(f"{k} {v:.1e}" for k, v in err.items())
    row = {"case": "matrix-smollm2", "dtype": str(dtype).removeprefix("torch."), "prompt tokens": str(n_in),
           "output tokens": str(n_out), "steps": str(steps), "attrib ms": cell(med, failed, "attrib"),
           f"{label} ms": cell(med, failed, "captum") if captum is not None else "captum not installed",
           "Captum / attrib (≥10)": ratio(med, "attrib", "captum", invert=True), "match": match}
    return row


def table(rows: list[dict[str, str]]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cases = ("ig-smollm2", "ig-llama1b", "matrix-smollm2", *ADAPTIVE_CASES)
    parser.add_argument("--cases", default=",".join(cases), help="comma list of " + ", ".join(cases))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16", "float64"), default=None,
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--tokens", type=int, default=None,
                        help="IG prompt length (default 64 on CUDA, 16 on CPU; adaptive-smollm2 on CPU: 8)")
    parser.add_argument("--steps", type=int, default=None, help="interpolation points (default 50 on CUDA, 10 on CPU)")
    parser.add_argument("--small-ibs", type=int, default=None,
                        help="Captum's small internal_batch_size (default steps // 5: 10 for 50 steps)")
    parser.add_argument("--out-tokens", type=int, default=None,
                        help="matrix continuation length (default 32 on CUDA, 6 on CPU)")
    parser.add_argument("--prompts", type=int, default=None,
                        help="prompts per batch of the adaptive-* cases (default 8 on CUDA, 4 on CPU)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="rows per pass in the adaptive-* cases (default: all rows, halved on out-of-memory, on "
                             "CUDA; 128 on CPU, where running out of memory kills the process instead)")
    parser.add_argument("--reps", type=int, default=None, help="default 10 on CUDA, 3 on CPU")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed rounds first (default 2 on CUDA, 0 on CPU, where every timed call already "
                             "follows an untimed one)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if cuda else torch.float32)
    tokens = args.tokens or (64 if cuda else 16)
    steps = args.steps or (50 if cuda else 10)
    small_ibs = args.small_ibs or max(1, steps // 5)
    n_out = args.out_tokens or (32 if cuda else 6)
    n_prompts = args.prompts or (8 if cuda else 4)
    batch_size = args.batch_size or (None if cuda else 128)
    reps = args.reps or (10 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (2 if cuda else 0)
    cap_version = captum.__version__ if captum is not None else "not installed"
    print(header(device, reps, warmup, {"captum": cap_version}), flush=True)
    if captum is None:
        print("captum is not installed: its columns are empty (pip install captum)")
    ig_rows, matrix_rows, adaptive_rows, notes = [], [], [], []
    for case in (c.strip() for c in args.cases.split(",") if c.strip()):
        if case in ("ig-smollm2", "ig-llama1b"):
            ig_rows.append(measure_ig(case[3:], device, dtype, tokens, steps, small_ibs, reps, warmup))
            print(f"  {case} done", file=sys.stderr, flush=True)
        elif case == "matrix-smollm2":
            matrix_rows.append(measure_matrix(device, dtype, n_out, steps, reps, warmup, notes))
            print(f"  {case} done", file=sys.stderr, flush=True)
        elif case in ADAPTIVE_CASES:
            adaptive_rows += measure_adaptive(case, device, dtype, n_prompts, args.tokens or (64 if cuda else 8),
                                              batch_size, reps, warmup, notes, build)
            print(f"  {case} done", file=sys.stderr, flush=True)
        else:
            raise SystemExit(f"unknown case {case!r}; choose from {', '.join(cases)}")
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    if ig_rows:
        print("\nIG of one target logit w.r.t. the input embeddings (zero baseline, Gauss-Legendre, random weights)\n")
        print(table(ig_rows))
    if matrix_rows:
        print("\nOutputs × inputs matrix of a continuation (log-prob targets, zero baseline, Gauss-Legendre)\n")
        print(table(matrix_rows))
    if adaptive_rows:
        print(f"\n{ADAPTIVE_TITLE}\n")
        print(table(adaptive_rows))
    for note in notes:
        print(f"\nnote: {note}")


if __name__ == "__main__":
    main()
