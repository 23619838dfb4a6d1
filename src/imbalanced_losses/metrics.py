r"""Exact evaluation metrics on tensors: the hard quantities the ranking losses smooth.

Every metric scores each class one-vs-rest and is vectorised over classes (no Python loop
over ``C``, no per-class host synchronisation). Inputs follow the losses' conventions:

* ``scores``: ``[N]`` (binary) or ``[N, C]``; detached, half precision is computed in float32,
  float64 stays float64;
* ``targets``: ``[N]`` in ``{0, 1}`` when ``C == 1`` (a 1-D ``scores`` means ``C == 1``),
  ``[N]`` class ids in ``[0, C)`` when ``C > 1``, or a multi-hot ``[N, C]`` tensor (each cell
  0 or 1); ``ignore_index`` rows (cells, multi-label) take no part in that class.

Each function returns a 0-d tensor when ``scores`` is 1-D, otherwise ``[C]``, with ``nan`` for
a class on which the metric is undefined (no positive, or zero positive weight; the AUC also
needs a negative). The ``*_from_masks`` variants take a pool directly (``scores [M, C]``,
``pos``/``neg`` ``[M, C]`` bool masks, as built by the losses) and skip all validation.

Cost: one sort of the ``[C, M]`` columns (or one selection), ``O(C M log M)`` time and
``O(C M)`` memory. Cumulative sums are accumulated in float64 (float32 on MPS).
"""

from __future__ import annotations

import math
from typing import overload

import torch
from torch import Tensor

from ._validation import (
    INTERPOLATIONS,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_tensor,
)
from ._warnings import warn
from .functional._exact_metrics import (
    _detach,
    _nan_result,
    _ratio,
    average_precision_from_masks,
    partial_auc_from_masks,
    recall_at_quantile_from_masks,
)
from .functional._pool import class_masks, validate_batch
from .functional._quantiles import order_statistics

__all__ = ["average_precision", "budget_rows", "coverage_at_budget", "partial_auc", "recall_at_quantile"]

#: Accepted values of ``partial_auc(normalize=...)``.
NORMALIZATIONS = ("band", "mcclish", None)

#: Relative amount taken off the float64 product ``budget * n`` before its ceiling in
#: :func:`budget_rows`: 4 machine epsilons (2**-50), i.e. 4 to 8 units in the last place of the
#: product. Representing ``budget`` in binary and rounding the product err by at most about
#: 2 units in the last place, so a product meant to be an integer ``m`` (``0.07 * 100`` is
#: ``7.000000000000001``) lands strictly below ``m``, while any excess a float64 budget can
#: actually express (relative ``> 2**-50``) still adds its row.
BUDGET_ROWS_SLACK = 2.0**-50


# ----------------------------------------------------------------------------------------------
# Shared pieces


