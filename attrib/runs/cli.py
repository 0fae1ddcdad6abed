"""The ``attrib`` command: ``attrib run PROMPTS.jsonl --method ig --out DIR`` and ``attrib report DIR``.

>>> from attrib.runs.cli import split_options
>>> split_options(["p.jsonl", "--n-steps", "32", "--out", "d", "--baseline=pad", "--per-token"])
(['p.jsonl', '--out', 'd'], {'n_steps': 32, 'baseline': 'pad', 'per_token': True})

A method's keywords are flags of their own, ``--n-steps 32``, ``--batch-size 8``, ``--score logprob``
(underscores as dashes). A value is read as JSON when it is JSON (``32``, ``0.5``, ``true``, ``null``, ``[1, 2]``)
and as a string otherwise; a flag with no value is ``true``, and an on/off option (``--per-token``) takes a
following word only when it is ``true`` or ``false``. Bad input prints one sentence and exits 2.
Also ``python -m attrib ...``, and ``torchrun --nproc-per-node N -m attrib run ...`` (docs/runs.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from ..errors import AttribError, RunError
from .methods import ALIASES, METHODS, canonical, option_names, switch_names
from .report import write_report
from .runner import CUDA_CHUNK, DEFAULT_CHUNK, run_dataset
from .distributed import world_from_env

__all__ = ["main", "split_options", "parser"]

_RUN_FLAGS = ("--method", "--out", "--model", "--chunk", "--dtype", "--device")
_RUN_SWITCHES = ("--no-progress", "-h", "--help")


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def split_options(argv: Sequence[str], switches: Sequence[str] = ()) -> tuple[list[str], dict[str, Any]]:
    """``attrib run``'s own arguments, and the method's options (every other ``--flag``) by keyword. A flag in
    ``switches`` (the method's on/off options) takes the next word only when it is ``true`` or ``false``, so that
    ``--per-token prompts.jsonl`` leaves the prompts file where it is."""
    known: list[str] = []
    options: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        name = token.split("=", 1)[0]
        if not token.startswith("--") or token == "--" or name in _RUN_FLAGS + _RUN_SWITCHES:
            known.append(token)
            if name in _RUN_FLAGS and "=" not in token and i + 1 < len(argv):
                known.append(argv[i + 1])
                i += 1
        elif "=" in token:
            options[name[2:].replace("-", "_")] = _value(token.split("=", 1)[1])
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--") and \
                (name[2:].replace("-", "_") not in switches or argv[i + 1] in ("true", "false")):
            options[name[2:].replace("-", "_")] = _value(argv[i + 1])
            i += 1
        else:
            options[name[2:].replace("-", "_")] = True
        i += 1
    return known, options


def _switches(argv: Sequence[str]) -> list[str]:
    """The on/off options of the method that ``argv`` names (``--method``; integrated gradients by default)."""
    name = "integrated_gradients"
    for i, token in enumerate(argv):
        if token.startswith("--method="):
            name = token.split("=", 1)[1]
        elif token == "--method" and i + 1 < len(argv):
            name = argv[i + 1]
    try:
        return switch_names(canonical(name))
    except RunError:                    # an unknown method: run_dataset says so
        return []


def _methods_help() -> str:
    aliases = {m: a for a, m in ALIASES.items()}
    lines = ["methods and their options (each as --kebab-case VALUE):"]
    for name in METHODS:
        alias = f" ({aliases[name]})" if name in aliases else ""
        flags = " ".join(f"--{o.replace('_', '-')}" for o in option_names(name))
        lines.append(f"  {name}{alias}: {flags}")
    lines.append("attribution_patching and activation_patching need a 'corrupted' prompt on every line.")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="attrib", description="Attribution runs over datasets of prompts.")
    commands = top.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="attribute every prompt of a JSONL file, resumably",
                              epilog=_methods_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("prompts", help='JSONL file: one {"prompt", "target", "contrast", "corrupted", "id", "meta"} '
                                     "object per line")
    run.add_argument("--method", default="integrated_gradients", help="the method (default integrated_gradients)")
    run.add_argument("--out", required=True, help="the run's folder (created; a rerun resumes it)")
    run.add_argument("--model", default=None, help="a local Hugging Face folder or a .gguf file (default: the demo "
                                                  "model)")
    run.add_argument("--chunk", type=int, default=None, help=f"prompts per method call and shard (default "
                                                           f"{DEFAULT_CHUNK} on a CPU, {CUDA_CHUNK} on CUDA; a "
                                                           "resumed run keeps the chunk it started with)")
    run.add_argument("--dtype", default=None, help="auto, float32, float64, float16 or bfloat16")
    run.add_argument("--device", default=None, help="e.g. cpu or cuda:1 (default: CUDA when there, else the "
                                                   "CPU; under torchrun cuda:LOCAL_RANK)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars (the run's nor the methods')")
    report = commands.add_parser("report", help="write a self-contained HTML page of a finished run")
    report.add_argument("folder", help="the run's folder (--out of attrib run)")
    report.add_argument("--output", default=None, help="where to write the page (default FOLDER/report.html)")
    report.add_argument("--examples", type=int, default=200, help="examples shown (default 200)")
    report.add_argument("--top", type=int, default=30, help="tokens in the table of totals (default 30)")
    return top


def _run(args: argparse.Namespace, options: dict[str, Any]) -> None:
    records = run_dataset(args.model, args.prompts, method=args.method, out=args.out, chunk=args.chunk,
                          dtype=args.dtype, device=args.device, progress=not args.no_progress, **options)
    if world_from_env().main:
        print(f"{len(records)} prompts: {args.out}/index.jsonl")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["run"]:
            known, options = split_options(argv[1:], _switches(argv[1:]))
            _run(parser().parse_args(["run", *known]), options)
        else:
            args = parser().parse_args(argv)
            print(write_report(args.folder, args.output, examples=args.examples, top=args.top))
    except AttribError as err:
        print(f"attrib: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("attrib: interrupted; what was written is kept, and the same command resumes the run.", file=sys.stderr)
        return 130
    return 0
