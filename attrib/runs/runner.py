"""``attrib.run_dataset``: one method over every prompt of a dataset, in chunks, resumable, on one or many processes.

>>> import tempfile, attrib
>>> try:                                    # the options are checked before the model is loaded
...     attrib.run_dataset(None, ["The capital of France is"], method="ig", out=tempfile.mkdtemp(), n_step=4)
... except attrib.RunError as err:
...     print(err)
integrated_gradients has no option 'n_step' (--n-step); its options are score, baseline, n_steps, ...

Each chunk of ``chunk`` prompts is one call of the method (or a few, where targets differ in length), written
to the run's folder before the next one starts (:mod:`attrib.runs.store`); a run started again with the same
arguments computes only what is missing.

The default chunk follows the device the run computes on: 16 prompts on a CPU, where a call's passes are small
anyway, and on CUDA 256 (a share of the prompts per process when that is fewer), so that a call's rows (prompts
× steps) fill the card's passes. A resumed run without ``chunk`` keeps the chunk it started with (``run.json``).

>>> default_chunk("cpu"), default_chunk("cuda:0", prompts=10_000), default_chunk("cuda", prompts=1_000, processes=8)
(16, 256, 125)
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..core.model import Model
from ..errors import AttribError, RunError
from .dataset import Example, chunked, examples_from, fingerprint, read_examples
from .distributed import World, barrier, device_for, joined, on_main, world_from_env
from .loading import dtype_name, load_model, model_name, parse_dtype
from ..methods.batching import progress_bars
from .methods import canonical, check_examples, check_options, run_chunk
from .runfile import check_or_record, recorded
from .store import INDEX, consolidate, index_files, rank_index, read_index, write_chunk

__all__ = ["run_dataset", "default_chunk", "DEFAULT_CHUNK", "CUDA_CHUNK"]

DEFAULT_CHUNK = 16          # prompts per method call on a CPU (every device but CUDA)
CUDA_CHUNK = 256            # on CUDA: 8,704 rows a call for IG's 32 steps (an H200 fits ~6,000 of SmolLM2-135M)
_ROWS = "prompts given in Python"


def run_dataset(model: Model | str | os.PathLike | None, prompts: str | os.PathLike | Sequence[Any], *,
                method: str = "integrated_gradients", out: str | os.PathLike, chunk: int | None = None,
                dtype: str | torch.dtype | None = None, device: str | torch.device | None = None,
                progress: bool = True, **options: Any) -> list[dict[str, Any]]:
    """Attribute every prompt of ``prompts`` with ``method`` and keep the results in the folder ``out``.

    - ``model``: an :class:`attrib.LanguageModel`, the path of a local Hugging Face folder or GGUF file (loaded
      in ``dtype`` on ``device``), or None for the demo model.
    - ``prompts``: a JSONL file (one ``{"prompt", "target", "contrast", "corrupted", "id", "meta"}`` object per
      line) or a list of such dicts or of prompt strings.
    - ``chunk``: prompts per method call and shard; None: the chunk a resumed run started with, else
      :func:`default_chunk` (16 on a CPU, 256 on CUDA).
    - ``progress``: a bar over the prompts; False also silences the methods' own bars (:func:`progress_bars`).
    - ``options``: the method's keywords (``n_steps=``, ``baseline=``, ``score=``, ``batch_size=`` ...).

    Returns the index lines (``out/index.jsonl``) in dataset order; :func:`attrib.runs.load_results` reads the
    full results back. Under torchrun each process computes its share of the chunks (docs/runs.md).
    """
    world = world_from_env()
    examples, source = _examples(prompts)
    name = canonical(method)
    checked = check_options(name, options)
    check_examples(name, examples)
    size = None if chunk is None else _chunk_size(chunk)
    folder = _folder(out)
    place = None if isinstance(model, Model) else device_for(world, device)     # checked before anything is written
    settings = {"method": name, "options": checked, "prompts": fingerprint(examples), "count": len(examples),
                "source": source, "model": _model_key(model), "dtype": dtype_name(dtype)}
    where = model.device if isinstance(model, Model) else place
    with joined(world):
        if size is None:        # rank 0 decides, so that every process chunks alike
            size = on_main(world, lambda: _resumed_chunk(folder) or default_chunk(where, len(examples), world.size))
        chunks = chunked(examples, size)
        settings["chunk"] = size
        done = on_main(world, lambda: _start(folder, settings, chunks))
        todo = [k for k in world.mine(len(chunks)) if k not in done]
        if todo:
            loaded = model if isinstance(model, Model) else load_model(model, place, parse_dtype(dtype))
            _compute(loaded, name, checked, chunks, todo, folder, world, source, progress)
        barrier(world)
        on_main(world, lambda: consolidate(folder, chunks, INDEX, require_all=True))   # the others wait for it
    return read_index(folder)


def _examples(prompts: Any) -> tuple[list[Example], str]:
    if isinstance(prompts, (str, os.PathLike)):
        return read_examples(prompts), os.path.abspath(os.fspath(prompts))
    return examples_from(prompts), _ROWS


def default_chunk(device: str | torch.device, prompts: int | None = None, processes: int = 1) -> int:
    """Prompts per method call when a run is given none: :data:`DEFAULT_CHUNK` (16) unless ``device`` is CUDA,
    there :data:`CUDA_CHUNK` (256), or fewer where ``prompts`` split among ``processes`` give each process less
    (every process then has a chunk). The same arguments give the same chunk: a run records it (``run.json``)."""
    if torch.device(device).type != "cuda":
        return DEFAULT_CHUNK
    share = CUDA_CHUNK if prompts is None else -(-prompts // max(1, processes))
    return max(1, min(CUDA_CHUNK, share))


def _resumed_chunk(folder: str) -> int | None:
    """The chunk ``run.json`` recorded at the run's first start (None for a new run)."""
    first = recorded(folder)
    chunk = None if first is None else first.get("chunk")
    return chunk if isinstance(chunk, int) and not isinstance(chunk, bool) and chunk > 0 else None


