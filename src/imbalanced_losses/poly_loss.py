"""Poly-1 loss module (:class:`PolyLoss`) for mutually exclusive classes.

``forward`` validates the batch, all-gathers it across ranks when asked (SPEC D1; the
world-size gradient factor of SPEC D2 is applied inside
:func:`imbalanced_losses.distributed.gather_batch`), and calls the functional core of
:mod:`imbalanced_losses.functional.poly`.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._validation import check_bool, check_optional_bool
from ._warnings import WarnOnce
from .distributed import gather_batch, resolve_gather
from .functional.focal import prepare_softmax
from .functional.poly import check_poly_options, poly_core

__all__ = ["PolyLoss"]


class PolyLoss(nn.Module):
    r"""Poly-1 loss (Leng et al. 2022): cross-entropy plus :math:`\varepsilon (1 - p_t)`.

    Per position, with the true-class probability :math:`p_t = \mathrm{softmax}(x)_t`:

    .. math::
        \ell = -\log p_t + \varepsilon\,(1 - p_t)

    (with label smoothing, both terms use the smoothed targets). With ``epsilon=0`` this is
    :class:`torch.nn.CrossEntropyLoss`. See :func:`imbalanced_losses.functional.poly_loss` for
    the reductions and the numerics.

    Args:
        epsilon: Coefficient :math:`\varepsilon \ge -1` of the :math:`(1 - p_t)` term.
        reduction: ``'mean'`` (over non-ignored positions), ``'sum'`` or ``'none'``.
        label_smoothing: :math:`\varepsilon_{ls} \in [0, 1]`.
        ignore_index: Target value of positions to leave out.
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
        >>> from imbalanced_losses import PolyLoss
        >>> loss_fn = PolyLoss(epsilon=1.0)
        >>> inputs = torch.randn(8, 4, requires_grad=True)
        >>> targets = torch.randint(0, 4, (8,))
        >>> loss = loss_fn(inputs, targets)
        >>> loss.backward()
        >>> loss.shape, inputs.grad.shape
        (torch.Size([]), torch.Size([8, 4]))
    """

    def __init__(
        self,
        *,
        epsilon: float = 1.0,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        ignore_index: int = -100,
        gather_distributed: bool | None = None,
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        self.epsilon, self.label_smoothing = check_poly_options(
            epsilon=epsilon, reduction=reduction, label_smoothing=label_smoothing, ignore_index=ignore_index
        )
        check_optional_bool("gather_distributed", gather_distributed)
        check_bool("validate_args", validate_args)
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.gather_distributed = gather_distributed
        self.validate_args = validate_args
        self._warn_once = WarnOnce()

    def extra_repr(self) -> str:
        """The hyperparameters shown by ``repr``."""
        return (
            f"epsilon={self.epsilon!r}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing!r}, ignore_index={self.ignore_index!r}"
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
            alpha=None,
            ignore_index=self.ignore_index,
            validate_args=self.validate_args,
            warn=self._warn_once,
        )
        if resolve_gather(self.gather_distributed):
            x, ids, w = gather_batch(x, ids, w)
        return poly_core(
            x,
            ids,
            w,
            epsilon=self.epsilon,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            ignore_index=self.ignore_index,
        )
