r"""Focal losses (Lin et al., 2017): cross-entropy down-weighted on well-classified examples.

Both losses multiply a cross-entropy term by the modulating factor :math:`(1 - p_t)^\gamma`,
where :math:`p_t` is the probability the model gives the true label. Numerics:

* everything is computed in float32 for float16/bfloat16 inputs (also under
  :func:`torch.autocast`); the loss is float32 and the gradient reaches ``inputs`` in their
  own dtype;
* :math:`1 - p_t` is never formed as ``1 - p``: the sigmoid loss uses
  :math:`y\,\sigma(-x) + (1 - y)\,\sigma(x)` and the softmax loss works in log space on the
  margin :math:`z = \log \sum_{c \ne t} e^{x_c} - x_t`, so saturated logits give exact
  values and finite gradients for every :math:`\gamma \ge 0`, including :math:`0 < \gamma < 1`.

References:
    Lin, Goyal, Girshick, He, Dollár. *Focal Loss for Dense Object Detection*, ICCV 2017.
    https://arxiv.org/abs/1708.02002
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

from .._validation import (
    ArgumentTypeError,
    check_finite_logits,
    check_float,
    check_int,
    check_tensor,
    check_weight_values,
    to_class_ids,
)
from .._warnings import warn
from ._arith import compute_dtype, safe_divide

__all__ = ["sigmoid_focal_loss", "softmax_focal_loss"]

SIGMOID_REDUCTIONS = ("none", "mean", "sum")
SOFTMAX_REDUCTIONS = ("none", "mean", "mean_positive", "sum")

#: ``warn(key, message)``: the functional API warns on every call, a module once per instance.
Warn = Callable[[str, str], None]


def _warn_always(key: str, message: str) -> None:
    warn(message)


def _check_reduction(reduction: str, modes: tuple[str, ...]) -> None:
    """Require a supported ``reduction``; the message keeps 0.6's "Invalid reduction: ... Supported modes: ..."."""
    if reduction not in modes:
        supported = ", ".join(repr(m) for m in modes)
        raise ValueError(
            f"Invalid reduction: {reduction!r}. Supported modes: {supported} (`reduction` must be one of {modes}, "
            f"got {reduction!r})."
        )


# --------------------------------------------------------------------------------------------
# Hyperparameters (checked by the functions on every call and by the modules at construction)
# --------------------------------------------------------------------------------------------


def check_sigmoid_options(
    *, alpha: float, gamma: float, reduction: str, ignore_index: float | None
) -> tuple[float, float, float | None]:
    """Validate the sigmoid focal hyperparameters; returns ``(alpha, gamma, ignore_index)`` as floats."""
    alpha = check_float("alpha", alpha)
    if alpha != -1.0 and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1], or -1 to disable the class weighting, got {alpha!r}.")
    gamma = check_float("gamma", gamma, low=0.0, low_open=False)
    _check_reduction(reduction, SIGMOID_REDUCTIONS)
    ignore = None if ignore_index is None else check_float("ignore_index", ignore_index)
    return alpha, gamma, ignore


def check_softmax_options(
    *, gamma: float, reduction: str, label_smoothing: float, ignore_index: int, background_class: int
) -> tuple[float, float]:
    """Validate the softmax focal hyperparameters other than ``alpha``; returns ``(gamma, label_smoothing)``."""
    gamma = check_float("gamma", gamma, low=0.0, low_open=False)
    _check_reduction(reduction, SOFTMAX_REDUCTIONS)
    label_smoothing = check_float(
        "label_smoothing", label_smoothing, low=0.0, high=1.0, low_open=False, high_open=False
    )
    check_int("ignore_index", ignore_index)
    check_int("background_class", background_class)
    return gamma, label_smoothing


