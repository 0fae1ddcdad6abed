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

__all__ = ["write", "read", "kind_of", "incomplete", "article", "FORMAT"]

FORMAT = 1


def _path(path: Any, doing: str) -> str:
    """``path`` as a string, else one clear error (``doing``: "save to" or "load")."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ResultFileError(f"cannot {doing} path={path!r:.60}: a result file's path is a non-empty str or "
                              "pathlib.Path, e.g. 'results/ig.safetensors'.")
    text = os.fspath(path)
    return text if isinstance(text, str) else os.fsdecode(text)


def write(path: str | os.PathLike, kind: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    target = _path(path, "save to")
    folder = os.path.dirname(os.path.abspath(target))
    if os.path.isdir(target):
        raise ResultFileError(f"cannot save to {target!r}: it is a folder; pass a file path such as "
                              f"{os.path.join(target, kind + '.safetensors')!r}.")
    if not os.path.isdir(folder):
        raise ResultFileError(f"cannot save to {target!r}: its folder {folder!r} does not exist; create it first "
                              "(os.makedirs) or pass another path.")
    header = json.dumps({"kind": kind, "format": FORMAT, **meta}, allow_nan=True)
    # each tensor on its own storage: a result's fields may share one (a plain model's scores are its values)
    try:
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, target,
                  metadata={"attrib": header})
    except (SafetensorError, OSError) as err:
        raise ResultFileError(f"cannot save to {target!r} ({str(err)[:80]}); pass a path you can write.") from None


def _broken(meta: Any) -> str | None:
    """What is wrong with a parsed ``attrib`` header, or None when it can be read."""
    if not isinstance(meta, dict):
        return "is not a JSON object"
    if not isinstance(meta.get("kind"), str):
        return "names no result kind"
    version = meta.get("format", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        return f"has format {version!r:.20}, not a version number"
    return None


def _header(path: str | os.PathLike) -> dict[str, Any]:
    name = _path(path, "load")
    if not os.path.isfile(name):
        raise ResultFileError(f"{name!r} is not a file; pass the path a result was saved to.")
    try:
        with safe_open(name, framework="pt") as f:
            text = (f.metadata() or {}).get("attrib")
    except (SafetensorError, OSError, ValueError) as err:
        raise ResultFileError(f"{name!r} is not a safetensors file ({err}); results are saved with "
                              ".save(path).") from None
    if text is None:
        raise ResultFileError(f"{name!r} is a safetensors file but not an attrib result.")
    try:
        meta = json.loads(text)
        broken = _broken(meta)
    except ValueError:
        meta, broken = None, "is not JSON"
    if broken is not None:
        raise ResultFileError(f"{name!r} has an attrib header that {broken}, so it was not written by "
                              "result.save(); save the result again.")
    if meta.get("format", 0) > FORMAT:
        raise ResultFileError(f"{name!r} was saved by a newer attrib (format {meta['format']}); upgrade "
                              "attrib to read it.")
    return meta


def kind_of(path: str | os.PathLike) -> str:
    return str(_header(path)["kind"])


def article(word: str) -> str:
    """``word`` with its indefinite article: "an attribution", "a patching" (a quoted word by its first letter)."""
    vowel = word.strip("'\"")[:1].lower() in ("a", "e", "i", "o", "u")
    return f"{'an' if vowel else 'a'} {word}"


def read(path: str | os.PathLike, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    meta = _header(path)
    if meta["kind"] != kind:
        raise ResultFileError(f"{os.fspath(path)!r} holds {article(meta['kind'])} result, not {article(kind)}; load "
                              "it with attrib.load(path).")
    return load_file(os.fspath(path)), meta


def incomplete(path: str | os.PathLike, kind: str, err: BaseException) -> ResultFileError:
    """The error for a result file whose tensors or fields do not make a ``kind`` result (``err``: why)."""
    what = f"has no {err.args[0]!r}" if isinstance(err, KeyError) and err.args else \
        f"has fields that do not fit ({type(err).__name__})"
    return ResultFileError(f"{os.fspath(path)!r} holds {article(kind)} result that {what}, so it was not written by "
                           "result.save(); save the result again.")
