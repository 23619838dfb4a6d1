r"""Smooth-AP: a differentiable surrogate of average precision."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._validation import check_bool, check_float
from ._common import (
    Pool,
    RankingResult,
    check_common,
    functional_pool,
    package,
    pair_class_mean,
    positive_weights,
    rows_for_pairs,
)


def smooth_ap_soft_ranks(
    scores: Tensor, pos: Tensor, member: Tensor, temperature: float
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Soft ranks of every (class, positive) pair of the pool.

    For the positives ``k`` of class ``c`` (pairs taken in class-major order):

    .. math::
        R_{all}(k) = 1 + \sum_{j \ne k,\, j \in c} \sigma\!\left(\frac{s_j - s_k}{\tau}\right), \qquad
        R_{pos}(k) = 1 + \sum_{j \ne k,\, j \in P_c} \sigma\!\left(\frac{s_j - s_k}{\tau}\right)

    The self term is :math:`\sigma(0) = 1/2` exactly and carries no gradient, so it is summed
    with the others and ``1/2`` is added instead of ``1``.

    Args:
        scores: ``[M, C]`` scores.
        pos: ``[M, C]`` bool positives.
        member: ``[M, C]`` bool rows that take part in each class (positives and negatives).
        temperature: :math:`\tau > 0`.

    Returns:
        ``(pair_class [P], r_pos [P], r_all [P])`` for the ``P`` (class, positive) pairs.
    """
    # Non-members get a score of -inf: their sigmoid terms are exactly 0 and carry no gradient.
    z = (scores / temperature).masked_fill(~member, float("-inf")).t().contiguous()  # [C, M]
    pair_class, pair_row = pos.t().nonzero(as_tuple=True)
    z_k = z[pair_class, pair_row].unsqueeze(1)
    sig = torch.sigmoid(rows_for_pairs(z, pair_class) - z_k)  # [P, M]
    r_all = 0.5 + sig.sum(1)
    r_pos = 0.5 + (sig @ pos.to(sig.dtype)).gather(1, pair_class.unsqueeze(1)).squeeze(1)
    return pair_class, r_pos, r_all


def smooth_ap_core(pool: Pool, *, temperature: float) -> RankingResult:
    """Per-class Smooth-AP loss ``1 - AP_c`` on a pool (no reduction)."""
    scores, pos, neg, weight = pool
    pair_class, r_pos, r_all = smooth_ap_soft_ranks(scores, pos, pos | neg, temperature)
    pos_w = positive_weights(pos, weight, scores.dtype)  # [M, C]
    w_pairs = pos_w.t()[pos.t()]  # same class-major order as the pairs
    den = pos_w.sum(0)
    ap = pair_class_mean(r_pos / r_all, pair_class, w_pairs, den)
    valid = pos.any(0) & neg.any(0) & (den > 0)
    return RankingResult(1.0 - ap, valid)


def smooth_ap_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    temperature: float = 0.01,
    reduction: str = "mean",
    ignore_index: int = -100,
    sample_weight: Tensor | None = None,
    return_per_class: bool = False,
    validate_args: bool = True,
) -> Any:
    r"""Smooth-AP loss, one-vs-rest per class, on a pool of scored rows.

    For each class :math:`c` with positives :math:`P_c` and soft ranks
    :math:`R_{all}(k), R_{pos}(k)` (see :func:`smooth_ap_soft_ranks`):

    .. math::
        \mathrm{AP}_c = \frac{\sum_{k \in P_c} w_k\, R_{pos}(k) / R_{all}(k)}{\sum_{k \in P_c} w_k},
        \qquad L_c = 1 - \mathrm{AP}_c \in [0, 1)

    with :math:`w_k = 1` when ``sample_weight`` is ``None``. As :math:`\tau \to 0` on tie-free
    scores, :math:`\mathrm{AP}_c` tends to the exact average precision.

    Args:
        logits: ``[M, C]`` scores (``C = 1`` is binary mode).
        targets: ``[M]`` (or ``[M, 1]``) class ids in ``[0, C)``; in binary mode ``{0, 1}``
            (any non-zero value counts as positive). Rows equal to ``ignore_index`` are excluded.
        temperature: Sigmoid temperature :math:`\tau`, in logit units.
        reduction: ``'mean'`` (over valid classes), ``'sum'`` or ``'none'`` (``[C]``, ``nan``
            for invalid classes).
        ignore_index: Target value of rows to leave out.
        sample_weight: Optional ``[M]`` non-negative weights; only positives' weights matter.
        return_per_class: Also return ``per_class [C]`` and ``valid [C]``.
        validate_args: Run the checks that need a host synchronisation (finite logits,
            target range). Shape and dtype checks always run.

    Returns:
        ``loss`` (0-d, or ``[C]`` for ``'none'``), or ``(loss, per_class, valid)``. A class is
        invalid (``nan``, excluded from the mean) when it has no positive, no negative, or
        zero positive weight; with no valid class the scalar is a graph-connected zero.

    Raises:
        ValueError: On a bad shape, out-of-range class id, non-finite logit or bad option.
        TypeError: On a non-tensor input or non-float logits.

    Example:
        >>> import torch
        >>> from imbalanced_losses.functional import smooth_ap_loss
        >>> logits = torch.tensor([[2.0], [1.0], [-1.0], [0.5]])
        >>> targets = torch.tensor([1, 0, 0, 1])
        >>> round(smooth_ap_loss(logits, targets, temperature=1e-3).item(), 4)  # AP = (1 + 2/3) / 2
        0.1667
    """
    temperature = check_float("temperature", temperature, low=0.0)
    check_common(reduction=reduction)
    check_bool("return_per_class", return_per_class)
    pool = functional_pool(
        logits, targets, ignore_index=ignore_index, sample_weight=sample_weight, validate_args=validate_args
    )
    result = smooth_ap_core(pool, temperature=temperature)
    return package(result, reduction=reduction, anchor=logits, return_per_class=return_per_class)
