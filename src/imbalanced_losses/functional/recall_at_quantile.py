r"""Soft recall above a score quantile: recall inside a top-``q`` alert budget."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._validation import INTERPOLATIONS, check_choice, check_float
from ._common import (
    SATURATION,
    Pool,
    RankingResult,
    masked_column_quantiles,
    pool_stats,
    safe_divide,
    saturated_threshold_fraction,
    select_pairs,
)
from ._run import run_functional


def recall_at_quantile_core(
    pool: Pool, *, quantile: float, temperature: float, interpolation: str = "higher", diagnostics: bool = False
) -> RankingResult:
    """Per-class loss ``1 - soft recall`` above the detached ``1 - quantile`` score quantile (no reduction).

    The threshold of class ``c`` is taken over every row of the pool that takes part in ``c``
    (positives and negatives alike), with :func:`torch.quantile`'s interpolation rules.
    With ``diagnostics`` the result carries the pool counts, ``threshold``, the exact
    ``recall`` (:func:`imbalanced_losses.metrics.recall_at_quantile` on the pool) and the
    ``saturated_fraction`` of the positives' sigmoid terms, each ``[C]``.
    """
    scores, pos, neg, weight = pool
    thresholds, _ = masked_column_quantiles(scores, pos | neg, [1.0 - quantile], interpolation)
    theta = torch.nan_to_num(thresholds[0], nan=0.0)  # [C]; empty columns are invalid anyway
    pairs = select_pairs(pos, scores, weight)  # only positives enter the numerator
    soft_hits = torch.sigmoid((pairs.scores - pairs.per_entry(theta)) / temperature)
    c = scores.shape[1]
    den = pairs.total_weight(pos.sum(0), scores.dtype)
    recall = safe_divide(pairs.weighted_sum(soft_hits, c), den)
    valid = den > 0  # implies a positive
    if not diagnostics:
        return RankingResult(1.0 - recall, valid)
    from ..metrics import recall_at_quantile_from_masks

    stats = pool_stats(pool)
    stats["threshold"] = thresholds[0]
    stats["recall"] = recall_at_quantile_from_masks(scores, pos, neg, quantile=quantile, interpolation=interpolation)
    width = torch.full_like(theta, SATURATION * temperature)
    stats["saturated_fraction"] = saturated_threshold_fraction(pairs, theta.unsqueeze(1), width, c)
    return RankingResult(1.0 - recall, valid, stats)


def recall_at_quantile_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    quantile: float = 0.005,
    temperature: float = 0.01,
    quantile_interpolation: str = "higher",
    reduction: str = "mean",
    ignore_index: int = -100,
    sample_weight: Tensor | None = None,
    class_weight: Tensor | Sequence[float] | None = None,
    return_per_class: bool = False,
    return_diagnostics: bool = False,
    validate_args: bool = True,
) -> Any:
    r"""Recall-at-quantile loss: one minus the soft recall of the top ``quantile`` of the pool.

    For each class :math:`c`, with the detached threshold
    :math:`\theta_c = Q_{1-q}(\{s_j\})` over the pooled column:

    .. math::
        \mathrm{rec}_c = \frac{\sum_{i \in P_c} w_i\, \sigma\!\left((s_i - \theta_c)/\tau\right)}
                              {\sum_{i \in P_c} w_i}, \qquad L_c = 1 - \mathrm{rec}_c \in [0, 1]

    As :math:`\tau \to 0`, :math:`\mathrm{rec}_c` tends to the fraction of positives scored
    above :math:`\theta_c`. Only positives receive gradient (the threshold is detached).

    Args:
        logits: ``[M, C]`` scores (``C = 1`` is binary mode).
        targets: ``[M]`` class ids (binary: ``{0, 1}``) or a multi-hot ``[M, C]``
            (multi-label); ``ignore_index`` rows (multi-label: cells) are excluded.
        quantile: Budget :math:`q \in (0, 1)`, e.g. ``0.005`` for the top 50 bps.
        temperature: Sigmoid temperature :math:`\tau`, in logit units.
        quantile_interpolation: :func:`torch.quantile` interpolation: ``linear``, ``lower``,
            ``higher`` (default; never below the exact order statistic), ``nearest``, ``midpoint``.
        reduction: ``'mean'``, ``'sum'`` or ``'none'``.
        ignore_index: Target value of rows to leave out.
        sample_weight: Optional ``[M]`` weights; only positives' weights matter.
        class_weight: Optional ``[C]`` non-negative class weights: weighted mean (or sum) over
            the valid classes; a class of weight 0 is not computed (``nan``, invalid).
        return_per_class: Also return ``per_class [C]`` and ``valid [C]``.
        return_diagnostics: Also return a dict: ``pool_size`` (rows taking part), ``pos_count``,
            ``neg_count``, ``threshold`` (:math:`\theta_c`), ``recall`` (exact, on the pool)
            and ``saturated_fraction`` (positives with :math:`|s_i - \theta_c| > 6\tau`), each ``[C]``.
        validate_args: Run the checks that need a host synchronisation.

    Returns:
        ``loss``, ``(loss, per_class, valid)``, ``(loss, stats)`` or
        ``(loss, per_class, valid, stats)``. A class is invalid when it has no positive
        (or zero positive weight); an all-positive pool is valid.

    Raises:
        ValueError: On a bad shape, out-of-range class id, non-finite logit or bad option.
        TypeError: On a non-tensor input or non-float logits.

    Example:
        >>> import torch
        >>> from imbalanced_losses.functional import recall_at_quantile_loss
        >>> logits = torch.arange(10.0).unsqueeze(1)  # scores 0..9
        >>> targets = (torch.arange(10) >= 8).long()   # the two best rows are positive
        >>> recall_at_quantile_loss(logits, targets, quantile=0.3, temperature=1e-3).item()
        0.0
    """
    quantile = check_float("quantile", quantile, low=0.0, high=1.0)
    temperature = check_float("temperature", temperature, low=0.0)
    check_choice("quantile_interpolation", quantile_interpolation, INTERPOLATIONS)
    return run_functional(
        logits,
        targets,
        lambda pool: recall_at_quantile_core(
            pool,
            quantile=quantile,
            temperature=temperature,
            interpolation=quantile_interpolation,
            diagnostics=return_diagnostics,
        ),
        reduction=reduction,
        ignore_index=ignore_index,
        sample_weight=sample_weight,
        class_weight=class_weight,
        return_per_class=return_per_class,
        return_diagnostics=return_diagnostics,
        validate_args=validate_args,
    )
