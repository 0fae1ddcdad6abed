"""Adaptive IG steps against fixed Gauss-Legendre rules: time and completeness on a batch of prompts (issue 13).

The ``adaptive-*`` cases of ``bench/ig.py`` (which dispatches here; run that script). IG of one target logit
w.r.t. the input embeddings, one ``attrib.integrated_gradients`` call on the whole batch of prompts (each
prompt refines its own steps), four contestants:

- ``zeros GL50``     ``baseline="zeros", n_steps=50``: the former default (Captum's)
- ``auto GL50``      ``n_steps=50`` (baseline ``"auto"``: the pad embedding at every prompt position but the
                     first, which keeps its own embedding)
- ``auto GL200``     ``n_steps=200``
- ``auto adaptive``  ``n_steps="auto"`` (Gauss-Kronrod, ``tol`` and ``max_evaluations`` at their defaults:
                     0.01 and 1,000), baseline ``"auto"``: the defaults on a float32/64 model. Passed
                     explicitly, since on a 16-bit model ``n_steps=None`` means 50 fixed steps.

Cases:

- ``adaptive-smollm2``: random weights in the SmolLM2-135M shape (``build("smollm2", ...)`` of ``bench/ig.py``),
  ``--prompts`` random-id prompts (ids ≥ 1) of ``--tokens`` tokens, target token 42. The model has no
  tokenizer, so ``LanguageModel.pad_id`` falls back to the config's ``eos_token_id``, 2 (LlamaConfig's
  default; the config has no ``pad_token_id``): the "auto" baseline is embedding row 2, a random row (row 0,
  which ``build`` zeroes for Captum's zero baseline, is not used by it).
- ``adaptive-demo``: the real demo model (SmolLM2-135M-Instruct, float32) on the first ``--prompts`` prompts of
  ``repro/facts.py`` with their single-token targets. CPU only; skipped, with a note, on another device or
  when the demo model is not in its local cache (``attrib.models.demo.demo_model_cache_dir()``): this bench
  never converts or downloads it.

Columns: ms per prompt (the median call time over the prompts of the batch), that time relative to
``zeros GL50``, evaluations per prompt (mean of ``.info["evaluations"]``, the end points included: n + 2
for a fixed rule), the completeness error ``.info["completeness"]`` = |delta| / |f(x) − f(b)| over the
prompts (median and max), how many prompts are within 1%, and (adaptive) how many did not converge within
``max_evaluations``. The accuracy columns come from each contestant's first timed call (``first`` of
``time_contestants``). ``ConvergenceWarning`` is silenced during the calls: the table counts those prompts.

Every contestant gets the same ``batch_size`` (``--batch-size``: rows per pass; by default all rows at once on
CUDA, halved on out-of-memory, and 128 on CPU, where one pass of all 808 rows of ``auto GL200`` on 4 prompts
of 16 tokens took 22 GB and the kernel killed the process). CPU defaults (4 prompts, 8 tokens for the random
model) keep ``--reps 3`` within minutes on 2 cores; on CUDA: 8 prompts of ``--tokens`` (64) tokens.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import torch

import attrib
from attrib.errors import ConvergenceWarning
from bench.harness import cell, time_contestants

__all__ = ["CASES", "measure_adaptive", "TITLE"]

CASES = ("adaptive-smollm2", "adaptive-demo")
TITLE = ("IG of one target logit on a batch of prompts: adaptive steps (n_steps='auto') against fixed "
         "Gauss-Legendre rules (one call per batch; completeness = |delta| / |f(x) − f(b)|)")
CONTESTANTS: dict[str, dict[str, Any]] = {
    "zeros GL50": dict(baseline="zeros", n_steps=50),
    "auto GL50": dict(n_steps=50),
    "auto GL200": dict(n_steps=200),
    "auto adaptive": dict(n_steps="auto"),
}
TARGET = 42
TOL = 0.01


def _random_inputs(build: Callable[..., Any], device: torch.device, dtype: torch.dtype, n_prompts: int,
                   tokens: int) -> tuple[attrib.LanguageModel, Any, Any, str]:
    hf = build("smollm2", device, dtype)
    model = attrib.LanguageModel(hf)   # pad_id: config.eos_token_id = 2 (no tokenizer, no pad_token_id)
    torch.manual_seed(3)
    ids = torch.randint(1, hf.config.vocab_size, (n_prompts, tokens)).to(device)
    return model, ids, TARGET, f"{tokens}"


def _demo_inputs(device: torch.device, n_prompts: int) -> tuple[attrib.LanguageModel, Any, Any, str] | str:
    """The demo model and the facts, or why the case is skipped."""
    from attrib.models.demo import demo_model_cache_dir
    from repro.facts import FACTS

    if device.type != "cpu":
        return f"adaptive-demo runs on CPU only (--device {device}); skipped."
    folder = demo_model_cache_dir()
    if not ((folder / "config.json").is_file() and any(folder.glob("*.safetensors"))):
        return (f"adaptive-demo skipped: the demo model is not in its local cache {folder} (run "
                "attrib.load_demo_model() once there; this bench never converts or downloads it).")
    model = attrib.load_demo_model(device=device, dtype=torch.float32)
    facts = FACTS[:n_prompts]
    prompts, targets = [p for p, _ in facts], [t for _, t in facts]
    lengths = [len(model.tokenizer(p)["input_ids"]) for p in prompts]
    return model, prompts, targets, f"{min(lengths)}–{max(lengths)}"


def measure_adaptive(case: str, device: torch.device, dtype: torch.dtype, n_prompts: int, tokens: int,
                     batch_size: int | None, reps: int, warmup: int, notes: list[str], build: Callable[..., Any]
                     ) -> list[dict[str, str]]:
    """One row per contestant ([] when the case is skipped, with the reason in ``notes``). ``batch_size``: rows
    per pass for every contestant (``None``: all at once, halved on out-of-memory)."""
    if case == "adaptive-smollm2":
        got: Any = _random_inputs(build, device, dtype, n_prompts, tokens)
    else:
        got = _demo_inputs(device, n_prompts)
        dtype = torch.float32
        if isinstance(got, str):
            notes.append(got)
            return []
    model, inputs, target, token_text = got
    n = len(inputs)
    runs = {name: (lambda kw=kw: attrib.integrated_gradients(model, inputs, target=target, batch_size=batch_size,
                                                             **kw))
            for name, kw in CONTESTANTS.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        med, failed, first = time_contestants(runs, device, reps, warmup)
    rows = []
    for name in CONTESTANTS:
        results = first.get(name)
        row = {"case": case, "dtype": str(dtype).removeprefix("torch."), "prompts × tokens": f"{n} × {token_text}",
               "contestant": name, "ms / prompt": "–", "× zeros GL50": "–", "evaluations / prompt": "–",
               "completeness median": "–", "completeness max": "–", f"within {TOL:.0%}": "–",
               "not converged": "–"}
        if name in failed:
            row["ms / prompt"] = cell(med, failed, name)
        elif name in med:
            row["ms / prompt"] = f"{med[name] / n:.1f}"
            if "zeros GL50" in med:
                row["× zeros GL50"] = f"{med[name] / med['zeros GL50']:.2f}"
        if results is not None:
            results = results if isinstance(results, list) else [results]
            rel = np.array([r.info["completeness"] for r in results], dtype=float)
            evals = np.array([r.info["evaluations"] for r in results], dtype=float)
            row.update({"evaluations / prompt": f"{evals.mean():.0f}", "completeness median": _pct(np.median(rel)),
                        "completeness max": _pct(rel.max()), f"within {TOL:.0%}": f"{int((rel <= TOL).sum())}/{n}"})
            if "converged" in results[0].info:
                row["not converged"] = str(sum(not r.info["converged"] for r in results))
        rows.append(row)
    return rows


def _pct(value: float) -> str:
    """A relative error as a percentage, small ones in scientific notation."""
    if not np.isfinite(value):
        return str(value)
    return f"{value:.0%}" if value >= 1 else (f"{value:.2%}" if value >= 1e-3 else f"{value * 100:.0e}%")
