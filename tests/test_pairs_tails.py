"""The pair kernel's exponential tails meet their stated error bound, pair by pair.

``functional/_pairs.py`` evaluates the pairs within a window of half-width ``K`` exactly and
replaces every other pair by a series :math:`\\sigma(d) \\approx \\sum_{n=1}^N a_n e^{n d}` (below
the window; ``1 - sum_n a_n e^{-n d}`` above it), :func:`~imbalanced_losses.functional._pairs.tail_series`.
With :math:`u = e^{-|d|}` and :math:`f(u) = u / (1 + u)`, a pair's series value is off by
:math:`|f(u) - p(u)|` and its derivative by :math:`u |f'(u) - p'(u)|`, :math:`p = \\sum_n a_n u^n`:

* the alternating (Taylor) series :math:`a_n = (-1)^{n+1}`: at most :math:`e^{-(N+1)|d|}` and
  :math:`(N+1) e^{-(N+1)|d|}`;
* the interpolating polynomial of the CPU plan's narrow float32 choice: here each error is
  bounded by its maximum over :math:`(0, e^{-K}]` and by :math:`u` times the maximum of
  :math:`|f/u - p/u|` (resp. :math:`|f' - p'|`), both computed in exact rational arithmetic on a
  dense grid (``fractions``), independently of the kernel.

Here the kernel (windowed path, forced with ``DENSE_MAX = -1``) runs on a float64 pool where most
pairs lie in the tails, many of them just past the edge, and its key sums and gradient are
compared with a float64 brute force over every pair (``torch.sigmoid`` on the ``[|P|, M]``
matrix, autograd), within the sum of those per-pair bounds plus a float64 rounding allowance.
(Keys far beyond a query's window, whose cells the prefix sums leave out, add their series terms
to the bound: each is below the dtype's budget :math:`e^{-E}`.)

The float32 choices are checked on float64 data (``tail_series`` patched): their truncation
(about :math:`e^{-24}`) is then far above the float64 rounding, so an order one too low fails
the bound (``test_the_bound_catches_a_too_low_order``). The float64 defaults, whose truncation
(:math:`e^{-40}`) hides below the rounding, are checked within the rounding allowance.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from imbalanced_losses.functional import _pairs
from imbalanced_losses.functional._plan import PLANS

#: Pool: M rows, scores spread so that |d| = |s_j - s_i| / TAU runs to ~100 with ~20 keys per unit.
M, TAU = 2400, 0.02
#: Absolute rounding allowance of a float64 key sum over M keys (a few ulps of M; gradient: / TAU).
ROUNDING = 8 * M * torch.finfo(torch.float64).eps
SPREAD = 2.0
#: A pool no wider than the carried cells (|d| < 24): no key is dropped, the series' own error dominates.
NARROW_SPREAD = 0.45
#: Truncation budgets: float32 e^{-24}, float64 e^{-40} per key.
BUDGET = {torch.float32: 24.0, torch.float64: 40.0}


def _sum_objective(r: torch.Tensor, params: _pairs.QueryParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query ``sum_J w_i R_iJ``: the per-class value is ``sum_i w_i sum_J R_iJ``, slope ``w_i``."""
    w = torch.ones_like(r[..., 0]) if params.weight is None else params.weight
    return w * r.sum(-1), w.unsqueeze(-1).expand_as(r)


# ----------------------------------------------------------------------------------------------
# The series' own errors, in exact arithmetic
# ----------------------------------------------------------------------------------------------


def _is_taylor(coefficients: tuple[float, ...]) -> bool:
    return all(a == (1.0 if n % 2 else -1.0) for n, a in enumerate(coefficients, 1))


