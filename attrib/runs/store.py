"""A run's folder: ``run.json`` (the options), one safetensors shard per chunk, and one JSON line per prompt.

>>> import os, tempfile, torch
>>> from attrib.results import Attribution
>>> from attrib.runs.dataset import examples_from
>>> from attrib.runs.store import consolidate, load_results, read_index, write_chunk
>>> folder = tempfile.mkdtemp()
>>> examples = examples_from(["a b"])
>>> result = Attribution(["a", " b"], torch.tensor([0.5, -1.0]), torch.ones(2, 3), None, " c", "saliency")
>>> write_chunk(folder, 0, 0, examples, [result])
>>> sorted(consolidate(folder, [examples], "index.jsonl", require_all=True))
[0]
>>> [(r["id"], r["tokens"], r["scores"], r["shard"]) for r in read_index(folder)]
[(1, ['a', ' b'], [0.5, -1.0], 'shard-000000.safetensors')]
>>> [loaded.values.shape for _, loaded in load_results(folder)]
[torch.Size([2, 3])]

The write order, for each chunk: the shard is written whole under a temporary name, flushed and renamed
(:func:`~attrib.runs.disk.write_atomic`); then the chunk's index lines are appended to the rank's own
``index.rankR.jsonl`` in one flushed write. A kill can therefore leave a temporary file, a shard without index
lines, or some of a chunk's lines with a torn last one. :func:`consolidate` (at every start, and to merge at
the end) keeps the chunks whose lines are all there and whose shard exists, writes them in dataset order into
one index file (atomically), and removes the other index files, the shards of incomplete chunks and the
temporary files: those chunks are computed again, whole, so nothing is lost and nothing is there twice.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterator, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from ..errors import RunError
from ..results import Attribution, PatchingResult
from ..results.base import Result, jsonable
from .dataset import Example
from .disk import TMP_PREFIX, append_lines, die, fsync_folder, kill_point, read_lines, write_atomic

__all__ = ["INDEX", "shard_name", "rank_index", "write_chunk", "consolidate", "read_index", "load_results",
           "index_files"]

INDEX = "index.jsonl"
_RANK_INDEX = re.compile(r"^index\.rank(\d+)\.jsonl$")
_SHARD = re.compile(r"^shard-\d+\.safetensors$")
_KINDS: dict[str, type[Result]] = {Attribution.KIND: Attribution, PatchingResult.KIND: PatchingResult}
_TOP = ("tokens", "target")          # fields of a result's meta that an index line holds at its top level


def shard_name(chunk: int) -> str:
    return f"shard-{chunk:06d}.safetensors"


def rank_index(rank: int) -> str:
    return f"index.rank{rank}.jsonl"


def index_files(folder: str) -> list[str]:
    """The index files in ``folder``: the merged one first, then each rank's."""
    names = sorted(n for n in os.listdir(folder) if _RANK_INDEX.match(n))
    return ([INDEX] if os.path.isfile(os.path.join(folder, INDEX)) else []) + names


