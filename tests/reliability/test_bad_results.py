"""Bad uses of results: top(k), files that cannot be read back (missing, corrupt, truncated, another kind, a
newer format), and drawing options. Each case raises one clear AttribError subclass naming the argument or
the file, or gives a correct result, and leaves every model clean (tests/reliability/badcases.py)."""

from __future__ import annotations

import atexit
import functools
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import attrib
from attrib import InputError, OptionError, PlotError, ResultFileError
from attrib.viz import HeatmapOptions
from attrib.viz.results import patching_html

from . import badcases
from .badcases import CORRUPT, IDS, Case, correct, error, ids_of, run_case, v

_one_thread = badcases.one_thread


@functools.lru_cache(maxsize=None)
def attribution() -> attrib.Attribution:
    return attrib.integrated_gradients(attrib_models().gpt2, IDS, target=3, n_steps=2)


@functools.lru_cache(maxsize=None)
def patching() -> attrib.PatchingResult:
    return attrib.activation_patching(attrib_models().gpt2, IDS, CORRUPT, target=3, components=("resid", "heads"),
                                      positions=[1, -1])


def attrib_models():
    from .badcases import models

    return models()


@functools.lru_cache(maxsize=None)
def folder() -> str:
    path = tempfile.mkdtemp(prefix="attrib-bad-results-")
    atexit.register(shutil.rmtree, path, True)
    return path


def path(name: str) -> str:
    return os.path.join(folder(), name)


@functools.lru_cache(maxsize=None)
def saved(kind: str) -> str:
    """A result saved by attrib itself."""
    result = attribution() if kind == "attribution" else patching()
    target = path(f"{kind}.safetensors")
    result.save(target)
    return target


def header(kind: str) -> dict:
    with safe_open(saved(kind), framework="pt") as f:
        return json.loads(f.metadata()["attrib"])


def written(name: str, data: bytes) -> str:
    target = path(name)
    with open(target, "wb") as f:
        f.write(data)
    return target


def with_header(name: str, meta: dict) -> str:
    """A safetensors file holding an attribution's tensors under another ``attrib`` header."""
    target = path(name)
    save_file({"scores": torch.zeros(6), "values": torch.zeros(6, 32)}, target, metadata={"attrib": json.dumps(meta)})
    return target


def raw_header(name: str, text: str, tensors: dict | None = None) -> str:
    """A safetensors file whose ``attrib`` header is ``text`` as it is."""
    target = path(name)
    save_file(tensors or {"scores": torch.zeros(6), "values": torch.zeros(6, 32)}, target, metadata={"attrib": text})
    return target


def without(key: str) -> dict:
    return {k: value for k, value in header("attribution").items() if k != key}


def plain_safetensors(_m) -> str:
    target = path("plain.safetensors")
    save_file({"x": torch.zeros(2)}, target)
    return target


def truncated(_m) -> str:
    data = pathlib.Path(saved("attribution")).read_bytes()
    return written("truncated.safetensors", data[: len(data) - 16])


def load(file_of, loader=attrib.load):
    return lambda m: loader(file_of(m))


def big() -> attrib.Attribution:
    return attrib.Attribution(["t"] * 3000, torch.zeros(3000), torch.zeros(3000, 2), None, " x", "saliency")


# -- correct results ---------------------------------------------------------------------------------------
def check_round_trip(original):
    def check(_m, loaded):
        a = original()
        assert type(loaded) is type(a)
        for field in a.__dataclass_fields__:
            mine, theirs = getattr(loaded, field), getattr(a, field)
            if isinstance(theirs, torch.Tensor):
                assert torch.equal(mine, theirs), field
            elif isinstance(theirs, dict) and theirs and isinstance(next(iter(theirs.values())), torch.Tensor):
                assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in theirs), field
            else:
                assert mine == theirs, field
    return check


def check_top_all(_m, got):
    a = attribution()
    order = sorted(range(len(a.tokens)), key=lambda i: -abs(float(a.scores[i])))
    assert got == [(a.tokens[i], float(a.scores[i])) for i in order]


def check_patching_top(_m, got):
    """Entries name prompt positions (1 and 5), not indices along the positions axis (0 and 1)."""
    r = patching()
    entries = [(c, (layer, *rest, r.positions[p]), float(s[(layer, *rest, p)]))
               for c, s in r.scores.items() for layer, *rest, p in [tuple(i) for i in torch.ones_like(s).nonzero()]]
    want = sorted(entries, key=lambda e: -abs(e[2]))[:3]
    assert [(c, i) for c, i, _ in got] == [(c, i) for c, i, _ in want]
    assert [x for _, _, x in got] == [x for _, _, x in want]


