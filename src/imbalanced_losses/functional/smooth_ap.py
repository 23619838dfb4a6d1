r"""Smooth-AP: a differentiable surrogate of average precision."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._validation import check_float
from ._arith import HOST_ROUNDING, host_safe_reciprocal, safe_reciprocal
from ._constants import device_constant
from ._diagnostics import SATURATION, pool_stats, saturated_pair_fraction
from ._exact_metrics import average_precision_from_masks
from ._pairs import QueryParams, pair_sums
from ._plan import host_bookkeeping
from ._pool import Pool, positive_weights
from ._reduce import RankingResult, host_valid_result
from ._run import run_functional


def _ap_objective(r: Tensor, params: QueryParams) -> tuple[Tensor, Tensor]:
    r"""Per positive ``w / den * R_pos / R_all`` and its slope in the (negative, positive) key sums.

    ``r[..., 0]`` sums over negative keys, ``r[..., 1]`` over positive keys (the self term
    :math:`\sigma(0) = 1/2` included, so ``R_pos = r_pos + 1/2`` adds the other half); the
    class constant is ``1 / den``. Disjoint channels keep the slopes free of cancellation:
    ``d/dr_pos = coef * r_neg / R_all^2``.
    """
    coef = params.weighted(params.consts[..., 0])
    r_neg, r_pos = r[..., 0], r[..., 1] + 0.5
    r_all = r_neg + r_pos
    value = coef * r_pos / r_all
    return value, torch.stack([-value / r_all, coef * r_neg / r_all**2], dim=-1)


def smooth_ap_core(pool: Pool, *, temperature: float | Tensor, diagnostics: bool = False) -> RankingResult:
    r"""Per-class Smooth-AP loss ``1 - AP_c`` on a pool (no reduction).

    For the positives :math:`k` of class :math:`c`,
    :math:`R_{all}(k) = \tfrac12 + \sum_{j \in c} \sigma((s_j - s_k)/\tau)` over the class's
    members (the self term :math:`\sigma(0)` included, hence :math:`\tfrac12`) and
    :math:`R_{pos}(k)` likewise over its positives. The sums run through the memory-bounded
    kernel :func:`~imbalanced_losses.functional._pairs.pair_sums` (no ``[|P|, M]`` tensor).
    With ``diagnostics`` the result carries :func:`smooth_ap_stats`.
    """
    scores, pos, neg, weight = pool.scores, pool.pos, pool.neg, pool.weight
    if host_bookkeeping(scores, weight, diagnostics):
        return _one_column(scores, pos, neg, temperature)
    den = positive_weights(pos, weight, scores.dtype).sum(0)
    tau = scores.new_ones(scores.shape[1]) * temperature  # a float or a 0-d tensor (no host sync)
    has_weight = den > 0  # den > 0 implies a positive
    inv_den = safe_reciprocal(den, has_weight).unsqueeze(1)
    ap = pair_sums(
        scores, tau, torch.stack([neg, pos], dim=2), pos, weight, inv_den, _ap_objective, queries_are_keys=True
    ).per_class
    valid = neg.any(0) & has_weight
    return RankingResult(1.0 - ap, valid, smooth_ap_stats(pool, tau) if diagnostics else None)


def _one_column(scores: Tensor, pos: Tensor, neg: Tensor, temperature: float | Tensor) -> RankingResult:
    """:func:`smooth_ap_core` of one unweighted column, its temperature, count and validity read on the host.

    Small binary pools are dominated by the fixed cost of each operation, and a host read is
    free on the CPU (:func:`~._plan.host_bookkeeping`): the per-class values are Python numbers,
    rounded to the scores' dtype as the tensor arithmetic rounds them (``1 / count`` is one
    correctly rounded division), so the result is the same, bitwise, with about eight
    operations fewer (``tests/test_host_scalars.py``).
    """
    dtype, device = scores.dtype, scores.device
    count = int(pos.count_nonzero())
    # the two constants, cached by value (a fresh tensor from numbers costs several operations' time)
    tau = device_constant((HOST_ROUNDING[dtype](float(temperature)),), dtype, device)
    class_params = device_constant(((host_safe_reciprocal(count, dtype),),), dtype, device)
    keys = torch.stack([neg, pos], dim=2)
    ap = pair_sums(scores, tau, keys, pos, None, class_params, _ap_objective, queries_are_keys=True).per_class
    return host_valid_result(torch.rsub(ap, 1.0), count > 0 and bool(neg.any()))


def smooth_ap_stats(pool: Pool, tau: Tensor) -> dict[str, Tensor]:
    """Diagnostics of Smooth-AP: the pool counts, the exact ``ap`` and ``saturated_fraction`` per class.

    ``ap`` is :func:`imbalanced_losses.metrics.average_precision` on the pool (unweighted);
    ``saturated_fraction`` counts the (positive, member) pairs whose sigmoid
    argument exceeds ``SATURATION`` in magnitude.
    """
    stats = pool_stats(pool)
    stats["ap"] = average_precision_from_masks(pool.scores, pool.pos, pool.neg)
    stats["saturated_fraction"] = saturated_pair_fraction(
        pool.scores, pool.pos, pool.pos | pool.neg, SATURATION * tau, exclude_self=True
    )
    return stats


def smooth_ap_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    temperature: float = 0.01,
    reduction: str = "mean",
    ignore_index: int = -100,
    sample_weight: Tensor | None = None,
    class_weight: Tensor | Sequence[float] | None = None,
    return_per_class: bool = False,
    return_diagnostics: bool = False,
    validate_args: bool = True,
) -> Any:
    r"""Smooth-AP loss, one-vs-rest per class, on a pool of scored rows.

    For each class :math:`c` with positives :math:`P_c` and soft ranks
    :math:`R_{all}(k), R_{pos}(k)` (see :func:`smooth_ap_core`):

    .. math::
        \mathrm{AP}_c = \frac{\sum_{k \in P_c} w_k\, R_{pos}(k) / R_{all}(k)}{\sum_{k \in P_c} w_k},
        \qquad L_c = 1 - \mathrm{AP}_c \in [0, 1)

    with :math:`w_k = 1` when ``sample_weight`` is ``None``. As :math:`\tau \to 0` on tie-free
    scores, :math:`\mathrm{AP}_c` tends to the exact average precision.

    Args:
        logits: ``[M, C]`` scores (``C = 1`` is binary mode).
        targets: ``[M]`` (or ``[M, 1]``) class ids in ``[0, C)``; in binary mode ``{0, 1}``
            (any non-zero value counts as positive); or a multi-hot ``[M, C]`` (multi-label,
            cells in ``{0, 1}``). Rows (multi-label: cells) equal to ``ignore_index`` are excluded.
        temperature: Sigmoid temperature :math:`\tau`, in logit units, ``>= 1e-20`` (smaller
            ones overflow ``1 / tau`` in float32).
        reduction: ``'mean'`` (over valid classes), ``'sum'`` or ``'none'`` (``[C]``, ``nan``
            for invalid classes).
        ignore_index: Target value of rows to leave out.
        sample_weight: Optional ``[M]`` non-negative weights; only positives' weights matter.
        class_weight: Optional ``[C]`` non-negative class weights: weighted mean (or sum) over
            the valid classes; a class of weight 0 is not computed (``nan``, invalid).
        return_per_class: Also return ``per_class [C]`` and ``valid [C]``.
        return_diagnostics: Also return a dict: ``pool_size`` (rows taking part), ``pos_count``,
            ``neg_count``, ``ap`` (exact average precision on the pool) and
            ``saturated_fraction`` (pairs with :math:`|s_j - s_k| > 6\tau`), each ``[C]``.
        validate_args: Run the checks that need a host synchronisation (finite logits,
            target range). Shape and dtype checks always run.

    Returns:
        ``loss`` (0-d, or ``[C]`` for ``'none'``), ``(loss, per_class, valid)``,
        ``(loss, stats)`` or ``(loss, per_class, valid, stats)``. A class is
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
    return run_functional(
        logits,
        targets,
        lambda pool: smooth_ap_core(pool, temperature=temperature, diagnostics=return_diagnostics),
        reduction=reduction,
        ignore_index=ignore_index,
        sample_weight=sample_weight,
        class_weight=class_weight,
        return_per_class=return_per_class,
        return_diagnostics=return_diagnostics,
        validate_args=validate_args,
    )
