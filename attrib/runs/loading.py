"""The model of a dataset run: the demo model, a local Hugging Face folder, or a GGUF file; never a hub download.

>>> from attrib.runs.loading import model_name, parse_dtype
>>> model_name(None), parse_dtype("float64")
('demo', torch.float64)

A folder is loaded with ``AutoModelForCausalLM`` and ``AutoTokenizer`` (``local_files_only=True``), a ``.gguf``
file through transformers' ``gguf_file=`` (its weights de-quantized, as :mod:`attrib.models.demo` does).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import RunError
from ..models.demo import load_demo_model
from ..models.language import LanguageModel

__all__ = ["load_model", "model_name", "parse_dtype", "dtype_name", "DTYPES"]

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_dtype(name: Any) -> torch.dtype | None:
    """A dtype by name (``float32``, ``float64``, ``float16``, ``bfloat16``); None or ``auto``: the model's own."""
    if name is None or name == "auto":
        return None
    if isinstance(name, torch.dtype) and name in DTYPES.values():
        return name
    if name not in DTYPES:
        raise RunError(f"dtype {name!r:.30} is not one of auto, {', '.join(DTYPES)}; pass one of those.")
    return DTYPES[name]


def dtype_name(name: Any) -> str | None:
    """How ``run.json`` records the dtype: its name, or None for the model's own."""
    parsed = parse_dtype(name)
    return None if parsed is None else next(key for key, value in DTYPES.items() if value == parsed)


def model_name(spec: str | os.PathLike | None) -> str:
    """How ``run.json`` records the model: ``demo``, or the folder's or file's absolute path."""
    return "demo" if spec is None or spec == "demo" else os.path.abspath(os.fspath(spec))


def load_model(spec: str | os.PathLike | None, device: torch.device, dtype: torch.dtype | None) -> LanguageModel:
    """The run's model on ``device``, in eval mode."""
    if spec is None or spec == "demo":
        return load_demo_model(device=device, dtype=dtype)
    path = os.fspath(spec)
    if os.path.isdir(path):
        folder, extra = path, {}
    elif os.path.isfile(path) and path.lower().endswith(".gguf"):
        folder, extra = os.path.dirname(os.path.abspath(path)), {"gguf_file": os.path.basename(path)}
        dtype = dtype or torch.float32
    else:
        raise RunError(f"--model {path!r} is neither a folder nor a .gguf file; pass a local Hugging Face folder "
                       "(config.json, weights, tokenizer), a GGUF file, or leave --model out for the demo model.")
    return _from_pretrained(path, folder, extra, device, dtype)


def _from_pretrained(path: str, folder: str, extra: dict[str, Any], device: torch.device,
                     dtype: torch.dtype | None) -> LanguageModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **extra)
        hf = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype or "auto", **extra)
    except ImportError as err:
        raise RunError(f"loading --model {path!r} needs a package that is missing ({err}); for GGUF files install "
                       "`pip install gguf accelerate`.") from None
    except (OSError, ValueError, KeyError) as err:
        raise RunError(f"--model {path!r} cannot be loaded as a causal language model ({str(err)[:120]}); pass a "
                       "local Hugging Face folder (config.json, weights, tokenizer) or a GGUF file.") from None
    return LanguageModel(hf.to(device).eval(), tokenizer)