CASES: list[Case] = [
    *[error(f"{name}.top({k!r})", InputError, rf"top\(k\) takes a positive int k.*got k={v(k)}",
            lambda m, k=k, result=result: result().top(k))
      for k in (0, -1, 1.5, "3", None, True) for name, result in (("attribution", attribution),
                                                                   ("patching", patching))],
    # files
    error("load a missing file", ResultFileError, r"nope\.safetensors' is not a file; pass the path a result was "
          r"saved to", load(lambda m: path("nope.safetensors"))),
    error("load a folder", ResultFileError, r"attrib-bad-results-\w+' is not a file", load(lambda m: folder())),
    error("load a file of garbage", ResultFileError, r"garbage\.safetensors' is not a safetensors file.*\.save\(path\)",
          load(lambda m: written("garbage.safetensors", b"garbage" * 10))),
    error("load an empty file", ResultFileError, r"empty\.safetensors' is not a safetensors file",
          load(lambda m: written("empty.safetensors", b""))),
    error("load a truncated file", ResultFileError, r"truncated\.safetensors' is not a safetensors file",
          load(truncated)),
    error("load a text file", ResultFileError, r"notes\.txt' is not a safetensors file",
          load(lambda m: written("notes.txt", b'{"kind": "attribution"}'))),
    error("load another safetensors file", ResultFileError, r"plain\.safetensors' is a safetensors file but not an "
          r"attrib result", load(plain_safetensors)),
    error("load a newer format", ResultFileError, r"newer\.safetensors' was saved by a newer attrib \(format 99\); "
          r"upgrade attrib", load(lambda m: with_header("newer.safetensors", {**header("attribution"), "format": 99}))),
    error("load an unknown kind", ResultFileError, r"kind\.safetensors' holds a 'heatmap' result, which this attrib "
          r"does not know",
          load(lambda m: with_header("kind.safetensors", {**header("attribution"), "kind": "heatmap"}))),
    error("Attribution.load of a patching file", ResultFileError, r"patching\.safetensors' holds a patching result, "
          r"not an attribution; load it with attrib\.load\(path\)", load(lambda m: saved("patching"),
                                                                       attrib.Attribution.load)),
    error("PatchingResult.load of an attribution file", ResultFileError, r"attribution\.safetensors' holds an "
          r"attribution result, not a patching", load(lambda m: saved("attribution"), attrib.PatchingResult.load)),
    # hand-made headers
    error("load a header that is not JSON", ResultFileError, r"notjson\.safetensors' has an attrib header that is not "
          r"JSON, so it was not written by result\.save\(\); save the result again",
          load(lambda m: raw_header("notjson.safetensors", "{kind: attribution"))),
    error("load a header of a JSON list", ResultFileError, r"list\.safetensors' has an attrib header that is not a "
          r"JSON object", load(lambda m: raw_header("list.safetensors", '["attribution", 1]'))),
    error("load a header without kind", ResultFileError, r"nokind\.safetensors' has an attrib header that names no "
          r"result kind", load(lambda m: with_header("nokind.safetensors", without("kind")))),
    error("load a format of a string", ResultFileError, r"format2\.safetensors' has an attrib header that has format "
          r"'2', not a version number", load(lambda m: with_header("format2.safetensors",
                                                                    {**header("attribution"), "format": "2"}))),
    error("load a header without tokens", ResultFileError, r"notokens\.safetensors' holds an attribution result that "
          r"has no 'tokens', so it was not written by result\.save\(\)",
          load(lambda m: with_header("notokens.safetensors", without("tokens")))),
    error("load a file without scores", ResultFileError, r"noscores\.safetensors' holds an attribution result that has "
          r"no 'scores'", load(lambda m: raw_header("noscores.safetensors", json.dumps(header("attribution")),
                                                   {"values": torch.zeros(6, 32)}))),
    error("load a patching file without a component", ResultFileError, r"nocomp\.safetensors' holds a patching result "
          r"that has no 'heads'", load(lambda m: raw_header("nocomp.safetensors", json.dumps(header("patching")),
                                                          {"resid": torch.zeros(2, 2)}))),
    error("load positions of strings", ResultFileError, r"strpos\.safetensors' holds a patching result that has fields "
          r"that do not fit \(InputError\)", load(lambda m: raw_header(
              "strpos.safetensors", json.dumps({**header("patching"), "positions": ["a", "b"]}),
              {"resid": torch.zeros(2, 2), "heads": torch.zeros(2, 4, 2)}))),
    # paths
    *[error(f"load path {p!r}", ResultFileError, rf"cannot load path={v(p)}: a result file's path is a non-empty "
            r"str or pathlib\.Path", load(lambda m, p=p: p)) for p in (123, None, "", ["a.safetensors"])],
    *[error(f"save to path {p!r}", ResultFileError, rf"cannot save to path={v(p)}: a result file's path is a non-empty",
            lambda m, p=p: attribution().save(p)) for p in (None, 1.5)],
    error("save into a missing folder", ResultFileError, r"cannot save to '.*missing/a\.safetensors': its folder "
          r"'.*missing' does not exist; create it first", lambda m: attribution().save(path("missing/a.safetensors"))),
    error("save onto a folder", ResultFileError, r"cannot save to '.*attrib-bad-results-\w+': it is a folder; pass a "
          r"file path such as "
          r"'.*attribution\.safetensors'", lambda m: attribution().save(folder())),
    # drawing options (attribution heatmaps)
    *[error(f"plot {key}={value!r}", OptionError, rf"{key}.*{v(value)}",
            lambda m, key=key, value=value: attribution().plot(**{key: value}))
      for key, value in (("cmap", "notacmap"), ("scale", -1), ("scale", 0), ("scale", float("inf")), ("scale", "1"),
                         ("decimals", 20), ("decimals", 1.5), ("decimals", -1), ("wrap", 0), ("wrap", 2.0),
                         ("figsize", (1,)), ("figsize", (3, -1)), ("figsize", 5), ("figsize", ("a", "b")),
                         ("figsize", (3, float("nan"))), ("figsize", (True, 2)), ("title", 5), ("title", b"t"),
                         ("units", 1.5), ("show_values", "no"), ("show_values", 1), ("decimals", True))],
    error("HeatmapOptions show_values 'no'", OptionError, r"show_values must be True, False or None \(print values "
          r"when at most 400 are shown\), got 'no'", lambda m: HeatmapOptions(show_values="no")),
    error("patching plot title of an int", OptionError, r"title must be a string or None, got int 7; pass title=str",
          lambda m: patching().plot("resid", title=7)),
    error("plot cmap=3", OptionError, r"cmap must be a colour map name, got int",
          lambda m: attribution().plot(cmap=3)),
    error("plot with an unknown option", OptionError, r"unknown heatmap option\(s\) colour; the options are cmap",
          lambda m: attribution().plot(colour="red")),
    error("plot options of a string", OptionError, r"options must be a HeatmapOptions, got str",
          lambda m: attribution().plot(options="RdBu")),
    error("plot with a positional colour map", OptionError, r"options must be a HeatmapOptions, got str",
          lambda m: attribution().plot("RdBu")),
    error("show scale 0", OptionError, r"scale must be a positive finite number or None, got 0",
          lambda m: attribution().show(scale=0)),
    error("HeatmapOptions wrap 'x'", OptionError, r"wrap must be a positive int \(tokens per row\), got 'x'",
          lambda m: HeatmapOptions(wrap="x")),
    error("plot of too many values", PlotError, r"this result has 3000 values \(scores of shape \(3000,\)\), more than "
          r"a heatmap", lambda m: big().plot()),
    # patching heatmaps
    error("patching plot of an unknown component", PlotError, r"no scores for 'foo'.*resid'?, '?heads",
          lambda m: patching().plot("foo")),
    error("patching plot of a component not computed", PlotError, r"no scores for 'mlp'",
          lambda m: patching().plot("mlp")),
    error("patching plot cmap", OptionError, r"cmap='x' is neither 'diverging' nor a matplotlib colour map",
          lambda m: patching().plot("resid", cmap="x")),
    error("patching plot decimals", OptionError, r"decimals must be an int from 0 to 12, got 13",
          lambda m: patching().plot("heads", decimals=13)),
    error("patching html option", OptionError, r"unknown heatmap option\(s\) size",
          lambda m: patching_html(patching(), size=3)),
    # correct results
    correct("save and load an attribution", lambda m: attrib.load(saved("attribution")),
            check_round_trip(attribution)),
    correct("save and load a patching result by its class", lambda m: attrib.PatchingResult.load(saved("patching")),
            check_round_trip(patching)),
    correct("load from a pathlib.Path", lambda m: attrib.load(pathlib.Path(saved("attribution"))),
            check_round_trip(attribution)),
    correct("HeatmapOptions show_values numpy bool", lambda m: HeatmapOptions(show_values=np.bool_(True)),
            lambda m, got: (got.show_values is True) or pytest.fail(f"show_values={got.show_values!r}")),
    correct("plot figsize of a list", lambda m: attribution().plot(figsize=[4, np.int64(2)]),
            lambda m, got: [float(x) for x in got.get_size_inches()] == [4.0, 2.0] or pytest.fail("figsize")),
    correct("top(k) of a numpy int", lambda m: attribution().top(np.int64(100)), check_top_all),
    correct("top(k) past the number of tokens", lambda m: attribution().top(100), check_top_all),
    correct("patching top(3) of some positions", lambda m: patching().top(3), check_patching_top),
]


@pytest.mark.parametrize("case", CASES, ids=ids_of(CASES))
def test_bad_result_use(case):
    run_case(case)
