"""The pair kernel's exponential tails meet their stated error bound, pair by pair.

``functional/_pairs.py`` evaluates the pairs within a window of half-width ``K`` exactly and
replaces every other pair by an alternating exponential series of order ``N``
(:func:`~imbalanced_losses.functional._pairs.window_and_order`). The series of
:math:`\\sigma(d)` is off by at most :math:`e^{-(N+1)|d|}` for a pair at :math:`|d| > K`, its
derivative by :math:`(N+1) e^{-(N+1)|d|}`; over a query's keys (or a key's queries) the errors
add up to at most the sum of those bounds. Here the kernel (windowed path, forced with
``DENSE_MAX = -1``) runs on a float64 pool where most pairs lie in the tails, many of them
just past the edge, and its key sums and gradient are compared with a float64 brute force over
every pair (``torch.sigmoid`` on the ``[|P|, M]`` matrix, autograd), within those per-pair
bounds plus a float64 rounding allowance. (Keys far beyond a query's window, whose cells the
prefix sums leave out, add their series terms to the bound: each is below ``e^{-(N+1)K}``.)

The float32 window and order are checked on float64 data (``window_and_order`` patched): their
truncation (about ``e^{-24}``) is then far above the float64 rounding, so an order one too low
fails the bound (``test_the_bound_catches_a_too_low_order``). The float64 defaults, whose
truncation (``e^{-40}``) hides below the rounding, are checked within the rounding allowance.
"""

from __future__ import annotations

import math

import pytest
import torch

from imbalanced_losses.functional import _pairs
from imbalanced_losses.functional._plan import PLANS

#: Pool: M rows, scores spread so that |d| = |s_j - s_i| / TAU runs to ~100 with ~20 keys per unit.
M, TAU = 2400, 0.02
#: Absolute rounding allowance of a float64 key sum over M keys (a few ulps of M; gradient: / TAU).
ROUNDING = 8 * M * torch.finfo(torch.float64).eps
SPREAD = 2.0