def class_alpha(alpha: Tensor | Sequence[float] | None, *, dtype: torch.dtype, validate: bool) -> Tensor | None:
    """Per-class weights ``[C']`` as a detached 1-D tensor of ``dtype`` (``None`` stays ``None``).

    Raises:
        ArgumentTypeError: ``alpha`` does not convert to a real tensor.
        ValueError: ``alpha`` is not a non-empty 1-D tensor, or (``validate``) holds a negative
            or non-finite entry.
    """
    if alpha is None:
        return None
    try:
        out = torch.as_tensor(alpha.detach() if isinstance(alpha, Tensor) else alpha, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ArgumentTypeError(
            f"`alpha` must be a 1-D tensor or a sequence of per-class weights, got {type(alpha).__name__}."
        ) from err
    if out.ndim != 1 or out.numel() == 0:
        raise ValueError(f"`alpha` must be a 1-D tensor of shape (C,), got shape {tuple(out.shape)}.")
    if validate and not bool(((out >= 0) & torch.isfinite(out)).all()):
        raise ValueError(f"`alpha` must hold finite, non-negative class weights, got {out.tolist()}.")
    return out.clone()


# --------------------------------------------------------------------------------------------
# Input checks (per call, before any all-gather)
# --------------------------------------------------------------------------------------------


def _check_inputs(inputs: object, name: str = "inputs") -> Tensor:
    x = check_tensor(name, inputs)
    if not x.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor of logits, got dtype {x.dtype}.")
    return x


def _check_weight(
    sample_weight: object,
    x: Tensor,
    shape: torch.Size,
    *,
    exact: bool,
    validate_args: bool,
    warn: Warn,
) -> Tensor | None:
    """Validate ``sample_weight`` against ``shape`` (exactly, or aligned from the left when not ``exact``).

    Not ``exact`` (the sigmoid loss): dim 0 is the sample dim, so the weight's dims are matched
    with the leading dims of ``shape`` and missing trailing dims are added as singletons; each
    dim must then be 1 or equal ``shape``'s. A ``[N]`` weight is one weight per row (``[N, 1,
    ...]``) whatever ``C`` is; ``imbalanced-losses`` 0.6 aligned from the right, which
    broadcast a ``[N]`` weight along the class axis when ``N == C`` and rejected it otherwise.

    Returns the weight detached, on ``x``'s device, in its computation dtype, with the rank of
    ``shape`` when not ``exact``.
    """
    if sample_weight is None:
        return None
    w = check_tensor("sample_weight", sample_weight)
    if w.ndim == 0 or len(shape) == 0 or w.shape[0] != shape[0]:
        n = shape[0] if len(shape) else None
        raise ValueError(
            f"`sample_weight` must have dim 0 of size {n} (one row per sample), got shape {tuple(w.shape)}."
        )
    if exact:
        ok = w.shape == shape
    else:
        ok = w.ndim <= len(shape) and all(a in (1, b) for a, b in zip(w.shape, shape, strict=False))
    if not ok:
        if exact:
            want = f"exactly {tuple(shape)} (the shape of `targets`)"
        else:
            want = (
                f"that expands to {tuple(shape)} with its dims matched from the left, dim 0 being the "
                f"row (e.g. [{shape[0]}] for one weight per row, or the full shape)"
            )
        raise ValueError(f"`sample_weight` must have a shape {want}, got {tuple(w.shape)}.")
    if not exact and w.ndim < len(shape):
        w = w.reshape(*w.shape, *([1] * (len(shape) - w.ndim)))  # [N] -> [N, 1, ...]: one weight per row
    w = check_weight_values(w, validate_args=validate_args)
    if validate_args and w.numel() > 0 and not bool(w.any()):
        warn(
            "zero_weight",
            "`sample_weight` is entirely zero: the weighted loss has no mass and falls through to its "
            "degenerate value (0).",
        )
    return w.to(device=x.device, dtype=compute_dtype(x))


def prepare_sigmoid(
    inputs: object,
    targets: object,
    sample_weight: object,
    *,
    ignore_index: float | None,
    validate_args: bool,
    warn: Warn = _warn_always,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Check a sigmoid focal batch; returns ``(inputs, targets, weight)`` ready for :func:`sigmoid_focal_core`."""
    x = _check_inputs(inputs)
    y = check_tensor("targets", targets)
    if y.shape != x.shape:
        raise ValueError(f"`targets` must have the shape of `inputs` {tuple(x.shape)}, got {tuple(y.shape)}.")
    if y.is_complex():
        raise TypeError(f"`targets` must be a real-valued tensor, got dtype {y.dtype}.")
    w = _check_weight(sample_weight, x, x.shape, exact=False, validate_args=validate_args, warn=warn)
    if validate_args:
        check_finite_logits(x, "inputs")
        if y.dtype != torch.bool and y.numel() > 0:
            t = y.detach()
            bad = ~((t >= 0) & (t <= 1))  # NaN fails both comparisons
            if ignore_index is not None:
                bad &= t != ignore_index
            if bool(bad.any()):
                raise ValueError(
                    f"`targets` must be labels in [0, 1] (soft labels allowed) or ignore_index={ignore_index}, "
                    f"got value(s) {torch.unique(t[bad])[:8].tolist()}."
                )
    return x, y, w


def prepare_softmax(
    inputs: object,
    targets: object,
    sample_weight: object,
    *,
    alpha: Tensor | None,
    ignore_index: int,
    validate_args: bool,
    warn: Warn = _warn_always,
    name: str = "inputs",
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Check a softmax batch; returns ``(inputs, class ids int64, weight)`` for :func:`softmax_focal_core`.

    ``name`` is the scores' argument name in error messages (``logits`` for the long-tail losses).
    """
    x = _check_inputs(inputs, name)
    if x.ndim < 2:
        raise ValueError(f"`{name}` must have shape (N, C) or (N, C, d1, ...), got shape {tuple(x.shape)}.")
    y = check_tensor("targets", targets)
    want = (x.shape[0], *x.shape[2:])
    if tuple(y.shape) != want:
        raise ValueError(f"`targets` must have shape {want} (`{name}` without the class dim 1), got {tuple(y.shape)}.")
    w = _check_weight(sample_weight, x, y.shape, exact=True, validate_args=validate_args, warn=warn)
    num_classes = x.shape[1]
    if alpha is not None and alpha.shape[0] < num_classes:
        raise ValueError(f"`alpha` must have one weight per class (C={num_classes}), got {alpha.shape[0]} entries.")
    if validate_args:
        check_finite_logits(x, name)
    ids = to_class_ids(y, num_classes=num_classes, ignore_index=ignore_index, validate_args=validate_args)
    return x, ids, w


# --------------------------------------------------------------------------------------------
# Cores (no validation; the modules call these after the all-gather)
# --------------------------------------------------------------------------------------------


def _reduce(loss: Tensor, reduction: str, counted: Tensor | None, weight: Tensor | None) -> Tensor:
    """``'none'``, ``'sum'``, or a mean over the ``counted`` cells (all when ``None``), weighted by ``weight``."""
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    if weight is None:
        if counted is None:  # a Python divisor: no host-to-device copy on a GPU
            return total / max(loss.numel(), 1)
        den = counted.sum().to(total.dtype)
    else:
        w = weight.expand_as(loss)
        den = (w if counted is None else w * counted).sum()
    return safe_divide(total, den)


def sigmoid_focal_core(
    inputs: Tensor,
    targets: Tensor,
    weight: Tensor | None,
    *,
    alpha: float,
    gamma: float,
    reduction: str,
    ignore_index: float | None,
) -> Tensor:
    """The sigmoid focal loss on checked tensors (see :func:`sigmoid_focal_loss`)."""
    dtype = compute_dtype(inputs)
    x = inputs.to(dtype)
    valid = None if ignore_index is None else targets != ignore_index
    y = targets.to(dtype)
    if valid is not None:
        y = y.masked_fill(~valid, 0.0)
    log_p, log_1mp = logsigmoid(x), logsigmoid(-x)
    loss = -(y * log_p + (1 - y) * log_1mp)  # binary cross-entropy with logits
    if gamma > 0:
        # 1 - p_t = y σ(-x) + (1 - y) σ(x): a sum of non-negative terms, no cancellation. Where it
        # underflows (|x| beyond ~87 in float32) the loss is already below the smallest normal
        # number; flooring there keeps (·)^γ and its gradient finite for 0 < γ < 1.
        one_minus_pt = y * log_1mp.exp() + (1 - y) * log_p.exp()
        loss = loss * one_minus_pt.clamp_min(torch.finfo(dtype).tiny).pow(gamma)
    if alpha >= 0:
        loss = loss * (alpha * y + (1 - alpha) * (1 - y))
    if valid is not None:
        loss = torch.where(valid, loss, torch.zeros((), dtype=dtype, device=loss.device))
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction, valid, weight)


def softmax_focal_core(
    inputs: Tensor,
    ids: Tensor,
    weight: Tensor | None,
    *,
    alpha: Tensor | None,
    gamma: float,
    reduction: str,
    label_smoothing: float,
    ignore_index: int,
    background_class: int,
) -> Tensor:
    """The softmax focal loss on checked tensors (see :func:`softmax_focal_loss`)."""
    x = inputs.to(compute_dtype(inputs))
    valid = ids != ignore_index
    t = ids.masked_fill(~valid, 0).unsqueeze(1)  # ignored cells index class 0, then get zeroed
    x_t = x.gather(1, t).squeeze(1)
    # z = log((1 - p_t) / p_t); -log p_t = softplus(z) and log(1 - p_t) = logsigmoid(z), both exact.
    z = x.scatter(1, t, float("-inf")).logsumexp(1) - x_t
    nll = -logsigmoid(-z)
    loss = nll
    if label_smoothing > 0:
        # -mean_c log p_c = logsumexp(x) - mean_c x_c, with logsumexp(x) = x_t + nll.
        loss = (1 - label_smoothing) * nll + label_smoothing * (x_t + nll - x.mean(1))
    if gamma > 0:
        loss = loss * torch.exp(gamma * logsigmoid(z))
    if alpha is not None:
        loss = loss * alpha.to(device=x.device, dtype=x.dtype)[t.squeeze(1)]
    loss = torch.where(valid, loss, torch.zeros((), dtype=x.dtype, device=x.device))
    if weight is not None:
        loss = loss * weight
    counted = valid if reduction != "mean_positive" else valid & (ids != background_class)
    return _reduce(loss, reduction, counted, weight)


# --------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "mean",
    sample_weight: Tensor | None = None,
    ignore_index: float | None = None,
    validate_args: bool = True,
) -> Tensor:
    r"""Sigmoid focal loss for binary and multi-label targets, elementwise over any shape.

    For each cell with logit :math:`x` and label :math:`y \in [0, 1]` (soft labels allowed):

    .. math::
        p = \sigma(x), \qquad p_t = p\,y + (1 - p)(1 - y), \qquad
        \mathrm{BCE} = -y \log p - (1 - y) \log(1 - p),

    .. math::
        \ell = \alpha_t\,(1 - p_t)^{\gamma}\,\mathrm{BCE}, \qquad
        \alpha_t = \alpha\,y + (1 - \alpha)(1 - y) \quad (\alpha_t = 1 \text{ when } \alpha = -1).

    With :math:`\gamma = 0` and :math:`\alpha = -1` this is
    :class:`torch.nn.BCEWithLogitsLoss`.

    Args:
        inputs: Logits of any shape ``(*)``; float16/bfloat16 are computed in float32.
        targets: Labels of the same shape ``(*)``, in ``[0, 1]`` (float, integer or bool).
        alpha: Weight of the positive class in ``[0, 1]``; ``-1`` disables the weighting.
        gamma: Focusing parameter :math:`\gamma \ge 0` (``0`` gives plain cross-entropy).
        reduction: ``'mean'`` (over the non-ignored cells), ``'sum'`` or ``'none'``.
        sample_weight: Optional non-negative weights ``w`` with dim 0 of size ``N =
            inputs.shape[0]``, whose dims are matched with those of ``inputs`` from the left
            (missing trailing dims broadcast) and then expand to ``inputs.shape``: ``(N,)`` or
            ``(N, 1)`` weigh rows, ``(N, C)`` cells; never differentiated. A ``(N,)`` weight
            is one weight per row for every ``C`` (0.6 spread it along the class axis when
            ``N == C`` and rejected it otherwise).
        ignore_index: Optional label value whose cells are left out (loss 0, not counted by
            ``'mean'``). ``None`` (default) uses every cell.
        validate_args: Run the checks that need a host synchronisation (finite ``inputs``,
            labels in ``[0, 1]``, weight values). Shape and dtype checks always run.

    Returns:
        ``'none'``: :math:`\ell \cdot w` with the shape of ``inputs`` (0 at ignored cells).
        ``'sum'``: :math:`\sum \ell w`. ``'mean'``: :math:`\sum \ell w / \sum w` over the
        non-ignored cells (``w`` expanded, ``w = 1`` when not given; a zero denominator is
        replaced by 1, so an empty or all-ignored input gives a graph-connected 0). The loss is
        float32 for half-precision ``inputs``, else in their dtype.

    Raises:
        ValueError: Bad ``alpha``/``gamma``/``reduction``, mismatched shapes, non-finite
            ``inputs``, labels outside ``[0, 1]``, or a bad ``sample_weight``.
        TypeError: A non-tensor argument or non-float ``inputs``.

    Example:
        >>> import torch
        >>> from imbalanced_losses.functional import sigmoid_focal_loss
        >>> inputs = torch.tensor([[3.0, -2.0], [0.0, 1.0]], requires_grad=True)
        >>> targets = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
        >>> loss = sigmoid_focal_loss(inputs, targets, alpha=-1, gamma=0.0)  # plain BCE
        >>> bool(torch.isclose(loss, torch.nn.BCEWithLogitsLoss()(inputs, targets)))
        True
        >>> loss = sigmoid_focal_loss(inputs, targets)
        >>> loss.backward()
        >>> round(loss.item(), 4)
        0.0126
    """
    alpha, gamma, ignore = check_sigmoid_options(
        alpha=alpha, gamma=gamma, reduction=reduction, ignore_index=ignore_index
    )
    x, y, w = prepare_sigmoid(inputs, targets, sample_weight, ignore_index=ignore, validate_args=validate_args)
    return sigmoid_focal_core(x, y, w, alpha=alpha, gamma=gamma, reduction=reduction, ignore_index=ignore)