def _parse(
    scores: Tensor, targets: Tensor, sample_weight: Tensor | None, *, ignore_index: int, validate_args: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Validate a metric's inputs; returns ``(scores [N, C], pos, neg, weight)``."""
    check_int("ignore_index", ignore_index)
    check_bool("validate_args", validate_args)
    scores = check_tensor("scores", scores)
    if scores.ndim not in (1, 2):
        raise ValueError(f"`scores` must have shape [N] or [N, C], got shape {tuple(scores.shape)}.")
    scores2d = scores.detach()
    scores2d = scores2d.unsqueeze(1) if scores2d.ndim == 1 else scores2d

    def _warn(key: str, message: str) -> None:
        if key == "zero_weight":
            message = "`sample_weight` is entirely zero: no class has positive weight and every metric is nan."
        warn(message)

    scores2d, ids, weight, _ = validate_batch(
        scores2d,
        targets,
        sample_weight,
        num_classes=None,
        ignore_index=ignore_index,
        validate_args=validate_args,
        warn=_warn,
        name="scores",
    )
    pos, neg = class_masks(ids, scores2d.shape[1], ignore_index)
    return scores2d, pos, neg, weight


def _shape_like(result: Tensor, scores: Tensor) -> Tensor:
    return result.squeeze(0) if scores.ndim == 1 else result


# ----------------------------------------------------------------------------------------------
# Average precision


def average_precision(
    scores: Tensor,
    targets: Tensor,
    *,
    ignore_index: int = -100,
    sample_weight: Tensor | None = None,
    validate_args: bool = True,
) -> Tensor:
    r"""Average precision (area under the step-wise precision-recall curve), per class.

    With the distinct score values of class :math:`c` sorted in decreasing order,
    :math:`t_1 > t_2 > \dots`, and :math:`\mathrm{TP}_k`, :math:`\mathrm{FP}_k` the (weighted)
    positives and negatives scored :math:`\ge t_k`:

    .. math::
        \mathrm{AP}_c = \sum_k (R_k - R_{k-1})\, P_k, \qquad
        P_k = \frac{\mathrm{TP}_k}{\mathrm{TP}_k + \mathrm{FP}_k}, \quad
        R_k = \frac{\mathrm{TP}_k}{\mathrm{TP}_{\text{total}}}, \quad R_0 = 0.

    This is :func:`sklearn.metrics.average_precision_score` exactly, ties included: rows with
    equal scores enter together at one threshold (no interpolation, no tie-breaking order).

    Args:
        scores: ``[N]`` (binary) or ``[N, C]`` scores; any monotone transform (logits or
            probabilities) gives the same value.
        targets: ``[N]`` binary ``{0, 1}`` (``C == 1``), ``[N]`` class ids (``C > 1``) or a
            multi-hot ``[N, C]``; ``ignore_index`` rows/cells are left out.
        ignore_index: Target value of rows (cells) to leave out.
        sample_weight: Optional ``[N]`` non-negative row weights (as sklearn's ``sample_weight``).
        validate_args: Run the checks that need a host synchronisation.

    Returns:
        A 0-d tensor for 1-D ``scores``, else ``[C]``; ``nan`` for a class without positive weight.

    Raises:
        ValueError: On a bad shape, out-of-range target, non-finite score or bad option.
        TypeError: On a non-tensor input or non-float scores.

    Example:
        >>> import torch
        >>> from imbalanced_losses.metrics import average_precision
        >>> scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
        >>> targets = torch.tensor([1, 0, 1, 0])
        >>> round(average_precision(scores, targets).item(), 4)  # (1/1 + 2/3) / 2
        0.8333
    """
    x, pos, neg, weight = _parse(scores, targets, sample_weight, ignore_index=ignore_index, validate_args=validate_args)
    return _shape_like(average_precision_from_masks(x, pos, neg, sample_weight=weight), scores)


# ----------------------------------------------------------------------------------------------
# Recall at quantile


def recall_at_quantile(
    scores: Tensor,
    targets: Tensor,
    *,
    quantile: float,
    interpolation: str = "higher",
    ignore_index: int = -100,
    sample_weight: Tensor | None = None,
    validate_args: bool = True,
) -> Tensor:
    r"""Recall inside the top ``quantile`` of the scores: the hard limit of ``recall_at_quantile_loss``.

    The threshold of class :math:`c` is the :math:`1 - q` quantile of every row taking part in
    :math:`c` (positives and negatives), :math:`\theta_c = Q_{1-q}(\{s_{jc}\})`, computed
    exactly as :func:`~imbalanced_losses.functional.recall_at_quantile_loss` does (the values
    of :func:`torch.quantile` with the same ``interpolation``). Then

    .. math::
        \mathrm{rec}_c = \frac{\sum_{i \in P_c} w_i \left(\mathbb{1}[s_{ic} > \theta_c]
            + \tfrac12 \mathbb{1}[s_{ic} = \theta_c]\right)}{\sum_{i \in P_c} w_i}.

    Tie rule: a positive scored exactly at :math:`\theta_c` counts one half. This is the limit
    of the loss's :math:`\sigma((s - \theta)/\tau)` as :math:`\tau \to 0`, so
    ``1 - recall_at_quantile_loss(..., temperature=τ)`` tends to this metric. With the default
    ``'higher'`` interpolation :math:`\theta_c` is always one of the scores, so ties at the
    threshold are the rule, not the exception, on discrete scores.

    Args:
        scores: ``[N]`` (binary) or ``[N, C]`` scores.
        targets: ``[N]`` binary ``{0, 1}`` (``C == 1``), ``[N]`` class ids (``C > 1``) or a
            multi-hot ``[N, C]``; ``ignore_index`` rows/cells are left out.
        quantile: Budget :math:`q \in (0, 1)`, e.g. ``0.005`` for the top 50 bps.
        interpolation: :func:`torch.quantile` interpolation: ``linear``, ``lower``,
            ``higher`` (default), ``nearest``, ``midpoint``.
        ignore_index: Target value of rows (cells) to leave out.
        sample_weight: Optional ``[N]`` non-negative row weights; only positives' weights
            matter (the threshold is unweighted, as in the loss).
        validate_args: Run the checks that need a host synchronisation.

    Returns:
        A 0-d tensor for 1-D ``scores``, else ``[C]``; ``nan`` for a class without positive weight.

    Raises:
        ValueError: On a bad shape, out-of-range target, non-finite score or bad option.
        TypeError: On a non-tensor input, non-float scores or a non-number option.

    Example:
        >>> import torch
        >>> from imbalanced_losses.metrics import recall_at_quantile
        >>> scores = torch.arange(10.0)  # threshold: the 0.7 quantile with 'higher' = 7.0
        >>> targets = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 0])
        >>> recall_at_quantile(scores, targets, quantile=0.3).item()  # (0 + 1/2 + 1) / 3
        0.5
    """
    quantile = check_float("quantile", quantile, low=0.0, high=1.0)
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    x, pos, neg, weight = _parse(scores, targets, sample_weight, ignore_index=ignore_index, validate_args=validate_args)
    out = recall_at_quantile_from_masks(
        x, pos, neg, quantile=quantile, interpolation=interpolation, sample_weight=weight
    )
    return _shape_like(out, scores)


# ----------------------------------------------------------------------------------------------
# Partial AUC


def partial_auc(
    scores: Tensor,
    targets: Tensor,
    *,
    alpha: float = 0.0,
    beta: float = 1.0,
    normalize: str | None = "band",
    ignore_index: int = -100,
    sample_weight: Tensor | None = None,
    validate_args: bool = True,
) -> Tensor:
    r"""Area under the ROC curve for false-positive rates in ``[alpha, beta]``, per class.

    The ROC curve is sklearn's: the points :math:`(\mathrm{FPR}_k, \mathrm{TPR}_k)` at the
    distinct score thresholds (tied rows enter together), joined by straight lines from
    :math:`(0, 0)`; a tie group of positives and negatives is a diagonal segment. The raw area
    :math:`A = \int_\alpha^\beta \mathrm{TPR}(f)\,df` is taken on that polygon, with the curve
    interpolated linearly at the band edges. Then

    * ``normalize='band'`` (default): :math:`A / (\beta - \alpha)`, the mean TPR over the
      band, in ``[0, 1]``;
    * ``normalize='mcclish'``: :math:`\tfrac12\left(1 + \frac{A - A_{\min}}{A_{\max} - A_{\min}}\right)`
      with :math:`A_{\min} = (\beta^2 - \alpha^2)/2` (the chance diagonal) and
      :math:`A_{\max} = \beta - \alpha`; for ``alpha = 0`` this is
      ``sklearn.metrics.roc_auc_score(y, s, max_fpr=beta)``;
    * ``normalize=None``: :math:`A` itself, in ``[0, beta - alpha]``.

    The defaults (``alpha=0``, ``beta=1``) give the full ROC AUC (equal under every
    ``normalize``). Pass ``beta`` = the loss's budget to score a
    :func:`~imbalanced_losses.functional.pauc_at_budget_loss` model.

    Args:
        scores: ``[N]`` (binary) or ``[N, C]`` scores.
        targets: ``[N]`` binary ``{0, 1}`` (``C == 1``), ``[N]`` class ids (``C > 1``) or a
            multi-hot ``[N, C]``; ``ignore_index`` rows/cells are left out.
        alpha: Lower FPR edge of the band, ``0 <= alpha < beta``.
        beta: Upper FPR edge, ``beta <= 1``.
        normalize: ``'band'``, ``'mcclish'`` or ``None``, see above.
        ignore_index: Target value of rows (cells) to leave out.
        sample_weight: Optional ``[N]`` non-negative row weights (as sklearn's ``sample_weight``).
        validate_args: Run the checks that need a host synchronisation.

    Returns:
        A 0-d tensor for 1-D ``scores``, else ``[C]``; ``nan`` for a class without positive or
        without negative weight.

    Raises:
        ValueError: On a bad shape, out-of-range target, non-finite score or bad option.
        TypeError: On a non-tensor input, non-float scores or a non-number option.

    Example:
        >>> import torch
        >>> from imbalanced_losses.metrics import partial_auc
        >>> scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
        >>> targets = torch.tensor([1, 0, 1, 0, 0])
        >>> round(partial_auc(scores, targets).item(), 4)  # 5 of 6 pairs ordered
        0.8333
        >>> round(partial_auc(scores, targets, beta=0.5).item(), 4)  # TPR 1/2 on [0, 1/3], then 1
        0.6667
    """
    band = "0 <= alpha < beta <= 1"
    alpha = check_float("alpha", alpha, low=0.0, high=1.0, low_open=False, high_open=True, constraint=band)
    beta = check_float("beta", beta, low=0.0, high=1.0, low_open=True, high_open=False, constraint=band)
    if not alpha < beta:
        raise ValueError(f"`alpha` and `beta` must satisfy 0 <= alpha < beta <= 1, got alpha={alpha!r}, beta={beta!r}.")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"`normalize` must be one of {NORMALIZATIONS}, got {normalize!r}.")
    x, pos, neg, weight = _parse(scores, targets, sample_weight, ignore_index=ignore_index, validate_args=validate_args)
    out = partial_auc_from_masks(x, pos, neg, alpha=alpha, beta=beta, normalize=normalize, sample_weight=weight)
    return _shape_like(out, scores)


