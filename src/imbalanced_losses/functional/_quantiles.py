"""Thresholds of the ranking losses: exact per-class quantiles and order statistics of a pool.

The quantiles of every class come at once (``[M, C]`` scores with an ``[M, C]`` membership
mask), with :func:`torch.quantile`'s values exactly, from the order statistics they need.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._arith import HOST_ROUNDING
from ._constants import device_constant
from ._plan import PLANS, kernel_plan, override


def masked_column_quantiles(
    x: Tensor, member: Tensor | None, levels: Tensor | Sequence[float], interpolation: str
) -> tuple[Tensor, Tensor]:
    """Quantiles of each column of ``x`` over the rows selected by ``member``, for all classes at once.

    Reproduces :func:`torch.quantile` exactly for float32/float64 input (same rank arithmetic
    in the input dtype, same rounding and ``lerp``), but works for any pool size and selects
    the order statistics it needs (see :func:`order_statistics`) instead of sorting each
    column separately.

    A single column of a small pool on the CPU (the CPU plan's ``host_reads``, see
    :mod:`._plan`) takes a shorter road to the same values: its
    members are gathered and sorted, their number ``n`` comes back with them (a free host
    synchronisation on the CPU), and the ranks ``levels * (n - 1)`` are formed on the host
    (:func:`sorted_column_quantiles`). Small pools are dominated by the fixed cost of each operation,
    and this road has a fraction of them.

    Args:
        x: ``[M, C]`` detached scores.
        member: ``[M, C]`` bool, which rows belong to each column's population; ``None``: every row.
        levels: ``[L]`` quantile levels in ``[0, 1]``: a tensor in ``x``'s dtype, or Python
            floats (taken as rounded to ``x``'s dtype).
        interpolation: One of ``linear, lower, higher, nearest, midpoint``.

    Returns:
        ``(values [L, C], counts [C])``. Columns with an empty population get ``nan``.
    """
    x = x.detach()
    m, c = x.shape
    plan = kernel_plan(x.device)
    host = (
        plan.host_reads
        and c == 1
        and 0 < m <= SORT_MAX
        and x.device.type == "cpu"
        and x.dtype in HOST_ROUNDING
        and (not isinstance(levels, Tensor) or levels.dtype == x.dtype)
        and not torch.compiler.is_compiling()
    )
    if host and member is not None:
        column = x[:, 0].masked_select(member[:, 0])
        n = column.shape[0]
        counts = torch.full((1,), n, dtype=torch.long)
        if n == 0:
            return x.new_full((len(levels), 1), float("nan")), counts
        return sorted_column_quantiles(column.sort().values, levels, interpolation).unsqueeze(1), counts
    # [L, 1] levels in x's dtype
    if isinstance(levels, Tensor):
        levels = levels.unsqueeze(1)
    else:
        levels = device_constant(tuple((float(q),) for q in levels), x.dtype, x.device)
    counts = torch.full((c,), m, dtype=torch.long, device=x.device) if member is None else member.sum(0)
    if m == 0:
        return x.new_full((levels.shape[0], c), float("nan")), counts
    # [L, C] in x's dtype, as torch.quantile forms them (the integer count is converted, then multiplied)
    ranks = levels * (counts - 1).clamp_min(0)
    if c == 1 and m <= override(SORT_MAX, PLANS["cpu"].sort_max, plan.sort_max):  # one column: sorted in place
        column = x if member is None else x.masked_fill(~member, float("inf"))
        values = _interpolate(ranks, interpolation, lambda ranks: column.sort(dim=0).values.gather(0, ranks))
    else:
        member_t = None if member is None else member.t()
        values = _interpolate(ranks, interpolation, lambda ranks: order_statistics(x.t(), member_t, ranks))
    return values if member is None else values.masked_fill(counts == 0, float("nan")), counts


def sorted_column_quantiles(ordered: Tensor, levels: Tensor | Sequence[float], interpolation: str) -> Tensor:
    """:func:`torch.quantile` of each column of ``ordered`` at ``levels``, ranks formed on the host: ``[L, ...]``.

    ``ordered`` is sorted ascending along its first axis (``[n]`` or ``[n, C]``), every row a
    member. ``torch.quantile`` forms the rank ``level * (n - 1)`` in the input's dtype: the exact
    product of two values of that dtype, rounded once. The same rounding of the exact double
    product (a float32 product has at most 48 significant bits) gives the same rank, and
    floor/ceil/round-half-even on it the same indices, so this costs one indexing operation
    (and a ``lerp`` when interpolating) instead of the rank arithmetic's five or six; the index
    and weight tensors are made once per ``(n, levels)`` and device (:mod:`._constants`).
    """
    dtype, n = ordered.dtype, ordered.shape[0]
    values = tuple(levels.tolist() if isinstance(levels, Tensor) else levels)
    if n == 0:
        return ordered.new_full((len(values), *ordered.shape[1:]), float("nan"))
    index, weights = _host_ranks(values, n, interpolation, dtype)
    if weights is None and len(index) == 1:  # a view: no indexing operation
        return ordered.narrow(0, index[0], 1)
    picked = ordered.index_select(0, device_constant(index, torch.long, ordered.device))
    if weights is None:
        return picked
    lerp_weights = device_constant(weights, dtype, ordered.device)
    if ordered.ndim > 1:  # the weights broadcast over the columns
        lerp_weights = lerp_weights.view(len(weights), *(1,) * (ordered.ndim - 1))
    return torch.lerp(picked[: len(weights)], picked[len(weights) :], lerp_weights)


@functools.lru_cache(maxsize=256)
def _host_ranks(
    levels: tuple[float, ...], n: int, interpolation: str, dtype: torch.dtype
) -> tuple[tuple[int, ...], tuple[float, ...] | None]:
    """The order statistics :func:`sorted_column_quantiles` reads, and its ``lerp`` weights (``None``: no ``lerp``).

    Interpolating, the indices are the ranks' floors then their ceilings.
    """
    to_dtype = HOST_ROUNDING[dtype]
    ranks = [to_dtype(to_dtype(float(q)) * (n - 1)) for q in levels]
    if interpolation in ("linear", "midpoint"):
        below = [math.floor(r) for r in ranks]
        above = [math.ceil(r) for r in ranks]
        # r - floor(r) is exact in r's dtype: the same weights as the tensor arithmetic
        weights = tuple(0.5 if interpolation == "midpoint" else r - b for r, b in zip(ranks, below, strict=True))
        return tuple(below + above), weights
    if interpolation == "lower":
        return tuple(math.floor(r) for r in ranks), None
    if interpolation == "higher":
        return tuple(math.ceil(r) for r in ranks), None
    return tuple(round(r) for r in ranks), None  # "nearest": round() on a float is round-half-even, like torch.round


def _interpolate(ranks: Tensor, interpolation: str, pick: Callable[[Tensor], Tensor]) -> Tensor:
    """:func:`torch.quantile`'s interpolation between order statistics, at fractional ``ranks [L, ...]``.

    ``pick(indices)`` returns the order statistics at integer ``indices`` (same shape), with
    the ``L`` axis first; ``ranks`` are ``level * (count - 1)`` in the scores' dtype.
    """
    if interpolation == "lower":
        ranks = ranks.floor()
    elif interpolation == "higher":
        ranks = ranks.ceil()
    elif interpolation == "nearest":
        ranks = ranks.round()
    below = ranks.long()
    if interpolation not in ("linear", "midpoint"):
        return pick(below)
    size = ranks.shape[0]
    picked = pick(torch.cat([below, ranks.ceil().long()]))
    weights = torch.full_like(ranks, 0.5) if interpolation == "midpoint" else ranks - below.to(ranks.dtype)
    return torch.lerp(picked[:size], picked[size:], weights)


#: Pools up to this size are simply sorted (selection only pays off on large pools): the CPU
#: plan's value (:mod:`._plan`); another value set here overrides every device's plan.
SORT_MAX = PLANS["cpu"].sort_max


def order_statistics(x_t: Tensor, member_t: Tensor | None, ranks: Tensor) -> Tensor:
    """The ``ranks[r, c]``-th smallest member of each row ``c`` of ``x_t`` (0-based), for every ``r``.

    Small pools (``M <= SORT_MAX`` on the CPU; any pool under the CUDA plan, where the selection's
    host planning would cost synchronisations) are sorted. Otherwise the cheapest exact selection is used:
    one ``topk`` for ranks near the top of the population (budget thresholds), one
    ``kthvalue`` per remaining rank row (padding each row with ``-inf`` so that every class's
    rank lands on the same position), and a full sort only when that padding is impossible.

    Args:
        x_t: ``[C, M]`` scores.
        member_t: ``[C, M]`` bool population of each row; ``None``: every slot (no masking, no
            padding: the ranks of a row are then the same for every class).
        ranks: ``[R, C]`` long ranks in ``[0, count_c)`` (any value for empty rows).

    Returns:
        ``[R, C]`` values (arbitrary for empty rows).
    """
    m = x_t.shape[1]
    x_t = x_t.contiguous()  # selection along contiguous rows is faster
    if m <= override(SORT_MAX, PLANS["cpu"].sort_max, kernel_plan(x_t.device).sort_max):
        x_sorted = x_t if member_t is None else x_t.masked_fill(~member_t, float("inf"))
        return x_sorted.sort(dim=1).values.gather(1, ranks.clamp_min(0).t()).t()
    counts = m if member_t is None else member_t.sum(1)
    out = x_t.new_empty(ranks.shape)
    from_top = (counts - 1 - ranks).clamp_min(0)
    near_top = from_top.amax(1) < max(m // 8, 1)
    if bool(near_top.any()):
        k = int(from_top[near_top].max()) + 1
        x_top = x_t if member_t is None else x_t.masked_fill(~member_t, float("-inf"))
        top = x_top.topk(k, dim=1).values  # [C, k], descending
        out[near_top] = top.gather(1, from_top[near_top].t()).t()
    rest = (~near_top).nonzero().squeeze(1).tolist()
    if not rest:
        return out
    ranks = ranks.clamp_min(0)
    if member_t is None:  # every class has the same rank: one selection per row, nothing to pad
        for r in rest:
            out[r] = x_t.kthvalue(int(ranks[r].max()) + 1, dim=1).values
        return out
    member_t = member_t.contiguous()
    outsiders = (~member_t).cumsum(1, dtype=torch.int32)  # how many non-members precede each slot, inclusive
    high = x_t.masked_fill(~member_t, float("inf"))
    for r in rest:  # a few rank rows (quartiles), not classes
        k = int(ranks[r].max())
        shift = k - ranks[r]  # non-members of row c moved to -inf so its rank lands on k
        if bool((shift > m - counts).any()):
            sorted_x = high.sort(dim=1).values
            out[rest] = sorted_x.gather(1, ranks[rest].t()).t()
            return out
        padded = high.masked_fill(~member_t & (outsiders <= shift.unsqueeze(1).int()), float("-inf"))
        out[r] = padded.kthvalue(k + 1, dim=1).values
    return out


#: A class whose reference dispersion (inter-quartile range, band width) is at or below this
#: has no spread to scale a temperature by.
MIN_DISPERSION = 1e-12
