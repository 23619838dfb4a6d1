"""Partial-AUC-at-budget loss module (:class:`PAUCAtBudgetLoss`)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ._base import RankingLoss
from ._validation import INTERPOLATIONS, check_bool, check_choice
from .functional.pauc_at_budget import check_pauc_args, dispersion_message, pauc_at_budget_core

__all__ = ["PAUCAtBudgetLoss"]


class PAUCAtBudgetLoss(RankingLoss):
    r"""Partial AUC over the false-positive band ``[alpha, beta]``, per class.

    Thresholds :math:`t_\alpha = Q_{1-\alpha}`, :math:`t_\beta = Q_{1-\beta}` are quantiles
    of the iid negatives (``budget_basis='fpr'``) or of every iid row (``'population'``) of
    the pool (live + queue); the temperature is a multiplier of the reference dispersion
    (inter-quartile range or band width). ``'trapezoid'`` averages the soft TPR over
    ``n_knots`` FPR knots of the band; its knots and dispersion keep their exact values but
    pass their gradient on to the reference negatives around them, so the negatives at the
    knots are pushed down as the positives are pushed up (``detach_thresholds=True``: 0.6's
    gradient, positives only, whose logit scale can run away). ``'pairwise'`` contrasts
    positives with the negatives inside the band (band negatives get gradient too; its band
    edges only select the band). See :func:`imbalanced_losses.functional.pauc_at_budget_loss` for the math.

    Args:
        num_classes: Logit columns ``C``; ``1`` is binary mode.
        alpha: Lower FPR edge, ``0 <= alpha < beta``. ``0`` (recommended) makes
            :math:`t_\alpha` the top iid negative.
        beta: Upper FPR edge (the budget), ``<= 1``.
        surrogate: ``'trapezoid'`` (default) or ``'pairwise'``.
        n_knots: Trapezoid knots, an ``int >= 2``.
        tau_scale: ``'iqr'`` (default) or ``'band'``.
        pos_numerator: ``'pool'`` (all pooled positives) or ``'live'`` (current batch only;
            the queue still feeds the thresholds).
        budget_basis: ``'fpr'`` (iid negatives) or ``'population'`` (all iid rows).
        queue_size: Rows kept from past batches (``0`` disables the queue).
            At most 8 GiB of buffers (``4 C + 13`` bytes a row: float32 logits, int64 target,
            iid flag, float32 weight), e.g. about 505 million rows for ``C = 1``; a larger
            value (usually a typo) raises ``ValueError`` before anything is allocated.
        temperature: Dimensionless multiplier of the dispersion (default ``0.1``), ``>= 1e-20``.
        reduction: ``'mean'``, ``'sum'`` or ``'none'``.
        ignore_index: Target value of rows to leave out.
        update_queue_in_eval: Also update the queue in eval mode.
        gather_distributed: ``None`` (auto), ``True`` (require) or ``False`` (never).
        quantile_interpolation: :func:`torch.quantile` interpolation of the thresholds.
        max_pool_size: Optional cap on the pool size.
        generator: Optional :class:`torch.Generator` for the subsampling.
        validate_args: Run the checks that need a host synchronisation, and the warning on a
            degenerate reference dispersion (``False``: such classes are still invalid, silently).
        class_weight: Optional ``[C]`` non-negative weights of the classes: the reduction
            becomes the weighted mean (or sum) over valid classes, and a class of weight 0 is
            not computed at all. Fixed at construction; not saved in the state dict.
        detach_thresholds: ``True`` treats the trapezoid's knots and dispersion as constants
            (0.6's gradient); no effect on ``'pairwise'``.

    Shape:
        - logits: ``[N, C]``; targets: ``[N]``, or ``[N, C]`` multi-hot; iid_mask, sample_weight: ``[N]``.
        - output: scalar, or ``[C]`` for ``'none'``; each diagnostic is ``[C]``.
    """

    def __init__(
        self,
        num_classes: int,
        alpha: float = 0.0,
        beta: float = 0.005,
        surrogate: str = "trapezoid",
        n_knots: int = 2,
        tau_scale: str = "iqr",
        pos_numerator: str = "pool",
        budget_basis: str = "fpr",
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
        detach_thresholds: bool = False,
    ) -> None:
        alpha, beta = check_pauc_args(
            alpha=alpha,
            beta=beta,
            n_knots=n_knots,
            surrogate=surrogate,
            tau_scale=tau_scale,
            pos_numerator=pos_numerator,
            budget_basis=budget_basis,
        )
        check_choice("quantile_interpolation", quantile_interpolation, INTERPOLATIONS)
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
        self.alpha = alpha
        self.beta = beta
        self.surrogate = surrogate
        self.n_knots = n_knots
        self.tau_scale = tau_scale
        self.pos_numerator = pos_numerator
        self.budget_basis = budget_basis
        self.quantile_interpolation = quantile_interpolation
        self.detach_thresholds = detach_thresholds

    def _extra_repr_names(self) -> list[str]:
        return [
            "alpha",
            "beta",
            "surrogate",
            "n_knots",
            "tau_scale",
            "pos_numerator",
            "budget_basis",
            "detach_thresholds",
        ]

    def forward(
        self,
        logits: Tensor,
        targets: Tensor,
        iid_mask: Tensor | None = None,
        return_per_class: bool = False,
        return_diagnostics: bool = False,
        *,
        sample_weight: Tensor | None = None,
    ) -> Any:
        """Compute the loss on the live batch plus the queue, then enqueue the batch.

        Args:
            logits: ``[N, C]`` scores.
            targets: ``[N]`` class ids (binary: ``{0, 1}``) or multi-hot ``[N, C]`` (multi-label).
            iid_mask: Optional ``[N]`` bool; rows flagged ``False`` (e.g. oversampled or
                synthetic negatives) do not move the thresholds. Stored in the queue.
            return_per_class: Also return ``per_class [C]`` and ``valid [C]``.
            return_diagnostics: Also return the stats dict, ``[C]`` each: ``t_alpha``,
                ``t_beta``, ``tau_eff``, ``band_neg_count``, ``pauc_var``, ``grad_pos_count``
                (live positives of this rank), and ``pool_size``, ``pos_count``, ``neg_count``,
                ``pauc`` (exact, on the pool), ``saturated_fraction``, ``queue_fill``.
            sample_weight: Optional ``[N]`` non-negative weights of the positives.

        Returns:
            ``loss``, ``(loss, per_class, valid)``, ``(loss, stats)`` or
            ``(loss, per_class, valid, stats)``.
        """
        core = functools.partial(
            pauc_at_budget_core,
            diagnostics=return_diagnostics,
            alpha=self.alpha,
            beta=self.beta,
            surrogate=self.surrogate,
            n_knots=self.n_knots,
            tau_scale=self.tau_scale,
            pos_numerator=self.pos_numerator,
            budget_basis=self.budget_basis,
            interpolation=self.quantile_interpolation,
            detach_thresholds=self.detach_thresholds,
        )
        step = self._run(
            logits,
            targets,
            iid_mask,
            sample_weight,
            lambda pool, iid, live: core(pool, iid=iid, live=live, temperature=self._temperature_arg()),
            return_per_class=return_per_class,
            return_diagnostics=return_diagnostics,
        )
        result = step.result
        # The warning reads a device flag (a host synchronisation): only under validate_args.
        if self.validate_args and result.degenerate is not None and bool(result.degenerate.any()):
            self._warn_once(
                "dispersion",
                dispersion_message(alpha=self.alpha, budget_basis=self.budget_basis, tau_scale=self.tau_scale),
            )
        if result.stats is not None:
            # Live positives of *this rank* (before any all-gather): the rows this rank's backward reaches.
            counts = _count_positives(step.local_ids, self.num_classes)
            if self.class_weight is not None:  # classes of weight 0 were not computed
                counts = counts * (self.class_weight > 0).to(counts.device)
            result.stats["grad_pos_count"] = counts
        return self._finish(step, logits, return_per_class, return_diagnostics)


def _count_positives(ids: Tensor, num_classes: int) -> Tensor:
    """``[C]`` number of positive rows per class among normalised target ids (``[N]`` or multi-label ``[N, C]``)."""
    if ids.ndim == 2:
        return (ids == 1).sum(0)
    if num_classes == 1:
        return (ids == 1).sum().reshape(1)
    valid = (ids >= 0) & (ids < num_classes)
    return torch.bincount(ids[valid], minlength=num_classes)
