"""Per-class weights of the ranking losses (``class_weight``): validation, skipping, re-expansion.

A class of weight 0 is not computed at all: its columns are removed from the pool before the
core runs (:func:`restrict_pool`), and the result is put back on the full class axis
afterwards (:func:`expand_result`) with the class marked invalid (``nan`` under
``reduction='none'``). The remaining weights turn the reduction over classes into a weighted
mean (or sum); see :func:`~imbalanced_losses.functional._reduce.reduce_classes`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .._validation import check_weight_values
from ._pool import Pool
from ._reduce import RankingResult


class ClassWeight(NamedTuple):
    """A validated ``class_weight``."""

    weight: Tensor  # [C] float, finite, >= 0, not all zero
    keep: Tensor | None  # [C'] long ids of the classes with weight > 0; None when every class is kept


def check_class_weight(class_weight: Any, num_classes: int) -> ClassWeight | None:
    """Validate ``class_weight`` (``None``, a ``[C]`` tensor or a sequence of ``C`` real numbers).

    The result owns its memory: a tensor is copied, so later changes to the caller's tensor
    reach neither the weights nor the computed classes (``keep``) derived from them.

    Raises:
        TypeError: Not a tensor or a sequence of real numbers.
        ValueError: Wrong length, a negative or non-finite entry, or every entry zero.
    """
    if class_weight is None:
        return None
    if isinstance(class_weight, Tensor):
        weight = class_weight
    elif isinstance(class_weight, Sequence) and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in class_weight
    ):
        weight = torch.tensor([float(v) for v in class_weight])
    else:
        raise TypeError(
            f"`class_weight` must be a [C] tensor or a sequence of numbers, got {type(class_weight).__name__}."
        )
    weight = check_weight_values(weight, validate_args=True, name="class_weight")
    if weight.ndim != 1 or weight.shape[0] != num_classes:
        raise ValueError(
            f"`class_weight` must have shape [{num_classes}] (one weight per class), got {tuple(weight.shape)}."
        )
    # A copy in any case (check_weight_values only detaches): the caller keeps its tensor.
    weight = weight.clone() if weight.is_floating_point() else weight.float()
    positive = weight > 0
    if not bool(positive.any()):
        raise ValueError("`class_weight` must have at least one entry > 0, got all zeros.")
    keep = None if bool(positive.all()) else positive.nonzero().squeeze(1)
    return ClassWeight(weight, keep)


def restrict_pool(pool: Pool, keep: Tensor) -> Pool:
    """The pool's columns of the classes in ``keep`` only (rows are unchanged)."""
    keep = keep.to(pool.scores.device)
    return pool._replace(
        scores=pool.scores.index_select(1, keep), pos=pool.pos.index_select(1, keep), neg=pool.neg.index_select(1, keep)
    )


def _expand(values: Tensor, keep: Tensor, num_classes: int) -> Tensor:
    """Scatter ``values [C', ...]`` back to ``[C, ...]``; the skipped classes get ``nan`` (float) or 0."""
    fill = float("nan") if values.is_floating_point() else 0
    out = values.new_full((num_classes, *values.shape[1:]), fill)
    return out.index_copy(0, keep, values)


def expand_result(result: RankingResult, keep: Tensor, num_classes: int) -> RankingResult:
    """Put a result computed on the kept classes back on the full class axis (skipped: invalid)."""
    keep = keep.to(result.loss.device)
    stats = None
    if result.stats is not None:
        stats = {k: _expand(v, keep, num_classes) for k, v in result.stats.items()}
    loss = result.loss.new_zeros(num_classes).index_copy(0, keep, result.loss)
    valid = result.valid.new_zeros(num_classes).index_copy(0, keep, result.valid)
    degenerate = None if result.degenerate is None else _expand(result.degenerate, keep, num_classes)
    return RankingResult(loss, valid, stats, degenerate)


def run_on_classes(
    core: Callable[[Pool], RankingResult], pool: Pool, class_weight: ClassWeight | None
) -> RankingResult:
    """Run ``core`` on the classes of non-zero weight only, and return a full ``[C]`` result.

    The core runs with autocast disabled: the pool is already in its computation dtype
    (float32 for half-precision logits), and a matmul inside the kernels must not be demoted.
    (Entering the context costs more than a small call's arithmetic: it is skipped when
    autocast is off.)
    """
    if torch.is_autocast_enabled(pool.scores.device.type):
        with torch.autocast(pool.scores.device.type, enabled=False):
            return _run_on_classes(core, pool, class_weight)
    return _run_on_classes(core, pool, class_weight)


def _run_on_classes(
    core: Callable[[Pool], RankingResult], pool: Pool, class_weight: ClassWeight | None
) -> RankingResult:
    if class_weight is None or class_weight.keep is None:
        return core(pool)
    num_classes = pool.scores.shape[1]
    return expand_result(core(restrict_pool(pool, class_weight.keep)), class_weight.keep, num_classes)
