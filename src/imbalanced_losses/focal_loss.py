"""Focal loss modules (:class:`SigmoidFocalLoss`, :class:`SoftmaxFocalLoss`).

Each ``forward`` validates the batch, all-gathers it across ranks when asked (SPEC D1; the
world-size gradient factor of SPEC D2 is applied inside
:func:`imbalanced_losses.distributed.gather_batch`), and calls the functional core of
:mod:`imbalanced_losses.functional.focal`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._validation import check_bool, check_optional_bool
from ._warnings import WarnOnce
from .distributed import gather_batch, resolve_gather
from .functional.focal import (
    check_sigmoid_options,
    check_softmax_options,
    class_alpha,
    prepare_sigmoid,
    prepare_softmax,
    sigmoid_focal_core,
    softmax_focal_core,
)

__all__ = ["SigmoidFocalLoss", "SoftmaxFocalLoss"]


class SigmoidFocalLoss(nn.Module):
    r"""Sigmoid focal loss for binary and multi-label targets, elementwise over any shape.

    Per cell, with :math:`p = \sigma(x)` and :math:`p_t = p\,y + (1 - p)(1 - y)`:

    .. math::
        \ell = \alpha_t\,(1 - p_t)^{\gamma}\,\mathrm{BCE}(x, y), \qquad
        \alpha_t = \alpha\,y + (1 - \alpha)(1 - y)

    (:math:`\alpha_t = 1` when ``alpha=-1``). See :func:`imbalanced_losses.functional.sigmoid_focal_loss`
    for the reductions and the numerics: finite gradients at saturated logits for every
    :math:`\gamma \ge 0`; half-precision inputs give a float32 loss.

    Args:
        alpha: Weight of the positive class in ``[0, 1]``; ``-1`` disables the weighting.
        gamma: Focusing parameter :math:`\gamma \ge 0`.
        reduction: ``'mean'`` (over the non-ignored cells), ``'sum'`` or ``'none'``.
        gather_distributed: ``None`` gathers the batch over ranks whenever a process group
            with several ranks is initialised (checked on every call), ``True`` requires one,
            ``False`` never gathers.
        ignore_index: Optional label value whose cells are left out (loss 0, not counted by
            ``'mean'``); ``None`` uses every cell.
        validate_args: Run the checks that need a host synchronisation (finite inputs, label
            range, weight values); default ``True``.

    Shape:
        - inputs: ``(*)`` logits; targets: the same shape, labels in ``[0, 1]``.
        - sample_weight: ``(N,)`` (one weight per row), ``(N, 1)``, ``(N, C)`` or the full
          shape: dims matched with ``inputs``' from the left, then expanded to ``inputs.shape``.
        - output: scalar, or ``(*)`` for ``reduction='none'``.

    Example:
        >>> import torch
        >>> from imbalanced_losses import SigmoidFocalLoss
        >>> loss_fn = SigmoidFocalLoss(alpha=0.25, gamma=2.0)
        >>> inputs = torch.randn(8, 3, requires_grad=True)
        >>> targets = torch.randint(0, 2, (8, 3)).float()
        >>> loss = loss_fn(inputs, targets, sample_weight=torch.ones(8))  # one weight per row
        >>> loss.backward()
        >>> loss.shape, inputs.grad.shape
        (torch.Size([]), torch.Size([8, 3]))
    """

    def __init__(
        self,
        alpha: float = 0.25,
        gamma: float = 2.0,
        reduction: str = "mean",
        gather_distributed: bool | None = None,
        *,
        ignore_index: float | None = None,
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        self.alpha, self.gamma, self.ignore_index = check_sigmoid_options(
            alpha=alpha, gamma=gamma, reduction=reduction, ignore_index=ignore_index
        )
        check_optional_bool("gather_distributed", gather_distributed)
        check_bool("validate_args", validate_args)
        self.reduction = reduction
        self.gather_distributed = gather_distributed
        self.validate_args = validate_args
        self._warn_once = WarnOnce()

    def extra_repr(self) -> str:
        """The hyperparameters shown by ``repr``."""
        return (
            f"alpha={self.alpha!r}, gamma={self.gamma!r}, reduction={self.reduction!r}, "
            f"ignore_index={self.ignore_index!r}"
        )

    def forward(self, inputs: Tensor, targets: Tensor, *, sample_weight: Tensor | None = None) -> Tensor:
        """Compute the loss, over the global batch when gathering.

        Args:
            inputs: Logits of any shape.
            targets: Labels in ``[0, 1]``, same shape as ``inputs``.
            sample_weight: Optional non-negative weights with dim 0 of size ``N``; their dims
                are matched with ``inputs``' from the left, so ``(N,)`` is one weight per row,
                then expanded to ``inputs.shape``.

        Returns:
            The reduced loss (0-d), or the elementwise loss for ``reduction='none'``.
        """
        x, y, w = prepare_sigmoid(
            inputs,
            targets,
            sample_weight,
            ignore_index=self.ignore_index,
            validate_args=self.validate_args,
            warn=self._warn_once,
        )
        if resolve_gather(self.gather_distributed):
            x, y, w = gather_batch(x, y, w)
        return sigmoid_focal_core(
            x, y, w, alpha=self.alpha, gamma=self.gamma, reduction=self.reduction, ignore_index=self.ignore_index
        )


class SoftmaxFocalLoss(nn.Module):
    r"""Softmax focal loss for mutually exclusive classes, with optional spatial dimensions.

    Per position, with the true-class probability :math:`p_t = \mathrm{softmax}(x)_t`:

    .. math::
        \ell = \alpha_t\,(1 - p_t)^{\gamma}\,\mathrm{CE}_\varepsilon(x, t)

    where :math:`\mathrm{CE}_\varepsilon` is :func:`torch.nn.functional.cross_entropy` with
    label smoothing :math:`\varepsilon`. See :func:`imbalanced_losses.functional.softmax_focal_loss`
    for the reductions (incl. ``'mean_positive'``) and the numerics.

    ``alpha``, when given, is a float32 buffer named ``alpha`` (in the state dict, follows
    ``.to()``); otherwise the attribute is ``None``.

    Args:
        alpha: Optional per-class weights, a 1-D tensor or sequence of finite, non-negative
            values with at least ``C`` entries (checked against ``C`` at each call).
        gamma: Focusing parameter :math:`\gamma \ge 0`.
        reduction: ``'mean'`` (over non-ignored positions), ``'mean_positive'`` (divided by the
            non-ignored, non-background positions), ``'sum'`` or ``'none'``.
        label_smoothing: :math:`\varepsilon \in [0, 1]`.
        ignore_index: Target value of positions to leave out.
        background_class: Class left out of the ``'mean_positive'`` denominator.
        gather_distributed: ``None`` gathers the batch over ranks whenever a process group
            with several ranks is initialised (checked on every call), ``True`` requires one,
            ``False`` never gathers.
        validate_args: Run the checks that need a host synchronisation (finite inputs, target
            range, weight values); default ``True``.

    Shape:
        - inputs: ``(N, C)`` or ``(N, C, d1, ...)``; targets: ``(N,)`` or ``(N, d1, ...)``.
        - sample_weight: exactly the shape of targets.
        - output: scalar, or the shape of targets for ``reduction='none'``.

    Example:
        >>> import torch
        >>> from imbalanced_losses import SoftmaxFocalLoss
        >>> loss_fn = SoftmaxFocalLoss(alpha=[0.25, 1.0, 1.0], gamma=2.0)
        >>> inputs = torch.randn(4, 3, 5, 5, requires_grad=True)  # a 5x5 segmentation map
        >>> targets = torch.randint(0, 3, (4, 5, 5))
        >>> loss = loss_fn(inputs, targets)
        >>> loss.backward()
        >>> sorted(loss_fn.state_dict())
        ['alpha']
    """

    alpha: Tensor | None

    def __init__(
        self,
        alpha: Tensor | Sequence[float] | None = None,
        gamma: float = 2.0,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        ignore_index: int = -100,
        background_class: int = 0,
        gather_distributed: bool | None = None,
        *,
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        self.gamma, self.label_smoothing = check_softmax_options(
            gamma=gamma,
            reduction=reduction,
            label_smoothing=label_smoothing,
            ignore_index=ignore_index,
            background_class=background_class,
        )
        check_optional_bool("gather_distributed", gather_distributed)
        check_bool("validate_args", validate_args)
        self.register_buffer("alpha", class_alpha(alpha, dtype=torch.float32, validate=True))
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.background_class = background_class
        self.gather_distributed = gather_distributed
        self.validate_args = validate_args
        self._warn_once = WarnOnce()

    def extra_repr(self) -> str:
        """The hyperparameters shown by ``repr``."""
        alpha = None if self.alpha is None else [round(a, 6) for a in self.alpha.tolist()]
        return (
            f"alpha={alpha!r}, gamma={self.gamma!r}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing!r}, ignore_index={self.ignore_index!r}, "
            f"background_class={self.background_class!r}"
        )

    def forward(self, inputs: Tensor, targets: Tensor, *, sample_weight: Tensor | None = None) -> Tensor:
        """Compute the loss, over the global batch when gathering.

        Args:
            inputs: Logits ``(N, C)`` or ``(N, C, d1, ...)``.
            targets: Class ids ``(N,)`` or ``(N, d1, ...)``.
            sample_weight: Optional non-negative weights shaped exactly like ``targets``.

        Returns:
            The reduced loss (0-d), or the per-position loss for ``reduction='none'``.
        """
        x, ids, w = prepare_softmax(
            inputs,
            targets,
            sample_weight,
            alpha=self.alpha,
            ignore_index=self.ignore_index,
            validate_args=self.validate_args,
            warn=self._warn_once,
        )
        if resolve_gather(self.gather_distributed):
            x, ids, w = gather_batch(x, ids, w)
        return softmax_focal_core(
            x,
            ids,
            w,
            alpha=self.alpha,
            gamma=self.gamma,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            ignore_index=self.ignore_index,
            background_class=self.background_class,
        )
