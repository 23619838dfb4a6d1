r"""Exact metric kernels on a pool: the hard quantities the ranking losses smooth, without validation.

The ``*_from_masks`` functions take ``scores [M, C]`` with boolean ``pos``/``neg`` ``[M, C]``
masks (as built by the losses) and score every class one-vs-rest, vectorised over ``C``. The
public metrics (:mod:`imbalanced_losses.metrics`) validate their inputs and call these; the
ranking losses call them for their diagnostics.

Cost: one sort of the ``[C, M]`` columns, ``O(C M log M)`` time and ``O(C M)`` memory.
Cumulative sums are accumulated in float64 (float32 on MPS).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._arith import compute_dtype
from ._quantiles import masked_column_quantiles

# ----------------------------------------------------------------------------------------------
# Shared pieces


def _detach(scores: Tensor, weight: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Scores detached in the computation dtype; the weights on their device in the accumulation dtype."""
    x = scores.detach()
    x = x.to(compute_dtype(x))
    if weight is not None:
        weight = weight.detach().to(device=x.device, dtype=_acc_dtype(x.device))
    return x, weight


def _acc_dtype(device: torch.device) -> torch.dtype:
    """Dtype of the cumulative sums: float64 wherever the device has it."""
    return torch.float32 if device.type == "mps" else torch.float64


def _cell_weights(mask: Tensor, weight: Tensor | None, dtype: torch.dtype) -> Tensor:
    """``[M, C]`` weight of each cell of ``mask`` (``w_j`` or 1 inside the mask, 0 outside)."""
    w = mask.to(dtype)
    return w if weight is None else w * weight.to(dtype).unsqueeze(1)


class _Curve:
    """Cumulative weighted TP/FP counts along each class column sorted by descending score.

    Attributes (all ``[C, M]`` except the totals):
        tpw: weight of the positive at each sorted position (0 for non-positives).
        tp, fp: inclusive cumulative positive / negative weight.
        end: index of the last position of each position's tie group (distinct threshold).
        tp_total, fp_total: ``[C]`` total positive / negative weight.
    """

    def __init__(self, x: Tensor, pos: Tensor, neg: Tensor, weight: Tensor | None) -> None:
        acc = _acc_dtype(x.device)
        member = (pos | neg).t()
        # Non-members sink to the end: they carry zero weight, so they never move a count.
        vals, order = x.t().masked_fill(~member, float("-inf")).sort(dim=1, descending=True, stable=True)
        self.tpw = _cell_weights(pos, weight, acc).t().gather(1, order)
        fpw = _cell_weights(neg, weight, acc).t().gather(1, order)
        self.tp = self.tpw.cumsum(1)
        self.fp = fpw.cumsum(1)
        self.tp_total = self.tp[:, -1]
        self.fp_total = self.fp[:, -1]
        c, m = vals.shape
        is_last = torch.ones_like(vals, dtype=torch.bool)
        is_last[:, :-1] = vals[:, :-1] != vals[:, 1:]
        idx = torch.arange(m, device=x.device).expand(c, m)
        # Smallest group end at or after each position: a reversed running minimum.
        self.end = torch.where(is_last, idx, m).flip(1).cummin(1).values.flip(1)


