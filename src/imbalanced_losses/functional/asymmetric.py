r"""Asymmetric loss (Ridnik et al., 2021) for multi-label classification.

Positives and negatives get their own focusing exponents, and negatives are "probability
shifted": an easy negative with :math:`p \le m` (the ``clip`` margin) contributes nothing.
Numerics:

* everything is computed in float32 for float16/bfloat16 inputs (also under
  :func:`torch.autocast`); the loss is float32 and the gradient reaches ``inputs`` in their
  own dtype. The reference implementation clamps probabilities at ``1e-8`` before the log,
  which underflows to 0 in float16 and gives ``-inf``/NaN (ASL issue #53);
* no ``1 - p`` is ever formed: :math:`\log p` and :math:`\log(1 - p)` are
  :func:`~torch.nn.functional.logsigmoid` of :math:`\pm x`, the focusing weights are
  :math:`\exp(\gamma \log \cdot)`, and the shifted negative term uses
  :math:`1 - p_m = \min(\sigma(-x) + m, 1) \ge m`, so logits of any magnitude give finite
  values and gradients for every :math:`\gamma \ge 0` (including :math:`0 < \gamma < 1`).

References:
    Ridnik, Ben-Baruch, Zamir, Noy, Friedman, Protter, Zelnik-Manor. *Asymmetric Loss For
    Multi-Label Classification*, ICCV 2021. https://arxiv.org/abs/2009.14119
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

from .._validation import check_choice, check_float
from ._arith import compute_dtype
from .focal import SIGMOID_REDUCTIONS, _reduce, prepare_sigmoid

__all__ = ["asymmetric_loss"]

ASYMMETRIC_REDUCTIONS = SIGMOID_REDUCTIONS


def check_asymmetric_options(
    *, gamma_neg: float, gamma_pos: float, clip: float, reduction: str, ignore_index: float | None
) -> tuple[float, float, float, float | None]:
    """Validate the asymmetric-loss hyperparameters; returns ``(gamma_neg, gamma_pos, clip, ignore_index)``."""
    gamma_neg = check_float("gamma_neg", gamma_neg, low=0.0, low_open=False)
    gamma_pos = check_float("gamma_pos", gamma_pos, low=0.0, low_open=False)
    clip = check_float("clip", clip, low=0.0, high=1.0, low_open=False, high_open=True)
    check_choice("reduction", reduction, ASYMMETRIC_REDUCTIONS)
    ignore = None if ignore_index is None else check_float("ignore_index", ignore_index)
    return gamma_neg, gamma_pos, clip, ignore


def asymmetric_core(
    inputs: Tensor,
    targets: Tensor,
    weight: Tensor | None,
    *,
    gamma_neg: float,
    gamma_pos: float,
    clip: float,
    reduction: str,
    ignore_index: float | None,
) -> Tensor:
    """The asymmetric loss on checked tensors (see :func:`asymmetric_loss`)."""
    dtype = compute_dtype(inputs)
    x = inputs.to(dtype)
    valid = None if ignore_index is None else targets != ignore_index
    y = targets.to(dtype)
    if valid is not None:
        y = y.masked_fill(~valid, 0.0)
    log_p, log_1mp = logsigmoid(x), logsigmoid(-x)
    # Positive term: -(1 - p)^γ+ log p, with (1 - p)^γ+ = exp(γ+ log σ(-x)).
    loss_pos = -log_p
    if gamma_pos > 0:
        loss_pos = loss_pos * torch.exp(gamma_pos * log_1mp)
    # Negative term: -p_m^γ- log(1 - p_m), p_m = max(p - m, 0).
    if clip > 0:
        # 1 - p_m = min(σ(-x) + m, 1) >= m > 0: its log is finite for every x, and exactly 0 (so
        # is the term and its gradient) wherever p <= m.
        loss_neg = -torch.log(torch.clamp_max(log_1mp.exp() + clip, 1.0))
        if gamma_neg > 0:
            p_m = torch.clamp_min(log_p.exp() - clip, 0.0)
            # Floored at the smallest normal number: where p_m = 0 the term is already 0 (its log
            # factor is), and the floor keeps the gradient of (·)^γ- finite for 0 < γ- < 1.
            loss_neg = loss_neg * p_m.clamp_min(torch.finfo(dtype).tiny).pow(gamma_neg)
    else:
        loss_neg = -log_1mp
        if gamma_neg > 0:
            loss_neg = loss_neg * torch.exp(gamma_neg * log_p)
    loss = y * loss_pos + (1 - y) * loss_neg
    if valid is not None:
        loss = torch.where(valid, loss, torch.zeros((), dtype=dtype, device=loss.device))
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction, valid, weight)


def asymmetric_loss(
    inputs: Tensor,
    targets: Tensor,
    *,
    gamma_neg: float = 4.0,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
    reduction: str = "mean",
    sample_weight: Tensor | None = None,
    ignore_index: float | None = None,
    validate_args: bool = True,
) -> Tensor:
    r"""Asymmetric loss (ASL) for multi-label targets, elementwise over ``(N, C)`` (or any shape).

    For each cell with logit :math:`x`, label :math:`y \in \{0, 1\}` and :math:`p = \sigma(x)`:

    .. math::
        L_+ = -(1 - p)^{\gamma_+} \log p, \qquad
        L_- = -p_m^{\gamma_-} \log(1 - p_m), \qquad p_m = \max(p - m, 0),

    .. math::
        \ell = y\,L_+ + (1 - y)\,L_-.

    :math:`m` is ``clip`` (the probability margin: negatives with :math:`p \le m` are
    discarded; the reference code writes it as ``(1 - p + clip).clamp(max=1)``). Soft labels
    :math:`y \in [0, 1]` mix the two terms linearly. With :math:`\gamma_+ = \gamma_- = 0` and
    :math:`m = 0` this is :func:`torch.nn.functional.binary_cross_entropy_with_logits`.

    The whole loss is differentiated, focusing weights included (the reference code can
    detach them, ``disable_torch_grad_focal_loss``).

    Args:
        inputs: Logits ``(N, C)`` (any shape ``(N, *)`` works: the loss is elementwise);
            float16/bfloat16 are computed in float32.
        targets: Multi-hot labels with the shape of ``inputs``: 0/1 (float, integer or bool),
            soft labels in ``[0, 1]``, or ``ignore_index``.
        gamma_neg: Focusing exponent :math:`\gamma_- \ge 0` of the negatives (paper: 4).
        gamma_pos: Focusing exponent :math:`\gamma_+ \ge 0` of the positives (paper: 0).
        clip: Probability margin :math:`m \in [0, 1)` of the negatives; ``0`` disables the
            shifting (paper: 0.05).
        reduction: ``'mean'``, ``'sum'`` or ``'none'`` (see Returns).
        sample_weight: Optional non-negative weights ``w`` with dim 0 of size ``N``, dims matched
            with those of ``inputs`` from the left: ``(N,)`` or ``(N, 1)`` weigh rows (every
            cell of row ``n`` gets ``w[n]``), ``(N, C)`` weighs cells; never differentiated.
        ignore_index: Optional label value whose cells are left out (loss 0, not counted by
            ``'mean'``). ``None`` (default) uses every cell.
        validate_args: Run the checks that need a host synchronisation (finite ``inputs``,
            labels in ``[0, 1]``, weight values). Shape and dtype checks always run.

    Returns:
        ``'none'``: :math:`\ell \cdot w` with the shape of ``inputs`` (0 at ignored cells).
        ``'sum'``: :math:`\sum_{n,c} \ell_{nc} w_{nc}` over every cell (the reduction of the
        reference code; it grows with the batch size and with ``C``). ``'mean'``:
        :math:`\sum_{n,c} \ell_{nc} w_{nc} / \sum_{n,c\ \mathrm{valid}} w_{nc}`, a weighted
        mean over the non-ignored cells (``w`` expanded to ``(N, C)``, ``w = 1`` when not
        given): a row weight ``w[n]`` counts once per non-ignored cell of row ``n``, and
        ignored cells add to neither sum. A zero denominator is replaced by 1, so an empty or
        all-ignored input gives a graph-connected 0. The loss is float32 for half-precision
        ``inputs``, else in their dtype.

    Raises:
        ValueError: Bad ``gamma_neg``/``gamma_pos`` (negative or non-finite), ``clip`` outside
            ``[0, 1)``, bad ``reduction``, mismatched shapes, non-finite ``inputs``, labels
            outside ``[0, 1]``, or a bad ``sample_weight``.
        TypeError: A non-tensor argument or non-float ``inputs``.

    Example:
        >>> import torch
        >>> from imbalanced_losses.functional import asymmetric_loss
        >>> inputs = torch.tensor([[3.0, -2.0, 0.5], [0.0, 1.0, -4.0]], requires_grad=True)
        >>> targets = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
        >>> bce = torch.nn.functional.binary_cross_entropy_with_logits(inputs, targets)
        >>> plain = asymmetric_loss(inputs, targets, gamma_neg=0.0, gamma_pos=0.0, clip=0.0)
        >>> bool(torch.isclose(plain, bce))
        True
        >>> loss = asymmetric_loss(inputs, targets)  # gamma_neg=4, gamma_pos=0, clip=0.05
        >>> loss.backward()
        >>> round(loss.item(), 4)
        0.191
    """
    gamma_neg, gamma_pos, clip, ignore = check_asymmetric_options(
        gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, reduction=reduction, ignore_index=ignore_index
    )
    x, y, w = prepare_sigmoid(inputs, targets, sample_weight, ignore_index=ignore, validate_args=validate_args)
    return asymmetric_core(
        x, y, w, gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, reduction=reduction, ignore_index=ignore
    )
