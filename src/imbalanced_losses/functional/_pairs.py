r"""Memory-bounded, exact sums of sigmoids over (query, key) pairs, with an analytic gradient.

Smooth-AP and the pairwise pAUC both need, for every class :math:`c` and every *query*
:math:`i` (a positive), channel sums over the class's *keys* :math:`j`:

.. math::
    R_{c,i,J} = \sum_{j} m_{c,j,J}\, \sigma(z_{c,j} - q_{c,i})

(``m`` are 0/1 channel masks, e.g. "negative" and "positive"), and then a per-class
objective :math:`\sum_i v(R_{c,i}, \theta_{c,i})`. Materialising the ``[|P|, M]`` pair matrix
costs ``O(|P| M)`` memory; this kernel never does. Keys and queries are sorted per class and
every pair falls in one of three regimes, relative to a window half-width :math:`K`:

* :math:`|d| \le K` (``d = z - q``): evaluated exactly, in blocks of ``BLOCK`` consecutive
  queries against the contiguous key range their windows cover;
* :math:`d < -K`: :math:`\sigma(d) = \sum_{n=1}^{N} a_n e^{n d}` to within the dtype's budget
  :math:`e^{-E}` (:data:`TRUNCATION`: :math:`E = 24` in float32, :math:`40` in float64), its
  derivative too;
* :math:`d > K`: :math:`\sigma(d) = 1 - \sum_{n=1}^{N} a_n e^{-n d}`, same error.

The coefficients (:func:`series_coefficients`) are those of the alternating series
:math:`a_n = (-1)^{n+1}` (off by :math:`e^{-(N+1)K}`) when :math:`(N + 1) K \ge E`, else of a
polynomial interpolating :math:`u / (1 + u)`, :math:`u = e^{-|d|} \le e^{-K}`, at Chebyshev
nodes: its error shrinks about 7 times per order even for a narrow window (:math:`K = 1/4`),
where the alternating series gains only :math:`e^{K}`.

The exponential tails factorise (:math:`e^{n(z-q)} = e^{nz} e^{-nq}`), so they are prefix
sums over the sorted keys. To keep those prefix sums exact in floating point, values are
grouped into cells of width :math:`G = K` and each cell is scaled by its upper edge; a
query then combines its own partial cell with the :math:`\lceil E/(nK) \rceil` full cells
below it (summed once per cell, as its *carry*; by doubling when there are many,
:func:`_carry`), every factor being at most 1 (farther cells contribute less than
:math:`e^{-E}` per key, :math:`|a_n| \le 1`). The queries of a block share their prefixes,
located once per block and shared by every order and channel; the powers
:math:`e^{n\,offset}` are repeated products. On the CPU plan each channel's tables run over
its own keys only (:func:`_members`; one host read of their counts).

Because the objective :math:`v` is known in the forward pass, the gradient is formed there
too (block by block for the window, by the same prefix sums for the tails) and saved as one
``[C, M]`` tensor. Extra memory is ``O(M C)`` plus one chunk of at most ``chunk`` pair terms.
Problems with at most ``dense_max`` (query, key) pairs skip the windows and tails: every
pair is one term of a single block (:func:`_dense`, in query slices of at most ``chunk``
terms), with the same analytic gradient and far less fixed cost (small pools are dominated by
per-operation overhead, not arithmetic). Both sizes come from the device's plan
(:mod:`._plan`): small on the CPU (``CHUNK = DENSE_MAX = 2^20``), large on a GPU, where a
call costs per launched operation.

Window and order (``K``, ``N``, :func:`window_and_order`): for pools of at least 32,768 rows on the
CPU plan ``(1/4, 14)`` in float32 (the interpolant: an eighth of the alternating series'
``(2, 11)`` window, whose pair terms are the cost there) and ``(2, 19)`` in float64 (the
alternating series); otherwise ``(8, 2)`` and ``(10, 3)`` (the alternating series: fewer
operations and smaller tables). Either way a truncation error of at most
:math:`e^{-24} \approx 4\cdot10^{-11}` (float32) or :math:`e^{-40}` (float64) per key (the
alternating series' derivative: :math:`(N+1)` times that), far below the float32 rounding of
the dense sum and below 1e-12 in float64.
"""

from __future__ import annotations

import bisect
import functools
import math
import operator
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ._arith import FlushDenormals
from ._autograd import once_differentiable_backward
from ._plan import PLANS, kernel_plan, override

#: Queries per window block.
BLOCK = 32
# The CPU plan's sizes (see :mod:`._plan` for every device's). Setting one of these to another
# value overrides it for every device (tests force a kernel path or small chunks so).
_CPU = PLANS["cpu"]
#: Maximum number of pair terms evaluated at once (bounds the transient memory).
CHUNK = _CPU.chunk
#: Keys per step when the tails' gradient is pushed to the keys (bounds the temporaries).
ITEMS = _CPU.items
#: Up to this many (padded query, key) pairs, every pair is evaluated at once (less fixed cost).
DENSE_MAX = _CPU.dense_max
#: Under the narrow window (:func:`window_and_order`) a chunk holds this many times the plan's terms:
#: the windows are short, so a chunk covers many blocks, and its fixed operations, not its terms,
#: weigh (measured: Smooth-AP 262,144 x 10 about 5% faster than with 1, with 4 no better).
NARROW_CHUNKS = 2


class Sizes(NamedTuple):
    """The kernel sizes of one call, resolved from the device's plan (:func:`sizes_for`)."""

    chunk: int  # pair terms evaluated at once
    dense_max: int  # up to this many padded pairs: the dense kernel
    dense_keys_max: int  # ... if C * Lk (one query per class: the smallest dense slice) is at most this
    items: int  # key slots per step of the tails' key gradient
    small_bmm: int  # below this many elements (and several CPU threads): broadcast products, not BLAS
    # a host read is free (the CPU plan): a single class packs its keys with `nonzero` (see
    # `_one_class`), and the tails' tables get one column per occupied cell, not per score
    host_reads: bool
    narrow: bool  # the narrow window and long series of `window_and_order` (large pools, CPU plan)


def sizes_for(device: torch.device, dtype: torch.dtype, num_classes: int, rows: int) -> Sizes:
    """The :class:`Sizes` of a call on ``device`` with ``rows x num_classes`` scores of ``dtype``."""
    plan = kernel_plan(device)
    chunk = override(CHUNK, _CPU.chunk, plan.chunk_terms(device, dtype.itemsize))
    narrow = 0 < plan.narrow_window_rows <= rows
    if narrow and _CPU.chunk == CHUNK:  # a chunk size set by hand is kept
        chunk *= NARROW_CHUNKS
    return Sizes(
        chunk,
        override(DENSE_MAX, _CPU.dense_max, plan.dense_max),
        chunk if plan.bounded_dense else 1 << 62,
        override(ITEMS, _CPU.items, plan.items_for(num_classes)),
        plan.small_bmm,
        plan.host_reads,
        narrow,
    )


class QueryParams(NamedTuple):
    """The objective's parameters of the query slots ``[..., Lq]`` (float64)."""

    weight: Tensor | None  # [..., Lq] query weights, 0 on padding slots; None: 1 on every slot (no padding)
    consts: Tensor  # [..., 1, P] constants of each slot's class (broadcast over the slots)

    def weighted(self, x: Tensor) -> Tensor:
        """``weight * x`` for a per-class ``x [..., 1]``; ``x`` itself when every weight is 1 (exact)."""
        return x if self.weight is None else self.weight * x


#: ``objective(R [..., Lq, J] float64, params) -> (value [..., Lq], dvalue/dR)``; the slope may be
#: ``[..., 1, J]`` when it is the same for every slot (the kernel broadcasts it).
Objective = Callable[[Tensor, QueryParams], tuple[Tensor, Tensor]]


def _evaluate(objective: Objective, ratios: Tensor, params: QueryParams) -> tuple[Tensor, Tensor]:
    """``objective(ratios, params)`` with the slope expanded to ``ratios``' shape (a view)."""
    value, slope = objective(ratios, params)
    return value, slope if slope.shape == ratios.shape else slope.expand_as(ratios)


def window_and_order(dtype: torch.dtype, *, narrow: bool = False) -> tuple[float, int]:
    r"""The window half-width ``K`` and the tail series order ``N`` used for ``dtype``.

    Every choice meets the dtype's truncation budget :math:`e^{-E}` per key (:data:`TRUNCATION`:
    :math:`E = 24` in float32, :math:`40` in float64) through :func:`series_coefficients`. The
    wide choices ``(8, 2)`` and ``(10, 3)``, and the CPU plan's narrow float64 choice ``(2, 19)``,
    keep :math:`(N + 1) K \ge E` and use the alternating series (value off by at most
    :math:`e^{-(N+1)K}`, derivative by :math:`(N+1) e^{-(N+1)K}`). ``narrow`` in float32 (large
    pools on the CPU plan, where the window's pair terms are the cost) is ``(1/4, 14)``: a window
    eight times narrower than the alternating series' ``(2, 11)`` for three more orders, thanks
    to the interpolating polynomial of :func:`series_coefficients` (value off by at most
    :math:`e^{-28.0}`, derivative by :math:`e^{-24.5}`: both below :math:`e^{-24}`; 13 orders
    would leave the derivative at :math:`e^{-22.6}`). Measured on a 2-core CPU, Smooth-AP at
    262,144 x 10: 1/4 and 1/8 about equal, 1/2 about 10% slower (more window pairs); the former
    ``(2, 11)`` was more than twice as slow.
    """
    if narrow:
        return (2.0, 19) if dtype == torch.float64 else (0.25, 14)
    return (10.0, 3) if dtype == torch.float64 else (8.0, 2)