# ----------------------------------------------------------------------------------------------
# Coverage at budget


@overload
def budget_rows(budget: float, n: int) -> int: ...


@overload
def budget_rows(budget: float, n: Tensor) -> Tensor: ...


def budget_rows(budget: float, n: int | Tensor) -> int | Tensor:
    r"""Number of rows ``k`` flagged by an alert budget: ``ceil(budget * n)``, at least 1, at most ``n``.

    The rule, shared by :func:`coverage_at_budget` and everything that reads a budget as a row
    count:

    .. math::
        k = \min\bigl(n,\ \max\bigl(1,\ \lceil \mathrm{fl}(b\,n)\,(1 - 2^{-50}) \rceil\bigr)\bigr),

    with :math:`\mathrm{fl}(b\,n)` the float64 product. The factor :math:`1 - 2^{-50}` removes
    the row that float rounding alone would add: ``0.07 * 100`` is ``7.000000000000001`` in
    float64, so a plain ``math.ceil(budget * n)`` flags 8 rows where 7 are meant. A product
    within 4 machine epsilons (relative) above an integer counts as that integer, which is
    below the resolution of a float64 budget; a larger excess (``0.07 + 1e-12``) keeps its
    row. For a budget written with ``q`` decimals (``0.07``: ``q = 2``; basis points:
    ``q <= 4``) and ``n * 10**q < 10**14``, ``k`` equals the exact
    ``ceil(Fraction(str(budget)) * n)`` (clamped the same way). ``n = 0`` gives ``k = 0``.

    Args:
        budget: Fraction :math:`b \in (0, 1]` of the rows, e.g. ``0.005`` for 50 bps.
        n: Number of rows: a non-negative ``int``, or an integer tensor of counts (e.g. one
            per class, on any device; computed in float64 there, on the host for MPS).

    Returns:
        ``k`` as an ``int``, or an int64 tensor shaped and placed like ``n``.

    Raises:
        ValueError: ``budget`` not in ``(0, 1]``, or a negative ``int`` ``n``.
        TypeError: ``budget`` not a real number; ``n`` neither an ``int`` nor an integer tensor.

    Example:
        >>> import math
        >>> from imbalanced_losses.metrics import budget_rows
        >>> math.ceil(0.07 * 100), budget_rows(0.07, 100)
        (8, 7)
        >>> budget_rows(0.005, 50_000), budget_rows(1e-6, 100)
        (250, 1)
    """
    budget = check_float("budget", budget, low=0.0, high=1.0, low_open=True, high_open=False)
    scale = 1.0 - BUDGET_ROWS_SLACK
    if isinstance(n, Tensor):
        if n.is_floating_point() or n.is_complex() or n.dtype == torch.bool:
            raise TypeError(f"`n` must be an int or an integer tensor of row counts, got a tensor of dtype {n.dtype}.")
        counts = n.detach().long()
        host = counts.cpu() if counts.device.type == "mps" else counts  # MPS has no float64
        k = torch.ceil(host.to(torch.float64) * budget * scale).long().clamp_min(1)
        return torch.minimum(k.to(counts.device), counts)
    check_int("n", n, minimum=0)
    return min(n, max(1, math.ceil(budget * n * scale)))


