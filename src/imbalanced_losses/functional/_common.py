"""Building blocks shared by the ranking losses: pool masks, thresholds, reductions.

Every ranking loss works on a *pool* of ``M`` rows with ``C`` logit columns and scores each
class one-vs-rest. A pool is described by two boolean masks of shape ``[M, C]``:

* ``pos[j, c]``: row ``j`` is a positive of class ``c``;
* ``neg[j, c]``: row ``j`` is a negative of class ``c``.

A row that is neither (an ``ignore_index`` row) takes no part in class ``c``. All per-class
work is vectorised over ``C``; nothing here loops over classes in Python.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .._validation import (
    binary_offenders,
    binary_range,
    check_finite_logits,
    check_logits,
    check_row_vector,
    check_sample_weight,
    check_targets,
    to_class_ids,
    to_multi_hot,
)


class RankingResult(NamedTuple):
    """Unreduced output of a ranking-loss core.

    Attributes:
        loss: ``[C]`` per-class loss; values of invalid classes are finite placeholders.
        valid: ``[C]`` bool, whether the class could be scored on this pool.
        stats: Optional per-class diagnostics (``[C]`` tensors), or ``None``.
        degenerate: Optional ``[C]`` bool, classes skipped for a degenerate score dispersion.
    """

    loss: Tensor
    valid: Tensor
    stats: dict[str, Tensor] | None = None
    degenerate: Tensor | None = None


def compute_dtype(logits: Tensor) -> torch.dtype:
    """Float32 for half-precision logits, otherwise the logits' own dtype."""
    return torch.float32 if logits.dtype in (torch.float16, torch.bfloat16) else logits.dtype


def normalize_targets(
    targets: Tensor, *, num_classes: int, ignore_index: int, validate_args: bool, binary01: bool = False
) -> Tensor:
    """Map raw targets to ``int64`` ids, ``ignore_index`` kept.

    * multi-class (``[M]``, ``num_classes > 1``): class ids in ``[0, C)``;
    * binary (``num_classes == 1``): ``{0, 1}``, every non-zero target counts as a positive;
    * multi-label (``[M, C]``): cells in ``{0, 1}``, one column per class (one-vs-rest).

    ``binary01`` promises ``[M]`` ``int64`` targets already in ``{0, 1}`` (returned as they are).
    """
    if targets.ndim == 2:
        return to_multi_hot(targets, ignore_index=ignore_index, validate_args=validate_args)
    if num_classes > 1:
        return to_class_ids(targets, num_classes=num_classes, ignore_index=ignore_index, validate_args=validate_args)
    if binary01:  # already int64 ids in {0, 1}: mapping them would copy them unchanged
        return targets
    ignored = targets == ignore_index
    ids = (targets != 0).long()
    return ids.masked_fill(ignored, ignore_index)


def binary_target_message(values: list[float]) -> str:
    """Text of the warning for binary targets outside ``{0, 1}``."""
    return (
        f"Binary mode (num_classes=1) expects targets in {{0, 1}}, got value(s) {values}; "
        "every non-zero target counts as a positive."
    )


