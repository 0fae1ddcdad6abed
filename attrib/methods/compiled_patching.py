"""Compiled activation patching (``compile=True``): the patched forwards through ``torch.compile``.

>>> import torch, transformers, attrib
>>> _ = torch.manual_seed(0)
>>> config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=30, bos_token_id=0, eos_token_id=0)
>>> model = attrib.LanguageModel(transformers.GPT2LMHeadModel(config).eval())
>>> clean, corrupted = torch.tensor([[1, 2, 3]]), torch.tensor([[1, 4, 3]])
>>> kw = dict(target=7, components=("resid",), batch_size=3)
>>> fast = attrib.activation_patching(model, clean, corrupted, compile=True, **kw)    # doctest: +SKIP
>>> bool(torch.allclose(fast.scores["resid"], attrib.activation_patching(model, clean, corrupted, **kw).scores["resid"],
...                     atol=1e-5))                                                        # doctest: +SKIP
True

The traced passes of :func:`attrib.methods.patching.activation_patching` write each patch through the core's
trace, whose hooks pause the forward (greenlets) where dynamo cannot follow. A compiled pass calls the Hugging
Face model itself, compiled as in :mod:`attrib.methods.compiled` (its scope and mode, per pass), with a plain
forward hook (a pre-hook for a module input) on every patched site for the length of the call. Row ``r`` of a
pass patches one site — the key ``K[r]`` (its component and layer; −1: none) — at position ``at[r]`` (head
``head[r]``) with ``source[r]``; every hook applies its own key's rows with one ``torch.where`` over all rows, so
a pass's graph is the same whichever patches its rows hold, and the rows' tensors are inputs of that graph, not
constants: the patches of the next pass replay the same graph. Rows are padded to a bucket
(:func:`~attrib.methods.compiled.row_bucket`) with rows that patch nothing; prompts need no token padding (a
call's pairs share one length). Hooks are removed in ``finally``.

Not compiled (a clear error, before any pass): components read through attention probes (``q_rot``, ``k_rot``,
``pattern``), sites whose module flattens positions (``flat_mlp`` Mixtral experts), encoder-decoders, plain
models and models dispatched over devices.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, NoReturn

import torch

from ..core.devices import is_dispatched
from ..errors import MethodError
from ..models.language import LanguageModel
from ..models.sites import Site, first_tensor, replace_first
from .compiled import CompileOptions, row_bucket
from .compiled_run import (Rest, pass_mode, planned_rows, recompile_limits, record_bucket, resolve_scope,
                           run_compiled)
from .inputs import Inputs
from .pairs import HEADED, Key, Pairs
from .planning import Remember

__all__ = ["check_patching_supported", "patch_passes"]

PROBED = ("q_rot", "k_rot", "pattern")


def check_patching_supported(pairs: Pairs, options: CompileOptions) -> None:
    """Refuse, before any pass, what compiled patching does not run."""
    def refuse(what: str, instead: str) -> NoReturn:
        raise MethodError(f"compile=True runs activation patching's forwards through the Hugging Face model, but "
                          f"{what}; {instead}, or leave compile out.")

    model = pairs.model
    if not isinstance(model, LanguageModel):
        refuse(f"the model is {type(model).__name__}, not an attrib.LanguageModel",
               "wrap the Hugging Face model in attrib.LanguageModel(hf_model, tokenizer)")
    if model.is_encoder_decoder:
        refuse(f"{type(model.module).__name__} is an encoder-decoder", "use a decoder-only model")
    if is_dispatched(model.module):
        refuse(f"{type(model.module).__name__} is dispatched over devices by accelerate", "load it on one device")
    probed = [c for c in pairs.components if c in PROBED]
    if probed:
        refuse(f"the components {probed} are read through attention probes", "patch the other components")
    flat = sorted({where.name for where in pairs.sites.values() if where.flat})
    if flat:
        refuse(f"the sites {flat} flatten the positions of their module's rows", "patch the other components")
    # options of the gradient passes that patching's forwards do not use: refused, never ignored
    unused = {name: value for name, value, default in (("liger", options.liger, False),
                                                        ("attention", options.attention, "auto"),
                                                        ("tokens", options.tokens, 16)) if value != default}
    if unused:
        refuse(f"CompileOptions({', '.join(f'{k}={v!r}' for k, v in unused.items())}) applies to integrated "
               "gradients' and saliency's compiled passes only (patching pads no tokens and keeps the model's "
               "attention and kernels)", "drop it")


@contextlib.contextmanager
def patch_passes(pairs: Pairs, receiving: Inputs, sources: dict[Key, torch.Tensor], options: CompileOptions,
                 remember: Remember, batch_size: int | None, traced: Callable[[torch.Tensor], torch.Tensor],
                 total: int) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """A function of a chunk of patch rows (pair, component, layer, head, input index, column) giving their metric
    (rows,), as the traced ``traced`` gives it: compiled passes once the planner has settled (``remember``: its key),
    ``traced`` for its measured passes and, in a call that measured, for a rest shorter than a planned pass
    (``total``: the call's rows; :class:`~attrib.methods.compiled.Rest`)."""
    passes = _PatchPasses(pairs, receiving, sources, options, remember, batch_size, traced, total)
    hf = pairs.model.module
    handles = []
    try:
        for k, key in enumerate(passes.keys):
            where = pairs.sites[key]
            module = hf.get_submodule(where.path)
            hook = _hook(passes, k, where, key[0] in HEADED)
            if where.kind == "input":
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(hook))
        with recompile_limits():
            yield passes
    finally:
        for handle in handles:
            handle.remove()


