"""Quadrature rules for integrated gradients, with Captum's nodes and weights.

>>> from attrib.methods.quadrature import quadrature
>>> quadrature("riemann_middle", 2)
([0.25, 0.75], [0.5, 0.5])
>>> alphas, weights = quadrature("gausslegendre", 4)
>>> round(sum(weights), 12)
1.0
"""

from __future__ import annotations

import numpy as np

from ..errors import MethodError

__all__ = ["quadrature", "METHODS"]

METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


def quadrature(method: str, n_steps: int) -> tuple[list[float], list[float]]:
    """Nodes α in [0, 1] and weights of ``method`` with ``n_steps`` points, as in Captum.

    Weights sum to 1, except Captum's ``riemann_trapezoid`` whose halved end weights sum to (n − 1)/n.
    """
    if method not in METHODS:
        raise MethodError(f"method={method!r} is not one of {', '.join(METHODS)}.")
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 1:
        raise MethodError(f"n_steps must be a positive integer, got {n_steps!r}.")
    n = n_steps
    if method == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(n)
        return [float(a) for a in 0.5 * (x + 1)], [float(v) for v in 0.5 * w]
    if method == "riemann_trapezoid":
        if n < 2:
            raise MethodError("method='riemann_trapezoid' needs n_steps >= 2 (both ends of the path).")
        # Captum's weights: 1/n with both ends halved (they sum to (n - 1)/n, not 1).
        return [float(a) for a in np.linspace(0, 1, n)], [0.5 / n] + [1.0 / n] * (n - 2) + [0.5 / n]
    start = {"riemann_left": 0.0, "riemann_right": 1.0 / n, "riemann_middle": 0.5 / n}[method]
    stop = {"riemann_left": 1.0 - 1.0 / n, "riemann_right": 1.0, "riemann_middle": 1.0 - 0.5 / n}[method]
    return [float(a) for a in np.linspace(start, stop, n)], [1.0 / n] * n