#: Truncation budget ``E`` per dtype: each key's series value and derivative are off by at most ``e^{-E}``
#: (the alternating series' derivative: ``(N + 1) e^{-(N+1)K}``). Other dtypes use float32's.
TRUNCATION = {torch.float32: 24.0, torch.float64: 40.0}
#: The interpolation nodes of :func:`series_coefficients` span ``[0, e^{-STRETCH K}]``, a little past the
#: window edge ``e^{-K}``: the error's derivative is then small at the edge too.
STRETCH = 0.85


@functools.cache
def series_coefficients(half_width: float, order: int, exponent: float) -> tuple[float, ...]:
    r"""Coefficients :math:`a_1 .. a_N` of the tails: :math:`\sigma(-x) \approx \sum_n a_n e^{-nx}` (:math:`x > K`).

    With :math:`u = e^{-x} \in (0, r]`, :math:`r = e^{-K}`, the tails need :math:`f(u) = u / (1 + u)`
    (:math:`\sigma(d) = f(e^{d})` below the window, :math:`1 - f(e^{-d})` above it) and its
    derivative in ``d``, :math:`u f'(u)`, approximated by :math:`p(u) = \sum_{n=1}^N a_n u^n` and
    :math:`u p'(u) = \sum_n n a_n u^n` (every power a prefix sum, see :func:`_tables`).

    * When :math:`(N + 1) K \ge E` (``exponent``): the Taylor series, :math:`a_n = (-1)^{n+1}`
      (exact coefficients), off by :math:`u^{N+1} / (1 + u) \le e^{-(N+1)K}`.
    * Otherwise the polynomial :math:`p(u) = u\, q(u)`, with :math:`q` (degree :math:`N - 1`)
      interpolating :math:`1 / (1 + u)` at nodes :math:`u_1 .. u_N`. Its error is exact in closed
      form: :math:`1/(1+u) - q(u) = \omega(u) / (\omega(-1) (1 + u))`, :math:`\omega = \prod_k (u - u_k)`
      (it vanishes at the nodes, and :math:`1/(1+u)` minus it is a polynomial of degree :math:`N - 1`).
      The nodes make :math:`u\, \omega(u)` a multiple of :math:`T_{N+1}(x(u))`, the Chebyshev
      polynomial of :math:`x(u) = \beta + (1 - \beta) u / R`, :math:`\beta = -\cos(\pi / (2N + 2))`
      its lowest zero, :math:`R = e^{-0.85 K}` (:data:`STRETCH`), so that

      .. math::
          f(u) - p(u) = -\frac{T_{N+1}(x(u))}{T_{N+1}(x(-1)) (1 + u)},
          \qquad p(u) = \frac{u\, T_{N+1}(x(-1)) + T_{N+1}(x(u))}{T_{N+1}(x(-1)) (1 + u)}

      (the numerator vanishes at :math:`u = -1` and :math:`u = 0`). On :math:`[0, R]`,
      :math:`|T_{N+1}| \le 1` while :math:`|T_{N+1}(x(-1))| \approx \rho^{N+1} / 2`,
      :math:`\rho = |x(-1)| + \sqrt{x(-1)^2 - 1}` (about 7 for :math:`K = 1/4`): the error
      shrinks by that factor per order, against :math:`e^{K}` for the Taylor series. The
      coefficients are formed exactly (rational arithmetic on the float map's ``beta`` and
      slope; :math:`T_{N+1}(\beta) \approx 10^{-15}` is subtracted, :math:`(1 + u)` times, so
      that :math:`p(0) = 0` exactly), then rounded to float64 (half an ulp each, far below the
      float32 budget; not below float64's :math:`e^{-40}`, hence the float64 choices keep the
      exact alternating coefficients), and stay within :math:`|a_n| \le 1`: the sums
      :math:`\sum_n a_n S_n` of positive prefix sums :math:`S_n` lose at most
      :math:`\log_2 ((1 + r) / (1 - r))` bits (3 for :math:`K = 1/4`).

    Either way :math:`|a_n| \le 1`, so a key at distance above :math:`E / n` adds an order-``n``
    term below :math:`e^{-E}` (the rule of :func:`_cells_needed`). The interpolant's maximal
    errors on :math:`(0, r]` (value :math:`|f - p|` and derivative :math:`u |f' - p'|`) are
    checked against :math:`e^{-E}` in exact arithmetic by the tests; for ``(1/4, 14)`` they are
    :math:`e^{-28.0}` and :math:`e^{-24.5}` (``(1/4, 13)``: :math:`e^{-26.1}` and
    :math:`e^{-22.6}`, over budget). Both errors also vanish like :math:`u` as :math:`u \to 0`
    (the factor :math:`u` of :math:`f - p = u (1/(1+u) - q)`).

    Args:
        half_width: Window half-width ``K`` (``> 0``).
        order: Series order ``N`` (``>= 1``).
        exponent: Truncation budget ``E``.

    Returns:
        ``(a_1, .., a_N)`` as Python floats.
    """
    if (order + 1) * half_width >= exponent:
        return tuple(1.0 if n % 2 else -1.0 for n in range(1, order + 1))
    beta = -math.cos(math.pi / (2 * order + 2))
    gamma = (1.0 - beta) / math.exp(-STRETCH * half_width)  # x(u) = beta + gamma u
    b, g = Fraction(beta), Fraction(gamma)
    # T_{N+1}(beta + gamma u) as ascending coefficients in u: T_{k+1} = 2 x T_k - T_{k-1}.
    prev, cur = [Fraction(1)], [b, g]
    for _ in range(order):
        nxt = [Fraction(0)] * (len(cur) + 1)
        for i, coef in enumerate(cur):
            nxt[i] += 2 * b * coef
            nxt[i + 1] += 2 * g * coef
        for i, coef in enumerate(prev):
            nxt[i] -= coef
        prev, cur = cur, nxt
    at_pole = sum(coef * (-1) ** i for i, coef in enumerate(cur))  # T_{N+1}(x(-1))
    numerator = list(cur)
    # u T(x(-1)) + T(x(u)) - T(beta) (1 + u): zero at u = -1 and u = 0 (T(beta) ~ 1e-15: beta is a float)
    numerator[0] -= cur[0]
    numerator[1] += at_pole - cur[0]
    # Divide by (1 + u), from the top (synthetic division); the remainder is zero.
    quotient = [Fraction(0)] * (len(numerator) - 1)
    carry = Fraction(0)
    for i in range(len(numerator) - 1, 0, -1):
        carry = numerator[i] - carry
        quotient[i - 1] = carry
    coefficients = tuple(float(coef / at_pole) for coef in quotient[1:])  # a_1 .. a_N (quotient[0] = p(0) = 0)
    if quotient[0] != 0 or max(abs(a) for a in coefficients) > 1.0:  # pragma: no cover - by construction
        raise AssertionError("tail series: unexpected coefficients")
    return coefficients


class TailSeries(NamedTuple):
    """The tails' window and series of one call (see :func:`window_and_order`, :func:`series_coefficients`)."""

    half_width: float  # K
    coefficients: tuple[float, ...]  # a_1 .. a_N
    reach: tuple[int, ...]  # per order n: full cells of width K summed below a prefix's partial cell

    @property
    def order(self) -> int:
        return len(self.coefficients)


def tail_series(dtype: torch.dtype, *, narrow: bool = False) -> TailSeries:
    """The :class:`TailSeries` of scores of ``dtype`` (float64 budget for float64, float32's otherwise)."""
    half_width, order = window_and_order(dtype, narrow=narrow)
    exponent = TRUNCATION[torch.float64 if dtype == torch.float64 else torch.float32]
    reach = tuple(_cells_needed(exponent, half_width, n) for n in range(1, order + 1))
    return TailSeries(half_width, series_coefficients(half_width, order, exponent), reach)


class SortedRows(NamedTuple):
    """Per-class members of a pool, sorted by score and left-aligned in a ``[C, L]`` layout."""

    values: Tensor  # [C, L] raw scores, ascending; slots past `sizes` repeat the last value
    rows: Tensor  # [C, L] long: pool row of each slot (0 for padding slots)
    sizes: Tensor  # [C] long: number of real slots


