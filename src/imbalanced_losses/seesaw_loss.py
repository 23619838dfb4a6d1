r"""Seesaw loss module (:class:`SeesawLoss`) with class counts accumulated online.

``forward`` validates the batch, all-gathers it across ranks when asked (SPEC D1; the
world-size gradient factor of SPEC D2 is applied inside
:func:`imbalanced_losses.distributed.gather_batch`), adds the (global) batch's class counts to
the ``class_counts`` buffer in training mode, and calls the functional core of
:mod:`imbalanced_losses.functional.seesaw`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._validation import check_bool, check_int, check_optional_bool
from ._warnings import WarnOnce
from .distributed import gather_batch, resolve_gather
from .functional.seesaw import check_seesaw_options, count_batch, prepare_seesaw, seesaw_core

__all__ = ["SeesawLoss"]


class SeesawLoss(nn.Module):
    r"""Seesaw loss (Wang et al., 2021) with class counts accumulated during training.

    Per position of class :math:`y` with logits :math:`x \in \mathbb{R}^C`:

    .. math::
        \ell = -\log \frac{e^{x_y}}{e^{x_y} + \sum_{j \ne y} M_{yj} C_{yj}\, e^{x_j}}, \qquad
        M_{yj} = \min\Bigl(1, \frac{N_j}{N_y}\Bigr)^{p}, \qquad
        C_{yj} = \max\Bigl(1, \frac{\sigma_j}{\sigma_y}\Bigr)^{q},

    with :math:`N` the accumulated class counts (clamped to :math:`\ge 1`) and
    :math:`\sigma = \mathrm{softmax}(x)` (detached: :math:`M C` is not differentiated). See
    :func:`imbalanced_losses.functional.seesaw_loss` for the reductions and the numerics (log
    space, finite at saturated logits; half-precision logits give a float32 loss).

    **Counts.** ``class_counts`` is a persistent ``int64`` buffer ``(C,)`` (in the state dict,
    follows ``.to(device)``; int64 stays exact where float32 would stop counting past
    :math:`2^{24}`), starting at 0. In **training mode** each call first adds the batch's
    counts of non-ignored targets, then computes the loss with the updated counts (mmdet's
    order), so the target class of every position has :math:`N_y \ge 1`. In **eval mode**
    (``loss_fn.eval()``) the counts are frozen: the loss uses them as they are and nothing is
    added (a validation loss is then comparable across evaluations). A fresh module in eval
    mode has all counts 0, i.e. no mitigation. Counts are never differentiated.

    **Distributed.** When the batch is gathered (``gather_distributed``, below), the counts
    added are those of the gathered global batch, i.e. the per-rank counts summed over ranks
    (the same as an all-reduce, without an extra collective): every rank holds the same
    counts and computes the same loss, equal to one process on the concatenated batches.
    mmdet never synchronises its ``cum_samples``, so its ranks' counts drift apart. With
    ``gather_distributed=False`` nothing is communicated and each rank counts its own batches.

    Args:
        num_classes: Number of classes :math:`C \ge 2` (``logits.shape[1]``).
        p: Mitigation exponent :math:`p \ge 0` (paper default 0.8; ``0`` disables it).
        q: Compensation exponent :math:`q \ge 0` (paper default 2.0; ``0`` disables it).
        reduction: ``'mean'`` (over non-ignored positions), ``'sum'`` or ``'none'``.
        ignore_index: Target value of positions to leave out (neither counted nor in the loss).
        validate_args: Run the checks that need a host synchronisation (finite logits, target
            range, weight values); default ``True``.
        gather_distributed: ``None`` gathers the batch (and sums the counts) over ranks
            whenever a process group with several ranks is initialised (checked on every
            call), ``True`` requires one, ``False`` never communicates.

    Shape:
        - logits: ``(N, C)`` or ``(N, C, d1, ...)``; targets: ``(N,)`` or ``(N, d1, ...)``.
        - sample_weight: exactly the shape of targets.
        - output: scalar, or the shape of targets for ``reduction='none'``.

    Example:
        >>> import torch
        >>> from imbalanced_losses import SeesawLoss
        >>> loss_fn = SeesawLoss(num_classes=3)
        >>> logits = torch.randn(6, 3, requires_grad=True)
        >>> targets = torch.tensor([0, 0, 0, 0, 1, 2])
        >>> loss = loss_fn(logits, targets)
        >>> loss.backward()
        >>> loss_fn.class_counts
        tensor([4, 1, 1])
        >>> _ = loss_fn.eval()(logits, targets)  # eval mode: counts unchanged
        >>> loss_fn.class_counts
        tensor([4, 1, 1])
        >>> sorted(loss_fn.state_dict())
        ['class_counts']
    """

    class_counts: Tensor

    def __init__(
        self,
        num_classes: int,
        *,
        p: float = 0.8,
        q: float = 2.0,
        reduction: str = "mean",
        ignore_index: int = -100,
        validate_args: bool = True,
        gather_distributed: bool | None = None,
    ) -> None:
        super().__init__()
        check_int("num_classes", num_classes, minimum=2)
        self.p, self.q = check_seesaw_options(p=p, q=q, reduction=reduction, ignore_index=ignore_index)
        check_bool("validate_args", validate_args)
        check_optional_bool("gather_distributed", gather_distributed)
        self.num_classes = num_classes
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.validate_args = validate_args
        self.gather_distributed = gather_distributed
        self.register_buffer("class_counts", torch.zeros(num_classes, dtype=torch.int64))
        self._warn_once = WarnOnce()

    def extra_repr(self) -> str:
        """The hyperparameters shown by ``repr``."""
        return (
            f"num_classes={self.num_classes}, p={self.p!r}, q={self.q!r}, reduction={self.reduction!r}, "
            f"ignore_index={self.ignore_index!r}"
        )

    def forward(self, logits: Tensor, targets: Tensor, *, sample_weight: Tensor | None = None) -> Tensor:
        """Compute the loss (over the global batch when gathering); in training mode, count the batch first.

        Args:
            logits: ``(N, C)`` or ``(N, C, d1, ...)`` with ``C == num_classes``.
            targets: Class ids ``(N,)`` or ``(N, d1, ...)``.
            sample_weight: Optional non-negative weights shaped exactly like ``targets``.

        Returns:
            The reduced loss (0-d), or the per-position loss for ``reduction='none'``.

        Raises:
            ValueError: ``logits`` without ``num_classes`` columns, or a bad batch (see
                :func:`imbalanced_losses.functional.seesaw_loss`).
        """
        x, ids, w = prepare_seesaw(
            logits,
            targets,
            sample_weight,
            ignore_index=self.ignore_index,
            validate_args=self.validate_args,
            warn=self._warn_once,
        )
        if x.shape[1] != self.num_classes:
            raise ValueError(
                f"`logits` must have num_classes={self.num_classes} columns (dim 1), got shape {tuple(x.shape)}."
            )
        if resolve_gather(self.gather_distributed):
            x, ids, w = gather_batch(x, ids, w)
        if self.training:
            with torch.no_grad():
                self.class_counts.add_(count_batch(ids, self.num_classes, self.ignore_index).to(self.class_counts))
        return seesaw_core(
            x,
            ids,
            w,
            class_counts=self.class_counts,
            p=self.p,
            q=self.q,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
        )
