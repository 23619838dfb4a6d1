"""Recall-at-quantile loss module (:class:`RecallAtQuantileLoss`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ._base import RankingLoss
from ._validation import INTERPOLATIONS, check_bool, check_choice, check_float
from .functional.recall_at_quantile import RECALL_TAU_SCALES, recall_at_quantile_core

__all__ = ["RecallAtQuantileLoss"]


class RecallAtQuantileLoss(RankingLoss):
    r"""Soft recall of each class above the pool's top-``quantile`` score threshold.

    .. math::
        \theta_c = Q_{1-q}(s_{\cdot c}), \qquad
        \tau_c = \tau \cdot \big(Q_{0.75}(s_{\cdot c}) - Q_{0.25}(s_{\cdot c})\big), \qquad
        L_c = 1 - \frac{1}{|P_c|}\sum_{i \in P_c} \sigma\!\left(\frac{s_i - \theta_c}{\tau_c}\right)

    with :math:`Q` the quantile over every pooled row (live + queue) using
    ``quantile_interpolation``. The threshold and the quartiles keep their exact values, but
    their gradient reaches the negatives around them (see
    :func:`imbalanced_losses.functional.recall_at_quantile_loss`): positives are pushed up,
    the negatives at the cut down, and a common shift or rescaling of the scores gains
    nothing, so the logit scale cannot run away. ``tau_scale="logit", detach_thresholds=True,
    temperature=0.01`` is 0.6's loss and gradient exactly.

    Args:
        num_classes: Logit columns ``C``; ``1`` is binary mode.
        quantile: Alert budget :math:`q \in (0, 1)` (``0.005`` = top 50 bps).
        queue_size: Rows kept from past batches (``0`` disables the queue).
            At most 8 GiB of buffers (``4 C + 13`` bytes a row: float32 logits, int64 target,
            iid flag, float32 weight), e.g. about 505 million rows for ``C = 1``; a larger
            value (usually a typo) raises ``ValueError`` before anything is allocated.
        temperature: Sigmoid temperature :math:`\tau` (``>= 1e-20``): a multiple of the pool's
            inter-quartile range (``tau_scale='iqr'``, default ``0.1``), or logits
            (``tau_scale='logit'``; 0.6's default was ``0.01`` logits).
        reduction: ``'mean'``, ``'sum'`` or ``'none'``.
        ignore_index: Target value of rows to leave out.
        update_queue_in_eval: Also update the queue in eval mode.
        gather_distributed: ``None`` (auto), ``True`` (require) or ``False`` (never).
        quantile_interpolation: ``'higher'`` (default), ``'linear'``, ``'lower'``,
            ``'nearest'`` or ``'midpoint'``, as in :func:`torch.quantile`.
        max_pool_size: Optional cap on the pool size.
        generator: Optional :class:`torch.Generator` for the subsampling.
        validate_args: Run the checks that need a host synchronisation.
        class_weight: Optional ``[C]`` non-negative weights of the classes: the reduction
            becomes the weighted mean (or sum) over valid classes, and a class of weight 0 is
            not computed at all. Fixed at construction; not saved in the state dict.
        tau_scale: ``'iqr'`` (default): ``temperature`` multiplies the inter-quartile range of
            the pooled scores of the class (logit units where that range is ``<= 1e-12``);
            ``'logit'``: ``temperature`` is in logits, as in 0.6.
        detach_thresholds: ``True`` treats the threshold and quartiles as constants (0.6's
            gradient: positives only); the default lets their gradient reach the negatives.

    Shape:
        - logits: ``[N, C]``; targets: ``[N]``, or ``[N, C]`` multi-hot; iid_mask, sample_weight: ``[N]``.
        - output: scalar, or ``[C]`` for ``'none'``; each diagnostic is ``[C]``.
    """

    _reads_iid = False  # iid flags are only stored in the queue (another loss may share it)

    def __init__(
        self,
        num_classes: int,
        quantile: float = 0.005,
        queue_size: int = 1024,
        temperature: float = 0.1,
        reduction: str = "mean",
        ignore_index: int = -100,
        update_queue_in_eval: bool = False,
        gather_distributed: bool | None = None,
        quantile_interpolation: str = "higher",
        max_pool_size: int | None = None,
        *,
        generator: torch.Generator | None = None,
        validate_args: bool = True,
        class_weight: Tensor | Sequence[float] | None = None,
        tau_scale: str = "iqr",
        detach_thresholds: bool = False,
    ) -> None:
        quantile = check_float("quantile", quantile, low=0.0, high=1.0)
        check_choice("quantile_interpolation", quantile_interpolation, INTERPOLATIONS)
        check_choice("tau_scale", tau_scale, RECALL_TAU_SCALES)
        check_bool("detach_thresholds", detach_thresholds)
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
        self.quantile = quantile
        self.quantile_interpolation = quantile_interpolation
        self.tau_scale = tau_scale
        self.detach_thresholds = detach_thresholds

    def _extra_repr_names(self) -> list[str]:
        return ["quantile", "quantile_interpolation", "tau_scale", "detach_thresholds"]

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
            iid_mask: Optional ``[N]`` bool flags, stored in the queue (no effect on this loss).
            return_per_class: Also return ``per_class [C]`` and ``valid [C]``.
            sample_weight: Optional ``[N]`` non-negative weights of the positives.
            return_diagnostics: Also return a dict of diagnostics (see the functional form),
                plus ``queue_fill`` (``[C]``, the stored rows of each class this call used).

        Returns:
            ``loss``, ``(loss, per_class, valid)``, ``(loss, stats)`` or
            ``(loss, per_class, valid, stats)``.
        """
        quantile, interpolation = self.quantile, self.quantile_interpolation
        step = self._run(
            logits,
            targets,
            iid_mask,
            sample_weight,
            lambda pool, iid, live: recall_at_quantile_core(
                pool,
                quantile=quantile,
                temperature=self._temperature_arg(),  # checked by _run before the core runs
                interpolation=interpolation,
                detach_thresholds=self.detach_thresholds,
                tau_scale=self.tau_scale,
                diagnostics=return_diagnostics,
            ),
            return_per_class=return_per_class,
            return_diagnostics=return_diagnostics,
        )
        return self._finish(step, logits, return_per_class, return_diagnostics)
