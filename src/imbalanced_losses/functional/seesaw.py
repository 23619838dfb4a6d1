r"""Seesaw loss (Wang et al., 2021): softmax cross-entropy re-balanced by class counts and scores.

For a position of class :math:`y` with logits :math:`x \in \mathbb{R}^C`, the seesaw loss
scales the exponential of every *negative* class :math:`j \ne y` in the softmax denominator
by a factor :math:`S_{yj} = M_{yj}\,C_{yj}`:

.. math::
    \ell = -\log \frac{e^{x_y}}{e^{x_y} + \sum_{j \ne y} S_{yj}\, e^{x_j}}
         = \operatorname{logsumexp}_j\bigl(x_j + \log S_{yj}\bigr) - x_y
    \qquad (\log S_{yy} = 0).

* **Mitigation** :math:`M_{yj} = (N_j / N_y)^p` if :math:`N_j < N_y`, else 1: a frequent
  class :math:`y` pushes less on the logits of rarer classes :math:`j`. :math:`N` are the
  class counts, **clamped to** :math:`\ge 1` first (as mmdet's ``clamp(min=1)``), so an empty
  class never gives :math:`0/0` or :math:`\log 0`; an empty class counts as seen once.
* **Compensation** :math:`C_{yj} = (\sigma_j / \sigma_y)^q` if :math:`\sigma_j > \sigma_y`,
  else 1, with :math:`\sigma = \mathrm{softmax}(x)`: a negative class that scores above the
  true class is penalised more, undoing excess mitigation.

Numerics: everything is computed in log space. Since :math:`\sigma_j / \sigma_y = e^{x_j - x_y}`,

.. math::
    \log S_{yj} = p \min(0,\ \log N_j - \log N_y) + q \max(0,\ x_j - x_y),

so no probability is formed, nothing underflows at saturated logits, and the loss is one
``logsumexp``. float16/bfloat16 inputs are computed in float32.

Gradient: :math:`S` is a constant for back-propagation, as in the paper's gradient analysis
(which differentiates with :math:`S` fixed) and in mmdet (``softmax(cls_score.detach())``).
:math:`M` depends only on the counts (no gradient anyway); :math:`C` is computed from
**detached** logits. Hence :math:`\partial \ell / \partial x_j = \hat\sigma_j - [j = y]` with
:math:`\hat\sigma = \mathrm{softmax}(x + \log S_{y\cdot})`.

Difference from mmdet: mmdet divides by :math:`\max(\sigma_y, \varepsilon)` with
:math:`\varepsilon = 10^{-2}` in the compensation factor, which caps :math:`C_{yj}` at
:math:`\varepsilon^{-q}`; here the paper's formula is used exactly (no :math:`\varepsilon`).
mmdet's detection-specific parts (objectness branch, background class) are not included.

References:
    Wang, Zhang, Zang, Cao, Pang, Gong, Liu, Loy, Lin. *Seesaw Loss for Long-Tailed Instance
    Segmentation*, CVPR 2021. https://arxiv.org/abs/2008.10032
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_choice, check_float, check_int, check_tensor, check_weight_values
from ._arith import compute_dtype
from .focal import Warn, _reduce, _warn_always, prepare_softmax

__all__ = ["seesaw_loss"]

SEESAW_REDUCTIONS = ("none", "mean", "sum")


def check_seesaw_options(*, p: float, q: float, reduction: str, ignore_index: int) -> tuple[float, float]:
    """Validate the seesaw hyperparameters; returns ``(p, q)`` as floats.

    Raises:
        ValueError: ``p`` or ``q`` negative or not finite, or an unknown ``reduction``.
        ArgumentTypeError: A hyperparameter of the wrong type.
    """
    p = check_float("p", p, low=0.0, low_open=False)
    q = check_float("q", q, low=0.0, low_open=False)
    check_choice("reduction", reduction, SEESAW_REDUCTIONS)
    check_int("ignore_index", ignore_index)
    return p, q


def check_online_counts(class_counts: object, num_classes: int, *, validate_args: bool) -> Tensor:
    """Check Seesaw's ``class_counts`` (``[C]``, real, finite, non-negative); returns it detached.

    Unlike the counts of the prior-based losses (:mod:`._priors`), zero counts are normal here
    (a fresh module has seen nothing; the mitigation clamps counts to 1 without a warning), and
    the module passes its buffer on every call, so the shape and dtype checks always run and the
    value checks (one host synchronisation) only with ``validate_args``.
    """
    counts = check_tensor("class_counts", class_counts)
    if counts.ndim != 1 or counts.shape[0] != num_classes:
        raise ValueError(
            f"`class_counts` must have shape ({num_classes},) (one count per class of `logits`), "
            f"got {tuple(counts.shape)}."
        )
    return check_weight_values(counts, validate_args=validate_args, name="class_counts")


def count_batch(ids: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """``[C]`` int64 count of each class among the non-ignored ``ids`` (any shape); no host synchronisation."""
    valid = ids != ignore_index
    flat = ids.masked_fill(~valid, 0).reshape(-1)
    counts = torch.zeros(num_classes, dtype=torch.int64, device=ids.device)
    return counts.scatter_add_(0, flat, valid.reshape(-1).to(torch.int64))


def seesaw_core(
    logits: Tensor,
    ids: Tensor,
    weight: Tensor | None,
    *,
    class_counts: Tensor,
    p: float,
    q: float,
    reduction: str,
    ignore_index: int,
) -> Tensor:
    """The seesaw loss on checked tensors (see :func:`seesaw_loss`).

    Args:
        logits: ``(N, C, *)`` checked logits.
        ids: ``(N, *)`` int64 class ids or ``ignore_index``.
        weight: ``(N, *)`` detached sample weights in the computation dtype, or ``None``.
        class_counts: ``(C,)`` non-negative counts (any real dtype; never differentiated).
        p: Mitigation exponent.
        q: Compensation exponent.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        ignore_index: Target value of positions to leave out.
    """
    x = logits.to(compute_dtype(logits))
    valid = ids != ignore_index
    t = ids.masked_fill(~valid, 0).unsqueeze(1)  # (N, 1, *); ignored positions use class 0, then get zeroed
    x_t = x.gather(1, t)  # (N, 1, *)
    adjusted = x
    if p > 0:
        # log N_j - log N_y with N clamped to >= 1; min(., 0) keeps only N_j < N_y. Row y gives 0.
        log_n = class_counts.detach().to(device=x.device, dtype=x.dtype).clamp_min(1.0).log()
        log_n_j = log_n.reshape(1, -1, *([1] * (x.ndim - 2)))
        adjusted = adjusted + p * (log_n_j - log_n[t]).clamp_max(0.0)
    if q > 0:
        # log(sigma_j / sigma_y) = x_j - x_y, from detached logits (S is a constant); 0 for j = y.
        xd = x.detach()
        adjusted = adjusted + q * (xd - xd.gather(1, t)).clamp_min(0.0)
    loss = (adjusted.logsumexp(1, keepdim=True) - x_t).squeeze(1)
    loss = torch.where(valid, loss, torch.zeros((), dtype=x.dtype, device=x.device))
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction, valid, weight)


def prepare_seesaw(
    logits: object,
    targets: object,
    sample_weight: object,
    *,
    ignore_index: int,
    validate_args: bool,
    warn: Warn = _warn_always,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Check a seesaw batch; returns ``(logits, class ids int64, weight)`` for :func:`seesaw_core`.

    The checks and messages of the softmax focal loss (:func:`~.focal.prepare_softmax`), with
    the scores named ``logits``.
    """
    return prepare_softmax(
        logits,
        targets,
        sample_weight,
        alpha=None,
        ignore_index=ignore_index,
        validate_args=validate_args,
        warn=warn,
        name="logits",
    )


