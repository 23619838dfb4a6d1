r"""LDAM loss (Cao et al., 2019): cross-entropy with a class-dependent margin on the true logit.

Label-distribution-aware margins: class :math:`c` with :math:`n_c` training examples gets the
margin

.. math::
    \Delta_c = m_{\max}\, \frac{n_c^{-1/4}}{\max_j n_j^{-1/4}}
             = m_{\max} \left(\frac{\min_j n_j}{n_c}\right)^{1/4},

so the rarest class gets ``max_margin`` and frequent classes less. The margin is subtracted
from the true-class logit only, then every logit is multiplied by ``scale``:

.. math::
    \ell = -\log \mathrm{softmax}\big(s\,(x - \Delta_y e_y)\big)_y .

Numerics: float16/bfloat16 inputs are computed in float32 (the loss is float32, the gradient
reaches the inputs in their own dtype); the log-softmax is a ``logsumexp``, finite for any
finite logits whose product with ``scale`` stays finite. Empty classes (count 0) get the
count 1, with a warning (:func:`~imbalanced_losses.functional._priors.check_class_counts`).

References:
    Cao, Wei, Gaidon, Arechiga, Ma. *Learning Imbalanced Datasets with Label-Distribution-Aware
    Margin Loss*, NeurIPS 2019. https://arxiv.org/abs/1906.07413 (reference code:
    kaidic/LDAM-DRW, ``losses.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._validation import REDUCTIONS, ArgumentTypeError, check_choice, check_float, check_int
from ._arith import compute_dtype
from ._priors import Warn, _warn_always, check_class_counts
from .focal import _reduce, prepare_softmax

__all__ = ["ldam_loss", "ldam_margins"]


# --------------------------------------------------------------------------------------------
# Hyperparameters
# --------------------------------------------------------------------------------------------


def check_ldam_options(*, max_margin: float, scale: float, reduction: str, ignore_index: int) -> tuple[float, float]:
    """Validate the LDAM hyperparameters other than the counts; returns ``(max_margin, scale)`` as floats.

    Raises:
        ValueError: ``max_margin`` negative or not finite, ``scale`` not finite and ``> 0``, or
            an unknown ``reduction``.
        TypeError: A hyperparameter of the wrong type.
    """
    max_margin = check_float("max_margin", max_margin, low=0.0, low_open=False)
    scale = check_float("scale", scale, low=0.0)
    check_choice("reduction", reduction, REDUCTIONS)
    check_int("ignore_index", ignore_index)
    return max_margin, scale


def ldam_margins(
    class_counts: Tensor | Sequence[float],
    *,
    max_margin: float = 0.5,
    num_classes: int | None = None,
    warn: Warn = _warn_always,
) -> Tensor:
    r"""The LDAM margins :math:`\Delta_c = m_{\max} (\min_j n_j / n_c)^{1/4}`, a ``[C]`` float64 tensor.

    Args:
        class_counts: ``[C]`` non-negative training counts (a tensor or a sequence of numbers);
            an empty class is counted as 1, with a warning.
        max_margin: The largest margin (that of the rarest class), ``>= 0``.
        num_classes: The expected ``C``, if known.
        warn: Called as ``warn(key, message)`` for an empty class.

    Returns:
        ``[C]`` float64 margins on the device of ``class_counts`` (CPU for a sequence).

    Raises:
        ValueError: Bad counts (wrong length, negative, non-finite, all zero) or ``max_margin``.
        TypeError: Counts that are not a tensor or a sequence of numbers.

    Example:
        >>> from imbalanced_losses.functional.ldam import ldam_margins
        >>> ldam_margins([10000, 625, 16], max_margin=0.5).tolist()
        [0.1, 0.2, 0.5]
    """
    max_margin = check_float("max_margin", max_margin, low=0.0, low_open=False)
    counts = check_class_counts(class_counts, num_classes=num_classes, name="class_counts", warn=warn)
    # (min n / n_c)^(1/4) <= 1, exactly 1 for the rarest class; no overflow for any count >= 1.
    return max_margin * (counts.min() / counts).pow(0.25)


def check_class_weight(class_weight: Any, *, num_classes: int | None, validate: bool) -> Tensor | None:
    """Per-class weights ``[C]`` as a detached float64 tensor (``None`` stays ``None``).

    Raises:
        ArgumentTypeError: ``class_weight`` does not convert to a real tensor.
        ValueError: Not ``[C]``, or (``validate``) a negative or non-finite entry.
    """
    if class_weight is None:
        return None
    if isinstance(class_weight, Tensor) and (class_weight.dtype == torch.bool or class_weight.is_complex()):
        raise ArgumentTypeError(f"`class_weight` must be a real-valued [C] tensor, got dtype {class_weight.dtype}.")
    try:
        src = class_weight.detach() if isinstance(class_weight, Tensor) else class_weight
        out = torch.as_tensor(src, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ArgumentTypeError(
            "`class_weight` must be a [C] tensor or a sequence of per-class weights, "
            f"got {type(class_weight).__name__}."
        ) from err
    if out.ndim != 1 or out.numel() == 0 or (num_classes is not None and out.shape[0] != num_classes):
        want = "C" if num_classes is None else str(num_classes)
        raise ValueError(
            f"`class_weight` must have shape [C] with one weight per class (C={want}), got {tuple(out.shape)}."
        )
    if validate and not bool(((out >= 0) & torch.isfinite(out)).all()):
        raise ValueError(f"`class_weight` must hold finite, non-negative weights, got {out.tolist()}.")
    return out.clone()


# --------------------------------------------------------------------------------------------
# Core (no validation)
# --------------------------------------------------------------------------------------------


def ldam_core(
    inputs: Tensor,
    ids: Tensor,
    weight: Tensor | None,
    *,
    margins: Tensor,
    class_weight: Tensor | None,
    scale: float,
    reduction: str,
    ignore_index: int,
) -> Tensor:
    """The LDAM loss on checked tensors (see :func:`ldam_loss`); ``margins``/``class_weight`` are ``[C]``."""
    x = inputs.to(compute_dtype(inputs))
    valid = ids != ignore_index
    t = ids.masked_fill(~valid, 0).unsqueeze(1)  # ignored positions index class 0, then get zeroed
    m = margins.to(device=x.device, dtype=x.dtype)
    x = x - torch.zeros_like(x).scatter(1, t, m[t])  # Δ_y off the true-class logit only (x - 0 is exact)
    if scale != 1.0:
        x = x * scale
    nll = x.logsumexp(1) - x.gather(1, t).squeeze(1)
    loss = torch.where(valid, nll, torch.zeros((), dtype=x.dtype, device=x.device))
    if class_weight is not None:
        cw = class_weight.to(device=x.device, dtype=x.dtype)[t.squeeze(1)]
        weight = cw if weight is None else cw * weight
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction, valid, weight)


# --------------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------------


def ldam_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    class_counts: Tensor | Sequence[float],
    max_margin: float = 0.5,
    scale: float = 30.0,
    class_weight: Tensor | Sequence[float] | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
    sample_weight: Tensor | None = None,
    validate_args: bool = True,
) -> Tensor:
    r"""LDAM loss: softmax cross-entropy on ``scale * (logits - Δ_y e_y)``, with :math:`\Delta_c \propto n_c^{-1/4}`.

    For each position with logits :math:`x \in \mathbb{R}^C` and class :math:`y`:

    .. math::
        \Delta_c = m_{\max} \frac{n_c^{-1/4}}{\max_j n_j^{-1/4}}, \qquad
        \ell = w_y \left( \log \sum_{c} e^{s (x_c - \Delta_y [c = y])} - s (x_y - \Delta_y) \right),

    with :math:`s` = ``scale`` and :math:`w_y` = ``class_weight[y]`` (1 without it). With
    ``max_margin=0`` and ``scale=1`` this is :func:`torch.nn.functional.cross_entropy` (with
    ``weight=class_weight``), in every reduction and with ``ignore_index``.

    **Meant for normalised (cosine) heads.** The paper computes the logits as cosines
    :math:`x_c = \cos\theta_c \in [-1, 1]` between the L2-normalised feature and L2-normalised
    class weights (``NormedLinear`` in the reference code), where a margin of 0.5 is large and
    ``scale`` (~30) turns the bounded cosines into logits that can reach a confident softmax.
    On a plain linear head the logits are unbounded: the network can meet any fixed margin by
    growing its weights, so the margins lose their effect as training goes on, while
    ``scale=30`` multiplies the logits and the gradient by 30 (a much sharper softmax, larger
    steps). For a linear head use ``scale=1`` and a margin in logit units, or a cosine head::

        logits = F.linear(F.normalize(features, dim=1), F.normalize(weight, dim=1))

    Args:
        logits: ``(N, C)`` or ``(N, C, d1, ...)``; float16/bfloat16 are computed in float32.
        targets: Class ids ``(N,)`` or ``(N, d1, ...)`` in ``[0, C)`` or ``ignore_index``.
        class_counts: ``[C]`` training counts :math:`n_c` (non-negative; an empty class is
            counted as 1, with a warning).
        max_margin: :math:`m_{\max} \ge 0`, the margin of the rarest class (paper: 0.5).
        scale: :math:`s > 0`, multiplies all logits after the margin (paper: 30).
        class_weight: Optional ``[C]`` finite, non-negative per-class weights :math:`w_c` (as
            ``weight=`` of :func:`~torch.nn.functional.cross_entropy`); e.g. the deferred
            re-weighting weights (:class:`~imbalanced_losses.DeferredReweighting`).
        reduction: ``'mean'``, ``'sum'`` or ``'none'`` (see Returns).
        ignore_index: Target value of positions to leave out.
        sample_weight: Optional non-negative weights :math:`v` shaped exactly like
            ``targets``; never differentiated.
        validate_args: Run the checks that need a host synchronisation (finite logits,
            target range, weight values). Shape and dtype checks, and the checks of the
            counts and hyperparameters, always run.

    Returns:
        ``'none'``: :math:`\ell \cdot v`, shaped like ``targets`` (0 at ignored positions).
        ``'sum'``: :math:`\sum \ell v`. ``'mean'``: :math:`\sum \ell v / \sum_{valid} w_y v`,
        i.e. divided by the summed weights of the non-ignored positions, as
        :func:`~torch.nn.functional.cross_entropy` does with ``weight=``. ``v = 1`` when not
        given. Where torch returns ``nan`` (an empty or all-ignored batch, all weights zero)
        the zero denominator is replaced by 1: a graph-connected 0. The loss is float32 for
        half-precision ``logits``, else in their dtype.

    Raises:
        ValueError: Bad ``class_counts`` (length not ``C``, negative, non-finite, all zero),
            ``max_margin`` (negative), ``scale`` (not ``> 0``), ``class_weight`` (length not
            ``C``, negative), ``reduction``; mismatched shapes; non-finite logits; class ids
            outside ``[0, C)``; a bad ``sample_weight``.
        TypeError: A non-tensor argument, non-float ``logits`` or a hyperparameter of the
            wrong type.

    Warns:
        UserWarning: On every call with an empty class in ``class_counts``.

    Example:
        >>> import torch
        >>> from imbalanced_losses.functional import ldam_loss
        >>> logits = torch.tensor([[0.9, 0.1, -0.3], [0.2, 0.1, 0.8]], requires_grad=True)
        >>> targets = torch.tensor([0, 2])
        >>> plain = ldam_loss(logits, targets, class_counts=[100, 10, 1], max_margin=0.0, scale=1.0)
        >>> bool(torch.isclose(plain, torch.nn.functional.cross_entropy(logits, targets)))
        True
        >>> loss = ldam_loss(logits, targets, class_counts=[100, 10, 1])
        >>> loss.backward()
        >>> round(loss.item(), 4)
        0.0255
    """
    max_margin, scale = check_ldam_options(
        max_margin=max_margin, scale=scale, reduction=reduction, ignore_index=ignore_index
    )
    num_classes = logits.shape[1] if isinstance(logits, Tensor) and logits.ndim >= 2 else None
    margins = ldam_margins(class_counts, max_margin=max_margin, num_classes=num_classes)
    weights = check_class_weight(class_weight, num_classes=num_classes, validate=validate_args)
    x, ids, w = prepare_softmax(
        logits,
        targets,
        sample_weight,
        alpha=None,
        ignore_index=ignore_index,
        validate_args=validate_args,
        name="logits",
    )
    return ldam_core(
        x, ids, w, margins=margins, class_weight=weights, scale=scale, reduction=reduction, ignore_index=ignore_index
    )