def softmax_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    *,
    alpha: Tensor | Sequence[float] | None = None,
    gamma: float = 2.0,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    background_class: int = 0,
    sample_weight: Tensor | None = None,
    validate_args: bool = True,
) -> Tensor:
    r"""Softmax focal loss for mutually exclusive classes, with optional spatial dimensions.

    For each position with logits :math:`x \in \mathbb{R}^C` and class :math:`t`:

    .. math::
        p_t = \mathrm{softmax}(x)_t, \qquad
        \mathrm{CE}_\varepsilon = -(1 - \varepsilon) \log p_t - \frac{\varepsilon}{C} \sum_{c} \log p_c,

    .. math::
        \ell = \alpha_t\,(1 - p_t)^{\gamma}\,\mathrm{CE}_\varepsilon \qquad
        (\alpha_t = 1 \text{ without } \alpha;\; \ell = 0 \text{ where } t = \text{ignore\_index}).

    :math:`p_t` is the unsmoothed true-class probability. With :math:`\gamma = 0` and no
    ``alpha`` this is :class:`torch.nn.CrossEntropyLoss` (``label_smoothing``,
    ``ignore_index`` included).

    Args:
        inputs: Logits ``(N, C)`` or ``(N, C, d1, ...)``; float16/bfloat16 are computed in float32.
        targets: Class ids ``(N,)`` or ``(N, d1, ...)`` in ``[0, C)`` or ``ignore_index``
            (integer tensor, or float holding integral values).
        alpha: Optional per-class weights, a 1-D tensor or sequence with at least ``C``
            finite, non-negative entries (entries past ``C`` are unused).
        gamma: Focusing parameter :math:`\gamma \ge 0`.
        reduction: ``'mean'``, ``'mean_positive'``, ``'sum'`` or ``'none'`` (see Returns).
        label_smoothing: :math:`\varepsilon \in [0, 1]`, as in :func:`torch.nn.functional.cross_entropy`.
        ignore_index: Target value of positions to leave out.
        background_class: Class that ``'mean_positive'`` does not count in its denominator.
        sample_weight: Optional non-negative weights ``w`` with exactly the shape of ``targets``;
            never differentiated.
        validate_args: Run the checks that need a host synchronisation (finite ``inputs``,
            target range, weight and ``alpha`` values). Shape and dtype checks always run.

    Returns:
        ``'none'``: :math:`\ell \cdot w`, shaped like ``targets`` (0 at ignored positions).
        ``'sum'``: :math:`\sum \ell w`. ``'mean'``: :math:`\sum \ell w / \sum_{valid} w`.
        ``'mean_positive'``: :math:`\sum \ell w / \sum_{valid,\, t \ne background} w` (the
        numerator still includes the background). ``w = 1`` when not given; a zero
        denominator is replaced by 1, so an all-ignored input gives a graph-connected 0. The
        loss is float32 for half-precision ``inputs``, else in their dtype.

    Raises:
        ValueError: Bad ``alpha`` (not 1-D, shorter than ``C``, negative), ``gamma``,
            ``reduction`` or ``label_smoothing``; mismatched shapes; non-finite ``inputs``;
            class ids outside ``[0, C)``; a bad ``sample_weight``.
        TypeError: A non-tensor argument, non-float ``inputs`` or bool ``targets``.

    Example:
        >>> import torch
        >>> from imbalanced_losses.functional import softmax_focal_loss
        >>> inputs = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]], requires_grad=True)
        >>> targets = torch.tensor([0, 2])
        >>> loss = softmax_focal_loss(inputs, targets, gamma=0.0)  # plain cross-entropy
        >>> bool(torch.isclose(loss, torch.nn.CrossEntropyLoss()(inputs, targets)))
        True
        >>> loss = softmax_focal_loss(inputs, targets, alpha=[0.25, 0.5, 0.5], reduction="sum")
        >>> loss.backward()
        >>> round(loss.item(), 4)
        0.0032
    """
    gamma, label_smoothing = check_softmax_options(
        gamma=gamma,
        reduction=reduction,
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
        background_class=background_class,
    )
    dtype = compute_dtype(inputs) if isinstance(inputs, Tensor) and inputs.is_floating_point() else torch.float32
    weights = class_alpha(alpha, dtype=dtype, validate=validate_args)
    x, ids, w = prepare_softmax(
        inputs, targets, sample_weight, alpha=weights, ignore_index=ignore_index, validate_args=validate_args
    )
    return softmax_focal_core(
        x,
        ids,
        w,
        alpha=weights,
        gamma=gamma,
        reduction=reduction,
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
        background_class=background_class,
    )