def _exact_errors(k: float, coefficients: tuple[float, ...], points: int = 600) -> tuple[float, float, float, float]:
    """``(max |f - p|, max u |f' - p'|, max |f - p| / u, max |f' - p'|)`` over ``u`` in ``(0, e^{-K}]``.

    Exact rational arithmetic on the float coefficients, on a grid uniform in ``u`` plus a
    geometric one towards 0 (where the ratios reach their maxima).
    """
    r = Fraction(math.exp(-k))
    grid = [r * i / points for i in range(1, points + 1)] + [r / Fraction(2) ** i for i in range(1, 80)]
    a = [Fraction(x) for x in coefficients]
    value = slope = value_ratio = slope_ratio = Fraction(0)
    for u in grid:
        p, dp, power = Fraction(0), Fraction(0), Fraction(1)
        for n, a_n in enumerate(a, 1):
            dp += n * a_n * power  # p'(u)
            power *= u
            p += a_n * power
        f, df = u / (1 + u), 1 / (1 + u) ** 2
        value, slope = max(value, abs(f - p)), max(slope, u * abs(df - dp))
        value_ratio, slope_ratio = max(value_ratio, abs(f - p) / u), max(slope_ratio, abs(df - dp))
    return float(value), float(slope), float(value_ratio), float(slope_ratio)


def _choices() -> list[tuple[torch.dtype, bool]]:
    return [(dtype, narrow) for narrow in (False, True) for dtype in (torch.float32, torch.float64)]


@pytest.mark.parametrize(("dtype", "narrow"), _choices())
def test_every_choice_meets_its_dtype_budget(dtype: torch.dtype, narrow: bool) -> None:
    """Taylor choices keep ``(N + 1) K >= E``; interpolants stay within ``e^{-E}`` (value and derivative)."""
    series = _pairs.tail_series(dtype, narrow=narrow)
    k, order, budget = series.half_width, series.order, BUDGET[dtype]
    assert max(abs(a) for a in series.coefficients) <= 1.0
    assert all(reach * n * k >= budget for n, reach in enumerate(series.reach, 1))  # dropped cells
    if _is_taylor(series.coefficients):
        assert (order + 1) * k >= budget, (dtype, narrow, k, order)
        return
    value, slope, _, _ = _exact_errors(k, series.coefficients)
    assert math.log(value) <= -budget, math.log(value)
    assert math.log(slope) <= -budget, math.log(slope)
    # ... and one order fewer is not enough: the order is the smallest that meets the budget.
    fewer = _pairs.series_coefficients(k, order - 1, budget)
    value, slope, _, _ = _exact_errors(k, fewer)
    assert max(math.log(value), math.log(slope)) > -budget


def test_the_narrow_float32_choice_is_an_interpolant_on_a_narrower_window() -> None:
    assert PLANS["cpu"].narrow_window_rows > 0
    assert PLANS["cuda"].narrow_window_rows == 0
    narrow, wide = _pairs.tail_series(torch.float32, narrow=True), _pairs.tail_series(torch.float32)
    assert narrow.half_width <= wide.half_width / 8
    assert not _is_taylor(narrow.coefficients)
    assert _is_taylor(wide.coefficients)


# ----------------------------------------------------------------------------------------------
# The kernel against a float64 brute force
# ----------------------------------------------------------------------------------------------


def _pool(seed: int, spread: float = SPREAD) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scores = (torch.rand(M, 1, generator=g, dtype=torch.float64) - 0.5) * spread
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


