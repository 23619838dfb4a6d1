r"""Memory-bounded, exact sums of sigmoids over (query, key) pairs, with an analytic gradient.

Smooth-AP and the pairwise pAUC both need, for every class :math:`c` and every *query*
:math:`i` (a positive), channel sums over the class's *keys* :math:`j`:

.. math::
    R_{c,i,J} = \sum_{j} m_{c,j,J}\, \sigma(z_{c,j} - q_{c,i})

(``m`` are 0/1 channel masks, e.g. "any member" and "positive"), and then a per-class
objective :math:`\sum_i v(R_{c,i}, \theta_{c,i})`. Materialising the ``[|P|, M]`` pair matrix
costs ``O(|P| M)`` memory; this kernel never does. Keys and queries are sorted per class and
every pair falls in one of three regimes, relative to a window half-width :math:`K`:

* :math:`|d| \le K` (``d = z - q``): evaluated exactly, in blocks of ``BLOCK`` consecutive
  queries against the contiguous key range their windows cover;
* :math:`d < -K`: :math:`\sigma(d) = \sum_{n=1}^{N} (-1)^{n+1} e^{n d}` to within
  :math:`e^{-(N+1)K}`;
* :math:`d > K`: :math:`\sigma(d) = 1 + \sum_{n=1}^{N} (-1)^{n} e^{-n d}`, same error.

The exponential tails factorise (:math:`e^{n(z-q)} = e^{nz} e^{-nq}`), so they are prefix
sums over the sorted keys. To keep those prefix sums exact in floating point, values are
grouped into cells of width :math:`G \le K` and each cell is scaled by its upper edge; a
query then combines its own partial cell with the ``N + 1`` full cells below it, every factor
being at most 1 (farther cells are below :math:`e^{-(N+1)K}`).

Because the objective :math:`v` is known in the forward pass, the gradient is formed there
too (block by block for the window, by the same prefix sums for the tails) and saved as one
``[C, M]`` tensor. Extra memory is ``O(M C)`` plus one chunk of at most ``CHUNK`` pair terms.

Defaults (``K``, ``N``): ``(8, 2)`` in float32 and ``(10, 3)`` in float64, i.e. a truncation
error of at most :math:`e^{-24} \approx 4\cdot10^{-11}` (float32) or :math:`e^{-40}` (float64)
per key, far below the float32 rounding of the dense sum and below 1e-12 in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

#: Queries per window block.
BLOCK = 32
#: Maximum number of pair terms evaluated at once (bounds the transient memory).
CHUNK = 1 << 21

#: ``objective(R [..., J] float64, params [..., P] float64) -> (value [...], dvalue/dR [..., J])``
Objective = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def window_and_order(dtype: torch.dtype) -> tuple[float, int]:
    """The window half-width ``K`` and the tail series order ``N`` used for ``dtype``."""
    return (10.0, 3) if dtype == torch.float64 else (8.0, 2)


class SortedRows(NamedTuple):
    """Per-class members of a pool, sorted by score and left-aligned in a ``[C, L]`` layout."""

    values: Tensor  # [C, L] ascending; slots past `count` repeat the last value (0 for an empty row)
    rows: Tensor  # [C, L] long: pool row of each slot (0 for padding slots)
    sizes: Tensor  # [C] long: number of real slots


def sorted_rows(scores_t: Tensor, mask_t: Tensor, multiple: int = 1) -> SortedRows:
    """Sort each row's selected entries ascending.

    Args:
        scores_t: ``[C, M]`` scores, one row per class.
        mask_t: ``[C, M]`` bool, the entries of each row to keep.
        multiple: Round the width ``L`` up to a multiple of this.

    Returns:
        A :class:`SortedRows` of width ``L = max_c count_c`` (rounded up).
    """
    c, m = scores_t.shape
    keyed = scores_t.detach().masked_fill(~mask_t, float("inf"))
    sorted_vals, order = keyed.sort(dim=1)
    count = mask_t.sum(1)
    width = -(-int(count.max()) // multiple) * multiple if c > 0 and m > 0 else 0
    # Selected entries sort first: non-members are +inf and the scores are finite.
    if width == 0:
        empty = scores_t.new_zeros(c, 0)
        return SortedRows(empty, empty.long(), count)
    take = torch.arange(width, device=scores_t.device).clamp_max(m - 1).expand(c, width)
    values = sorted_vals.gather(1, take)
    index = order.gather(1, take)
    pad = torch.arange(width, device=scores_t.device) >= count.unsqueeze(1)
    last = values.gather(1, (count - 1).clamp_min(0).unsqueeze(1))
    last = torch.where(count.unsqueeze(1) > 0, last, torch.zeros_like(last))
    return SortedRows(torch.where(pad, last, values), index.masked_fill(pad, 0), count)


class _Cells(NamedTuple):
    """Sorted float64 values grouped into cells of width ``G`` (one row per class)."""

    values: Tensor  # [C, L] float64, ascending
    edge: Tensor  # [C, L] float64: upper edge G * (cell + 1) of each value's cell
    rank: Tensor  # [C, L] long: rank of the value's cell among the row's non-empty cells
    start: Tensor  # [C, R + 1] long: first slot of each rank; L past the row's last rank
    top: Tensor  # [C, R] float64: upper edge of each rank's cell


def _cells(values: Tensor, width: float) -> _Cells:
    c, n = values.shape
    cell = torch.floor(values / width)
    new = torch.ones_like(values, dtype=torch.bool)
    new[:, 1:] = cell[:, 1:] != cell[:, :-1]
    rank = new.long().cumsum(1) - 1
    n_ranks = int(rank[:, -1].max()) + 1 if n > 0 else 0
    start = torch.full((c, n_ranks + 2), n, dtype=torch.long, device=values.device)
    slots = torch.arange(n, device=values.device).expand(c, n)
    start.scatter_(1, torch.where(new, rank, n_ranks + 1), slots)
    start = start[:, : n_ranks + 1]
    edge = (cell + 1) * width
    top = edge.gather(1, start[:, :n_ranks].clamp_max(max(n - 1, 0))) if n > 0 else edge[:, :0]
    return _Cells(values, edge, rank, start, top)


class _Side(NamedTuple):
    """A sorted array prepared for prefix sums (ascending) and suffix sums (negated and flipped)."""

    up: _Cells
    down: _Cells
    length: int


def _side(values: Tensor, width: float) -> _Side:
    v = values.double()
    return _Side(_cells(v, width), _cells(-v.flip(1), width), v.shape[1])


def _prefix_exp(cells: _Cells, weight: Tensor, cut: Tensor, x: Tensor, n: int, extra: int) -> Tensor:
    r"""``sum_{j < cut} weight_j exp(n (v_j - x))`` for items ``(cut, x)`` given ``v_{cut-1} <= x - K``.

    Args:
        cells: The sorted values ``v`` ``[C, L]``.
        weight: ``[C, L]`` float64 weights.
        cut: ``[C, X]`` long prefix ends.
        x: ``[C, X]`` float64 item values.
        n: Exponent order.
        extra: Number of full cells below the partial one to include.
    """
    c, length = weight.shape
    cum = weight.new_zeros(c, length + 1)
    cum[:, 1:] = (weight * torch.exp(n * (cells.values - cells.edge))).cumsum(1)
    totals = cum.gather(1, cells.start[:, 1:]) - cum.gather(1, cells.start[:, :-1])
    if length == 0 or totals.shape[1] == 0:
        return x.new_zeros(x.shape)
    rank = cells.rank.gather(1, (cut - 1).clamp_min(0))
    partial = cum.gather(1, cut) - cum.gather(1, cells.start.gather(1, rank))
    out = partial * torch.exp(n * (cells.top.gather(1, rank) - x))
    for t in range(1, extra + 1):
        r = (rank - t).clamp_min(0)
        term = totals.gather(1, r) * torch.exp(n * (cells.top.gather(1, r) - x))
        out = out + torch.where(rank >= t, term, torch.zeros_like(term))
    return torch.where(cut > 0, out, torch.zeros_like(out))


def _suffix_exp(side: _Side, weight: Tensor, cut: Tensor, x: Tensor, n: int, extra: int) -> Tensor:
    """``sum_{j >= cut} weight_j exp(-n (v_j - x))`` for items ``(cut, x)`` given ``v_cut >= x + K``."""
    return _prefix_exp(side.down, weight.flip(1), side.length - cut, -x, n, extra)


class _Plan(NamedTuple):
    lo: Tensor  # [C, nb] first key of each block's window
    hi: Tensor  # [C, nb] one past the last key of each block's window
    active: Tensor  # [C, nb] bool: the block holds at least one real query


def _plan(keys: SortedRows, queries: SortedRows, half_width: float) -> _Plan:
    c, lq = queries.values.shape
    blocks = queries.values.view(c, lq // BLOCK, BLOCK)
    nk = keys.sizes.unsqueeze(1)
    lo = torch.searchsorted(keys.values, (blocks[..., 0] - half_width).contiguous()).clamp_max(nk)
    hi = torch.searchsorted(keys.values, (blocks[..., -1] + half_width).contiguous(), right=True).clamp_max(nk)
    first_query = torch.arange(lq // BLOCK, device=lo.device) * BLOCK
    return _Plan(lo, torch.maximum(hi, lo), first_query < queries.sizes.unsqueeze(1))


def _chunks(lengths: list[int], width: int) -> list[tuple[int, int]]:
    """Split blocks sorted by decreasing window length into runs of at most ``CHUNK`` pair terms."""
    out = []
    start = 0
    while start < len(lengths):
        per_block = width * max(lengths[start], 1)
        stop = min(len(lengths), start + max(1, CHUNK // per_block))
        out.append((start, stop))
        start = stop
    return out


class _PairSums(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        scores: Tensor,
        tau: Tensor,
        keys: SortedRows,
        key_mask: Tensor,
        queries: SortedRows,
        params: Tensor,
        objective: Objective,
    ) -> tuple[Tensor, Tensor]:
        dtype = scores.dtype
        c = scores.shape[1]
        half_width, order = window_and_order(dtype)
        zk = keys.values / tau.unsqueeze(1)  # [C, Lk]
        zq = queries.values / tau.unsqueeze(1)  # [C, Lq]
        lk, lq, n_ch = zk.shape[1], zq.shape[1], key_mask.shape[2]
        plan = _plan(SortedRows(zk, keys.rows, keys.sizes), SortedRows(zq, queries.rows, queries.sizes), half_width)
        nb = lq // BLOCK
        lo_q = plan.lo.repeat_interleave(BLOCK, dim=1)  # [C, Lq]
        hi_q = plan.hi.repeat_interleave(BLOCK, dim=1)
        mask64 = key_mask.double()

        # Exponential tails (float64), per channel: values and their derivative in the query.
        key_side = _side(zk, half_width)
        zq64 = zq.double()
        tail = zq64.new_zeros(c, lq, n_ch)
        tail_dq = zq64.new_zeros(c, lq, n_ch)
        for ch in range(n_ch):
            w = mask64[..., ch]
            count = w.new_zeros(c, lk + 1)
            count[:, 1:] = w.cumsum(1)
            tail[..., ch] = count.gather(1, keys.sizes.unsqueeze(1)) - count.gather(1, hi_q)
            for n in range(1, order + 1):
                below = _prefix_exp(key_side.up, w, lo_q, zq64, n, order + 1)
                above = _suffix_exp(key_side, w, hi_q, zq64, n, order + 1)
                sign = 1.0 if n % 2 else -1.0
                tail[..., ch] += sign * (below - above)
                tail_dq[..., ch] += sign * n * (-below - above)

        # Window blocks, in chunks of similar window length.
        sums = torch.zeros(c * nb, BLOCK, n_ch, dtype=dtype, device=scores.device)
        grad_k = torch.zeros(c * lk, dtype=torch.float64, device=scores.device)  # many blocks add into a key
        grad_q = torch.zeros(c * nb, BLOCK, dtype=dtype, device=scores.device)
        lengths = (plan.hi - plan.lo).masked_fill(~plan.active, 0).flatten()
        live = torch.nonzero(lengths > 0).squeeze(1)
        live = live[torch.argsort(lengths[live], descending=True)]
        host_lengths = lengths[live].tolist()
        # Differences are formed on the raw scores, then scaled: (s_j - s_i) / tau rounds once.
        sk_flat, mask_flat = keys.values.flatten(), key_mask.to(dtype).reshape(c * lk, n_ch)
        sq_blocks = queries.values.reshape(c * nb, BLOCK)
        tail_blocks = tail.view(c * nb, BLOCK, n_ch)
        param_blocks = params.view(c * nb, BLOCK, params.shape[-1])
        for start, stop in _chunks(host_lengths, BLOCK):
            sel = live[start:stop]
            span = host_lengths[start]
            offsets = torch.arange(span, device=scores.device)
            inside = offsets < lengths[sel].unsqueeze(1)  # [nb', span]
            flat = (sel // nb * lk + plan.lo.flatten()[sel]).unsqueeze(1) + offsets
            flat = torch.where(inside, flat, torch.zeros_like(flat))
            sk_blk = sk_flat[flat].masked_fill(~inside, float("-inf"))
            m_blk = mask_flat[flat] * inside.unsqueeze(2).to(dtype)  # [nb', span, J]
            diff = sk_blk.unsqueeze(1) - sq_blocks[sel].unsqueeze(2)  # [nb', B, span]
            sig = torch.sigmoid_(diff.div_(tau[sel // nb].view(-1, 1, 1)))
            block_sums = torch.bmm(sig, m_blk)
            sums[sel] = block_sums
            _, slope = objective(block_sums.double() + tail_blocks[sel], param_blocks[sel])
            slope = slope.to(dtype)
            sig.addcmul_(sig, sig, value=-1.0)  # sigma' = sigma (1 - sigma)
            grad_q[sel] = -(torch.bmm(sig, m_blk) * slope).sum(2)
            key_grad = (torch.bmm(sig.transpose(1, 2), slope) * m_blk).sum(2)
            grad_k.index_add_(0, flat.flatten(), key_grad.flatten().double())

        ratios = sums.view(c, lq, n_ch).double() + tail
        value, slope = objective(ratios, params)
        grad_q = grad_q.view(c, lq) + (slope * tail_dq).sum(2).to(dtype)
        grad_k = (grad_k.view(c, lk) + _key_tail_grad(zq, zk, plan, slope, mask64, order, half_width)).to(dtype)

        grad = torch.zeros(c, scores.shape[0], dtype=dtype, device=scores.device)
        grad.scatter_add_(1, keys.rows, grad_k)
        grad.scatter_add_(1, queries.rows, grad_q)
        ctx.save_for_backward(grad / tau.unsqueeze(1))
        ctx.mark_non_differentiable(ratios)
        return value.sum(1).to(dtype), ratios

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, _unused: Tensor) -> tuple[Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return (grad * grad_out.unsqueeze(1)).t(), None, None, None, None, None, None


def _key_tail_grad(
    zq: Tensor, zk: Tensor, plan: _Plan, slope: Tensor, mask64: Tensor, order: int, half_width: float
) -> Tensor:
    """Gradient of every query's exponential tails with respect to the keys, ``[C, Lk]`` float64.

    Key ``j`` lies in the lower tail of the queries whose block window starts after it and in
    the upper tail of those whose window ends at or before it; both sets are contiguous runs
    of the sorted queries, so the sums are prefix/suffix sums over queries.
    """
    c, lk = zk.shape
    slots = torch.arange(lk, device=zk.device).expand(c, lk).contiguous()
    after = torch.searchsorted(plan.lo, slots, right=True) * BLOCK  # queries >= after: key below their window
    before = torch.searchsorted(plan.hi, slots, right=True) * BLOCK  # queries < before: key above their window
    query_side = _side(zq, half_width)
    zk64 = zk.double()
    out = zk64.new_zeros(c, lk)
    for ch in range(slope.shape[2]):
        a = slope[..., ch]
        for n in range(1, order + 1):
            sign = 1.0 if n % 2 else -1.0
            from_below = _suffix_exp(query_side, a, after, zk64, n, order + 1)
            from_above = _prefix_exp(query_side.up, a, before, zk64, n, order + 1)
            out += sign * n * (from_below + from_above) * mask64[..., ch]
    return out


def pair_sums(
    scores: Tensor,
    tau: Tensor,
    keys: SortedRows,
    key_mask: Tensor,
    queries: SortedRows,
    params: Tensor,
    objective: Objective,
) -> tuple[Tensor, Tensor]:
    r"""Per-class objective :math:`\sum_i v(R_{c,i}, \theta_{c,i})` with an analytic, memory-bounded gradient.

    Args:
        scores: ``[M, C]`` pool scores (the only input that receives a gradient).
        tau: ``[C]`` temperature of each class (``z = s / tau``), no gradient.
        keys: Keys of each class (:func:`sorted_rows` of ``scores.t()``).
        key_mask: ``[C, Lk, J]`` bool channel masks of the keys (False on padding slots).
        queries: Queries of each class, width a multiple of :data:`BLOCK`.
        params: ``[C, Lq, P]`` float64 per-query constants for ``objective`` (zero on padding
            slots, where ``objective`` must return a zero slope).
        objective: Maps ``R [..., J]`` and ``params`` to per-query values and slopes.

    Returns:
        ``(per_class [C], R [C, Lq, J])``; ``R`` (float64, no gradient) is
        :math:`\sum_j m_{j,J} \sigma(z_j - q_i)`.
    """
    out: tuple[Tensor, Tensor] = _PairSums.apply(scores, tau, keys, key_mask, queries, params, objective)
    return out