def coverage_at_budget_from_masks(scores: Tensor, pos: Tensor, neg: Tensor, *, budget: float) -> Tensor:
    """Top-``k`` recall of each column, ``k = budget_rows(budget, n)`` (no validation); see :func:`coverage_at_budget`.

    Args:
        scores: ``[M, C]`` scores.
        pos: ``[M, C]`` bool, positives of each class.
        neg: ``[M, C]`` bool, negatives of each class.
        budget: Fraction of the rows flagged, in ``(0, 1]``.

    Returns:
        ``[C]``, ``nan`` where a class has no positive.
    """
    x, _ = _detach(scores, None)
    member = pos | neg
    n = member.sum(0)
    n_pos = pos.sum(0)
    if x.shape[0] == 0:
        return _nan_result(x)
    k = budget_rows(budget, n)  # [C]: max(1, ceil(budget * n)) without float rounding's extra row
    # The k-th highest member score: rank n - k among the members in ascending order.
    v = order_statistics(x.t(), member.t(), (n - k).unsqueeze(0))[0]  # [C]
    above = member & (x > v)
    tied = member & (x == v)
    n_above, n_tied = above.sum(0), tied.sum(0)
    # Positives strictly above the k-th score are in; the tie group at it shares the
    # remaining k - n_above slots evenly (expected count under a uniform random tie break).
    share = (k - n_above).to(x.dtype) / n_tied.clamp_min(1).to(x.dtype)
    hits = (pos & above).sum(0).to(x.dtype) + (pos & tied).sum(0).to(x.dtype) * share
    return _ratio(hits, n_pos.to(x.dtype))


