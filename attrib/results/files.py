"""Results on disk: one safetensors file holding the tensors, with everything else as JSON in its header.

>>> import tempfile, os, torch
>>> from attrib.results.files import write, read
>>> path = os.path.join(tempfile.mkdtemp(), "r.safetensors")
>>> write(path, "example", {"scores": torch.arange(3.0)}, {"tokens": ["a", "b", "c"]})
>>> tensors, meta = read(path, "example")
>>> tensors["scores"].tolist(), meta["tokens"]
([0.0, 1.0, 2.0], ['a', 'b', 'c'])

No pickle: loading a file runs no code. The header's ``attrib`` entry is JSON with the result's kind and a
format version; a file of another kind, or of a newer format, is refused with a
:class:`~attrib.ResultFileError`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, safe_open

from ..errors import ResultFileError

__all__ = ["write", "read", "kind_of", "FORMAT"]

FORMAT = 1


def write(path: str | os.PathLike, kind: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    header = json.dumps({"kind": kind, "format": FORMAT, **meta}, allow_nan=True)
    # each tensor on its own storage: a result's fields may share one (a plain model's scores are its values)
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, os.fspath(path),
              metadata={"attrib": header})


def _header(path: str | os.PathLike) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise ResultFileError(f"{os.fspath(path)!r} is not a file; pass the path a result was saved to.")
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            text = (f.metadata() or {}).get("attrib")
    except (SafetensorError, OSError, ValueError) as err:
        raise ResultFileError(f"{os.fspath(path)!r} is not a safetensors file ({err}); results are saved with "
                              ".save(path).") from None
    if text is None:
        raise ResultFileError(f"{os.fspath(path)!r} is a safetensors file but not an attrib result.")
    meta = json.loads(text)
    if meta.get("format", 0) > FORMAT:
        raise ResultFileError(f"{os.fspath(path)!r} was saved by a newer attrib (format {meta['format']}); upgrade "
                              "attrib to read it.")
    return meta


def kind_of(path: str | os.PathLike) -> str:
    return str(_header(path)["kind"])


def read(path: str | os.PathLike, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    meta = _header(path)
    if meta["kind"] != kind:
        raise ResultFileError(f"{os.fspath(path)!r} holds a {meta['kind']} result, not a {kind}; load it with "
                              "attrib.load(path).")
    return load_file(os.fspath(path)), meta