def sorted_rows(scores_t: Tensor, mask_t: Tensor, sizes: Tensor, width: int) -> SortedRows:
    """Each row's selected entries, sorted ascending, in ``width`` slots (``width >= max(sizes)``)."""
    c, m = scores_t.shape
    if width == 0 or m == 0:
        return SortedRows(
            scores_t.new_zeros(c, width), torch.zeros(c, width, dtype=torch.long, device=scores_t.device), sizes
        )
    # Selected entries sort first: non-members are +inf and the scores are finite.
    sorted_vals, order = scores_t.masked_fill(~mask_t, float("inf")).sort(dim=1)
    take = torch.arange(width, device=scores_t.device).clamp_max(m - 1).expand(c, width)
    values, rows = sorted_vals.gather(1, take), order.gather(1, take)
    pad = torch.arange(width, device=scores_t.device) >= sizes.unsqueeze(1)
    last = values.gather(1, (sizes - 1).clamp_min(0).unsqueeze(1))
    last = torch.where(sizes.unsqueeze(1) > 0, last, torch.zeros_like(last))
    return SortedRows(torch.where(pad, last, values), rows.masked_fill(pad, 0), sizes)


def _sorted_subset(rows: SortedRows, mask_t: Tensor, sizes: Tensor, width: int) -> SortedRows:
    """:func:`sorted_rows` of the entries ``mask_t [C, M]`` selects, all among the sorted ``rows``: no sort.

    ``sizes [C]`` counts the selected entries. Same layout as :func:`sorted_rows` (ascending, the
    last value repeated on padding slots, 0 in a row without entries; rows 0 on padding slots).
    """
    slots = torch.arange(rows.values.shape[1], device=rows.values.device)
    member = mask_t.gather(1, rows.rows) & (slots < rows.sizes.unsqueeze(1))
    source = _member_slots(member, member.cumsum(1), width)
    pad = torch.arange(width, device=rows.values.device) >= sizes.unsqueeze(1)
    values = rows.values.gather(1, source)
    values = torch.where((sizes > 0).unsqueeze(1), values, torch.zeros_like(values))
    return SortedRows(values, rows.rows.gather(1, source).masked_fill_(pad, 0), sizes)


def _member_slots(member: Tensor, counts: Tensor, width: int) -> Tensor:
    """``[C, width]`` long: the slot of each row's ``i``-th member (``member [C, L]`` bool).

    ``counts [C, L]``: members among the slots up to and including each one. Slots past a row's
    members repeat its last member's slot (0 in a row without members).
    """
    c, length = member.shape
    slot = torch.where(member, counts - 1, width)
    source = torch.full((c, width + 1), -1, dtype=torch.long, device=member.device)
    source.scatter_(1, slot, torch.arange(length, device=member.device).expand(c, length))
    return source[:, :width].cummax(1).values.clamp_min_(0)


class _Cells(NamedTuple):
    """Sorted float64 values grouped into cells of width ``G`` (one row per class)."""

    offset: Tensor  # [C, L] float64: value minus the upper edge G * (cell + 1) of its cell, in [-G, 0)
    rank: Tensor  # [C, L] long: rank of the value's cell among the row's non-empty cells
    start: Tensor  # [C, R + 1] long: first slot of each rank; L past the row's last rank
    top: Tensor  # [C, R] float64: upper edge of each rank's cell


def _cells(values: Tensor, width: float, count: bool) -> _Cells:
    c, n = values.shape
    cell = torch.floor(values / width)
    new = torch.ones_like(values, dtype=torch.bool)
    new[:, 1:] = cell[:, 1:] != cell[:, :-1]
    rank = new.long().cumsum(1) - 1
    # `count`: the number of occupied cells, read on the host (small tables). Otherwise a static
    # bound (no host read): ranks past a row's last cell start at slot `n` (empty) and are never
    # looked up, so both give the same sums.
    n_ranks = (int(rank[:, -1].max()) + 1 if n > 0 else 0) if count else n
    start = torch.full((c, n_ranks + 2), n, dtype=torch.long, device=values.device)
    slots = torch.arange(n, device=values.device).expand(c, n)
    start.scatter_(1, torch.where(new, rank, n_ranks + 1), slots)
    start = start[:, : n_ranks + 1]
    edge = (cell + 1) * width
    top = edge.gather(1, start[:, :n_ranks].clamp_max(max(n - 1, 0))) if n > 0 else edge[:, :0]
    return _Cells(values - edge, rank, start, top)


class _Side(NamedTuple):
    """A sorted array prepared for prefix sums (ascending) and suffix sums (negated and flipped)."""

    up: _Cells
    down: _Cells
    length: int


def _side(values: Tensor, width: float, count: bool) -> _Side:
    return _Side(_cells(values, width, count), _cells(-values.flip(1), width, count), values.shape[1])


class _Probe(NamedTuple):
    """Prefix ends located in one direction's cells (shared by every order and channel)."""

    cut: Tensor  # [C, X] long prefix ends
    head: Tensor  # [C, X] long: first slot of the cell holding slot `cut - 1`
    rank: Tensor  # [C, X] long: that cell's rank


def _probe(cells: _Cells, cut: Tensor) -> _Probe:
    if cells.offset.shape[1] == 0:  # no values: every prefix is empty
        return _Probe(cut, torch.zeros_like(cut), torch.zeros_like(cut))
    rank = cells.rank.gather(1, (cut - 1).clamp_min(0))
    return _Probe(cut, cells.start.gather(1, rank), rank)


def _scale(cells: _Cells, cut: Tensor, x: Tensor) -> Tensor:
    """``exp(top - x) <= 1`` for items ``(cut, x)``: ``top`` the upper edge of the cell of slot ``cut - 1``.

    ``cut [C, X]`` and ``x [C, X]``, or ``x [C, X, B]`` for ``B`` items sharing each cut (a block's
    queries). 0 where the prefix is empty (``cut <= 0``). Real terms have ``top <= x`` by construction
    (``v_{cut-1} <= x - K`` and ``G <= K``); the clamp keeps zero-weight padding slots from
    overflowing (inf * 0 = nan) when an item lies far beyond every real value.
    """
    if cells.offset.shape[1] == 0:
        return x.new_zeros(x.shape)
    top = cells.top.gather(1, cells.rank.gather(1, (cut - 1).clamp_min(0)))
    empty = cut <= 0
    if x.dim() == 3:
        top, empty = top.unsqueeze(2), empty.unsqueeze(2)
    return (top - x).clamp_max_(0.0).exp_().masked_fill_(empty, 0.0)


