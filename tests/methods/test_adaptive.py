"""Adaptive Gauss–Kronrod quadrature: the rule's exactness, convergence on closed forms, refinement where the
integrand is steep, per-item budgets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attrib.methods.adaptive import (GAUSS_WEIGHTS, KRONROD_NODES, KRONROD_WEIGHTS, integrate_adaptive,
                                     pointwise)


@pytest.mark.parametrize("degree", range(0, 23))
def test_kronrod_rule_is_exact_to_degree_22(degree):
    exact = (1 - (-1) ** (degree + 1)) / (degree + 1)               # ∫_{-1}^{1} x^k dx
    assert abs(float((KRONROD_WEIGHTS * KRONROD_NODES ** degree).sum()) - exact) < 1e-13


def test_the_nested_gauss_rule_is_gauss_legendre_7():
    nodes, weights = np.polynomial.legendre.leggauss(7)
    used = GAUSS_WEIGHTS > 0
    np.testing.assert_allclose(KRONROD_NODES[used], nodes, atol=1e-14)
    np.testing.assert_allclose(GAUSS_WEIGHTS[used], weights, atol=1e-14)
    assert used.sum() == 7 and KRONROD_NODES.min() > -1 and KRONROD_NODES.max() < 1   # end points never used


def steep(items: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """d/dα tanh(k (α − 0.37)) with k = 5 for item 0 (smooth) and k = 400 for item 1 (a narrow spike)."""
    k = torch.where(items == 0, 5.0, 400.0).double()
    return (k / torch.cosh(k * (alphas - 0.37)) ** 2).view(-1, 1, 1)


def exact_steep() -> torch.Tensor:
    return torch.tensor([[math.tanh(k * 0.63) - math.tanh(-k * 0.37)] for k in (5.0, 400.0)], dtype=torch.float64)


def test_each_item_refines_only_as_much_as_it_needs():
    out = integrate_adaptive(pointwise(steep), 2, diffs=exact_steep(), tol=1e-6, max_evaluations=2000)
    assert out.converged.tolist() == [True, True]
    torch.testing.assert_close(out.values.view(2, 1), exact_steep(), rtol=1e-6, atol=0)
    assert out.evaluations[0] < out.evaluations[1]
    widths = {(lo, hi): hi - lo for lo, hi in out.intervals[1]}
    narrowest = min(widths, key=widths.get)
    assert narrowest[0] <= 0.37 + 0.05 and narrowest[1] >= 0.37 - 0.05   # refined at the spike
    assert max(widths.values()) >= 0.25                                  # and not elsewhere


def test_a_budget_too_small_is_reported_not_hidden():
    out = integrate_adaptive(pointwise(steep), 2, diffs=exact_steep(), tol=1e-9, max_evaluations=60)
    assert out.converged.tolist() == [True, False]
    assert int(out.evaluations[1]) <= 60


def test_a_vector_integrand_is_integrated_per_component():
    def rate(items: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.cos(alphas), 3 * alphas ** 2, torch.exp(alphas)], -1).view(-1, 1, 3)

    diff = torch.tensor([[math.sin(1) + 1 + math.e - 1]], dtype=torch.float64)
    out = integrate_adaptive(pointwise(rate), 1, diffs=diff, tol=1e-8)
    expected = torch.tensor([math.sin(1), 1.0, math.e - 1], dtype=torch.float64)
    torch.testing.assert_close(out.values.view(3), expected, rtol=1e-12, atol=0)


def test_completeness_is_checked_against_the_given_difference():
    """A wrong f(x) − f(b) (the integrand does not integrate to it) keeps refining until the budget ends."""
    rate = lambda items, alphas: torch.ones_like(alphas).view(-1, 1, 1)       # noqa: E731
    out = integrate_adaptive(pointwise(rate), 1, diffs=torch.tensor([[2.0]], dtype=torch.float64), tol=1e-3,
                             max_evaluations=120)
    assert not bool(out.converged[0]) and int(out.evaluations[0]) == 120
