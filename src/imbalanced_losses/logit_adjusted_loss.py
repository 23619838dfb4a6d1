r"""Logit-adjusted loss modules (:class:`LogitAdjustedLoss`, :class:`BalancedSoftmaxLoss`).

The class priors are validated once, at construction, and kept as the float32 buffer
``log_prior`` (``[C]``, in the state dict, follows ``.to()``). Each ``forward`` validates the
batch and calls :func:`imbalanced_losses.functional.logit_adjusted.logit_adjusted_core`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._validation import check_bool, check_optional_bool
from ._warnings import WarnOnce
from .distributed import gather_batch, resolve_gather
from .functional._priors import log_priors
from .functional.focal import prepare_softmax
from .functional.logit_adjusted import check_logit_adjusted_options, logit_adjusted_core

__all__ = ["BalancedSoftmaxLoss", "LogitAdjustedLoss"]


class LogitAdjustedLoss(nn.Module):
    r"""Logit-adjusted softmax cross-entropy (Menon et al., 2021).

    Per position, with logits :math:`x \in \mathbb{R}^C`, class :math:`t` and class priors
    :math:`\pi`:

    .. math::
        \ell = -\log \frac{e^{x_t + \tau \log \pi_t}}{\sum_{c} e^{x_c + \tau \log \pi_c}}.

    :math:`\tau = 0` is plain cross-entropy, :math:`\tau = 1` is Balanced Softmax
    (:class:`BalancedSoftmaxLoss`). Predict with the **raw** logits: the adjustment only shapes
    training. See :func:`imbalanced_losses.functional.logit_adjusted_loss` for the reductions and
    the numerics (half-precision logits give a float32 loss).

    Args:
        class_priors: ``(C,)`` positive class probabilities summing to 1 (within 1e-3;
            renormalised). Exactly one of ``class_priors`` and ``class_counts``.
        class_counts: ``(C,)`` non-negative training counts per class, at least one > 0; an
            empty class counts as 1, with a warning (once, at construction).
        tau: Scale :math:`\tau \ge 0` of the adjustment; 1 in the paper.
        reduction: ``'mean'`` (over non-ignored positions, weighted by ``sample_weight``),
            ``'sum'`` or ``'none'``.
        ignore_index: Target value of positions to leave out.
        gather_distributed: ``None`` (auto: all-gather the batch when a process group with more
            than one rank exists, so ``'mean'`` runs over the global batch), ``True`` (require
            one) or ``False`` (never).
        validate_args: Run the per-batch checks that need a host synchronisation (finite
            logits, target range, weight values); default ``True``.

    Attributes:
        log_prior: ``(C,)`` float32 buffer :math:`\log \pi` (persistent: saved in the state
            dict, moved by ``.to()``).

    Shape:
        - logits: ``(N, C)`` or ``(N, C, d1, ...)``; targets: ``(N,)`` or ``(N, d1, ...)``.
        - sample_weight: exactly the shape of targets.
        - output: scalar, or the shape of targets for ``reduction='none'``.

    Raises:
        ValueError: Both or neither of ``class_priors``/``class_counts``, invalid priors or
            counts (wrong shape, negative, non-finite, all zero, priors not summing to 1), a
            negative ``tau`` or an unknown ``reduction``.
        TypeError: Bool or complex priors/counts, or a non-bool ``validate_args``.

    Example:
        >>> import torch
        >>> from imbalanced_losses import LogitAdjustedLoss
        >>> loss_fn = LogitAdjustedLoss(class_counts=[500, 50, 5], tau=1.0)
        >>> logits = torch.randn(8, 3, requires_grad=True)
        >>> targets = torch.randint(0, 3, (8,))
        >>> loss = loss_fn(logits, targets)
        >>> loss.backward()
        >>> sorted(loss_fn.state_dict())
        ['log_prior']
    """

    log_prior: Tensor

    def __init__(
        self,
        *,
        class_priors: Tensor | Any = None,
        class_counts: Tensor | Any = None,
        tau: float = 1.0,
        reduction: str = "mean",
        ignore_index: int = -100,
        gather_distributed: bool | None = None,
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        self.tau = check_logit_adjusted_options(tau=tau, reduction=reduction, ignore_index=ignore_index)
        check_optional_bool("gather_distributed", gather_distributed)
        check_bool("validate_args", validate_args)
        self.gather_distributed = gather_distributed
        self._warn_once = WarnOnce()
        lp = log_priors(class_priors=class_priors, class_counts=class_counts, warn=self._warn_once)
        self.register_buffer("log_prior", lp.to(torch.float32))
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.validate_args = validate_args

    @property
    def num_classes(self) -> int:
        """The number of classes ``C`` (the length of :attr:`log_prior`)."""
        return int(self.log_prior.shape[0])

    def extra_repr(self) -> str:
        """The hyperparameters shown by ``repr``."""
        return (
            f"num_classes={self.num_classes}, tau={self.tau!r}, reduction={self.reduction!r}, "
            f"ignore_index={self.ignore_index!r}"
        )

    def forward(self, logits: Tensor, targets: Tensor, *, sample_weight: Tensor | None = None) -> Tensor:
        """Compute the loss.

        Args:
            logits: ``(N, C)`` or ``(N, C, d1, ...)``, with ``C`` the number of priors.
            targets: Class ids ``(N,)`` or ``(N, d1, ...)``.
            sample_weight: Optional non-negative weights shaped exactly like ``targets``.

        Returns:
            The reduced loss (0-d), or the per-position loss for ``reduction='none'``.
        """
        x, ids, w = prepare_softmax(
            logits,
            targets,
            sample_weight,
            alpha=None,
            ignore_index=self.ignore_index,
            validate_args=self.validate_args,
            warn=self._warn_once,
            name="logits",
        )
        if x.shape[1] != self.num_classes:
            raise ValueError(
                f"`logits` must have C={self.num_classes} classes in dim 1 (one per class prior), "
                f"got shape {tuple(x.shape)}."
            )
        if resolve_gather(self.gather_distributed):  # the mean runs over the global batch
            x, ids, w = gather_batch(x, ids, w)
        return logit_adjusted_core(
            x,
            ids,
            w,
            log_prior=self.log_prior,
            tau=self.tau,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
        )


class BalancedSoftmaxLoss(LogitAdjustedLoss):
    r"""Balanced Softmax cross-entropy (Ren et al., 2020): :class:`LogitAdjustedLoss` with :math:`\tau = 1`.

    .. math::
        \ell = -\log \frac{n_t\, e^{x_t}}{\sum_{c} n_c\, e^{x_c}}
             = -\log \frac{e^{x_t + \log \pi_t}}{\sum_{c} e^{x_c + \log \pi_c}}

    (the two agree because the softmax cancels the constant :math:`\log \sum_j n_j`). There is
    no ``tau`` argument: the attribute ``tau`` is fixed at 1.0. The state dict is the same as
    :class:`LogitAdjustedLoss`'s (``log_prior``), so checkpoints load into either class.
    Predict with the raw logits.

    Args:
        class_priors: ``(C,)`` positive class probabilities summing to 1. Exactly one of
            ``class_priors`` and ``class_counts``.
        class_counts: ``(C,)`` non-negative training counts (an empty class counts as 1, with
            a warning).
        reduction: ``'mean'``, ``'sum'`` or ``'none'``.
        ignore_index: Target value of positions to leave out.
        gather_distributed: ``None`` (auto: all-gather the batch when a process group with more
            than one rank exists, so ``'mean'`` runs over the global batch), ``True`` (require
            one) or ``False`` (never).
        validate_args: Run the per-batch checks that need a host synchronisation.

    Example:
        >>> import torch
        >>> from imbalanced_losses import BalancedSoftmaxLoss
        >>> counts = torch.tensor([500.0, 50.0, 5.0])
        >>> logits, targets = torch.randn(8, 3), torch.randint(0, 3, (8,))
        >>> loss = BalancedSoftmaxLoss(class_counts=counts)(logits, targets)
        >>> ref = torch.nn.functional.cross_entropy(logits + counts.log(), targets)
        >>> bool(torch.isclose(loss, ref))
        True
    """

    def __init__(
        self,
        *,
        class_priors: Tensor | Any = None,
        class_counts: Tensor | Any = None,
        reduction: str = "mean",
        ignore_index: int = -100,
        gather_distributed: bool | None = None,
        validate_args: bool = True,
    ) -> None:
        super().__init__(
            class_priors=class_priors,
            class_counts=class_counts,
            tau=1.0,
            reduction=reduction,
            ignore_index=ignore_index,
            gather_distributed=gather_distributed,
            validate_args=validate_args,
        )

    def extra_repr(self) -> str:
        """The hyperparameters shown by ``repr``."""
        return f"num_classes={self.num_classes}, reduction={self.reduction!r}, ignore_index={self.ignore_index!r}"