def _pair_bounds(far: torch.Tensor, series: _pairs.TailSeries, budget: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Error bounds of each pair's series value and derivative (``far = |d|``), from the module's design.

    The series' own error (see the module docstring of this file), plus each order-``n`` term
    :math:`|a_n| e^{-n|d|}` (derivative: ``n`` times it) of a key beyond the ``reach[n - 1]``
    cells of width ``K`` kept below the query's partial cell, i.e. at ``|d| > (1 + reach[n - 1]) K``:
    such a term is below ``e^{-E}`` (``reach[n - 1] n K >= E``, checked above). Pairs within ``K`` are exact.
    """
    k, order = series.half_width, series.order
    outside = far > k
    if _is_taylor(series.coefficients):
        value = torch.where(outside, torch.exp(-(order + 1) * far), 0.0)
        slope = (order + 1) * value
    else:
        top_value, top_slope, value_ratio, slope_ratio = _exact_errors(k, series.coefficients)
        u = torch.exp(-far)
        value = torch.where(outside, torch.clamp(u * value_ratio, max=top_value), 0.0)
        slope = torch.where(outside, torch.clamp(u * slope_ratio, max=top_slope), 0.0)
    for n, (a_n, cells) in enumerate(zip(series.coefficients, series.reach, strict=True), 1):
        dropped = torch.where(far > (1 + cells) * k, abs(a_n) * torch.exp(-n * far), 0.0)
        value, slope = value + dropped, slope + n * dropped
    return value, slope


def _brute_force(
    scores: torch.Tensor, queries: torch.Tensor, weight: torch.Tensor, series: _pairs.TailSeries, budget: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sorted ``R_i``, the gradient, and the summed per-pair bounds on the series' error in both."""
    x = scores[:, 0].clone().requires_grad_(True)
    rows = queries[:, 0].nonzero()[:, 0]
    d = (x.unsqueeze(0) - x[rows].unsqueeze(1)) / TAU  # [|P|, M]: key minus query
    sums = torch.sigmoid(d).sum(1)
    (weight[rows] * sums).sum().backward()
    assert x.grad is not None
    value_pair, slope_pair = _pair_bounds(d.detach().abs(), series, budget)
    value_bound = value_pair.sum(1)
    slope_bound = slope_pair / TAU  # d sigma / d s = sigma' / tau
    w = weight[rows].unsqueeze(1)
    grad_bound = (w * slope_bound).sum(0)  # as a key
    grad_bound.index_add_(0, rows, (w * slope_bound).sum(1))  # as a query
    order_ = scores[rows, 0].argsort()
    return sums.detach()[order_], x.grad, value_bound[order_], grad_bound


def _check(
    seed: int,
    series: _pairs.TailSeries,
    bound_series: _pairs.TailSeries,
    budget: float,
    allowance: float = ROUNDING,
    spread: float = SPREAD,
    pool: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[float, float]:
    """Largest error / bound ratios of the key sums and of the gradient (kernel run with ``series``)."""
    scores, queries, weight = _pool(seed, spread) if pool is None else pool
    got_r, got_g = _kernel(scores, queries, weight)
    want_r, want_g, bound_r, bound_g = _brute_force(scores, queries, weight, bound_series, budget)
    ratio_r = float(((got_r - want_r).abs() / (bound_r + allowance)).max())
    ratio_g = float(((got_g - want_g).abs() / (bound_g + allowance / TAU)).max())
    return ratio_r, ratio_g


@pytest.fixture
def windowed(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setattr(_pairs, "DENSE_MAX", -1)
    monkeypatch.setenv("IMBALANCED_LOSSES_PLAN", "cpu")
    return monkeypatch


def _series(half_width: float, order: int, budget: float) -> _pairs.TailSeries:
    """The module's series for ``(K, N)`` under ``budget`` (what :func:`tail_series` builds)."""
    reach = tuple(_pairs._cells_needed(budget, half_width, n) for n in range(1, order + 1))
    return _pairs.TailSeries(half_width, _pairs.series_coefficients(half_width, order, budget), reach)


def _use(monkeypatch: pytest.MonkeyPatch, series: _pairs.TailSeries) -> None:
    monkeypatch.setattr(_pairs, "tail_series", lambda dtype, *, narrow=False: series)


def test_the_pools_put_most_pairs_in_the_tails_and_many_near_the_edge() -> None:
    series = _pairs.tail_series(torch.float32, narrow=True)
    k = series.half_width
    for spread in (SPREAD, NARROW_SPREAD):
        scores, queries, _ = _pool(0, spread)
        d = (scores[:, 0].unsqueeze(0) - scores[queries[:, 0], 0].unsqueeze(1)).abs() / TAU
        assert float((d > k).double().mean()) > 0.9
        assert int(((d > k) & (d < k + 0.5)).sum()) > 5000
    # The narrow pool keeps every key within the carried cells of every order (none dropped).
    assert float(d.max()) < min(reach * n * k for n, reach in enumerate(series.reach, 1))


@pytest.mark.parametrize(("seed", "spread"), [(0, SPREAD), (1, SPREAD), (0, NARROW_SPREAD)])
@pytest.mark.parametrize("narrow", [True, False], ids=["cpu-plan", "cuda-plan"])
def test_float32_window_and_order_meet_the_bound(
    windowed: pytest.MonkeyPatch, narrow: bool, seed: int, spread: float
) -> None:
    """The float32 choice of each plan, run on float64 data: errors within the per-pair bounds."""
    series = _pairs.tail_series(torch.float32, narrow=narrow)
    _use(windowed, series)
    ratio_r, ratio_g = _check(seed, series, series, BUDGET[torch.float32], spread=spread)
    assert ratio_r <= 1.0, ratio_r
    assert ratio_g <= 1.0, ratio_g


def _gap_pool(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries (and some keys) within half a unit of ``z``, the other keys 4.5 to 9 units below.

    There ``u = e^{-|d|}`` lies below the interpolant's first nonzero node, where its error keeps
    one sign: the pairs' errors add up instead of cancelling over the oscillations (or between
    the two tails, whose value errors have opposite signs).
    """
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(M, generator=g, dtype=torch.float64) * 0.5
    side = torch.rand(M, generator=g) < 0.6  # keys away from the queries
    z = torch.where(side, -4.5 - torch.rand(M, generator=g, dtype=torch.float64) * 4.5, z)
    queries = (~side & (torch.rand(M, generator=g) < 0.8)).unsqueeze(1)
    weight = torch.rand(M, generator=g, dtype=torch.float64) + 0.5
    return (z * TAU).unsqueeze(1), queries, weight


def test_the_bound_catches_a_too_low_order(windowed: pytest.MonkeyPatch) -> None:
    """One order fewer than the CPU plan's float32 choice breaks the bound of the chosen order.

    Every cell carried (no key dropped, whose terms, each below the budget and the same for either
    order, would outweigh the series' own error), on a pool whose tail pairs keep their error's sign.
    """
    budget = BUDGET[torch.float32]
    chosen = _pairs.tail_series(torch.float32, narrow=True)
    every_cell = (10**6,) * chosen.order
    fewer = _series(chosen.half_width, chosen.order - 1, budget)._replace(reach=every_cell[:-1])
    _use(windowed, fewer)
    ratio_r, ratio_g = _check(0, fewer, chosen._replace(reach=every_cell), budget, pool=_gap_pool(0))
    assert ratio_r > 1.0, ratio_r
    assert ratio_g > 1.0, ratio_g
    # The control: the chosen order meets the same bound on the same pool.
    _use(windowed, chosen._replace(reach=every_cell))
    ratio_r, ratio_g = _check(0, chosen, chosen._replace(reach=every_cell), budget, pool=_gap_pool(0))
    assert ratio_r <= 1.0, ratio_r
    assert ratio_g <= 1.0, ratio_g


@pytest.mark.parametrize("narrow", [True, False], ids=["cpu-plan", "cuda-plan"])
def test_float64_defaults_within_rounding(windowed: pytest.MonkeyPatch, narrow: bool) -> None:
    """The float64 choices: truncation below ``e^{-40}`` per pair, so only rounding is left."""
    series = _pairs.tail_series(torch.float64, narrow=narrow)
    ratio_r, ratio_g = _check(2, series, series, BUDGET[torch.float64])
    assert ratio_r <= 1.0, ratio_r
    assert ratio_g <= 1.0, ratio_g


# ----------------------------------------------------------------------------------------------
# Several classes and channels: each channel's tails over its own keys (CPU plan) or weighted
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("plan", ["cpu", "cuda"])
def test_channels_and_classes_against_brute_force(monkeypatch: pytest.MonkeyPatch, plan: str) -> None:
    """Two classes, two overlapping channels with padding: the sums and gradient of a float64 brute force.

    On the CPU plan every channel's tails run over its own members (packed, with padding slots of
    weight 0); on the CUDA plan over every key slot with 0/1 channel weights. The float32 narrow
    series is used on float64 data; the tolerance is the per-key budget times the keys (about
    ``M e^{-24}``), orders of magnitude below the error of a key counted in a wrong channel.
    """
    monkeypatch.setattr(_pairs, "DENSE_MAX", -1)
    monkeypatch.setattr(_pairs, "ITEMS", 700)  # several key steps of the tails' gradient
    monkeypatch.setenv("IMBALANCED_LOSSES_PLAN", plan)
    series = _pairs.tail_series(torch.float32, narrow=True)
    _use(monkeypatch, series)
    m, c = 1500, 2
    g = torch.Generator().manual_seed(5)
    scores = (torch.rand(m, c, generator=g, dtype=torch.float64) - 0.5) * 1.5
    queries = torch.rand(m, c, generator=g) < torch.tensor([0.2, 0.35])
    channels = torch.stack([torch.rand(m, c, generator=g) < 0.7, torch.rand(m, c, generator=g) < 0.25], dim=2)
    channels[:, 1, 1] &= scores[:, 1] > 0.2  # class 1's second channel: its upper keys only (few)
    weight = torch.rand(m, generator=g, dtype=torch.float64) + 0.5
    tau = torch.tensor([TAU, 1.5 * TAU], dtype=torch.float64)

    x = scores.clone().requires_grad_(True)
    result = _pairs.pair_sums(
        x, tau, channels, queries, weight, torch.zeros(c, 1), _sum_objective, queries_are_keys=False
    )
    result.per_class.sum().backward()
    assert x.grad is not None

    y = scores.clone().requires_grad_(True)
    total = y.new_zeros(())
    for cls in range(c):
        rows = queries[:, cls].nonzero()[:, 0]
        d = (y[:, cls].unsqueeze(0) - y[rows, cls].unsqueeze(1)) / tau[cls]  # [|P|, M]
        sums = torch.sigmoid(d) @ channels[:, cls].double()  # [|P|, J]
        order_ = scores[rows, cls].argsort()
        valid = result.valid_slots()[cls]
        got = result.ratios[cls][valid]
        assert got.shape == sums.shape
        torch.testing.assert_close(got, sums.detach()[order_], rtol=0.0, atol=m * math.exp(-24) + 1e-12)
        total = total + (weight[rows] * sums.sum(1)).sum()
    total.backward()
    assert y.grad is not None
    torch.testing.assert_close(x.grad, y.grad, rtol=0.0, atol=m * math.exp(-24) / TAU + 1e-10)


@pytest.mark.parametrize("cells", [9, 16, 17, 96, 299])
@pytest.mark.parametrize("n", [1, 4])
def test_the_doubling_carry_adds_the_same_cells(cells: int, n: int) -> None:
    """:func:`_carry` against the cells added one by one (float64)."""
    g = torch.Generator().manual_seed(cells + n)
    top = torch.sort(torch.rand(3, 300, generator=g, dtype=torch.float64) * 60, 1).values
    totals = torch.rand(3, 2, 300, generator=g, dtype=torch.float64)
    want = torch.zeros_like(totals)
    for t in range(1, cells + 1):
        want[..., t:] += totals[..., :-t] * torch.exp(n * (top[:, :-t] - top[:, t:])).unsqueeze(1)
    torch.testing.assert_close(_pairs._carry(totals, top, n, cells), want, rtol=1e-13, atol=0.0)
