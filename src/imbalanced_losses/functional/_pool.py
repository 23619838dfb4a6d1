"""The ranking pool: validated batches, their class masks and the entries they select.

Every ranking loss works on a *pool* of ``M`` rows with ``C`` logit columns and scores each
class one-vs-rest. A pool is described by two boolean masks of shape ``[M, C]``:

* ``pos[j, c]``: row ``j`` is a positive of class ``c``;
* ``neg[j, c]``: row ``j`` is a negative of class ``c``.

A row that is neither (an ``ignore_index`` row) takes no part in class ``c``. All per-class
work is vectorised over ``C``; nothing here loops over classes in Python.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

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
from ._arith import class_sum, compute_dtype


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
    # ignore_index kept, every other non-zero target a positive: int64 (bool promotes)
    return torch.where(targets == ignore_index, targets.long(), targets != 0)


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
        column = ids.unsqueeze(1)  # one view for both masks
        return column == 1, column == 0
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
    # Known on the host: every row is a positive or a negative of every class (no ignored row
    # or cell), so a class's members are all M rows (False: unknown).
    all_rows: bool = False


def make_pool(scores: Tensor, ids: Tensor, weight: Tensor | None, ignore_index: int, *, all_rows: bool = False) -> Pool:
    """Assemble a :class:`Pool` from scores ``[M, C]``, normalised ids ``[M]`` and optional weights.

    ``all_rows`` promises that no row is an ``ignore_index`` row (ignored for multi-hot ids).
    """
    dtype = compute_dtype(scores)
    scores = scores.to(dtype)
    pos, neg = class_masks(ids, scores.shape[1], ignore_index)
    if weight is not None:
        weight = weight.to(device=scores.device, dtype=dtype)
    return Pool(scores, pos, neg, weight, all_rows and ids.ndim == 1)


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
