r"""Poly-1 loss (Leng et al., 2022): cross-entropy plus a tunable first polynomial term.

Cross-entropy expands as :math:`-\log p_t = \sum_{j \ge 1} (1 - p_t)^j / j`; Poly-1 adds
:math:`\varepsilon` to the coefficient of the leading term, :math:`\ell = \mathrm{CE} +
\varepsilon (1 - p_t)`. Numerics: as in :func:`~imbalanced_losses.functional.softmax_focal_loss`,
the loss works in log space on the margin :math:`z = \log \sum_{c \ne t} e^{x_c} - x_t`, with
:math:`\mathrm{CE} = \mathrm{softplus}(z)` and :math:`1 - p_t = \sigma(z)` (never ``1 - p``),
and float16/bfloat16 inputs are computed in float32.

References:
    Leng, Xu, Tan, Song, Pang, Zou, Cheng, Li. *PolyLoss: A Polynomial Expansion Perspective of
    Classification Loss Functions*, ICLR 2022. https://arxiv.org/abs/2204.12511
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

from .._validation import check_choice, check_float, check_int
from ._arith import compute_dtype
from .focal import _reduce, prepare_softmax

__all__ = ["poly_loss"]

POLY_REDUCTIONS = ("none", "mean", "sum")


def check_poly_options(
    *, epsilon: float, reduction: str, label_smoothing: float, ignore_index: int
) -> tuple[float, float]:
    """Validate the Poly-1 hyperparameters; returns ``(epsilon, label_smoothing)`` as floats."""
    epsilon = check_float("epsilon", epsilon, low=-1.0, low_open=False)
    check_choice("reduction", reduction, POLY_REDUCTIONS)
    label_smoothing = check_float(
        "label_smoothing", label_smoothing, low=0.0, high=1.0, low_open=False, high_open=False
    )
    check_int("ignore_index", ignore_index)
    return epsilon, label_smoothing


def poly_core(
    inputs: Tensor,
    ids: Tensor,
    weight: Tensor | None,
    *,
    epsilon: float,
    reduction: str,
    label_smoothing: float,
    ignore_index: int,
) -> Tensor:
    """The Poly-1 loss on checked tensors (see :func:`poly_loss`)."""
    x = inputs.to(compute_dtype(inputs))
    valid = ids != ignore_index
    t = ids.masked_fill(~valid, 0).unsqueeze(1)  # ignored cells index class 0, then get zeroed
    x_t = x.gather(1, t).squeeze(1)
    # z = log((1 - p_t) / p_t): -log p_t = softplus(z) = -logsigmoid(-z), 1 - p_t = sigmoid(z).
    z = x.scatter(1, t, float("-inf")).logsumexp(1) - x_t
    nll = -logsigmoid(-z)
    loss = nll
    one_minus_pt = torch.sigmoid(z)
    if label_smoothing > 0:
        # CE against q = (1 - ε_ls) onehot + ε_ls / C: -Σ_c q_c log p_c, with
        # logsumexp(x) = x_t + nll; and 1 - Σ_c q_c p_c = (1 - ε_ls)(1 - p_t) + ε_ls (C - 1) / C.
        num_classes = x.shape[1]
        loss = (1 - label_smoothing) * nll + label_smoothing * (x_t + nll - x.mean(1))
        one_minus_pt = (1 - label_smoothing) * one_minus_pt + label_smoothing * (num_classes - 1) / num_classes
    if epsilon != 0:
        loss = loss + epsilon * one_minus_pt
    loss = torch.where(valid, loss, torch.zeros((), dtype=x.dtype, device=x.device))
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction, valid, weight)


def poly_loss(
    inputs: Tensor,
    targets: Tensor,
    *,
    epsilon: float = 1.0,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    sample_weight: Tensor | None = None,
    validate_args: bool = True,
) -> Tensor:
    r"""Poly-1 loss for mutually exclusive classes, with optional spatial dimensions.

    For each position with logits :math:`x \in \mathbb{R}^C`, class :math:`t` and smoothed
    target distribution :math:`q = (1 - \varepsilon_{ls})\,\mathbf{1}_t + \varepsilon_{ls} / C`:

    .. math::
        p = \mathrm{softmax}(x), \qquad
        \mathrm{CE} = -\sum_c q_c \log p_c, \qquad
        \ell = \mathrm{CE} + \varepsilon \Big(1 - \sum_c q_c\, p_c\Big)

    (:math:`\ell = 0` where :math:`t` = ``ignore_index``). Without label smoothing this is
    :math:`-\log p_t + \varepsilon (1 - p_t)`. With label smoothing the polynomial term uses
    the smoothed targets, as the paper's reference code does (``labels`` there may be
    smoothed); it is then the leading term of the expansion of the smoothed CE. With
    :math:`\varepsilon = 0` this is :func:`torch.nn.functional.cross_entropy` (``ignore_index``
    and ``label_smoothing`` included).

    Args:
        inputs: Logits ``(N, C)`` or ``(N, C, d1, ...)``; float16/bfloat16 are computed in float32.
        targets: Class ids ``(N,)`` or ``(N, d1, ...)`` in ``[0, C)`` or ``ignore_index``
            (integer tensor, or float holding integral values).
        epsilon: Coefficient :math:`\varepsilon \ge -1` of the added :math:`(1 - p_t)` term
            (``0`` gives cross-entropy). Below :math:`-1` the loss stops decreasing in
            :math:`p_t` and is rejected.
        reduction: ``'mean'``, ``'sum'`` or ``'none'`` (see Returns).
        label_smoothing: :math:`\varepsilon_{ls} \in [0, 1]`, as in
            :func:`torch.nn.functional.cross_entropy`.
        ignore_index: Target value of positions to leave out.
        sample_weight: Optional non-negative weights ``w`` with exactly the shape of ``targets``;
            never differentiated.
        validate_args: Run the checks that need a host synchronisation (finite ``inputs``,
            target range, weight values). Shape and dtype checks always run.

    Returns:
        ``'none'``: :math:`\ell \cdot w`, shaped like ``targets`` (0 at ignored positions).
        ``'sum'``: :math:`\sum \ell w`. ``'mean'``: :math:`\sum \ell w / \sum_{valid} w`
        (``w = 1`` when not given); a zero denominator is replaced by 1, so an empty or
        all-ignored input gives a graph-connected 0. The loss is float32 for half-precision
        ``inputs``, else in their dtype.

    Raises:
        ValueError: Bad ``epsilon`` (non-finite or below -1), ``reduction`` or
            ``label_smoothing``; mismatched shapes; non-finite ``inputs``; class ids outside
            ``[0, C)``; a bad ``sample_weight``.
        TypeError: A non-tensor argument, non-float ``inputs`` or bool ``targets``.

    Example:
        >>> import torch
        >>> from imbalanced_losses.functional import poly_loss
        >>> inputs = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]], requires_grad=True)
        >>> targets = torch.tensor([0, 2])
        >>> loss = poly_loss(inputs, targets, epsilon=0.0)  # plain cross-entropy
        >>> bool(torch.isclose(loss, torch.nn.functional.cross_entropy(inputs, targets)))
        True
        >>> loss = poly_loss(inputs, targets, epsilon=1.0)
        >>> loss.backward()
        >>> round(loss.item(), 4)
        0.3206
    """
    epsilon, label_smoothing = check_poly_options(
        epsilon=epsilon, reduction=reduction, label_smoothing=label_smoothing, ignore_index=ignore_index
    )
    x, ids, w = prepare_softmax(
        inputs, targets, sample_weight, alpha=None, ignore_index=ignore_index, validate_args=validate_args
    )
    return poly_core(
        x, ids, w, epsilon=epsilon, reduction=reduction, label_smoothing=label_smoothing, ignore_index=ignore_index
    )