def _tables(
    cells: _Cells, weight: Tensor | None, reach: tuple[int, ...], members: Tensor | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    r"""For ``n = 1 .. N``: prefix sums of ``weight * exp(n * offset)`` and each cell's carry.

    Args:
        cells: The sorted values ``[C, L]`` in cells of width ``G``.
        weight: ``[C, J, L]`` float64 channel weights of the values, or ``None`` (``J = 1``, weight 1).
        reach: Per order ``n`` (``N`` in all), the full cells summed into a carry (:func:`_cells_needed`).
        members: Optional ``[C, L]`` 0/1 float64 weights of a single channel (``weight`` ``None``):
            folded into :math:`e^{offset}` (``0^n = 0``, ``1^n = 1``), so no product per order.

    Yields:
        ``(cum [C, J, L + 1], carry [C, J, R])``: exclusive prefix sums of
        :math:`w_j e^{n (v_j - top_j)}` (each term at most :math:`w_j`) and, per cell rank
        :math:`r`, the sums of the ``reach[n - 1]`` cells below it, scaled to its
        upper edge (factors :math:`e^{n (top_{r-t} - top_r)} \le 1`; farther cells lie beyond
        the truncation budget). The powers :math:`e^{n\,offset}` are products of :math:`e^{offset}`
        (relative error ``n`` ulps, no underflow: ``offset >= -G``). ``cum`` is one buffer,
        overwritten by the next order (fresh pool-sized tensors cost page faults).
    """
    c, length = cells.offset.shape
    j = 1 if weight is None else weight.shape[1]
    ranks = cells.top.shape[1]
    start = cells.start.unsqueeze(1).expand(c, j, ranks + 1)
    base = cells.offset.new_zeros(c, length + 1)  # a leading 0: the prefix sums of `power` are exclusive
    torch.exp(cells.offset, out=base[:, 1:])
    if members is not None:
        base[:, 1:].mul_(members)
    power = base.clone()
    cum = base.new_zeros(c, j, length + 1)
    # steps[t - 1] = exp(top_{r-t} - top_r) <= 1, raised to the power n by the orders that add cells one by one.
    few = min(max(reach, default=0), ranks - 1, _FEW_CELLS)
    steps = [cells.top[:, :-t].sub(cells.top[:, t:]).exp_() for t in range(1, few + 1)]
    for n, cells_below in enumerate(reach, 1):
        if n > 1:
            power.mul_(base)
        if weight is None:
            torch.cumsum(power, 1, out=cum.view(c, length + 1))
        else:
            torch.mul(weight, power[:, 1:].unsqueeze(1), out=cum[..., 1:])
            cum.cumsum_(2)
        totals = cum.gather(2, start[..., 1:]).sub_(cum.gather(2, start[..., :-1]))
        cells_below = min(cells_below, ranks - 1)
        if cells_below > _FEW_CELLS:
            yield cum, _carry(totals, cells.top, n, cells_below)
            continue
        carry = torch.zeros_like(totals)
        for t in range(1, cells_below + 1):
            gap = steps[t - 1] if n == 1 else steps[t - 1].pow(n)
            carry[..., t:].addcmul_(totals[..., :-t], gap.unsqueeze(1))
        yield cum, carry


#: Up to this many cells in a carry, :func:`_tables` adds them one by one; more, by doubling (:func:`_carry`).
_FEW_CELLS = 8


def _carry(totals: Tensor, top: Tensor, n: int, cells: int) -> Tensor:
    r"""``carry[..., r] = sum_{t=1..cells} totals[..., r-t] exp(n (top[r-t] - top[r]))``, in ``O(log cells)`` steps.

    The factors multiply along the ranks (:math:`g(a, c) = g(a, b)\, g(b, c)`, all at most 1), so a
    window of ``2s`` cells is a window of ``s`` plus the window of ``s`` ending ``s`` ranks
    lower, scaled by :math:`g(r - s, r)`; the ``cells`` below each rank are the binary digits'
    windows, laid end to end. Same terms as adding the cells one by one (:func:`_tables`),
    summed in another order.

    Args:
        totals: ``[C, J, R]`` per-rank sums, each scaled to its rank's upper edge ``top [C, R]``.
        top: ``[C, R]`` float64 upper edges (ascending).
        n: Order (the factors' exponent).
        cells: Cells below each rank to add (``1 <= cells < R``).
    """

    def shifted(x: Tensor, shift: int) -> Tensor:
        """``x[..., r - shift] * g(r - shift, r)``, 0 for ``r < shift``."""
        out = torch.zeros_like(x)
        if shift < x.shape[2]:
            gap = top[:, :-shift].sub(top[:, shift:]).mul_(n).exp_().unsqueeze(1)
            torch.mul(x[..., :-shift], gap, out=out[..., shift:])
        return out

    block, size = shifted(totals, 1), 1  # window of `size` ranks ending at r, of the cells below it
    carry, covered = None, 0
    remaining = cells
    while True:
        if remaining & 1:  # append this window below the ones already covered
            carry = block.clone() if carry is None else carry.add_(shifted(block, covered))
            covered += size
        remaining >>= 1
        if not remaining:
            break
        block = block + shifted(block, size)
        size *= 2
    return totals.new_zeros(totals.shape) if carry is None else carry


def _at(cum: Tensor, carry: Tensor, probe: _Probe) -> Tensor:
    """``[C, J, X]`` weighted sums of the prefixes ``probe.cut``, scaled to the upper edge of their last cell."""
    c, j = cum.shape[:2]

    def spread(index: Tensor) -> Tensor:
        return index.unsqueeze(1).expand(c, j, index.shape[1])

    out = cum.gather(2, spread(probe.cut)).sub_(cum.gather(2, spread(probe.head)))
    return out.add_(carry.gather(2, spread(probe.rank))) if carry.shape[2] > 0 else out


def _cells_needed(exponent: float, width: float, n: int) -> int:
    r"""Full cells (width ``G``) to add below the partial one: dropped order-``n`` terms stay below ``e^{-E}``.

    A key ``t`` or more full cells below a query's partial cell lies more than ``t G`` below it,
    and its order-``n`` term :math:`|a_n| e^{-n d} \le e^{-n t G}` (:math:`|a_n| \le 1`).
    """
    return max(1, math.ceil(exponent / (n * width) - 1e-9))


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


def _members(values: Tensor, member: Tensor, counts: Tensor, width: int) -> tuple[Tensor, Tensor | None, Tensor]:
    """The sorted ``values [C, L]`` of one channel's members (``member [C, L]`` bool), left-aligned in ``width`` slots.

    ``counts [C, L + 1]`` long: members among the first ``i`` slots. Slots past a row's members
    repeat its last member (0 where it has none) and get weight 0. Returns ``(values [C, width],
    weight [C, 1, width] float64 or None when every slot is a member, source [C, width])``, ``source``
    the slot of each member.
    """
    source = _member_slots(member, counts[:, 1:], width)
    sizes = counts[:, values.shape[1]]
    weight = None
    if not bool((sizes == width).all()):
        weight = (torch.arange(width, device=values.device) < sizes.unsqueeze(1)).double().unsqueeze(1)
    return values.gather(1, source), weight, source


def _query_tails(
    values: Tensor,
    weight: Tensor | None,
    lo: Tensor,
    above: Tensor,
    zq: Tensor,
    series: TailSeries,
    count_cells: bool,
) -> tuple[Tensor, Tensor]:
    r"""The series part of every query's tails over the sorted keys ``values``, and its derivative in the query.

    Args:
        values: ``[C, L]`` float64 sorted keys (``z`` units).
        weight: ``[C, J, L]`` float64 channel weights of the keys, or ``None`` (one channel, 1 on every slot).
        lo: ``[C, nb]`` long: each block's lower tail is the key prefix ``values[:, :lo]``.
        above: ``[C, nb]`` long: its upper tail is the prefix of that length of the flipped keys.
        zq: ``[C, nb, BLOCK]`` float64 queries.
        series: The window and series.
        count_cells: One table column per occupied cell (a host read), else per score (``Sizes.host_reads``).

    Returns:
        ``[C, J, nb, BLOCK]`` each: :math:`\sum_n a_n (B_n - A_n)` and :math:`-\sum_n n a_n (B_n + A_n)`,
        with :math:`B_n = \sum_{below} w_j e^{n (z_j - q)}` and :math:`A_n = \sum_{above} w_j e^{-n (z_j - q)}`
        (the series' constant 1 per key above the window is not included).
    """
    side = _side(values, series.half_width, count_cells)
    c, nb, b = zq.shape
    n_ch = 1 if weight is None else weight.shape[1]
    binary = weight if weight is not None and n_ch == 1 else None  # 0/1 weights: folded into the powers
    # The queries of a block share its window, hence its prefixes: looked up once per block.
    below_at, above_at = _probe(side.up, lo), _probe(side.down, above)
    below_scale = _scale(side.up, lo, zq).unsqueeze(1)
    above_scale = _scale(side.down, above, zq.neg()).unsqueeze(1)
    below_f, above_f = below_scale, above_scale  # scale ** n
    if binary is not None:
        ups = _tables(side.up, None, series.reach, binary[:, 0])
        downs = _tables(side.down, None, series.reach, binary[:, 0].flip(1))
    else:
        flipped = None if weight is None else weight.flip(2)
        ups, downs = _tables(side.up, weight, series.reach), _tables(side.down, flipped, series.reach)
    value = values.new_zeros(c, n_ch, nb, b)
    slope = torch.zeros_like(value)
    for n, (up, down, a_n) in enumerate(zip(ups, downs, series.coefficients, strict=True), 1):
        if n > 1:
            below_f, above_f = below_f * below_scale, above_f * above_scale
        below = _at(*up, below_at).unsqueeze(3) * below_f
        above = _at(*down, above_at).unsqueeze(3) * above_f
        # sigma(d) = sum_n a_n e^{n d} below the window, 1 - sum_n a_n e^{-n d} above it
        value.add_(below - above, alpha=a_n)
        slope.sub_(below.add_(above), alpha=a_n * n)
    return value, slope


def _chunks(lengths: list[int], width: int, chunk: int) -> list[tuple[int, int]]:
    """Split blocks sorted by decreasing window length into runs of at most ``chunk`` pair terms."""
    out = []
    start = 0
    while start < len(lengths):
        per_block = width * max(lengths[start], 1)
        stop = min(len(lengths), start + max(1, chunk // per_block))
        out.append((start, stop))
        start = stop
    return out


def _bmm(a: Tensor, b: Tensor, small: int) -> Tensor:
    """``torch.bmm(a, b)`` for ``a [n, R, K]`` and a narrow ``b [n, K, J]`` (a few columns ``J``).

    Computed as ``(b^T a^T)^T`` with ``b^T`` made contiguous (a copy of ``J K`` values): BLAS
    is several times slower on a row-major ``b`` with so few columns (the result is a
    transposed view; the sums may differ from a plain ``bmm`` in the last bit). With several
    threads, operands of at most ``small`` elements use a broadcast product instead: a small
    batched product is split across the threads, and on a busy machine that can stall for a
    scheduler time slice (milliseconds), far more than the arithmetic (``small`` is 0 on a GPU).
    """
    if small == 0:  # a GPU: one launch, no layout tricks
        return torch.bmm(a, b)
    if a.numel() <= small and torch.get_num_threads() > 1:
        return (a.unsqueeze(3) * b.unsqueeze(1)).sum(2)
    return torch.bmm(b.transpose(1, 2).contiguous(), a.transpose(1, 2)).transpose(1, 2)


def _mm(a: Tensor, b: Tensor, small: int) -> Tensor:
    """``a @ b`` for ``a [R, K]`` and a narrow ``b [K, J]``, with the layouts of :func:`_bmm`.

    Unlike a batched one, a small matrix product (``R, K, J >= 2``, ``a`` of at most ``small``
    elements) runs on one thread: it is a plain BLAS call, three to six times faster than the
    broadcast product (whose ``[R, K, J]`` temporary is itself split across the threads above
    32,768 elements). A matrix-vector or outer product is threaded by BLAS: broadcast.
    """
    if small == 0:
        return a @ b
    if a.numel() <= small and torch.get_num_threads() > 1:
        if min(*a.shape, b.shape[1]) > 1:
            return a @ b
        return (a.unsqueeze(2) * b.unsqueeze(0)).sum(1)
    return (b.t().contiguous() @ a.t()).t()


def _zero_slots(x: Tensor, slot: Tensor, *, in_range: bool = False) -> None:
    """Set ``x[i, j, slot[i, j]] = 0`` in place where ``0 <= slot < x.shape[2]`` (other slots: no pair).

    ``O(n B)`` gather/scatter with static shapes: no host synchronisation, nothing for
    ``torch.compile`` to break on, and no pass over the whole ``[n, B, L]`` block.
    ``in_range`` promises that every slot is in range (a plain scatter then does).
    """
    if in_range:
        x.scatter_(2, slot.unsqueeze(2), 0.0)
        return
    own = ((slot >= 0) & (slot < x.shape[2])).unsqueeze(2)
    idx = torch.where(own, slot.unsqueeze(2), 0)
    x.scatter_(2, idx, torch.where(own, 0.0, x.gather(2, idx)))


class Own(NamedTuple):
    """Key slot of each query's own pair: ``slot [C, Lq]`` long, ``-1`` or out of range where none."""

    slot: Tensor
    in_range: bool  # every slot is a real key slot (a plain scatter zeroes them)


def _block_terms(
    sk: Tensor,
    sq: Tensor,
    tau: Tensor,
    mask: Tensor | None,
    base: Tensor | None,
    params: QueryParams,
    objective: Objective,
    work: Tensor | None,
    own: Own | None,
    small_bmm: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Evaluate every (query, key) pair of ``n`` blocks exactly: sums, objective and their gradient.

    Args:
        sk: ``[n, L]`` raw key scores, ``-inf`` on unused slots (or any finite value there
            when ``mask`` is 0 on them).
        sq: ``[n, B]`` raw query scores.
        tau: ``[n]`` temperature of each block's class.
        mask: ``[n, L, J]`` channel weights of the keys (0 on unused slots), or ``None`` for a
            single channel holding every key slot (its products with the mask are left out).
        base: ``[n, B, J]`` float64 contribution of the pairs outside the blocks (tails), or
            ``None`` when every pair is inside.
        params: Objective parameters of the queries (``weight [n, B]``, ``consts [n, 1, P]``).
        objective: See :data:`Objective`.
        work: A buffer of at least ``2 n B L`` elements, or ``None`` to allocate the two
            ``[n, B, L]`` temporaries (a single block: five fewer operations, same values).
        own: The key slot holding each query itself (see :class:`Own`), or ``None`` if no
            query is a key. That pair's sigmoid (1/2) is summed, but its derivative is left
            out: the query- and key-side terms cancel exactly, and adding them in float32 only
            adds noise.
        small_bmm: See :func:`_bmm`.

    Returns:
        ``(sums [n, B, J], ratios [n, B, J] float64, value [n, B] float64, grad_query [n, B],
        grad_key [n, L])``: ``ratios`` are the sums (plus ``base``) the objective saw; the
        gradients are those of the objective with respect to ``z = s / tau``.
    """
    n, b, span = sq.shape[0], sq.shape[1], sk.shape[1]
    # Differences are formed on the raw scores, then scaled: (s_j - s_i) / tau rounds once.
    if work is None:
        sig = torch.sub(sk.unsqueeze(1), sq.unsqueeze(2))
        sig.div_(tau.view(-1, 1, 1))
        flip = torch.neg(sig).sigmoid_()  # sigma(-d) = 1 - sigma(d), without the cancellation
    else:
        sig, flip = work[: n * b * span].view(n, b, span), work[n * b * span : 2 * n * b * span].view(n, b, span)
        torch.sub(sk.unsqueeze(1), sq.unsqueeze(2), out=sig)
        sig.div_(tau.view(-1, 1, 1))
        torch.neg(sig, out=flip).sigmoid_()
    sig.sigmoid_()
    # The sums keep their product with the (all-ones) mask: the same BLAS rounding as always.
    ones = mask is None
    mask = sig.new_ones(n, span, 1) if mask is None else mask
    sums = _bmm(sig, mask, small_bmm)
    ratios = sums.double() if base is None else sums.double() + base
    value, slope = _evaluate(objective, ratios, params)
    slope = slope.to(sig.dtype)
    sig.mul_(flip)  # sigma' = sigma(d) sigma(-d), accurate even where sigma(d) rounds to 1
    if own is not None:
        _zero_slots(sig, own.slot, in_range=own.in_range)
    grad_query = -_channel_sum(_bmm(sig, mask, small_bmm) * slope)
    key_slope = _bmm(sig.transpose(1, 2), slope, small_bmm)
    grad_key = _channel_sum(key_slope if ones else key_slope * mask)  # times a mask of ones: left out
    return sums, ratios, value, grad_query, grad_key


def _channel_sum(x: Tensor) -> Tensor:
    """``x.sum(-1)``; a single channel is its own sum (a view instead of a reduction)."""
    return x[..., 0] if x.shape[-1] == 1 else x.sum(-1)


def _self_slots(key_rows: Tensor, key_sizes: Tensor, query_rows: Tensor, pool_size: int) -> Tensor:
    """``[C, Lq]`` key slot of each query's own row (``-1`` where the query is not a key)."""
    c, lk = key_rows.shape
    valid = torch.arange(lk, device=key_rows.device) < key_sizes.unsqueeze(1)
    slot_of_row = torch.full((c, pool_size + 1), -1, dtype=torch.long, device=key_rows.device)
    slots = torch.arange(lk, device=key_rows.device).expand(c, lk)
    slot_of_row.scatter_(1, torch.where(valid, key_rows, pool_size), slots)
    slot_of_row[:, pool_size] = -1
    return slot_of_row.gather(1, query_rows)


def _pack(mask_t: Tensor, width: int, one_class: bool) -> Tensor:
    """``[C, width]`` pool rows of each row's selected entries, in pool order (0 on padding slots).

    ``one_class`` (the CPU plan) lets a single row use ``nonzero`` (a host synchronisation).
    A single row has no padding (``width`` is its count): otherwise a stable descending sort of
    the mask puts the selected rows first, in pool order (two operations, no host read).
    """
    c, m = mask_t.shape
    if c == 1 and one_class:  # no padding: `nonzero` is the whole answer, in two operations instead of eight
        return _selected(mask_t)
    if c == 1:
        return mask_t.sort(dim=1, descending=True, stable=True).indices[:, :width]
    slot = torch.where(mask_t, mask_t.cumsum(1) - 1, width)
    rows = torch.zeros(c, width + 1, dtype=torch.long, device=mask_t.device)
    return rows.scatter_(1, slot, torch.arange(m, device=mask_t.device).expand(c, m))[:, :width]


def _selected(mask_t: Tensor) -> Tensor:
    """``[1, n]`` pool rows of the ``n`` entries of a one-row mask ``[1, M]``, in pool order."""
    return mask_t.nonzero()[:, 1].unsqueeze(0)


@functools.cache
def _untraced(kernel: Kernel) -> Kernel:
    """``kernel`` (:func:`_windowed` or :func:`_dense`) excluded from ``torch.compile`` tracing.

    The windowed kernel is host-planned (data-dependent blocks and chunks): Dynamo would only
    split it into many graph-broken fragments, slower than eager; and inductor miscompiles the
    views of the reused work buffer of :func:`_block_terms`, which both kernels use. Wrapped on
    first use under compilation, so that importing the library does not import
    ``torch._dynamo`` (about a second).
    """
    return torch.compiler.disable(kernel)


def _windowed(
    tau: Tensor,
    keys: SortedRows,
    key_mask: Tensor | None,
    queries: SortedRows,
    params: QueryParams,
    objective: Objective,
    own: Own | None,
    sizes: Sizes,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sorted windows plus exponential tails; returns ``(value, ratios, grad_key, grad_query)`` (``z`` units).

    ``own`` holds the key slot of each query's own pair, or is ``None`` when no query is a key;
    ``key_mask`` ``[C, Lk, J]`` bool, or ``None`` for one channel holding every key slot.
    One host read plans the chunks (the sorted window lengths); on the CPU plan (``host_reads``,
    where a read is free) a second one sizes each channel's own keys for its tail tables.
    """
    dtype, device = keys.values.dtype, keys.values.device
    key_mask_given = key_mask
    if key_mask is None:
        key_mask = torch.ones_like(keys.values, dtype=torch.bool).unsqueeze(2)
    c = tau.shape[0]
    series = tail_series(dtype, narrow=sizes.narrow)
    half_width = series.half_width
    # Scaled scores in float64, relative to each class's lowest key: the tails need accurate
    # differences even when |s| / tau is huge.
    tau64 = tau.double().unsqueeze(1)
    ref = keys.values[:, :1].double() if keys.values.shape[1] > 0 else tau64.new_zeros(tau64.shape)
    zk, zq = (keys.values.double() - ref) / tau64, (queries.values.double() - ref) / tau64  # [C, Lk], [C, Lq]
    lk, lq, n_ch = zk.shape[1], zq.shape[1], key_mask.shape[2]
    plan = _plan(SortedRows(zk, keys.rows, keys.sizes), SortedRows(zq, queries.rows, queries.sizes), half_width)
    nb = lq // BLOCK
    self_blocks = None if own is None else own.slot.view(c * nb, BLOCK)
    hi_q = plan.hi.repeat_interleave(BLOCK, dim=1)  # [C, Lq]

    # Exponential tails (float64), channels first: values and their derivative in the query.
    # Keys below a query's window are prefixes of the ascending keys ("up"); those above it,
    # prefixes of the negated, flipped keys ("down").
    w = key_mask.permute(0, 2, 1).double()  # [C, J, Lk]
    count = w.new_zeros(c, n_ch, lk + 1)
    count[..., 1:] = w.cumsum(2)
    ends = keys.sizes.view(c, 1, 1).expand(c, n_ch, 1)
    tail = count.gather(2, ends) - count.gather(2, hi_q.unsqueeze(1).expand(c, n_ch, lq))  # [C, J, Lq]
    zq_blocks = zq.view(c, nb, BLOCK)
    members: list[tuple[Tensor, Tensor | None]] | None = None
    if key_mask_given is None:  # one channel holding every key slot: no weights
        parts = [_query_tails(zk, None, plan.lo, lk - plan.hi, zq_blocks, series, sizes.host_reads)]
    elif sizes.host_reads:  # a host read is free: each channel's tables over its own keys only
        counts = count.long()
        widths = counts[..., lk].amax(0).tolist()
        parts, members = [], []
        for ch, width in enumerate(widths):
            ch_counts = counts[:, ch]
            values, weight, source = _members(zk, key_mask[..., ch], ch_counts, width)
            members.append((source, weight))
            lo, above = ch_counts.gather(1, plan.lo), width - ch_counts.gather(1, plan.hi)
            parts.append(_query_tails(values, weight, lo, above, zq_blocks, series, sizes.host_reads))
    else:
        parts = [_query_tails(zk, w, plan.lo, lk - plan.hi, zq_blocks, series, sizes.host_reads)]
    tail += torch.cat([part[0] for part in parts], 1).view(c, n_ch, lq)
    tail_dq = torch.cat([part[1] for part in parts], 1).view(c, n_ch, lq)
    tail, tail_dq = tail.transpose(1, 2).contiguous(), tail_dq.transpose(1, 2)  # [C, Lq, J]

    # Window blocks, in chunks of similar window length.
    sums = torch.zeros(c * nb, BLOCK, n_ch, dtype=dtype, device=device)
    grad_k = torch.zeros(c * lk, dtype=torch.float64, device=device)  # many blocks add into a key
    grad_q = torch.zeros(c * nb, BLOCK, dtype=dtype, device=device)
    lengths = (plan.hi - plan.lo).masked_fill(~plan.active, 0).flatten()
    by_length, longest_first = lengths.sort(descending=True, stable=True)
    host_lengths = by_length.tolist()  # the only host read: blocks by decreasing window length
    n_live = bisect.bisect_left(host_lengths, 0, key=operator.neg)  # blocks with a non-empty window
    live, host_lengths = longest_first[:n_live], host_lengths[:n_live]
    # Every live block's inputs, once, in the chunks' order: a chunk takes contiguous slices
    # (few operations per chunk; their count, not their size, is the cost of a small chunk).
    live_class, live_lo = live // nb, plan.lo.flatten()[live]
    first, live_lengths = live_class * lk + live_lo, lengths[live]  # first key slot (flat), window length
    sq_live, tau_live = queries.values.reshape(c * nb, BLOCK)[live], tau[live_class]
    tail_live = tail.view(c * nb, BLOCK, n_ch)[live]
    weight_live = None if params.weight is None else params.weight.view(c * nb, BLOCK)[live]
    consts_live = params.consts[live_class]
    own_live = None if self_blocks is None else self_blocks[live] - live_lo.unsqueeze(1)
    sk_flat = keys.values.flatten()
    mask_planes = key_mask.permute(2, 0, 1).to(dtype).flatten()  # [J * C * Lk]: channel-major
    first_planes = first.view(-1, 1, 1) + torch.arange(n_ch, device=device).view(1, n_ch, 1) * (c * lk)
    sums_live = sk_flat.new_empty(n_live, BLOCK, n_ch)
    grad_q_live = sk_flat.new_empty(n_live, BLOCK)
    chunks = _chunks(host_lengths, BLOCK, sizes.chunk)
    work = sk_flat.new_empty(2 * max([(stop - start) * BLOCK * host_lengths[start] for start, stop in chunks] or [0]))
    all_offsets = torch.arange(host_lengths[0] if host_lengths else 0, device=device)
    for start, stop in chunks:  # one buffer serves every chunk
        offsets = all_offsets[: host_lengths[start]]
        outside = offsets >= live_lengths[start:stop].unsqueeze(1)  # [nb', span]: past the block's window
        # [nb', J, span] slots of each channel's mask (plane 0: the key slots), 0 outside the windows.
        flat_planes = torch.where(outside.unsqueeze(1), 0, first_planes[start:stop] + offsets)
        flat = flat_planes[:, 0]
        # Slots outside a window hold key -inf: sigma = 0 and sigma' = 0 there, whatever their mask.
        sums_live[start:stop], _, _, grad_q_live[start:stop], key_grad = _block_terms(
            sk_flat[flat].masked_fill_(outside, float("-inf")),
            sq_live[start:stop],
            tau_live[start:stop],
            mask_planes[flat_planes].transpose(1, 2),  # [nb', span, J], channel-major in memory
            tail_live[start:stop],
            QueryParams(None if weight_live is None else weight_live[start:stop], consts_live[start:stop]),
            objective,
            work,
            None if own_live is None else Own(own_live[start:stop], False),
            sizes.small_bmm,
        )
        grad_k.index_add_(0, flat.flatten(), key_grad.flatten().double())
    sums[live], grad_q[live] = sums_live, grad_q_live

    ratios = sums.view(c, lq, n_ch).double() + tail
    value, slope = _evaluate(objective, ratios, params)
    grad_q = grad_q.view(c, lq) + (slope * tail_dq).sum(2).to(dtype)
    grad_k += _key_tail_grad(zq, zk, plan, slope, key_mask, series, sizes, members).flatten()
    return value, ratios, grad_k.view(c, lk).to(dtype), grad_q


def _dense(
    tau: Tensor,
    keys: SortedRows,
    key_mask: Tensor | None,
    queries: SortedRows,
    params: QueryParams,
    objective: Objective,
    own: Own | None,
    sizes: Sizes,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Every (query, key) pair, as one :func:`_block_terms` block per class (or a few query slices).

    Same inputs and outputs as :func:`_windowed`, but keys and queries need not be sorted.
    ``key_mask`` may be ``None`` (one channel holding every key slot). At most ``sizes.chunk``
    pair terms are held at once: beyond that the queries are taken in slices (every slice
    against every key), whose key gradients add up.
    """
    c, lq, lk = tau.shape[0], queries.values.shape[1], keys.values.shape[1]
    step = max(1, sizes.chunk // max(c * lk, 1))
    mask = None if key_mask is None else key_mask.to(keys.values.dtype)
    if lq <= step:  # one block: its temporaries are allocated, not carved from a shared buffer
        _, ratios, value, grad_q, grad_k = _block_terms(
            keys.values, queries.values, tau, mask, None, params, objective, None, own, sizes.small_bmm
        )
        return value, ratios, grad_k, grad_q
    work = keys.values.new_empty(2 * c * step * lk)  # one buffer serves every slice
    values, ratio_parts, grad_qs = [], [], []
    grad_k = keys.values.new_zeros(c, lk)
    for start in range(0, lq, step):
        part = slice(start, min(lq, start + step))
        _, ratios, value, grad_q, key_grad = _block_terms(
            keys.values,
            queries.values[:, part],
            tau,
            mask,
            None,
            QueryParams(None if params.weight is None else params.weight[:, part], params.consts),
            objective,
            work,
            None if own is None else Own(own.slot[:, part], own.in_range),
            sizes.small_bmm,
        )
        values.append(value)
        ratio_parts.append(ratios)
        grad_qs.append(grad_q)
        grad_k += key_grad
    return torch.cat(values, 1), torch.cat(ratio_parts, 1), grad_k, torch.cat(grad_qs, 1)


#: ``kernel(tau, keys, key_mask, queries, params, objective, own, sizes) -> (value, ratios, grad_key, grad_query)``
Kernel = Callable[
    [Tensor, SortedRows, "Tensor | None", SortedRows, QueryParams, Objective, "Own | None", Sizes],
    tuple[Tensor, ...],
]


class _PairSums(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        scores: Tensor,
        tau: Tensor,
        keys: SortedRows,
        key_mask: Tensor | None,
        queries: SortedRows,
        params: QueryParams,
        objective: Objective,
        own: Own | None,
        dense: bool,
        pool_keys: bool,
        sizes: Sizes,
    ) -> tuple[Tensor, Tensor]:
        kernel: Kernel = _dense if dense else _windowed
        compiling = torch.compiler.is_compiling()
        if compiling:
            kernel = _untraced(kernel)
        with FlushDenormals(scores.device.type == "cpu" and not compiling):  # far pairs: no subnormal slow path
            value, ratios, grad_k, grad_q = kernel(tau, keys, key_mask, queries, params, objective, own, sizes)
        # Gradient per pool row, [C, M]. With `pool_keys` the keys are the pool rows in order.
        grad = (
            grad_k if pool_keys else grad_k.new_zeros(tau.shape[0], scores.shape[0]).scatter_add_(1, keys.rows, grad_k)
        )
        grad.scatter_add_(1, queries.rows, grad_q)
        ctx.save_for_backward(grad / tau.unsqueeze(1))
        ctx.mark_non_differentiable(ratios)
        return value.sum(1).to(scores.dtype), ratios

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, _unused: Tensor) -> tuple[Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return (grad * grad_out.unsqueeze(1)).t(), None, None, None, None, None, None, None, None, None, None


def _key_tail_grad(
    zq: Tensor,
    zk: Tensor,
    plan: _Plan,
    slope: Tensor,
    key_mask: Tensor,
    series: TailSeries,
    sizes: Sizes,
    members: list[tuple[Tensor, Tensor | None]] | None = None,
) -> Tensor:
    """Gradient of every query's exponential tails with respect to the keys, ``[C, Lk]`` float64.

    Key ``j`` lies in the lower tail of the queries whose block window starts after it and in
    the upper tail of those whose window ends at or before it; both sets are contiguous runs
    of the sorted queries, so the sums are prefix/suffix sums over queries. Keys are taken
    ``sizes.items`` slots at a time to bound the temporaries. ``members``: per channel, the key
    slots of its members ``[C, width]`` and their weight (``None``: 1, else ``[C, 1, width]``, 0 on
    padding slots), from :func:`_members`; each channel's sums are then formed on its own keys only
    (``key_mask`` unused), else on every key slot and channel.
    """
    c, lk = zk.shape
    lq, n_ch = zq.shape[1], slope.shape[2]
    query_side = _side(zq, series.half_width, sizes.host_reads)
    w = slope.permute(0, 2, 1).contiguous()  # [C, J, Lq]
    # Per order, the sums of the query prefixes that end at a block boundary ("up": queries
    # below a key; "down": above it, on the negated, flipped queries), scaled to the upper edge
    # of the prefix's last cell: [C, J, nb + 1] each, entry i for the first i * BLOCK queries;
    # a key then reads its prefix's entry (one gather per order).
    nb = lq // BLOCK
    bounds = torch.arange(0, lq + 1, BLOCK, device=zk.device).expand(c, nb + 1)
    up_at, down_at = _probe(query_side.up, bounds), _probe(query_side.down, bounds)
    tables = [
        (_at(*up, up_at), _at(*down, down_at))
        for up, down in zip(
            _tables(query_side.up, w, series.reach), _tables(query_side.down, w.flip(2), series.reach), strict=True
        )
    ]
    out = zk.new_zeros(c, lk)
    # Per key slot j, the blocks whose window starts at or before j (lo <= j) and those whose
    # window ends at or before j (hi <= j): running counts of the window ends, read per key.
    ones = torch.ones_like(plan.lo)
    starts = torch.zeros(c, lk + 1, dtype=torch.long, device=zk.device).scatter_add_(1, plan.lo, ones).cumsum_(1)
    ends = torch.zeros(c, lk + 1, dtype=torch.long, device=zk.device).scatter_add_(1, plan.hi, ones).cumsum_(1)

    def at_keys(slots: Tensor, x: Tensor, ch: slice) -> Tensor:
        """``[C, J', S]`` series sums of the keys in ``slots [C, S]`` (scores ``x``) over channels ``ch``."""
        after = starts.gather(1, slots)  # blocks >= after: key below their window
        before = ends.gather(1, slots)  # blocks < before: key above their window
        above = nb - after  # blocks above the key, counted from the top
        above_scale = _scale(query_side.down, above * BLOCK, -x)
        below_scale = _scale(query_side.up, before * BLOCK, x)
        above_f, below_f = above_scale, below_scale  # scale ** n
        shape = (c, len(range(n_ch)[ch]), slots.shape[1])
        above_idx, below_idx = above.unsqueeze(1).expand(shape), before.unsqueeze(1).expand(shape)
        part = zk.new_zeros(shape)
        for n, ((up, down), a_n) in enumerate(zip(tables, series.coefficients, strict=True), 1):
            if n > 1:
                above_f, below_f = above_f * above_scale, below_f * below_scale
            part.addcmul_(down[:, ch].gather(2, above_idx), above_f.unsqueeze(1), value=n * a_n)
            part.addcmul_(up[:, ch].gather(2, below_idx), below_f.unsqueeze(1), value=n * a_n)
        return part

    if members is not None:  # each channel over its own keys: members packed, weight 0 on padding
        for ch, (source, valid) in enumerate(members):
            for start in range(0, source.shape[1], sizes.items):
                slots = source[:, start : start + sizes.items].contiguous()
                part = at_keys(slots, zk.gather(1, slots), slice(ch, ch + 1))[:, 0]
                if valid is not None:  # padding slots repeat a member: weight 0
                    part.mul_(valid[:, 0, start : start + sizes.items])
                out.scatter_add_(1, slots, part)
        return out
    for start in range(0, lk, sizes.items):
        stop = min(lk, start + sizes.items)
        slots = torch.arange(start, stop, device=zk.device).expand(c, -1).contiguous()
        part = at_keys(slots, zk[:, start:stop], slice(None))
        out[:, start:stop] = part.masked_fill_(~key_mask[:, start:stop].transpose(1, 2), 0.0).sum(1)
    return out


def _query_params(
    rows: Tensor, sizes: Tensor, weight: Tensor | None, class_params: Tensor
) -> tuple[Tensor, QueryParams]:
    """Real-slot mask ``[C, Lq]`` and the objective's :class:`QueryParams` of padded query slots."""
    valid = torch.arange(rows.shape[1], device=rows.device) < sizes.unsqueeze(1)
    query_w = valid.double() if weight is None else weight.double()[rows] * valid
    return valid, QueryParams(query_w, class_params.double().unsqueeze(1))


class PairResult(NamedTuple):
    """Output of :func:`pair_sums`: per-class sums and, per query slot, the key sums.

    Query slots are class-major, in any order within a class; slots past a class's queries are
    padding (``query_valid`` False).
    """

    per_class: Tensor  # [C] objective sums (carries the gradient)
    ratios: Tensor  # [C, Lq, J] float64 key sums R of each query slot (no gradient)
    query_valid: Tensor | None  # [C, Lq] bool: the slot holds a real query; None: every slot does

    def valid_slots(self) -> Tensor:
        """``query_valid``, built when every slot is real (only the diagnostics read it)."""
        if self.query_valid is not None:
            return self.query_valid
        return torch.ones(self.ratios.shape[:2], dtype=torch.bool, device=self.ratios.device)


def pair_sums(
    scores: Tensor,
    tau: Tensor,
    key_channels: Tensor,
    query_mask: Tensor,
    weight: Tensor | None,
    class_params: Tensor,
    objective: Objective,
    *,
    queries_are_keys: bool,
) -> PairResult:
    r"""Per-class objective :math:`\sum_i v(R_{c,i}, \theta_{c,i})` with an analytic, memory-bounded gradient.

    Small problems (at most ``dense_max`` padded query-key pairs, from the device's plan:
    :data:`DENSE_MAX` on the CPU) evaluate every pair (:func:`_dense`); larger ones use the
    sorted windows and exponential tails
    (:func:`_windowed`). Both form the gradient in the forward pass, so nothing of size
    ``[|P|, M]`` is kept for backward and the backward pass is a single product.

    Args:
        scores: ``[M, C]`` pool scores (the only input that receives a gradient).
        tau: ``[C]`` temperature of each class (``z = s / tau``), no gradient.
        key_channels: ``[M, C, J]`` bool: key ``(j, c)`` counts in channel ``J`` (a key is any
            entry with at least one channel).
        query_mask: ``[M, C]`` bool queries.
        weight: Optional ``[M]`` query weights (1 when ``None``).
        class_params: ``[C, P]`` per-class constants of the objective.
        objective: Receives ``R [..., Lq, J]`` and a :class:`QueryParams` (query weights, class
            constants); the weight is 0 on padding slots, where the slope must vanish, and
            ``None`` (1 everywhere) when there is neither padding nor ``weight``.
        queries_are_keys: Whether a query can also be a key of its class (Smooth-AP); its pair
            with itself then contributes ``sigma(0)`` but no derivative. ``False`` promises
            that no query is a key of its class.

    Returns:
        A :class:`PairResult`; ``ratios`` are :math:`R_{c,i,J} = \sum_j m_{j,J} \sigma(z_j - q_i)`.
    """
    (m, c), device = scores.shape, scores.device
    sizes = sizes_for(device, scores.dtype, c, m)
    if c == 1:
        single = _one_class(
            scores, tau, key_channels, query_mask, weight, class_params, objective, queries_are_keys, sizes
        )
        if single is not None:
            return single
    s_t = scores.detach().t()
    query_t = query_mask.t()
    n_ch = key_channels.shape[2]
    key_t = (key_channels[..., 0] if n_ch == 1 else key_channels.any(2)).t()  # one channel: a view
    nq, nk = query_t.sum(1), key_t.sum(1)
    if c == 1:  # the one host read of the sizes; a single class is its own maximum and minimum
        lq, lk = torch.cat([nq, nk]).tolist()
        nk_min = lk
    else:
        lq, lk, nk_min = torch.stack([nq.max(), nk.max(), nk.min()]).tolist()
    dense = c * lq * lk <= sizes.dense_max and c * lk <= sizes.dense_keys_max
    # Dense: rows in pool order; every row a key of every class (the common case) needs no packing.
    all_keys = dense and lk == m and nk_min == m
    if dense:
        queries = _gathered(s_t, _pack(query_t, lq, sizes.host_reads), nq)
        keys = (
            _gathered(s_t, _pack(key_t, lk, sizes.host_reads), nk)
            if not all_keys
            else SortedRows(s_t, torch.arange(m, device=device).expand(c, m), nk)
        )
    else:
        keys = sorted_rows(s_t, key_t, nk, lk)
        width = -(-lq // BLOCK) * BLOCK
        # Queries that are all keys (a free host read on the CPU plan): picked from the sorted keys,
        # no second sort.
        if queries_are_keys and sizes.host_reads and not bool((query_t & ~key_t).any()):
            queries = _sorted_subset(keys, query_t, nq, width)
        else:
            queries = sorted_rows(s_t, query_t, nq, width)
    # [C, Lk, J]; None: a single channel holding every key slot (no padding slot: every key of
    # every class, or a single class; the kernels then leave out their products with ones).
    key_mask: Tensor | None = None
    if n_ch > 1:
        key_mask = key_channels.permute(1, 0, 2)  # [C, M, J]
        if not all_keys:
            key_mask = key_mask.gather(1, keys.rows.unsqueeze(2).expand(-1, -1, n_ch))
            if c > 1:  # a single class has no padding slot
                key_mask = key_mask & (torch.arange(lk, device=device) < nk.unsqueeze(1)).unsqueeze(2)
    elif not all_keys and c > 1:  # a key is an entry of the only channel: its mask is the slot's validity
        key_mask = (torch.arange(lk, device=device) < nk.unsqueeze(1)).unsqueeze(2)
    own = None
    if queries_are_keys:  # with every row a key, a query's own key slot is its row
        own = Own(queries.rows, True) if all_keys else Own(_self_slots(keys.rows, keys.sizes, queries.rows, m), False)
    query_valid: Tensor | None = None
    if c == 1 and dense:  # one class, dense: no padding slot
        query_w = None if weight is None else weight.double()[queries.rows]
        params = QueryParams(query_w, class_params.double().unsqueeze(1))
    else:
        query_valid, params = _query_params(queries.rows, nq, weight, class_params)
    per_class, ratios = _PairSums.apply(
        scores, tau, keys, key_mask, queries, params, objective, own, dense, all_keys, sizes
    )
    return PairResult(per_class, ratios, query_valid)


def _one_class(
    scores: Tensor,
    tau: Tensor,
    key_channels: Tensor,
    query_mask: Tensor,
    weight: Tensor | None,
    class_params: Tensor,
    objective: Objective,
    queries_are_keys: bool,
    sizes: Sizes,
) -> PairResult | None:
    """:func:`pair_sums` of a single class, every (query, key) pair in one block; ``None`` when that is too large.

    Small pools are dominated by the fixed cost of each operation, and one class needs few. The
    queries come from ``nonzero``, their number with them (the call's one host read); the keys
    are every pool row, each weighed by its channel masks (0 outside every channel), so nothing
    is counted, packed or padded. Under the CPU plan (``sizes.host_reads``, where a host read is
    free) keys that are never queries are packed by a second ``nonzero``: a pairwise pAUC's few
    band negatives then make a small block. Same values as the general path.

    Args:
        scores: ``[M, 1]`` pool scores.
        tau: ``[1]`` temperature.
        key_channels: ``[M, 1, J]`` bool key channels.
        query_mask: ``[M, 1]`` bool queries.
        weight: Optional ``[M]`` query weights.
        class_params: ``[1, P]`` class constants of the objective.
        objective: See :data:`Objective`.
        queries_are_keys: As in :func:`pair_sums`.
        sizes: The call's kernel sizes.
    """
    query_rows = query_mask.nonzero()[:, 0]
    key_rows = None
    if sizes.host_reads and not queries_are_keys:
        key_set = key_channels.reshape(-1) if key_channels.shape[2] == 1 else key_channels.any(2)[:, 0]
        key_rows = key_set.nonzero()[:, 0]
    keys = scores.shape[0] if key_rows is None else key_rows.shape[0]
    if query_rows.shape[0] * keys > min(sizes.dense_max, sizes.chunk):  # not dense, or not one block
        return None
    per_class, ratios = _OneClass.apply(
        scores, tau, key_channels, query_rows, key_rows, weight, class_params, objective, queries_are_keys, sizes
    )
    return PairResult(per_class, ratios, None)  # no padding slot


class _OneClass(torch.autograd.Function):
    """Forward: sums, objective and gradient in one block (see :func:`_one_class`); backward: one product."""

    @staticmethod
    def forward(
        ctx: Any,
        scores: Tensor,
        tau: Tensor,
        key_channels: Tensor,
        query_rows: Tensor,
        key_rows: Tensor | None,
        weight: Tensor | None,
        class_params: Tensor,
        objective: Objective,
        queries_are_keys: bool,
        sizes: Sizes,
    ) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        small = sizes.small_bmm
        queries = scores.index_select(0, query_rows)  # [Lq, 1]
        keys = scores if key_rows is None else scores.index_select(0, key_rows)
        mask = None  # a single channel's packed keys are all in it: no mask to multiply by (the same sums)
        if key_rows is None or key_channels.shape[2] > 1:
            channels = key_channels[:, 0] if key_rows is None else key_channels[:, 0].index_select(0, key_rows)
            mask = channels.to(scores.dtype)  # [Lk, J]
        with FlushDenormals(scores.device.type == "cpu" and not torch.compiler.is_compiling()):
            # Differences are formed on the raw scores, then scaled: (s_j - s_i) / tau rounds once.
            sig = (keys.t() - queries).div_(tau)  # [Lq, Lk]
            flip = torch.neg(sig).sigmoid_()  # sigma(-d) = 1 - sigma(d), without the cancellation
            ratios = _key_sums(sig.sigmoid_(), mask, small).double()  # [Lq, J]
            query_w = None if weight is None else weight.double().index_select(0, query_rows)
            value, slope = _evaluate(objective, ratios, QueryParams(query_w, class_params.double()))
            slope = slope.to(sig.dtype)
            sig.mul_(flip)  # sigma' = sigma(d) sigma(-d), accurate even where sigma(d) rounds to 1
            if queries_are_keys:  # its pair with itself: the sigmoid is summed, the derivative left out
                sig.scatter_(1, query_rows.unsqueeze(1), 0.0)
            # d value / d z: + on the keys, - on the queries
            # (one channel without a mask: the slope weighs each query's row)
            grad = sig.mul(slope).sum(0) if mask is None else _channel_sum(_mm(sig.t(), slope, small).mul_(mask))
            if key_rows is not None:
                grad = grad.new_zeros(scores.shape[0]).index_add_(0, key_rows, grad)
            query_grad = _channel_sum(_key_sums(sig, mask, small).mul_(slope))
            ctx.grad = grad.index_add_(0, query_rows, query_grad, alpha=-1.0).div_(tau).unsqueeze(1)
        ctx.mark_non_differentiable(ratios)
        return value.sum(0, keepdim=True).to(scores.dtype), ratios.unsqueeze(0)

    @staticmethod
    @once_differentiable_backward
    def backward(ctx: Any, grad_out: Tensor | None, _unused: Any) -> tuple[Tensor | None, ...]:
        grad = None if grad_out is None else ctx.grad * grad_out
        return grad, None, None, None, None, None, None, None, None, None


def _key_sums(x: Tensor, mask: Tensor | None, small: int) -> Tensor:
    """``[Lq, J]`` channel sums ``x @ mask`` of ``x [Lq, Lk]``; ``mask=None``: one channel holding every key."""
    return x.sum(1, keepdim=True) if mask is None else _mm(x, mask, small)


def _gathered(s_t: Tensor, rows: Tensor, sizes: Tensor) -> SortedRows:
    """The scores ``s_t [C, M]`` of the packed ``rows [C, L]`` (pool order, not sorted)."""
    return SortedRows(s_t.gather(1, rows), rows, sizes)