def _hook(passes: "_PatchPasses", k: int, where: Site, headed: bool) -> Callable[..., Any]:
    """The hook of key number ``k``: its rows' patches on the site's value, the other rows untouched. ``k`` is a
    tensor, an input of the compiled graph: as an int it would be a constant, and every layer (whose hooks differ
    only in it) would compile a graph of its own."""
    number = torch.tensor(k, device=passes.device)

    def patch(full: torch.Tensor) -> torch.Tensor:
        rows = passes.rows
        assert rows is not None
        value = where.take(full)
        # every row is read and written back (its own value unless it is one of this key's): a head index of
        # another key's row may exceed this site's heads (queries vs grouped keys and values), so it is clamped
        index = (rows["all"], rows["at"], rows["head"].clamp(max=value.shape[-2] - 1)) if headed else \
            (rows["all"], rows["at"])
        source = rows["head_source"] if headed else rows["source"]
        chosen = (rows["key"] == number).unsqueeze(-1)
        value = value.clone()
        value[index] = torch.where(chosen, source.to(value.dtype), value[index])
        return where.put(full, value)

    if where.kind == "input":
        def pre(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            if passes.rows is None:                         # a traced pass runs while the hooks are in place
                return None
            if args:
                return (patch(args[0]), *args[1:]), kwargs
            name = next(iter(kwargs))
            return args, {**kwargs, name: patch(kwargs[name])}
        return pre

    def post(module: torch.nn.Module, args: tuple, output: Any) -> Any:
        if passes.rows is None:
            return None
        return replace_first(output, patch(first_tensor(output)))
    return post


class _PatchPasses:
    """The compiled patching passes of one call (see the module docstring)."""

    def __init__(self, pairs: Pairs, receiving: Inputs, sources: dict[Key, torch.Tensor], options: CompileOptions,
                 remember: Remember, batch_size: int | None, traced: Callable[[torch.Tensor], torch.Tensor],
                 total: int) -> None:
        self.pairs, self.receiving, self.sources, self.options = pairs, receiving, sources, options
        self.remember, self.batch_size, self.traced = remember, batch_size, traced
        self.keys = pairs.ordered(pairs.sites)
        self.number = {key: k for k, key in enumerate(self.keys)}
        self.device = receiving.x.device
        self.rows: dict[str, torch.Tensor] | None = None     # the running compiled pass's patches
        self.rest = Rest(total)
        self.scope, self.layers = resolve_scope(pairs.model.module, options.scope)
        self.auto = options.scope == "auto"
        widths = {key[0] in HEADED: sources[key].shape[-1] for key in self.keys}
        self.width, self.head_width = widths.get(False, 1), widths.get(True, 1)
        self.dtype = next(iter(sources.values())).dtype

    def _planned(self, rows: int) -> int | None:
        return planned_rows(self.batch_size, rows, self.device, self.remember)

    def __call__(self, chunk: torch.Tensor) -> torch.Tensor:
        planned = self._planned(len(chunk))
        metric = self.traced(chunk) if self.rest.eager(planned) else self._pass(chunk, planned)
        self.rest.ran(len(chunk))
        return metric

    def _pass(self, chunk: torch.Tensor, planned: int) -> torch.Tensor:
        """One compiled forward of ``chunk``'s rows, padded to their bucket but never past ``planned`` rows (the
        caller's ``batch_size`` or the plan's memory); their metric (rows,) on the CPU."""
        real = len(chunk)
        n = max(real, min(row_bucket(real), planned))
        padded = torch.cat([chunk, chunk[-1:].expand(n - real, -1)]) if n > real else chunk
        dev = self.device
        key = torch.full((n,), -1, dtype=torch.long)
        source = torch.zeros(n, self.width, dtype=self.dtype, device=dev)
        head_source = torch.zeros(n, self.head_width, dtype=self.dtype, device=dev)
        for c_id, layer in torch.unique(chunk[:, 1:3], dim=0).tolist():
            k = (self.pairs.components[c_id], layer)
            mine = torch.nonzero((chunk[:, 1] == c_id) & (chunk[:, 2] == layer)).flatten()
            key[mine] = self.number[k]
            pair, at = chunk[mine, 0], chunk[mine, 4]
            values = self.sources[k].to(dev)
            if k[0] in HEADED:
                head_source[mine.to(dev)] = values[pair.to(dev), at.to(dev), chunk[mine, 3].to(dev)].to(self.dtype)
            else:
                source[mine.to(dev)] = values[pair.to(dev), at.to(dev)].to(self.dtype)
        self.rows = {"key": key.to(dev), "at": padded[:, 4].to(dev), "head": padded[:, 3].to(dev),
                     "all": torch.arange(n, device=dev), "source": source, "head_source": head_source}
        items = padded[:, 0].to(dev)
        _, call = self.receiving.call(items)
        hf = self.pairs.model.module
        tokens = self.receiving.x.shape[1]
        mode = pass_mode(self.options.mode, dev, n, tokens)
        graphed = mode in ("reduce-overhead", "max-autotune") and dev.type == "cuda"
        scope = "model" if self.auto and graphed else self.scope
        try:
            with torch.no_grad():
                if graphed:
                    torch.compiler.cudagraph_mark_step_begin()
                if scope == "none":                   # the same hooked calls, uncompiled
                    output = hf(**call)
                else:
                    output = run_compiled(hf, call, mode, scope, self.layers)
                    record_bucket(hf, (scope, mode, n, tokens, "patching"))
                metric = self.receiving.scores(output, items).sum(-1)[:real]
        finally:
            self.rows = None
        return metric.double().cpu()
