"""Smooth-AP loss module (:class:`SmoothAPLoss`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ._base import RankingLoss
from .functional.smooth_ap import smooth_ap_core

__all__ = ["SmoothAPLoss"]


class SmoothAPLoss(RankingLoss):
    r"""Smooth-AP loss with a memory queue: ``1 - AP`` per class, one-vs-rest.

    The per-class surrogate is that of :func:`imbalanced_losses.functional.smooth_ap_loss`:

    .. math::
        L_c = 1 - \frac{1}{|P_c|} \sum_{k \in P_c} \frac{1 + \sum_{j \in P_c, j \ne k} \sigma((s_j - s_k)/\tau)}
                                                      {1 + \sum_{j \ne k} \sigma((s_j - s_k)/\tau)}

    computed over the pool = live rows + the memory queue (detached), minus ``ignore_index``
    rows, optionally capped by ``max_pool_size`` (minimum-quota subsampling).

    Args:
        num_classes: Logit columns ``C``; ``1`` is binary mode (targets in ``{0, 1}``).
        queue_size: Rows kept from past batches (``0`` disables the queue).
            At most 8 GiB of buffers (``4 C + 13`` bytes a row: float32 logits, int64 target,
            iid flag, float32 weight), e.g. about 505 million rows for ``C = 1``; a larger
            value (usually a typo) raises ``ValueError`` before anything is allocated.
        temperature: Sigmoid temperature :math:`\tau` in logit units, ``>= 1e-20`` (a mutable
            attribute, checked on every call; schedulers may change it).
        reduction: ``'mean'`` over valid classes, ``'sum'``, or ``'none'`` (``[C]``).
        ignore_index: Target value of rows to leave out (they are still enqueued).
        update_queue_in_eval: Also update the queue in eval mode (default: frozen).
        gather_distributed: ``None`` gathers the batch over ranks whenever a process group
            with several ranks is initialised, ``True`` requires one, ``False`` never gathers.
        max_pool_size: Optional cap on the pool size (stochastic once it applies; warns once).
        generator: Optional :class:`torch.Generator` for the ``max_pool_size`` subsampling.
        validate_args: Run the checks that need a host synchronisation (finite logits,
            target range); default ``True``.
        class_weight: Optional ``[C]`` non-negative weights of the classes: the reduction
            becomes the weighted mean (or sum) over valid classes, and a class of weight 0 is
            not computed at all. Fixed at construction; not saved in the state dict.

    Shape:
        - logits: ``[N, C]``; targets: ``[N]`` (or ``[N, 1]``), or ``[N, C]`` multi-hot;
          iid_mask, sample_weight: ``[N]``.
        - output: scalar, or ``[C]`` for ``reduction='none'``; each diagnostic is ``[C]``.

    Example:
        >>> import torch
        >>> from imbalanced_losses import SmoothAPLoss
        >>> loss_fn = SmoothAPLoss(num_classes=4, queue_size=1024, temperature=0.01)
        >>> loss = loss_fn(torch.randn(32, 4, requires_grad=True), torch.randint(0, 4, (32,)))
        >>> loss.backward()
        >>> bool(0.0 <= loss.detach().item() <= 1.0)
        True
    """

    _reads_iid = False  # iid flags are only stored in the queue (another loss may share it)

    def __init__(
        self,
        num_classes: int,
        queue_size: int = 1024,
        temperature: float = 0.01,
        reduction: str = "mean",
        ignore_index: int = -100,
        update_queue_in_eval: bool = False,
        gather_distributed: bool | None = None,
        max_pool_size: int | None = None,
        *,
        generator: torch.Generator | None = None,
        validate_args: bool = True,
        class_weight: Tensor | Sequence[float] | None = None,
    ) -> None:
        super().__init__(
            num_classes,
            queue_size,
            temperature,
            reduction,
            ignore_index,
            update_queue_in_eval,
            gather_distributed,
            max_pool_size,
            generator=generator,
            validate_args=validate_args,
            class_weight=class_weight,
        )

    def forward(
        self,
        logits: Tensor,
        targets: Tensor,
        iid_mask: Tensor | None = None,
        return_per_class: bool = False,
        *,
        sample_weight: Tensor | None = None,
        return_diagnostics: bool = False,
    ) -> Any:
        """Compute the loss on the live batch plus the queue, then enqueue the batch.

        Args:
            logits: ``[N, C]`` scores.
            targets: ``[N]`` class ids (binary: ``{0, 1}``) or multi-hot ``[N, C]`` (multi-label).
            iid_mask: Optional ``[N]`` bool flags, stored in the queue (used by
                :class:`PAUCAtBudgetLoss`; no effect on this loss's value).
            return_per_class: Also return ``per_class [C]`` (``nan`` for invalid classes) and
                ``valid [C]``.
            sample_weight: Optional ``[N]`` non-negative weights of the positives.
            return_diagnostics: Also return a dict of diagnostics (see the functional form),
                plus ``queue_fill`` (``[C]``, the stored rows of each class this call used).

        Returns:
            ``loss``, ``(loss, per_class, valid)``, ``(loss, stats)`` or
            ``(loss, per_class, valid, stats)``.
        """
        step = self._run(
            logits,
            targets,
            iid_mask,
            sample_weight,
            lambda pool, iid, live: smooth_ap_core(
                pool, temperature=self._temperature_arg(), diagnostics=return_diagnostics
            ),
            return_per_class=return_per_class,
            return_diagnostics=return_diagnostics,
        )
        return self._finish(step, logits, return_per_class, return_diagnostics)