def _record(example: Example, result: Result, chunk: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """An example's index line and its tensors, named ``"<id>/<field>"`` in the chunk's shard."""
    tensors = {f"{example.id}/{name}": value.detach().cpu().clone().contiguous()
               for name, value in result._tensors().items()}
    meta = jsonable(result._meta())
    delta = getattr(result, "delta", None)
    line = {"id": example.id, "line": example.line, "chunk": chunk, "shard": shard_name(chunk),
            "tensors": {name[len(f"{example.id}/"):]: name for name in tensors},
            "kind": result.KIND, "method": meta.get("method"), "prompt": example.prompt, "tokens": meta["tokens"],
            "target": meta["target"], "contrast": example.contrast, "corrupted": example.corrupted,
            "scores": jsonable(result.scores), "delta": jsonable(delta), "meta": example.meta,
            "result": {k: v for k, v in meta.items() if k not in _TOP}}
    return line, tensors


def write_chunk(folder: str, rank: int, chunk: int, examples: Sequence[Example], results: Sequence[Result]) -> None:
    """Write one chunk: its shard (atomically), then its index lines (one flushed append to the rank's file)."""
    lines, tensors = [], {}
    for example, result in zip(examples, results):
        line, found = _record(example, result, chunk)
        lines.append(line)
        tensors.update(found)
    ids = json.dumps([e.id for e in examples])
    write_atomic(os.path.join(folder, shard_name(chunk)), save(tensors, metadata={"attrib_run_ids": ids}), "tmp")
    if kill_point("shard"):
        die()
    append_lines(os.path.join(folder, rank_index(rank)), lines)
    if kill_point("index"):
        die()


def _lines_of(folder: str, name: str) -> tuple[list[dict[str, Any]], bool]:
    path = os.path.join(folder, name)
    values, torn = read_lines(path)
    for number, value in enumerate(values, start=1):
        if not (isinstance(value, dict) and isinstance(value.get("chunk"), int) and "id" in value
                and isinstance(value.get("shard"), str)):
            raise RunError(f"{path}, line {number}, is not an index line written by attrib run; delete the run's "
                           "folder and start again, or pass another --out.")
    return values, torn


def _complete(folder: str, found: dict[int, dict[str, dict]], chunks: Sequence[Sequence[Example]]) -> dict[int, dict]:
    """The chunks whose every example has its line and whose shard exists."""
    done = {}
    for k, records in found.items():
        if not 0 <= k < len(chunks):
            continue
        ids = [str(e.id) for e in chunks[k]]
        shard = os.path.join(folder, shard_name(k))
        if sorted(records) == sorted(ids) and os.path.isfile(shard):
            done[k] = records
    return done


def consolidate(folder: str, chunks: Sequence[Sequence[Example]], into: str, *, require_all: bool) -> set[int]:
    """Keep the complete chunks of every index file, in dataset order, in ``into``; remove the other index files,
    the shards of incomplete chunks and temporary files. Returns the numbers of the complete chunks.
    ``require_all``: every chunk must be complete (the merge at the end of a run)."""
    names = index_files(folder)
    found: dict[int, dict[str, dict]] = {}
    torn = False
    for name in names:
        values, cut = _lines_of(folder, name)
        torn |= cut
        for value in values:
            found.setdefault(value["chunk"], {})[str(value["id"])] = value
    done = _complete(folder, found, chunks)
    if require_all and len(done) < len(chunks):
        missing = sorted(set(range(len(chunks))) - set(done))
        raise RunError(f"chunks {missing[:5]} of {folder!r} have no complete index lines after every process "
                       "finished; run the same command again to compute them.")
    clean = names in ([into], []) and not torn and set(found) == set(done)
    if not clean:
        ordered = [done[k][str(e.id)] for k in sorted(done) for e in chunks[k]]
        data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in ordered).encode()
        write_atomic(os.path.join(folder, into), data)
        for name in names:
            if name != into:
                os.remove(os.path.join(folder, name))
    _remove_leftovers(folder, {shard_name(k) for k in done})
    return set(done)


def _remove_leftovers(folder: str, keep: set[str]) -> None:
    """Remove shards that no complete chunk lists and temporary files that a kill left behind."""
    removed = False
    for name in os.listdir(folder):
        if name.startswith(TMP_PREFIX) or (_SHARD.match(name) and name not in keep):
            os.remove(os.path.join(folder, name))
            removed = True
    if removed:
        fsync_folder(folder)


def read_index(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """The index lines of a finished run, in dataset order."""
    path = os.path.join(os.fspath(folder), INDEX)
    if not os.path.isdir(os.fspath(folder)):
        raise RunError(f"{os.fspath(folder)!r} is not a folder; pass the --out folder of a finished `attrib run`.")
    if not os.path.isfile(path):
        raise RunError(f"{os.fspath(folder)!r} has no {INDEX}: it is not the folder of a finished run; finish the "
                       "run by running the same `attrib run` command again.")
    values, _ = _lines_of(os.fspath(folder), INDEX)
    return values


def load_results(folder: str | os.PathLike,
                 records: Sequence[dict[str, Any]] | None = None) -> Iterator[tuple[dict[str, Any], Result]]:
    """Each index line (of ``records``, else of the whole run) with its full result read back from its shard."""
    folder = os.fspath(folder)
    records = read_index(folder) if records is None else records
    by_shard: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_shard.setdefault(record["shard"], []).append(record)
    loaded: dict[int, Result] = {}
    for shard, group in by_shard.items():
        path = os.path.join(folder, shard)
        try:
            with safe_open(path, framework="pt") as f:
                for record in group:
                    tensors = {field: f.get_tensor(name) for field, name in record["tensors"].items()}
                    meta = {**record["result"], **{k: record[k] for k in _TOP}}
                    loaded[id(record)] = _KINDS[record["kind"]]._build(tensors, meta)
        except (SafetensorError, OSError) as err:
            raise RunError(f"cannot read the shard {path!r} ({str(err)[:80]}); run the same `attrib run` command "
                           "again to rewrite it.") from None
    for record in records:
        yield record, loaded[id(record)]
