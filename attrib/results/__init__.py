"""Result types: what methods return. Each has ``top(k)``, ``to_dict()``, ``save(path)`` / ``load(path)``,
``plot()`` and ``_repr_html_()``; :func:`load` reads any of them back.

>>> import os, tempfile, torch, attrib
>>> a = attrib.Attribution(["a", " b"], torch.tensor([1.0, -2.0]), torch.ones(2, 3), None, " c", "saliency")
>>> path = os.path.join(tempfile.mkdtemp(), "a.safetensors")
>>> a.save(path)
>>> attrib.load(path).top(1)
[(' b', -2.0)]
"""

from __future__ import annotations

import os

from ..errors import ResultFileError
from . import files
from .attribution import Attribution
from .base import Result
from .evaluation import Evaluation
from .faithfulness import Faithfulness
from .graph import Graph
from .patching import PatchingResult
from .profile import PathProfile

__all__ = ["Result", "Attribution", "PatchingResult", "PathProfile", "Graph", "Faithfulness", "Evaluation", "load"]

_KINDS: dict[str, type[Result]] = {cls.KIND: cls for cls in (Attribution, PatchingResult, PathProfile,
                                                                       Graph, Faithfulness, Evaluation)}


def load(path: str | os.PathLike) -> Result:
    """Read back any result written by ``result.save(path)``."""
    kind = files.kind_of(path)
    if kind not in _KINDS:
        raise ResultFileError(f"{os.fspath(path)!r} holds {files.article(repr(kind))} result, which this attrib does "
                              "not know; upgrade attrib to read it.")
    return _KINDS[kind].load(path)
