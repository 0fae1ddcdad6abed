"""The result of :func:`attrib.path_profile`: the score f(α) and the integrand df/dα of integrated gradients
along its straight path b + α (x − b) (Sundararajan, Taly & Yan 2017).

>>> import torch
>>> from attrib.results import PathProfile
>>> a = torch.linspace(0, 1, 5, dtype=torch.float64)
>>> p = PathProfile(tokens=["a"], target="0", alphas=a, f=a ** 2, rate=2 * a, f_x=1.0, f_baseline=0.0)
>>> p.steepest(2)
[(1.0, 2.0), (0.75, 1.5)]
>>> p.trapezoid()                          # ∫ 2α dα over the points = f(x) − f(b) exactly: no gap
0.0
>>> print(p)
path_profile for '0': 5 points, f(b) 0 → f(x) 1, trapezoid gap 0; steepest df/dα +2 at α = 1
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..viz.labels import quoted
from .base import Result, check_k

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["PathProfile"]

_ARRAYS = ("alphas", "f", "rate")


@dataclass(frozen=True)
class PathProfile(Result):
    """f(α) and df/dα at K points α of the path from the baseline (α = 0) to the input (α = 1).

    >>> import torch, attrib
    >>> _ = torch.manual_seed(0)
    >>> net = attrib.Model(torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)))
    >>> p = attrib.path_profile(net, torch.ones(1, 2), target=0, n_points=11)
    >>> len(p.alphas), p.trapezoid() < 0.05         # 11 points resolve a smooth path: the gap is small
    (11, True)

    - ``alphas``: (K,) float64, ascending; ``f``: (K,) the target score at each point; ``rate``: (K,) df/dα,
      the gradient at the point times x − b, summed (the integrand whose integral completeness asks for).
      A NaN means the model's score or gradient is undefined there (a zero baseline's α = 0, say).
    - ``f_x``, ``f_baseline``: the score at the input (α = 1) and at the baseline (α = 0).
    - ``info``: ``baseline``, ``layer``, ``score`` and ``n_points``.
    """

    KIND = "path_profile"

    tokens: list[str]
    target: str
    alphas: torch.Tensor
    f: torch.Tensor
    rate: torch.Tensor
    f_x: float
    f_baseline: float
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """``alphas``, ``f`` and ``rate`` as 1-D float64 CPU tensors of one length (lists and arrays are taken)."""
        arrays = {}
        for name in _ARRAYS:
            value = getattr(self, name)
            try:
                tensor = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
                tensor = tensor.to(device="cpu", dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError):
                raise InputError(f"{name}={value!r:.40} is not a sequence of numbers; pass a 1-D tensor of floats, "
                                 "one per point α.") from None
            if tensor.dim() != 1:
                raise InputError(f"{name} has shape {tuple(tensor.shape)}; pass a 1-D tensor, one value per point α.")
            arrays[name] = tensor
        lengths = {name: len(t) for name, t in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise InputError(f"alphas, f and rate must have one value per point, got lengths {lengths}; pass "
                             "tensors of one length.")
        for name, tensor in arrays.items():
            object.__setattr__(self, name, tensor)
        object.__setattr__(self, "f_x", float(self.f_x))
        object.__setattr__(self, "f_baseline", float(self.f_baseline))

    def steepest(self, k: int = 5) -> list[tuple[float, float]]:
        """The ``k`` points of largest |df/dα| as ``(α, df/dα)``, steepest first; NaN points are left out."""
        k = check_k(k)
        rate = self.rate
        keep = torch.nonzero(~torch.isnan(rate)).flatten()
        order = keep[rate[keep].abs().argsort(descending=True, stable=True)][:k].tolist()
        return [(float(self.alphas[i]), float(rate[i])) for i in order]

    def top(self, k: int = 5) -> list[tuple[float, float]]:
        """Every result's ``top(k)``: here :meth:`steepest`."""
        return self.steepest(k)

    def integral(self) -> float:
        """The trapezoid rule's ∫ df/dα dα over the points (in ascending α, NaN points left out): f(x) − f(b)
        when the points resolve the path and span [0, 1]."""
        keep = torch.nonzero(~torch.isnan(self.rate)).flatten()
        order = keep[self.alphas[keep].argsort(stable=True)]
        a, r = self.alphas[order], self.rate[order]
        return float(((a[1:] - a[:-1]) * (r[1:] + r[:-1]) / 2).sum()) if len(a) > 1 else 0.0

    def trapezoid(self) -> float:
        """The relative gap |∫ df/dα − (f(x) − f(b))| / |f(x) − f(b)| of the trapezoid rule over the points
        (:meth:`integral`): near 0 when the points resolve the path, large across a spike or a chaotic region
        (then read ``.plot()``, and use ``n_steps="auto"`` or another baseline in integrated gradients). Points
        where df/dα is NaN are left out; with f(x) = f(b), 0 for a zero integral and inf otherwise."""
        diff = self.f_x - self.f_baseline
        gap = abs(self.integral() - diff)
        if diff == 0:
            return 0.0 if gap == 0 else float("inf")
        return gap / abs(diff)

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in _ARRAYS}

    def _meta(self) -> dict[str, Any]:
        return {"tokens": list(self.tokens), "target": self.target, "f_x": self.f_x, "f_baseline": self.f_baseline,
                "info": self.info}

    @classmethod
    def _build(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> "PathProfile":
        return cls(tokens=meta["tokens"], target=meta["target"], alphas=tensors["alphas"], f=tensors["f"],
                   rate=tensors["rate"], f_x=meta["f_x"], f_baseline=meta["f_baseline"], info=meta["info"])

    def __str__(self) -> str:
        steep = self.steepest(1)
        steepest = f"; steepest df/dα {steep[0][1]:+.3g} at α = {steep[0][0]:.3g}" if steep else ""
        return (f"path_profile for {quoted(self.target)}: {len(self.alphas)} points, f(b) {self.f_baseline:.4g} → "
                f"f(x) {self.f_x:.4g}, trapezoid gap {self.trapezoid():.3g}{steepest}")

    def _repr_html_(self) -> str:
        """Jupyter's rendering: the summary and the steepest points as a table (all text escaped)."""
        from ..viz.profile import profile_html

        return profile_html(self)

    def plot(self, ax: Sequence[Any] | None = None) -> Figure:
        """A matplotlib Figure of two panels on one α axis: f(α) above, df/dα below (on a symlog scale when
        it spans more than 3 decades, from its 10th percentile |value| up: a spike or a chaotic region). ``ax``: two axes to
        draw into (f, then df/dα), else a new figure."""
        from ..viz.profile import profile_figure

        return profile_figure(self, ax)

