r"""Soft recall above a score quantile: recall inside a top-``q`` alert budget."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._validation import INTERPOLATIONS, check_bool, check_choice, check_float
from ._diagnostics import SATURATION, pool_stats, saturated_threshold_fraction
from ._exact_metrics import recall_at_quantile_from_masks
from ._pool import Pool, select_pairs
from ._reduce import RankingResult, host_valid_result
from ._run import run_functional
from ._soft_threshold import Knots, soft_crossings

#: ``temperature`` units: a multiple of the pool's inter-quartile range, or logits (0.6). A
#: class whose inter-quartile range is at most ``MIN_DISPERSION`` takes it in logits.
RECALL_TAU_SCALES = ("iqr", "logit")


def recall_at_quantile_core(
    pool: Pool,
    *,
    quantile: float,
    temperature: float | Tensor,
    interpolation: str = "higher",
    detach_thresholds: bool = False,
    tau_scale: str = "iqr",
    diagnostics: bool = False,
) -> RankingResult:
    """Per-class loss ``1 - soft recall`` above the ``1 - quantile`` score quantile (no reduction).

    The threshold of class ``c`` (and, for ``tau_scale='iqr'``, the quartiles that scale the
    temperature) are taken over every row of the pool that takes part in ``c`` (positives and
    negatives alike), with :func:`torch.quantile`'s interpolation rules; unless
    ``detach_thresholds``, their gradient reaches the negatives around them
    (:mod:`~imbalanced_losses.functional._soft_threshold`).
    With ``diagnostics`` the result carries the pool counts, ``threshold``, ``tau_eff``, the exact
    ``recall`` (:func:`imbalanced_losses.metrics.recall_at_quantile` on the pool) and the
    ``saturated_fraction`` of the positives' sigmoid terms, each ``[C]``.
    """
    scores, pos, neg, weight = pool.scores, pool.pos, pool.neg, pool.weight
    c = scores.shape[1]
    iqr = tau_scale == "iqr"
    knots = Knots(
        levels=(1.0 - quantile, 0.75, 0.25) if iqr else (1.0 - quantile,), weights=(1.0,), scale=(1, 2) if iqr else None
    )
    out = soft_crossings(
        scores,
        ref=None if pool.all_rows else pos | neg,  # None: every row, known on the host
        numer=pos,  # only positives enter the numerator
        spread=None if detach_thresholds else neg,  # the thresholds' gradient reaches the negatives
        weight=weight,
        knots=knots,
        temperature=temperature,
        interpolation=interpolation,
        host=not diagnostics,  # the diagnostics read tau as a tensor
    )
    if out.host is not None:  # one column: its total weight is a number
        return host_valid_result(out.loss, out.host.den > 0)  # a positive of positive weight
    assert out.den is not None  # the tensor road
    valid = out.den > 0  # implies a positive
    if not diagnostics:
        return RankingResult(out.loss, valid)
    assert out.tau is not None  # the tensor road
    stats = pool_stats(pool)
    theta = out.thresholds[0]
    stats["threshold"] = theta
    stats["tau_eff"] = torch.where(valid, out.tau, float("nan"))
    stats["recall"] = recall_at_quantile_from_masks(scores, pos, neg, quantile=quantile, interpolation=interpolation)
    pairs = select_pairs(pos, scores.detach(), weight)
    width = SATURATION * out.tau
    stats["saturated_fraction"] = saturated_threshold_fraction(
        pairs, torch.nan_to_num(theta, nan=0.0).unsqueeze(1), width, c
    )
    return RankingResult(out.loss, valid, stats)


def recall_at_quantile_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    quantile: float = 0.005,
    temperature: float = 0.1,
    quantile_interpolation: str = "higher",
    reduction: str = "mean",
    ignore_index: int = -100,
    sample_weight: Tensor | None = None,
    class_weight: Tensor | Sequence[float] | None = None,
    return_per_class: bool = False,
    return_diagnostics: bool = False,
    validate_args: bool = True,
    tau_scale: str = "iqr",
    detach_thresholds: bool = False,
) -> Any:
    r"""Recall-at-quantile loss: one minus the soft recall of the top ``quantile`` of the pool.

    For each class :math:`c`, with the threshold :math:`\theta_c = Q_{1-q}(\{s_j\})` and the
    temperature :math:`\tau_c = \tau\,(Q_{0.75} - Q_{0.25})` over the pooled column:

    .. math::
        \mathrm{rec}_c = \frac{\sum_{i \in P_c} w_i\, \sigma\!\left((s_i - \theta_c)/\tau_c\right)}
                              {\sum_{i \in P_c} w_i}, \qquad L_c = 1 - \mathrm{rec}_c \in [0, 1]

    As :math:`\tau \to 0`, :math:`\mathrm{rec}_c` tends to the fraction of positives scored
    above :math:`\theta_c`.

    **Gradient.** :math:`\theta_c` and the quartiles keep their exact values, but each passes
    its gradient on to the negatives :math:`N_c` around it, as the implicit derivative of a
    kernel-smoothed quantile does:

    .. math::
        \frac{\partial \theta_c}{\partial s_j} =
        \frac{\sigma'((s_j - \theta_c)/\tau_c)}{\sum_{k \in N_c} \sigma'((s_k - \theta_c)/\tau_c)},
        \quad j \in N_c .

    The weights sum to one, so the gradient of a column sums to zero: lifting every score
    together gains nothing, and the negatives at the cut are pushed down as the positives
    are pushed up. With the quartiles attached the same way the loss is (nearly) blind to a
    common rescaling too. Treating the thresholds as constants (``detach_thresholds=True``,
    0.6's gradient) lifts positives only; under a shared network that lifts every score, the
    threshold follows and the logit scale runs away.

    Args:
        logits: ``[M, C]`` scores (``C = 1`` is binary mode).
        targets: ``[M]`` class ids (binary: ``{0, 1}``) or a multi-hot ``[M, C]``
            (multi-label); ``ignore_index`` rows (multi-label: cells) are excluded.
        quantile: Budget :math:`q \in (0, 1)`, e.g. ``0.005`` for the top 50 bps.
        temperature: Sigmoid temperature :math:`\tau`: a multiple of the inter-quartile range
            of the pooled scores (``tau_scale='iqr'``) or logits (``'logit'``).
        quantile_interpolation: :func:`torch.quantile` interpolation: ``linear``, ``lower``,
            ``higher`` (default; never below the exact order statistic), ``nearest``, ``midpoint``.
        reduction: ``'mean'``, ``'sum'`` or ``'none'``.
        ignore_index: Target value of rows to leave out.
        sample_weight: Optional ``[M]`` weights; only positives' weights matter.
        class_weight: Optional ``[C]`` non-negative class weights: weighted mean (or sum) over
            the valid classes; a class of weight 0 is not computed (``nan``, invalid).
        return_per_class: Also return ``per_class [C]`` and ``valid [C]``.
        return_diagnostics: Also return a dict: ``pool_size`` (rows taking part), ``pos_count``,
            ``neg_count``, ``threshold`` (:math:`\theta_c`), ``tau_eff`` (:math:`\tau_c`, ``nan``
            for an invalid class), ``recall`` (exact, on the pool) and ``saturated_fraction``
            (positives with :math:`|s_i - \theta_c| > 6\tau_c`), each ``[C]``.
        validate_args: Run the checks that need a host synchronisation.
        tau_scale: ``'iqr'`` (default; logit units for a class whose inter-quartile range is
            ``<= 1e-12``) or ``'logit'`` (0.6).
        detach_thresholds: Treat the threshold and quartiles as constants (0.6's gradient).
            ``tau_scale='logit', detach_thresholds=True, temperature=0.01`` is 0.6's loss.

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
    check_choice("tau_scale", tau_scale, RECALL_TAU_SCALES)
    check_bool("detach_thresholds", detach_thresholds)
    return run_functional(
        logits,
        targets,
        lambda pool: recall_at_quantile_core(
            pool,
            quantile=quantile,
            temperature=temperature,
            interpolation=quantile_interpolation,
            detach_thresholds=detach_thresholds,
            tau_scale=tau_scale,
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
