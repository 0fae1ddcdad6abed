"""What every result shares: ``top(k)``, ``to_dict()``, ``save(path)`` / ``load(path)``, ``plot()`` and
``_repr_html_()``.

A result type lists its tensors (:meth:`Result._tensors`) and the rest of its fields as JSON-ready values
(:meth:`Result._meta`), and is rebuilt from both (:meth:`Result._build`); saving, loading and ``to_dict``
come from here. Drawing lives in :mod:`attrib.viz`, which reads results by attribute.
"""

from __future__ import annotations

import abc
import operator
import os
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from ..errors import InputError
from . import files

__all__ = ["Result", "jsonable", "check_k"]

R = TypeVar("R", bound="Result")


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (tensors become lists; what cannot be written becomes its repr)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def check_k(k: Any) -> int:
    """``k`` of ``top(k)``: a positive int, else one clear error (a negative ``k`` would slice from the end)."""
    try:                                # Python, numpy and 0-d tensor ints; never a bool
        if isinstance(k, (bool, np.bool_)) or (isinstance(k, torch.Tensor) and k.dtype == torch.bool):
            raise TypeError
        number = operator.index(k)
    except TypeError:
        number = 0
    if number < 1:
        raise InputError(f"top(k) takes a positive int k (how many entries), got k={k!r:.40}.")
    return number


class Result(abc.ABC):
    """Base of the result dataclasses: each says which fields are tensors, which are JSON, and how to
    rebuild itself from both."""

    KIND: ClassVar[str] = "result"

    @abc.abstractmethod
    def _tensors(self) -> dict[str, torch.Tensor]:
        """The result's tensors, by name."""

    @abc.abstractmethod
    def _meta(self) -> dict[str, Any]:
        """The result's other fields, JSON-ready."""

    @classmethod
    @abc.abstractmethod
    def _build(cls: type[R], tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> R:
        """The result from what :meth:`_tensors` and :meth:`_meta` gave."""

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists, floats, strings), e.g. for JSON."""
        return {"kind": self.KIND, **jsonable(self._meta()),
                **{k: jsonable(v) for k, v in self._tensors().items()}}

    def save(self, path: str | os.PathLike) -> None:
        """Write the result to ``path``: a safetensors file with the other fields as JSON in its header."""
        files.write(path, self.KIND, self._tensors(), jsonable(self._meta()))

    @classmethod
    def load(cls: type[R], path: str | os.PathLike) -> R:
        """Read a result written by :meth:`save` (``attrib.load`` picks the type by itself)."""
        tensors, meta = files.read(path, cls.KIND)
        try:
            return cls._build(tensors, meta)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:   # a hand-made header
            raise files.incomplete(path, cls.KIND, err) from None
