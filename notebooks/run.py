"""Execute the example notebooks in place, with this interpreter's kernel, and keep their outputs.

``make notebooks`` runs ``python notebooks/run.py``; ``python notebooks/run.py notebooks/03_ioi_patching.ipynb``
runs one. Each notebook runs top to bottom in a fresh kernel started from ``sys.executable`` (not whatever
``python3`` kernel spec Jupyter finds first), offline on CPU, in the ``notebooks/`` folder. Then noise that
would make every run a diff is removed (timing metadata, tqdm progress bars on stderr, the Python patch
version) and the notebook is written back with its outputs, figures included.

Importing this module runs nothing; ``tests/test_notebooks.py`` uses :func:`execute` to run the notebooks
in memory.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TIMEOUT = 600   # seconds per cell
PROGRESS = re.compile(r"\d+%\|.*\|")   # a tqdm bar: " 40%|████      | 21/52 [00:03<00:05, ...]"


def notebooks() -> list[Path]:
    """The example notebooks, in order: ``notebooks/NN_*.ipynb``."""
    return sorted(HERE.glob("[0-9][0-9]_*.ipynb"))


def kernel_manager_class():
    """An ``AsyncKernelManager`` whose kernel, whatever its name, is this interpreter's ipykernel
    (``sys.executable -m ipykernel_launcher``), not the first ``python3`` kernel spec Jupyter finds."""
    from ipykernel.kernelspec import RESOURCES, get_kernel_dict
    from jupyter_client.kernelspec import KernelSpec
    from jupyter_client.manager import AsyncKernelManager

    class ThisPythonKernelManager(AsyncKernelManager):
        @property
        def kernel_spec(self) -> KernelSpec:
            if self._kernel_spec is None:
                self._kernel_spec = KernelSpec(resource_dir=RESOURCES, **get_kernel_dict())
            return self._kernel_spec

    return ThisPythonKernelManager


def execute(path: str | Path, timeout: int = TIMEOUT):
    """Run the notebook at ``path`` in a fresh kernel (cwd: its folder) and return it with its outputs, in
    memory; the file is not changed. Raises ``nbclient.exceptions.CellExecutionError`` if a cell fails."""
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", kernel_manager_class=kernel_manager_class(),
                            timeout=timeout, record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    return nb


def clean(nb):
    """Drop what changes from run to run without changing what the notebook shows."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        outputs = []
        for out in cell.outputs:
            if out.output_type == "stream" and out.name == "stderr":
                lines = out.text.splitlines(keepends=True)
                out.text = "".join(line for line in lines if not PROGRESS.search(line))
                if not out.text.strip():
                    continue
            outputs.append(out)
        cell.outputs = outputs
    info = nb.metadata.get("language_info", {})
    info.pop("version", None)
    nb.metadata.pop("widgets", None)
    return nb


def figures(nb) -> int:
    """How many PNG images the notebook's outputs hold."""
    return sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
               for out in cell.outputs)


def main(argv: list[str] | None = None) -> int:
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks to run (default: notebooks/NN_*.ipynb)")
    parser.add_argument("--timeout", type=int, default=TIMEOUT, help="seconds per cell")
    args = parser.parse_args(argv)
    for path in args.paths or notebooks():
        start = time.perf_counter()
        nb = clean(execute(path, args.timeout))
        took = time.perf_counter() - start
        nbformat.write(nb, path)
        print(f"{path.name}: {took:.1f} s, {figures(nb)} figures", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