def coverage_at_budget(
    scores: Tensor,
    targets: Tensor,
    *,
    budget: float,
    ignore_index: int = -100,
    validate_args: bool = True,
) -> Tensor:
    r"""Coverage at an alert budget: the share of positives among the top ``budget`` of the rows.

    With :math:`n_c` the rows taking part in class :math:`c` (positives and negatives) and
    :math:`k_c = \max(1, \lceil b\, n_c \rceil)` rows flagged, the coverage is the number of
    positives among the :math:`k_c` highest scores divided by the number of positives.
    :math:`k_c` is :func:`budget_rows`\ ``(budget, n_c)``: the ceiling of the float64 product
    less 4 machine epsilons (relative), so that float rounding cannot add a row
    (``budget=0.07`` on 100 rows flags 7, where ``math.ceil(0.07 * 100)`` is 8).

    Tie rule: when a tie group straddles the :math:`k_c`-th position, its members share the
    remaining slots evenly, i.e. the result is the expected coverage under a uniformly random
    order of the tied rows:

    .. math::
        \mathrm{cov}_c = \frac{|P_c \cap \{s > v_c\}| + |P_c \cap \{s = v_c\}|
            \cdot \frac{k_c - |\{s > v_c\}|}{|\{s = v_c\}|}}{|P_c|},

    where :math:`v_c` is the :math:`k_c`-th highest score. Without ties this is plain top-k
    recall (``argsort`` and count).

    Args:
        scores: ``[N]`` (binary) or ``[N, C]`` scores.
        targets: ``[N]`` binary ``{0, 1}`` (``C == 1``), ``[N]`` class ids (``C > 1``) or a
            multi-hot ``[N, C]``; ``ignore_index`` rows/cells are left out.
        budget: Fraction :math:`b \in (0, 1]` of the rows flagged, e.g. ``0.005`` for 50 bps.
        ignore_index: Target value of rows (cells) to leave out.
        validate_args: Run the checks that need a host synchronisation.

    Returns:
        A 0-d tensor for 1-D ``scores``, else ``[C]``; ``nan`` for a class without positives.

    Raises:
        ValueError: On a bad shape, out-of-range target, non-finite score or bad option.
        TypeError: On a non-tensor input, non-float scores or a non-number option.

    Example:
        >>> import torch
        >>> from imbalanced_losses.metrics import coverage_at_budget
        >>> scores = torch.tensor([0.9, 0.8, 0.8, 0.1])
        >>> targets = torch.tensor([1, 1, 0, 1])
        >>> coverage_at_budget(scores, targets, budget=0.5).item()  # top 2: 1 + 1/2 of 3 positives
        0.5
    """
    budget = check_float("budget", budget, low=0.0, high=1.0, low_open=True, high_open=False)
    x, pos, neg, _ = _parse(scores, targets, None, ignore_index=ignore_index, validate_args=validate_args)
    return _shape_like(coverage_at_budget_from_masks(x, pos, neg, budget=budget), scores)