def _nan_result(x: Tensor) -> Tensor:
    return x.new_full((x.shape[1],), float("nan"))


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with ``nan`` where ``den <= 0`` (an undefined class)."""
    return torch.where(
        den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.full_like(num, float("nan"))
    )


# ----------------------------------------------------------------------------------------------
# Average precision


def average_precision_from_masks(
    scores: Tensor, pos: Tensor, neg: Tensor, *, sample_weight: Tensor | None = None
) -> Tensor:
    """Average precision of each column of a pool (no validation); see :func:`average_precision`.

    Args:
        scores: ``[M, C]`` scores.
        pos: ``[M, C]`` bool, positives of each class.
        neg: ``[M, C]`` bool, negatives of each class.
        sample_weight: Optional ``[M]`` non-negative row weights.

    Returns:
        ``[C]`` in the scores' computation dtype, ``nan`` where a class has no positive weight.
    """
    x, weight = _detach(scores, sample_weight)
    if x.shape[0] == 0:
        return _nan_result(x)
    curve = _Curve(x, pos, neg, weight)
    # Precision at each distinct threshold, read by every position of its tie group.
    precision = _ratio(curve.tp, curve.tp + curve.fp).nan_to_num(0.0).gather(1, curve.end)
    return _ratio((curve.tpw * precision).sum(1), curve.tp_total).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# Recall at quantile


def recall_at_quantile_from_masks(
    scores: Tensor,
    pos: Tensor,
    neg: Tensor,
    *,
    quantile: float,
    interpolation: str = "higher",
    sample_weight: Tensor | None = None,
) -> Tensor:
    """Hard recall above each column's ``1 - quantile`` quantile (no validation); see :func:`recall_at_quantile`.

    Args:
        scores: ``[M, C]`` scores.
        pos: ``[M, C]`` bool, positives of each class.
        neg: ``[M, C]`` bool, negatives of each class.
        quantile: Budget ``q`` in ``(0, 1)``.
        interpolation: :func:`torch.quantile` interpolation mode of the threshold.
        sample_weight: Optional ``[M]`` non-negative row weights.

    Returns:
        ``[C]``, ``nan`` where a class has no positive weight.
    """
    x, weight = _detach(scores, sample_weight)
    levels = torch.tensor([1.0 - quantile], dtype=x.dtype, device=x.device)
    theta = masked_column_quantiles(x, pos | neg, levels, interpolation)[0][0]  # [C]
    acc = _acc_dtype(x.device)
    hit = (x > theta).to(acc) + 0.5 * (x == theta).to(acc)
    w = _cell_weights(pos, weight, acc)
    return _ratio((w * hit).sum(0), w.sum(0)).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# Partial AUC


def _area_below(f: Tensor, t: Tensor, cum: Tensor, x: float) -> Tensor:
    """``[C]`` area under each piecewise-linear curve ``(f, t)`` (``[C, K]``, ``f`` sorted) over ``[0, x]``."""
    k_max = f.shape[1] - 1
    where = torch.full((f.shape[0], 1), x, dtype=f.dtype, device=f.device)
    k = (torch.searchsorted(f, where, right=True) - 1).clamp(0, k_max)  # last knot with f <= x
    k1 = (k + 1).clamp_max(k_max)
    fk, tk, f1, t1 = f.gather(1, k), t.gather(1, k), f.gather(1, k1), t.gather(1, k1)
    width = f1 - fk
    t_x = tk + (t1 - tk) * (x - fk) / torch.where(width > 0, width, torch.ones_like(width))
    t_x = torch.where(width > 0, t_x, tk)
    return (cum.gather(1, k) + (x - fk) * (tk + t_x) / 2).squeeze(1)


def partial_auc_from_masks(
    scores: Tensor,
    pos: Tensor,
    neg: Tensor,
    *,
    alpha: float = 0.0,
    beta: float = 1.0,
    normalize: str | None = "band",
    sample_weight: Tensor | None = None,
) -> Tensor:
    """Partial ROC AUC over FPR ``[alpha, beta]`` of each column (no validation); see :func:`partial_auc`.

    Args:
        scores: ``[M, C]`` scores.
        pos: ``[M, C]`` bool, positives of each class.
        neg: ``[M, C]`` bool, negatives of each class.
        alpha: Lower FPR edge, ``0 <= alpha < beta``.
        beta: Upper FPR edge, ``beta <= 1``.
        normalize: ``'band'``, ``'mcclish'`` or ``None``.
        sample_weight: Optional ``[M]`` non-negative row weights.

    Returns:
        ``[C]``, ``nan`` where a class has no positive or no negative weight.
    """
    x, weight = _detach(scores, sample_weight)
    if x.shape[0] == 0:
        return _nan_result(x)
    curve = _Curve(x, pos, neg, weight)
    # ROC vertices at the distinct thresholds; every position reads its group's end, so the
    # positions inside a tie group repeat one vertex (zero-length segments add no area).
    tpr = _ratio(curve.tp, curve.tp_total.unsqueeze(1)).nan_to_num(0.0).gather(1, curve.end)
    fpr = _ratio(curve.fp, curve.fp_total.unsqueeze(1)).nan_to_num(0.0).gather(1, curve.end)
    zero = fpr.new_zeros(fpr.shape[0], 1)
    f = torch.cat([zero, fpr], 1)  # starts at (0, 0)
    t = torch.cat([zero, tpr], 1)
    trapezoids = (f[:, 1:] - f[:, :-1]) * (t[:, 1:] + t[:, :-1]) / 2
    cum = torch.cat([zero, trapezoids.cumsum(1)], 1)
    area = _area_below(f, t, cum, beta) - (_area_below(f, t, cum, alpha) if alpha > 0 else 0.0)
    if normalize == "band":
        area = area / (beta - alpha)
    elif normalize == "mcclish":
        a_min, a_max = (beta**2 - alpha**2) / 2, beta - alpha
        area = 0.5 * (1.0 + (area - a_min) / (a_max - a_min))
    defined = (curve.tp_total > 0) & (curve.fp_total > 0)
    return torch.where(defined, area, torch.full_like(area, float("nan"))).to(x.dtype)