def _chunk_size(chunk: Any) -> int:
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise RunError(f"chunk={chunk!r:.20} must be a positive int: how many prompts go to one method call (and "
                       "one shard), e.g. 16.")
    return chunk


def _folder(out: Any) -> str:
    if not isinstance(out, (str, os.PathLike)) or not os.fspath(out):
        raise RunError(f"out={out!r:.40} must be the path of the run's folder (created when missing), e.g. "
                       "'runs/ig'.")
    folder = os.fspath(out)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise RunError(f"out={folder!r} is a file; pass the path of a folder for the run (created when missing).")
    return folder


def _model_key(model: Any) -> str:
    """How run.json names the model: ``demo``, a path, or for a model object its class and name or path."""
    if not isinstance(model, Model):
        if model is not None and not isinstance(model, (str, os.PathLike)):
            raise RunError(f"model= is a {type(model).__name__}, not a model a run can use; pass an "
                           "attrib.LanguageModel (e.g. attrib.LanguageModel(hf_model, tokenizer)), the path of a local "
                           "Hugging Face folder or GGUF file, or None for the demo model.")
        return model_name(model)
    config = getattr(model.module, "config", None)
    return f"{type(model.module).__name__}:{getattr(config, '_name_or_path', '') or 'in memory'}"


def _start(folder: str, settings: dict[str, Any], chunks: list[list[Example]]) -> set[int]:
    """Rank 0, before any computing: check or record run.json, then keep what earlier starts completed."""
    check_or_record(folder, settings)
    names = index_files(folder)
    into = names[0] if len(names) == 1 else rank_index(0)
    return consolidate(folder, chunks, into, require_all=False)


def _compute(model: Model, method: str, options: dict[str, Any], chunks: list[list[Example]], todo: list[int],
             folder: str, world: World, source: str, progress: bool) -> None:
    mine = world.mine(len(chunks))
    total = sum(len(chunks[k]) for k in mine)
    left = sum(len(chunks[k]) for k in todo)
    desc = f"{method} rank {world.rank}" if world.distributed else method
    bar = tqdm(total=total, initial=total - left, unit="prompt", desc=desc, disable=not progress,
               position=world.rank if world.distributed else None)
    try:
        for k in todo:
            examples = chunks[k]
            try:
                with progress_bars(progress):       # the methods' own bars: off when the run's is
                    results = run_chunk(model, method, examples, options)
            except RunError:
                raise
            except AttribError as err:
                unit = "rows" if source == _ROWS else "lines"
                raise RunError(f"{source}, {unit} {examples[0].line}-{examples[-1].line}: {err}") from err
            write_chunk(folder, world.rank, k, examples, results)
            bar.update(len(examples))
    finally:
        bar.close()