def class_masks(ids: Tensor, num_classes: int, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Positive and negative masks ``[M, C]`` from normalised target ids (``[M]``, or ``[M, C]`` multi-label)."""
    if ids.ndim == 2:
        return ids == 1, ids == 0
    if num_classes == 1:
        return (ids == 1).unsqueeze(1), (ids == 0).unsqueeze(1)
    classes = torch.arange(num_classes, device=ids.device)
    pos = ids.unsqueeze(1) == classes
    neg = (ids != ignore_index).unsqueeze(1) & ~pos
    return pos, neg


def kept_rows(ids: Tensor, ignore_index: int) -> Tensor:
    """``[M]`` bool: rows that take part in at least one class (multi-label: any non-ignored cell)."""
    kept = ids != ignore_index
    return kept.any(1) if kept.ndim == 2 else kept


class Pool(NamedTuple):
    """A validated ranking pool, ready for a loss core."""

    scores: Tensor  # [M, C] float, computation dtype, carries the logits' graph
    pos: Tensor  # [M, C] bool
    neg: Tensor  # [M, C] bool
    weight: Tensor | None  # [M] float or None (unweighted)


def make_pool(scores: Tensor, ids: Tensor, weight: Tensor | None, ignore_index: int) -> Pool:
    """Assemble a :class:`Pool` from scores ``[M, C]``, normalised ids ``[M]`` and optional weights."""
    dtype = compute_dtype(scores)
    scores = scores.to(dtype)
    pos, neg = class_masks(ids, scores.shape[1], ignore_index)
    if weight is not None:
        weight = weight.to(device=scores.device, dtype=dtype)
    return Pool(scores, pos, neg, weight)


class Batch(NamedTuple):
    """A validated batch: :func:`validate_batch`'s result."""

    logits: Tensor  # [N, C] floating-point scores
    ids: Tensor  # [N] (or multi-label [N, C]) int64 normalised target ids
    weight: Tensor | None  # [N] detached sample weights, or None
    all_kept: bool  # known on the host that no row is an `ignore_index` row (False: unknown)


def validate_batch(
    logits: Tensor,
    targets: Tensor,
    sample_weight: Tensor | None,
    *,
    num_classes: int | None,
    ignore_index: int,
    validate_args: bool,
    warn: Callable[[str, str], None],
    name: str = "logits",
) -> Batch:
    """Check a batch and normalise its targets; returns a :class:`Batch`.

    ``warn(key, message)`` receives the soft problems (binary targets outside ``{0, 1}``, an
    all-zero ``sample_weight``): the functional API warns on each call, a module once. ``name``
    is the scores' argument name in error messages. ``all_kept`` comes free with the binary
    target check: ids all in ``{0, 1}`` and an ``ignore_index`` outside ``{0, 1}`` leave no row
    out, so the caller can skip looking for ignored rows (a ``nonzero`` and its synchronisation).
    """
    logits = check_logits(logits, num_classes, name)
    n, c = logits.shape
    targets = check_targets(targets, n, c)
    weight = check_sample_weight(sample_weight, n, validate_args=validate_args)
    binary01 = False
    if validate_args:
        check_finite_logits(logits, name)
        # The common binary case (int64 ids 0 and 1) needs neither the exact target check nor a mapping.
        binary01 = c == 1 and targets.ndim == 1 and targets.dtype == torch.int64 and n > 0 and binary_range(targets)
        offenders = binary_offenders(targets, ignore_index) if c == 1 and not binary01 else []
        if offenders:
            warn("binary_targets", binary_target_message(offenders))
        if weight is not None and n > 0 and not bool(weight.any()):
            warn(
                "zero_weight",
                "`sample_weight` is entirely zero: every class has zero positive weight and the loss "
                "falls through to its degenerate (zero) value.",
            )
    ids = normalize_targets(
        targets, num_classes=c, ignore_index=ignore_index, validate_args=validate_args, binary01=binary01
    )
    return Batch(logits, ids, weight, binary01 and ignore_index not in (0, 1))


def row_mask(name: str, mask: Tensor | None, n: int, device: torch.device) -> Tensor | None:
    """A ``[M]`` bool mask from an optional user mask (``None``, every row, stays ``None``: see :func:`flagged`)."""
    mask = check_row_vector(name, mask, n)
    return None if mask is None else mask.detach().to(device=device).bool()


def flagged(mask: Tensor, flags: Tensor | None) -> Tensor:
    """``mask [M, C]`` restricted to the rows set in ``flags [M]``; ``None`` flags every row (no operation)."""
    return mask if flags is None else mask & flags.unsqueeze(1)


def positive_weights(pos: Tensor, weight: Tensor | None, dtype: torch.dtype) -> Tensor:
    """``[M, C]`` weight of each positive (``w_j`` or 1 on positives, 0 elsewhere)."""
    w = pos.to(dtype)
    return w if weight is None else w * weight.unsqueeze(1)


class Pairs(NamedTuple):
    """The ``(class, row)`` entries selected by an ``[M, C]`` mask, class-major."""

    cls: Tensor  # [P] long class of each entry
    scores: Tensor  # [P] the row's score for that class (carries the graph)
    weight: Tensor | None  # [P] the row's sample weight; None when unweighted (every weight 1)

    def per_entry(self, values: Tensor) -> Tensor:
        """Each entry's row of the per-class ``values [C, ...]``: ``values[cls]``.

        With one class that row is ``values`` itself, which broadcasts against ``[P, ...]``
        operands to the same result without an indexing operation.
        """
        return values if values.shape[0] == 1 else values[self.cls]

    def weighted_sum(self, values: Tensor, num_classes: int) -> Tensor:
        r"""``[C]`` sums :math:`\sum_i w_i v_i` of ``values [P]`` per class (no product when unweighted)."""
        return class_sum(values if self.weight is None else values * self.weight, self.cls, num_classes)

    def total_weight(self, count: Tensor, dtype: torch.dtype) -> Tensor:
        """``[C]`` sums of the weights; ``count [C]`` (entries per class) is that sum when unweighted (exact)."""
        return count.to(dtype) if self.weight is None else class_sum(self.weight, self.cls, count.shape[0])


def select_pairs(mask: Tensor, scores: Tensor, weight: Tensor | None) -> Pairs:
    """Gather the entries of ``mask [M, C]`` (e.g. the positives): ``O(P)`` work downstream instead of ``O(M C)``."""
    cls, rows = mask.t().nonzero(as_tuple=True)
    return Pairs(cls, entries(scores, rows, cls), None if weight is None else weight[rows])


def entries(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``x[rows, cols]`` for a 2-D ``x``, through ``index_select`` on the flat view.

    Same values as advanced indexing, but its backward is an ``index_add`` rather than an
    accumulating ``index_put``, which on CPU can stall for milliseconds on a busy machine.
    """
    flat = x.reshape(-1)
    if x.shape[1] == 1:  # the flat index is the row itself
        return flat.index_select(0, rows)
    return flat.index_select(0, rows * x.shape[1] + cols)


def class_sum(values: Tensor, cls: Tensor, num_classes: int) -> Tensor:
    """``[C]`` sums of ``values [P]`` grouped by ``cls [P]``."""
    return values.new_zeros(num_classes).index_add(0, cls, values)


def safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with zero denominators replaced by 1 (keeps gradients finite)."""
    return num / torch.where(den > 0, den, 1.0)


def masked_column_quantiles(
    x: Tensor, member: Tensor, levels: Tensor | Sequence[float], interpolation: str
) -> tuple[Tensor, Tensor]:
    """Quantiles of each column of ``x`` over the rows selected by ``member``, for all classes at once.

    Reproduces :func:`torch.quantile` exactly for float32/float64 input (same rank arithmetic
    in the input dtype, same rounding and ``lerp``), but works for any pool size and selects
    the order statistics it needs (see :func:`order_statistics`) instead of sorting each
    column separately.

    A single column of a small pool on the CPU takes a shorter road to the same values: its
    members are gathered and sorted, their number ``n`` comes back with them (a free host
    synchronisation on the CPU), and the ranks ``levels * (n - 1)`` are formed on the host
    (:func:`_host_quantiles`). Small pools are dominated by the fixed cost of each operation,
    and this road has a fraction of them.

    Args:
        x: ``[M, C]`` detached scores.
        member: ``[M, C]`` bool, which rows belong to each column's population.
        levels: ``[L]`` quantile levels in ``[0, 1]``: a tensor in ``x``'s dtype, or Python
            floats (taken as rounded to ``x``'s dtype).
        interpolation: One of ``linear, lower, higher, nearest, midpoint``.

    Returns:
        ``(values [L, C], counts [C])``. Columns with an empty population get ``nan``.
    """
    x = x.detach()
    m, c = x.shape
    host = (
        c == 1
        and 0 < m <= SORT_MAX
        and x.device.type == "cpu"
        and x.dtype in _ROUNDING
        and (not isinstance(levels, Tensor) or levels.dtype == x.dtype)
        and not torch.compiler.is_compiling()
    )
    if host:
        column = x[:, 0].masked_select(member[:, 0])
        n = column.shape[0]
        counts = torch.full((1,), n, dtype=torch.long)
        if n == 0:
            return x.new_full((len(levels), 1), float("nan")), counts
        return _host_quantiles(column.sort().values, levels, interpolation).unsqueeze(1), counts
    if not isinstance(levels, Tensor):
        levels = torch.tensor(levels, dtype=x.dtype, device=x.device)
    counts = member.sum(0)
    if m == 0:
        return x.new_full((levels.shape[0], c), float("nan")), counts
    last = (counts - 1).clamp_min(0).to(x.dtype)
    ranks = levels.unsqueeze(1) * last.unsqueeze(0)  # [L, C], in x's dtype as torch.quantile does
    values = _interpolate(ranks, interpolation, lambda ranks: order_statistics(x.t(), member.t(), ranks))
    values = values.masked_fill((counts == 0).unsqueeze(0), float("nan"))
    return values, counts


def _round_float32(value: float) -> float:
    """``value`` rounded to the nearest float32 (ties to even), as a Python float."""
    return float(struct.unpack("f", struct.pack("f", value))[0])


#: Rounding of a Python float to each dtype the host road of the quantiles serves.
_ROUNDING: dict[torch.dtype, Callable[[float], float]] = {torch.float32: _round_float32, torch.float64: float}


def _host_quantiles(ordered: Tensor, levels: Tensor | Sequence[float], interpolation: str) -> Tensor:
    """:func:`torch.quantile` of the sorted 1-D ``ordered`` at ``levels``, ranks formed on the host: ``[L]``.

    ``torch.quantile`` forms the rank ``level * (n - 1)`` in the input's dtype: the exact
    product of two values of that dtype, rounded once. The same rounding of the exact double
    product (a float32 product has at most 48 significant bits) gives the same rank, and
    floor/ceil/round-half-even on it the same indices, so this costs one indexing operation
    (two and a ``lerp`` when interpolating) instead of four or five tensor operations.
    """
    dtype, n = ordered.dtype, ordered.shape[0]
    to_dtype = _ROUNDING[dtype]
    values = levels.tolist() if isinstance(levels, Tensor) else levels
    ranks = [to_dtype(to_dtype(float(q)) * (n - 1)) for q in values]
    if interpolation in ("linear", "midpoint"):
        below = [math.floor(r) for r in ranks]
        above = [math.ceil(r) for r in ranks]
        # r - floor(r) is exact in r's dtype: the same weights as the tensor arithmetic
        weights = [0.5 if interpolation == "midpoint" else r - b for r, b in zip(ranks, below, strict=True)]
        picked = ordered.index_select(0, torch.tensor(below + above))
        return torch.lerp(picked[: len(ranks)], picked[len(ranks) :], torch.tensor(weights, dtype=dtype))
    if interpolation == "lower":
        index = [math.floor(r) for r in ranks]
    elif interpolation == "higher":
        index = [math.ceil(r) for r in ranks]
    else:  # "nearest": Python's round() on a float is round-half-even, like torch.round
        index = [round(r) for r in ranks]
    if len(index) == 1:  # a view: no operation at all
        return ordered.narrow(0, index[0], 1)
    return ordered.index_select(0, torch.tensor(index))


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


#: Pools up to this size are simply sorted (selection only pays off on large pools).
SORT_MAX = 1 << 15


def order_statistics(x_t: Tensor, member_t: Tensor, ranks: Tensor) -> Tensor:
    """The ``ranks[r, c]``-th smallest member of each row ``c`` of ``x_t`` (0-based), for every ``r``.

    Small pools (``M <= SORT_MAX``) are sorted. Otherwise the cheapest exact selection is used:
    one ``topk`` for ranks near the top of the population (budget thresholds), one
    ``kthvalue`` per remaining rank row (padding each row with ``-inf`` so that every class's
    rank lands on the same position), and a full sort only when that padding is impossible.

    Args:
        x_t: ``[C, M]`` scores.
        member_t: ``[C, M]`` bool population of each row.
        ranks: ``[R, C]`` long ranks in ``[0, count_c)`` (any value for empty rows).

    Returns:
        ``[R, C]`` values (arbitrary for empty rows).
    """
    m = x_t.shape[1]
    x_t, member_t = x_t.contiguous(), member_t.contiguous()  # selection along contiguous rows is faster
    if m <= SORT_MAX:
        return x_t.masked_fill(~member_t, float("inf")).sort(dim=1).values.gather(1, ranks.clamp_min(0).t()).t()
    counts = member_t.sum(1)
    out = x_t.new_empty(ranks.shape)
    from_top = (counts - 1 - ranks).clamp_min(0)
    near_top = from_top.amax(1) < max(m // 8, 1)
    if bool(near_top.any()):
        k = int(from_top[near_top].max()) + 1
        top = x_t.masked_fill(~member_t, float("-inf")).topk(k, dim=1).values  # [C, k], descending
        out[near_top] = top.gather(1, from_top[near_top].t()).t()
    rest = (~near_top).nonzero().squeeze(1).tolist()
    if not rest:
        return out
    ranks = ranks.clamp_min(0)
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


#: A sigmoid term :math:`\sigma(x)` counts as saturated in the diagnostics when :math:`|x|` exceeds
#: this (its derivative is then below 1% of its peak value 1/4).
SATURATION = 6.0

#: A class whose reference dispersion (inter-quartile range, band width) is at or below this
#: has no spread to scale a temperature by.
MIN_DISPERSION = 1e-12


def pool_stats(pool: Pool) -> dict[str, Tensor]:
    """Diagnostics every ranking loss reports, each ``[C]``: ``pool_size``, ``pos_count``, ``neg_count``.

    ``pool_size`` counts the rows that take part in the class (``ignore_index`` rows and
    multi-label cells excluded).
    """
    return {
        "pool_size": (pool.pos | pool.neg).sum(0),
        "pos_count": pool.pos.sum(0),
        "neg_count": pool.neg.sum(0),
    }


def saturated_pair_fraction(
    scores: Tensor, queries: Tensor, keys: Tensor, width: Tensor, *, exclude_self: bool
) -> Tensor:
    r"""Per class, the fraction of (query, key) pairs with :math:`|s_i - s_j| > \mathrm{width}_c`.

    Pairs run over the ``queries [M, C]`` x ``keys [M, C]`` members of each class (a row's pair
    with itself left out when ``exclude_self``); ``width [C]`` is ``SATURATION`` times the
    class's temperature. Counted by binary search in the sorted keys: ``O(C M log M)``, no pair
    tensor. Classes without pairs get ``nan``.
    """
    s = scores.detach().t().contiguous()  # [C, M]
    width = width.detach().unsqueeze(1)
    sorted_keys = s.masked_fill(~keys.t(), float("inf")).sort(dim=1).values
    near = torch.searchsorted(sorted_keys, s + width, right=True) - torch.searchsorted(sorted_keys, s - width)
    q = queries.t()
    # A query that is also a key meets itself inside its window: not a pair when excluded.
    self_pair = (q & keys.t()).long() if exclude_self else torch.zeros_like(near)
    per_query = keys.sum(0).unsqueeze(1) - self_pair  # pairs of each query
    far = ((per_query - near + self_pair) * q).sum(1)
    total = (per_query * q).sum(1)
    return torch.where(total > 0, far.to(s.dtype) / total.clamp_min(1), float("nan"))


def saturated_threshold_fraction(pairs: Pairs, thresholds: Tensor, width: Tensor, num_classes: int) -> Tensor:
    r"""Per class, the fraction of (entry, threshold) terms with :math:`|s_i - t_{c,k}| > \mathrm{width}_c`.

    ``pairs`` are the entries of each class (e.g. its positives), ``thresholds [C, K]`` the
    detached thresholds each entry is compared with, ``width [C]`` ``SATURATION`` times the
    class's temperature. Classes without entries get ``nan``.
    """
    s = pairs.scores.detach().unsqueeze(1)
    far = (s - thresholds[pairs.cls]).abs() > width[pairs.cls].unsqueeze(1)  # [P, K]
    n_terms = class_sum(torch.full_like(pairs.scores.detach(), thresholds.shape[1]), pairs.cls, num_classes)
    fraction = safe_divide(class_sum(far.sum(1).to(n_terms.dtype), pairs.cls, num_classes), n_terms)
    return torch.where(n_terms > 0, fraction, float("nan"))


def reduce_classes(
    result: RankingResult,
    reduction: str,
    anchor: Tensor,
    class_weight: Tensor | None = None,
    *,
    checked_finite: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""Reduce a per-class result over its valid classes.

    Returns ``(loss, per_class)``: ``per_class`` is ``[C]`` with ``nan`` for invalid classes;
    ``loss`` is that vector for ``'none'``, otherwise :func:`reduce_valid`.
    """
    per_class = torch.where(result.valid, result.loss, float("nan"))
    if reduction == "none":
        return per_class, per_class
    return reduce_valid(result, reduction, anchor, class_weight, checked_finite=checked_finite), per_class


def reduce_valid(
    result: RankingResult,
    reduction: str,
    anchor: Tensor,
    class_weight: Tensor | None = None,
    *,
    checked_finite: bool = False,
) -> Tensor:
    r"""The sum (``'sum'``) or mean (``'mean'``) of a per-class result over its valid classes :math:`V`.

    Weighted by ``class_weight`` :math:`w` when given: :math:`\sum_{c \in V} w_c L_c` and
    :math:`\sum_{c \in V} w_c L_c / \sum_{c \in V} w_c`. When no class is valid the scalar is a
    zero still connected to ``anchor``'s graph (``anchor``'s sum enters with weight 0, so a
    non-finite ``anchor`` still shows). The sum is taken in the loss's dtype: float16 logits
    that are finite but sum past 65504 must not turn the loss into ``0 * inf = nan``.

    ``checked_finite`` says that the logits (``anchor``) were checked finite (``validate_args``):
    the anchor's term can then only be zero, or ``nan`` from an overflowing sum, and it is left
    out whenever the per-class loss is itself connected to the graph (the same values and
    gradients, with fewer operations forward and backward).
    """
    kept = torch.where(result.valid, result.loss, 0.0)
    if class_weight is None:  # weights 1 on the valid classes: nothing to multiply; den counts them
        if kept.shape[0] == 1:  # one class: its loss or 0 is the sum, and the mean too (a count of 1)
            return _anchored(kept.reshape(()), result, anchor, checked_finite)
        total = _anchored(kept.sum(), result, anchor, checked_finite)
        # an integer count >= 1 (exact in any float dtype): the same quotient as a float one
        return total if reduction == "sum" else total / result.valid.sum().clamp_min(1)
    w = result.valid.to(result.loss.dtype) * class_weight.to(device=result.loss.device, dtype=result.loss.dtype)
    total = _anchored((kept * w).sum(), result, anchor, checked_finite)
    if reduction == "sum":
        return total
    den = w.sum()
    return total / torch.where(den > 0, den, 1.0)


def _anchored(total: Tensor, result: RankingResult, anchor: Tensor, checked_finite: bool) -> Tensor:
    """``total + 0 * anchor.sum()`` (see :func:`reduce_valid`), or ``total`` when the term is not needed."""
    if checked_finite and result.loss.requires_grad:
        return total
    return torch.add(total, anchor.sum(dtype=result.loss.dtype), alpha=0.0)


def package(
    result: RankingResult,
    *,
    reduction: str,
    anchor: Tensor,
    return_per_class: bool,
    return_diagnostics: bool = False,
    class_weight: Tensor | None = None,
    checked_finite: bool = False,
) -> Any:
    """Reduce a result and assemble the public return form.

    ``loss``; ``(loss, per_class, valid)`` with ``return_per_class``; ``(loss, stats)`` with
    ``return_diagnostics``; ``(loss, per_class, valid, stats)`` with both. ``checked_finite``:
    see :func:`reduce_valid`.
    """
    if return_per_class or reduction == "none":
        loss, per_class = reduce_classes(result, reduction, anchor, class_weight, checked_finite=checked_finite)
    else:  # the per-class vector is not returned: not built
        loss = per_class = reduce_valid(result, reduction, anchor, class_weight, checked_finite=checked_finite)
    if torch.is_grad_enabled() and not loss.requires_grad:
        # Logits without a graph (e.g. a quick check on torch.randn): the loss is a constant, but
        # `loss.backward()` must still work, as it does for a model's output.
        loss = loss.detach().requires_grad_()
        per_class = loss if reduction == "none" else per_class
    out: tuple[Any, ...] = (loss,)
    if return_per_class:
        out += (per_class, result.valid)
    if return_diagnostics:
        out += (result.stats,)
    return out if len(out) > 1 else loss
