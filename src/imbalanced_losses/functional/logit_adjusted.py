r"""Logit-adjusted cross-entropy (Menon et al., 2021) and Balanced Softmax (Ren et al., 2020).

Both add a multiple of the log class prior :math:`\log \pi_c` to the logits before a softmax
cross-entropy, so a rare class must win by a larger margin during training:

.. math::
    \ell(x, t) = -\log \frac{e^{x_t + \tau \log \pi_t}}{\sum_c e^{x_c + \tau \log \pi_c}}.

Balanced Softmax is the case :math:`\tau = 1` (Ren et al. add :math:`\log n_c`, which differs
from :math:`\log \pi_c` by a constant that the softmax cancels). The model trained this way is
used with its **raw** logits at inference. The post-hoc variant does the opposite: train with
plain cross-entropy and predict :math:`\arg\max_c\, x_c - \tau \log \pi_c` (:func:`adjust_logits`).

Numerics: float16/bfloat16 logits are computed in float32 (the loss is float32, the gradient
reaches the logits in their own dtype); the negative log-likelihood is evaluated as
:math:`\operatorname{softplus}(\log \sum_{c \ne t} e^{a_c - a_t})` on the adjusted logits
:math:`a`, with the differences to the target formed before the (small) adjustment is added:
exact for saturated logits and accurate for large, close ones. An empty class (count 0) is counted as 1, with a warning,
so that its log prior stays finite.

References:
    Menon, Jayasumana, Rawat, Jain, Veit, Kumar. *Long-tail learning via logit adjustment*,
    ICLR 2021. https://arxiv.org/abs/2007.07314

    Ren, Yu, Sheng, Ma, Zhao, Yi, Li. *Balanced Meta-Softmax for Long-Tailed Visual
    Recognition*, NeurIPS 2020. https://arxiv.org/abs/2007.10740
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

from .._validation import REDUCTIONS, check_choice, check_float, check_int, check_tensor
from ._arith import compute_dtype
from ._priors import log_priors
from .focal import _reduce, prepare_softmax

__all__ = ["adjust_logits", "logit_adjusted_loss"]


def check_logit_adjusted_options(*, tau: float, reduction: str, ignore_index: int) -> float:
    """Validate the hyperparameters other than the priors; returns ``tau`` as a float.

    Raises:
        ValueError: ``tau`` negative or non-finite, or an unknown ``reduction``.
        TypeError: ``tau`` not a real number, or ``ignore_index`` not an int.
    """
    tau = check_float("tau", tau, low=0.0, low_open=False)
    check_choice("reduction", reduction, REDUCTIONS)
    check_int("ignore_index", ignore_index)
    return tau


def _class_shape(log_prior: Tensor, ndim: int) -> Tensor:
    """``[C]`` -> ``[1, C, 1, ...]``, broadcastable against logits with ``ndim`` dims (class dim 1)."""
    return log_prior.reshape(1, -1, *([1] * (ndim - 2)))


def logit_adjusted_core(
    logits: Tensor,
    ids: Tensor,
    weight: Tensor | None,
    *,
    log_prior: Tensor,
    tau: float,
    reduction: str,
    ignore_index: int,
) -> Tensor:
    r"""The logit-adjusted loss on checked tensors (see :func:`logit_adjusted_loss`).

    Args:
        logits: ``[N, C, *]`` floating-point logits.
        ids: ``[N, *]`` int64 class ids or ``ignore_index``.
        weight: ``[N, *]`` sample weights in the computation dtype, or ``None``.
        log_prior: ``[C]`` log class priors (any float dtype and device; cast here).
        tau: Scale of the adjustment, :math:`\tau \ge 0`.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        ignore_index: Target value of positions to leave out.
    """
    x = logits.to(compute_dtype(logits))
    valid = ids != ignore_index
    t = ids.masked_fill(~valid, 0).unsqueeze(1)  # ignored positions index class 0, then get zeroed
    # Differences to the target first (exact for close logits, even at |x| ~ 1e4 in float32), then
    # the adjustment: a_c = (x_c - x_t) + tau (log pi_c - log pi_t).
    a = x - x.gather(1, t)
    if tau != 0.0:
        lp = log_prior.to(device=x.device, dtype=x.dtype)
        a = a + tau * (_class_shape(lp, x.ndim) - lp[t])
    # -log softmax(a)_t = softplus(z) with z = log sum_{c != t} e^{a_c}: no cancellation.
    z = a.scatter(1, t, float("-inf")).logsumexp(1)
    loss = -logsigmoid(-z)
    loss = torch.where(valid, loss, torch.zeros((), dtype=x.dtype, device=x.device))
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction, valid, weight)


def logit_adjusted_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    class_priors: Tensor | Any = None,
    class_counts: Tensor | Any = None,
    tau: float = 1.0,
    reduction: str = "mean",
    ignore_index: int = -100,
    sample_weight: Tensor | None = None,
    validate_args: bool = True,
) -> Tensor:
    r"""Logit-adjusted softmax cross-entropy (Menon et al., 2021).

    For each position with logits :math:`x \in \mathbb{R}^C`, class :math:`t` and class
    priors :math:`\pi` (given, or :math:`\pi_c = n_c / \sum_j n_j` from counts :math:`n`):

    .. math::
        \ell = -\log \frac{e^{x_t + \tau \log \pi_t}}{\sum_{c=1}^{C} e^{x_c + \tau \log \pi_c}}
        \qquad (\ell = 0 \text{ where } t = \text{ignore\_index}).

    :math:`\tau = 0` is :func:`torch.nn.functional.cross_entropy`; :math:`\tau = 1` is
    Balanced Softmax (Ren et al., 2020). Use the **raw** logits at inference (the adjustment is
    a training device); for the post-hoc variant see :func:`adjust_logits`.

    Args:
        logits: ``(N, C)`` or ``(N, C, d1, ...)``; float16/bfloat16 are computed in float32.
        targets: Class ids ``(N,)`` or ``(N, d1, ...)`` in ``[0, C)`` or ``ignore_index``.
        class_priors: ``(C,)`` positive class probabilities summing to 1 (within 1e-3; they
            are renormalised). Exactly one of ``class_priors`` and ``class_counts``.
        class_counts: ``(C,)`` non-negative training counts per class, at least one > 0. A
            count of 0 is taken as 1, with a warning (every call: the function keeps no state).
        tau: Scale :math:`\tau \ge 0` of the adjustment; 1 in the paper.
        reduction: ``'mean'`` (over non-ignored positions, weighted), ``'sum'`` or ``'none'``.
        ignore_index: Target value of positions to leave out.
        sample_weight: Optional non-negative weights ``w`` with exactly the shape of
            ``targets``; never differentiated.
        validate_args: Run the checks on ``logits``, ``targets`` and ``sample_weight`` that need
            a host synchronisation (finite logits, target range, weight values). The priors
            are always checked.

    Returns:
        ``'none'``: :math:`\ell \cdot w`, shaped like ``targets`` (0 at ignored positions).
        ``'sum'``: :math:`\sum \ell w`. ``'mean'``: :math:`\sum \ell w / \sum_{valid} w`
        (``w = 1`` when not given; a zero denominator is replaced by 1, so an all-ignored
        batch gives a graph-connected 0). Float32 for half-precision ``logits``, else their dtype.

    Raises:
        ValueError: Both or neither of ``class_priors``/``class_counts``; priors or counts of
            the wrong length, negative, non-finite, all zero, or priors not summing to 1; a bad
            ``tau`` or ``reduction``; mismatched shapes; non-finite logits; ids out of range.
        TypeError: A non-tensor ``logits``/``targets``, non-float logits, or bool/complex
            priors or counts.

    Example:
        >>> import torch
        >>> from imbalanced_losses.functional import logit_adjusted_loss
        >>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]], requires_grad=True)
        >>> targets = torch.tensor([0, 2])
        >>> counts = torch.tensor([900, 90, 10])
        >>> loss = logit_adjusted_loss(logits, targets, class_counts=counts, tau=0.0)  # plain CE
        >>> bool(torch.isclose(loss, torch.nn.functional.cross_entropy(logits, targets)))
        True
        >>> loss = logit_adjusted_loss(logits, targets, class_counts=counts)
        >>> loss.backward()
        >>> round(loss.item(), 4)
        0.9012
    """
    tau = check_logit_adjusted_options(tau=tau, reduction=reduction, ignore_index=ignore_index)
    x, ids, w = prepare_softmax(
        logits,
        targets,
        sample_weight,
        alpha=None,
        ignore_index=ignore_index,
        validate_args=validate_args,
        name="logits",
    )
    lp = log_priors(class_priors=class_priors, class_counts=class_counts, num_classes=x.shape[1])
    return logit_adjusted_core(x, ids, w, log_prior=lp, tau=tau, reduction=reduction, ignore_index=ignore_index)


def adjust_logits(
    logits: Tensor,
    priors: Tensor | Any = None,
    *,
    class_counts: Tensor | Any = None,
    tau: float = 1.0,
) -> Tensor:
    r"""Post-hoc logit adjustment (Menon et al., 2021, eq. 6): :math:`x_c - \tau \log \pi_c`.

    For a model trained with plain (unadjusted) cross-entropy, whose softmax estimates
    :math:`P(y \mid x) \propto P(x \mid y)\,\pi_y`, subtracting :math:`\tau \log \pi` removes the
    training prior, so :math:`\arg\max_c` of the result targets the balanced error. The sign is
    the **opposite** of the training-time adjustment of :func:`logit_adjusted_loss` (which
    adds :math:`\tau \log \pi`); do not apply it to a model trained with that loss or with
    Balanced Softmax, whose raw logits are already balanced.

    Args:
        logits: ``(N, C)`` or ``(N, C, d1, ...)`` floating-point logits (class dim 1), or a
            ``(C,)`` vector.
        priors: ``(C,)`` positive class probabilities summing to 1 (same rules as
            ``class_priors`` of :func:`logit_adjusted_loss`). Exactly one of ``priors`` and
            ``class_counts``.
        class_counts: ``(C,)`` non-negative training counts (an empty class counts as 1, with a
            warning).
        tau: Scale :math:`\tau \ge 0` of the adjustment; 1 in the paper (tune on held-out data).

    Returns:
        The adjusted logits, same shape and dtype as ``logits`` (half precision is adjusted in
        float32 and rounded once); differentiable in ``logits``.

    Raises:
        ValueError: Both or neither of ``priors``/``class_counts``, bad priors or counts, their
            length not ``C``, a negative ``tau``, or ``logits`` with no class dim.
        TypeError: ``logits`` not a floating-point tensor.

    Example:
        >>> import torch
        >>> from imbalanced_losses import adjust_logits
        >>> logits = torch.tensor([[1.0, 0.8], [2.0, -1.0]])
        >>> adjust_logits(logits, torch.tensor([0.9, 0.1])).argmax(1).tolist()
        [1, 0]
    """
    tau = check_float("tau", tau, low=0.0, low_open=False)
    x = check_tensor("logits", logits)
    if not x.is_floating_point():
        raise TypeError(f"`logits` must be a floating-point tensor, got dtype {x.dtype}.")
    if x.ndim == 0:
        raise ValueError("`logits` must have a class dim: shape (C,), (N, C) or (N, C, d1, ...), got a 0-d tensor.")
    class_dim = 0 if x.ndim == 1 else 1
    lp = log_priors(
        class_priors=priors, class_counts=class_counts, num_classes=x.shape[class_dim], priors_name="priors"
    )
    dtype = compute_dtype(x)  # half precision: adjusted in float32, rounded once
    lp = lp.to(device=x.device, dtype=dtype)
    return (x.to(dtype) - tau * (lp if x.ndim == 1 else _class_shape(lp, x.ndim))).to(x.dtype)