def _sum_objective(r: torch.Tensor, params: _pairs.QueryParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query ``w_i R_i`` (one channel): the per-class value is ``sum_i w_i R_i``, slope ``w_i``."""
    w = torch.ones_like(r[..., 0]) if params.weight is None else params.weight
    return w * r[..., 0], w.unsqueeze(-1).expand_as(r)


def _pool(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scores = (torch.rand(M, 1, generator=g, dtype=torch.float64) - 0.5) * SPREAD
    queries = torch.rand(M, 1, generator=g) < 0.3
    weight = torch.rand(M, generator=g, dtype=torch.float64) + 0.5
    return scores, queries, weight


def _kernel(scores: torch.Tensor, queries: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Key sums ``R_i`` of the queries (pool order) and the gradient of ``sum_i w_i R_i``."""
    x = scores.clone().requires_grad_(True)
    tau = torch.full((1,), TAU, dtype=torch.float64)
    keys = torch.ones(M, 1, 1, dtype=torch.bool)
    result = _pairs.pair_sums(x, tau, keys, queries, weight, torch.zeros(1, 1), _sum_objective, queries_are_keys=False)
    result.per_class.sum().backward()
    n_q = int(queries.sum())
    assert x.grad is not None
    return result.ratios[0, :n_q, 0], x.grad[:, 0]


def _pair_bounds(far: torch.Tensor, order: int, k: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Error bounds of each pair's series value and derivative, from the module's design.

    A pair at ``|d| > K`` is off by the series remainder, at most ``e^{-(N+1)|d|}`` (derivative:
    ``(N+1) e^{-(N+1)|d|}``), plus each order ``n`` term ``e^{-n|d|}`` (derivative ``n e^{-n|d|}``)
    of a key beyond the ``ceil((N+1)/n)`` cells of width ``K`` kept below the query's partial
    cell, i.e. at ``|d| > (1 + ceil((N+1)/n)) K``: such a term is below ``e^{-(N+1)K}``. Pairs
    within ``K`` are exact.
    """
    outside = far > k
    value = torch.where(outside, torch.exp(-(order + 1) * far), 0.0)
    slope = (order + 1) * value
    for n in range(1, order + 1):
        dropped = torch.where(far > (1 + math.ceil((order + 1) / n)) * k, torch.exp(-n * far), 0.0)
        value, slope = value + dropped, slope + n * dropped
    return value, slope


def _brute_force(
    scores: torch.Tensor, queries: torch.Tensor, weight: torch.Tensor, order: int, half_width: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sorted ``R_i``, the gradient, and the summed per-pair bounds on the series' error in both."""
    x = scores[:, 0].clone().requires_grad_(True)
    rows = queries[:, 0].nonzero()[:, 0]
    d = (x.unsqueeze(0) - x[rows].unsqueeze(1)) / TAU  # [|P|, M]: key minus query
    sums = torch.sigmoid(d).sum(1)
    (weight[rows] * sums).sum().backward()
    assert x.grad is not None
    far = d.detach().abs()
    value_pair, slope_pair = _pair_bounds(far, order, half_width)
    value_bound = value_pair.sum(1)
    slope_bound = slope_pair / TAU  # d sigma / d s = sigma' / tau
    w = weight[rows].unsqueeze(1)
    grad_bound = (w * slope_bound).sum(0)  # as a key
    grad_bound.index_add_(0, rows, (w * slope_bound).sum(1))  # as a query
    order_ = scores[rows, 0].argsort()
    return sums.detach()[order_], x.grad, value_bound[order_], grad_bound


def _check(seed: int, order: int, half_width: float, allowance: float = ROUNDING) -> tuple[float, float]:
    """Largest error / bound ratios of the key sums and of the gradient."""
    scores, queries, weight = _pool(seed)
    got_r, got_g = _kernel(scores, queries, weight)
    want_r, want_g, bound_r, bound_g = _brute_force(scores, queries, weight, order, half_width)
    ratio_r = float(((got_r - want_r).abs() / (bound_r + allowance)).max())
    ratio_g = float(((got_g - want_g).abs() / (bound_g + allowance / TAU)).max())
    return ratio_r, ratio_g


@pytest.fixture
def windowed(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setattr(_pairs, "DENSE_MAX", -1)
    monkeypatch.setenv("IMBALANCED_LOSSES_PLAN", "cpu")
    return monkeypatch


def _use(monkeypatch: pytest.MonkeyPatch, half_width: float, order: int) -> None:
    monkeypatch.setattr(_pairs, "window_and_order", lambda dtype, *, narrow=False: (half_width, order))


def test_every_window_and_order_meets_its_dtype_bound() -> None:
    for narrow in (False, True):
        for dtype, exponent in ((torch.float32, 24.0), (torch.float64, 40.0)):
            k, n = _pairs.window_and_order(dtype, narrow=narrow)
            assert (n + 1) * k >= exponent, (dtype, narrow, k, n)
    assert PLANS["cpu"].narrow_window_rows > 0
    assert PLANS["cuda"].narrow_window_rows == 0
    assert _pairs.window_and_order(torch.float32, narrow=True)[0] < _pairs.window_and_order(torch.float32)[0]


def test_the_pool_puts_most_pairs_in_the_tails_and_many_near_the_edge() -> None:
    scores, queries, _ = _pool(0)
    k = _pairs.window_and_order(torch.float32, narrow=True)[0]
    d = (scores[:, 0].unsqueeze(0) - scores[queries[:, 0], 0].unsqueeze(1)).abs() / TAU
    assert float((d > k).double().mean()) > 0.9
    assert int(((d > k) & (d < k + 0.5)).sum()) > 5000


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("narrow", [True, False], ids=["cpu-plan", "cuda-plan"])
def test_float32_window_and_order_meet_the_bound(windowed: pytest.MonkeyPatch, narrow: bool, seed: int) -> None:
    """The float32 choice of each plan, run on float64 data: errors within the per-pair bounds."""
    k, n = _pairs.window_and_order(torch.float32, narrow=narrow)
    _use(windowed, k, n)
    ratio_r, ratio_g = _check(seed, n, k)
    assert ratio_r <= 1.0, ratio_r
    assert ratio_g <= 1.0, ratio_g


def test_the_bound_catches_a_too_low_order(windowed: pytest.MonkeyPatch) -> None:
    """One order fewer than the CPU plan's float32 choice breaks the bound of the chosen order."""
    k, n = _pairs.window_and_order(torch.float32, narrow=True)
    _use(windowed, k, n - 1)
    ratio_r, ratio_g = _check(0, n, k)
    assert ratio_r > 1.0, ratio_r
    assert ratio_g > 1.0, ratio_g


@pytest.mark.parametrize("narrow", [True, False], ids=["cpu-plan", "cuda-plan"])
def test_float64_defaults_within_rounding(windowed: pytest.MonkeyPatch, narrow: bool) -> None:
    """The float64 choices: truncation below ``e^{-40}`` per pair, so only rounding is left."""
    k, n = _pairs.window_and_order(torch.float64, narrow=narrow)
    _use(windowed, k, n)
    ratio_r, ratio_g = _check(2, n, k)
    assert ratio_r <= 1.0, ratio_r
    assert ratio_g <= 1.0, ratio_g