def seesaw_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    class_counts: Tensor,
    p: float = 0.8,
    q: float = 2.0,
    reduction: str = "mean",
    ignore_index: int = -100,
    sample_weight: Tensor | None = None,
    validate_args: bool = True,
) -> Tensor:
    r"""Seesaw loss for mutually exclusive classes, with given class counts (pure: no state).

    For each position with logits :math:`x \in \mathbb{R}^C` and class :math:`y`:

    .. math::
        \ell = \operatorname{logsumexp}_j\bigl(x_j + \log S_{yj}\bigr) - x_y, \qquad
        \log S_{yj} = p \min\Bigl(0, \log \frac{\max(N_j, 1)}{\max(N_y, 1)}\Bigr)
                    + q \max(0,\ x_j - x_y),

    i.e. the mitigation factor :math:`M_{yj} = (N_j/N_y)^p` for :math:`N_j < N_y` (else 1)
    times the compensation factor :math:`C_{yj} = (\sigma_j/\sigma_y)^q` for
    :math:`\sigma_j > \sigma_y` (else 1) on the negative classes' exponentials. :math:`S` is
    not differentiated (the compensation uses detached logits). Counts are clamped to
    :math:`\ge 1`, so empty classes are safe. With ``p = q = 0`` this is
    :func:`torch.nn.functional.cross_entropy`. The module :class:`~imbalanced_losses.SeesawLoss`
    accumulates the counts online; see :mod:`imbalanced_losses.functional.seesaw` for the numerics.

    Args:
        logits: Logits ``(N, C)`` or ``(N, C, d1, ...)``; float16/bfloat16 are computed in float32.
        targets: Class ids ``(N,)`` or ``(N, d1, ...)`` in ``[0, C)`` or ``ignore_index``.
        class_counts: ``(C,)`` non-negative class counts :math:`N` (integer or float), e.g. the
            training-label counts; never differentiated.
        p: Mitigation exponent :math:`p \ge 0` (``0`` disables the mitigation factor).
        q: Compensation exponent :math:`q \ge 0` (``0`` disables the compensation factor).
        reduction: ``'mean'`` (over non-ignored positions), ``'sum'`` or ``'none'``.
        ignore_index: Target value of positions to leave out.
        sample_weight: Optional non-negative weights ``w`` shaped exactly like ``targets``;
            never differentiated.
        validate_args: Run the checks that need a host synchronisation (finite ``logits``,
            target range, weight and count values). Shape and dtype checks always run.

    Returns:
        ``'none'``: :math:`\ell \cdot w`, shaped like ``targets`` (0 at ignored positions).
        ``'sum'``: :math:`\sum \ell w`. ``'mean'``: :math:`\sum \ell w / \sum_{valid} w`
        (``w = 1`` when not given; a zero denominator is replaced by 1, so an all-ignored
        input gives a graph-connected 0). The loss is float32 for half-precision ``logits``,
        else in their dtype.

    Raises:
        ValueError: Negative or non-finite ``p``/``q``, unknown ``reduction``, mismatched
            shapes (incl. ``class_counts`` not ``(C,)``), non-finite logits, class ids
            outside ``[0, C)``, negative or non-finite counts or weights.
        TypeError: A non-tensor argument, non-float logits, bool targets or counts.

    Example:
        >>> import torch
        >>> from imbalanced_losses.functional import seesaw_loss
        >>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]], requires_grad=True)
        >>> targets = torch.tensor([0, 1])
        >>> counts = torch.tensor([1000, 100, 10])
        >>> plain = seesaw_loss(logits, targets, class_counts=counts, p=0.0, q=0.0)
        >>> bool(torch.isclose(plain, torch.nn.functional.cross_entropy(logits, targets)))
        True
        >>> loss = seesaw_loss(logits, targets, class_counts=counts)
        >>> loss.backward()
        >>> round(loss.item(), 4)
        2.1075
    """
    p, q = check_seesaw_options(p=p, q=q, reduction=reduction, ignore_index=ignore_index)
    x, ids, w = prepare_seesaw(logits, targets, sample_weight, ignore_index=ignore_index, validate_args=validate_args)
    counts = check_online_counts(class_counts, x.shape[1], validate_args=validate_args)
    return seesaw_core(x, ids, w, class_counts=counts, p=p, q=q, reduction=reduction, ignore_index=ignore_index)
