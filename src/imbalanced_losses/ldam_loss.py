"""LDAM loss module (:class:`LDAMLoss`); the functional form is :func:`imbalanced_losses.functional.ldam_loss`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._validation import check_bool, check_optional_bool
from ._warnings import WarnOnce
from .distributed import gather_batch, resolve_gather
from .functional.focal import prepare_softmax
from .functional.ldam import check_class_weight, check_ldam_options, ldam_core, ldam_margins

__all__ = ["LDAMLoss"]


class LDAMLoss(nn.Module):
    r"""Label-distribution-aware margin loss (Cao et al., 2019) for long-tailed multi-class data.

    Per position with logits :math:`x \in \mathbb{R}^C` and class :math:`y`, with the
    per-class margins :math:`\Delta_c = m_{\max}\, n_c^{-1/4} / \max_j n_j^{-1/4}` (the rarest
    class gets ``max_margin``):

    .. math::
        \ell = w_y \left( \log \sum_{c} e^{s (x_c - \Delta_y [c = y])} - s (x_y - \Delta_y) \right),

    i.e. cross-entropy on ``scale * (logits - Δ_y * onehot(y))``: the margin is subtracted from
    the true-class logit only. ``max_margin=0, scale=1`` gives
    :class:`torch.nn.CrossEntropyLoss` (``weight=class_weight``, same reductions). See
    :func:`imbalanced_losses.functional.ldam_loss` for the reductions and numerics.

    **Meant for normalised (cosine) heads** with ``scale`` ~ 30: the paper's logits are cosines
    in ``[-1, 1]`` between L2-normalised features and L2-normalised class weights, so a margin
    of 0.5 is large and ``scale`` lets the softmax become confident. With a plain linear head
    the logits are unbounded: the network meets any fixed margin by growing its weights (the
    margins fade out), and ``scale=30`` multiplies the logits and gradients by 30. Use a cosine
    head (``F.linear(F.normalize(h, dim=1), F.normalize(W, dim=1))``), or ``scale=1`` with a
    margin in logit units.

    The paper pairs LDAM with deferred re-weighting (LDAM-DRW): wrap the loss in
    :class:`~imbalanced_losses.DeferredReweighting`, which switches ``class_weight`` from
    ``None`` to class-balanced weights at a given epoch.

    Buffers: ``margins`` (``[C]`` float32, persistent) and ``class_weight`` (``[C]`` float32,
    or ``None``: then not in the state dict). Both follow ``.to()``. ``class_weight`` may be
    replaced after construction (a ``[C]`` tensor or ``None``; DRW does this); its length is
    checked against ``C`` on every call. Loading a state dict that holds ``class_weight`` into
    a loss whose ``class_weight`` is ``None`` adopts it.

    Args:
        class_counts: ``[C]`` training counts :math:`n_c` (a tensor or a sequence of numbers;
            an empty class is counted as 1, with a warning).
        max_margin: :math:`m_{\max} \ge 0`, the largest margin (paper: 0.5; the authors use
            0.3 on iNaturalist).
        scale: :math:`s > 0`, multiplies the logits after the margin (paper: 30).
        class_weight: Optional ``[C]`` finite, non-negative per-class weights.
        reduction: ``'mean'`` (divided by the summed class and sample weights of the
            non-ignored positions, as :class:`torch.nn.CrossEntropyLoss`), ``'sum'`` or
            ``'none'``.
        ignore_index: Target value of positions to leave out.
        gather_distributed: ``None`` (auto: all-gather the batch when a process group with more
            than one rank exists, so ``'mean'`` runs over the global batch), ``True`` (require
            one) or ``False`` (never).
        validate_args: Run the checks that need a host synchronisation (finite logits,
            target range, weight values); default ``True``.

    Shape:
        - logits: ``(N, C)`` or ``(N, C, d1, ...)``; targets: ``(N,)`` or ``(N, d1, ...)``.
        - sample_weight: exactly the shape of targets.
        - output: scalar, or the shape of targets for ``reduction='none'``.

    Raises:
        ValueError: Bad ``class_counts`` (empty, negative, non-finite, all zero),
            ``max_margin`` (negative), ``scale`` (not ``> 0``), ``class_weight`` (not ``[C]``,
            negative) or ``reduction``.
        TypeError: An argument of the wrong type.

    Warns:
        UserWarning: At construction, when ``class_counts`` has an empty class.

    Example:
        >>> import torch
        >>> from imbalanced_losses import LDAMLoss
        >>> loss_fn = LDAMLoss(class_counts=[500, 50, 5])
        >>> loss_fn.margins
        tensor([0.1581, 0.2812, 0.5000])
        >>> cosines = torch.empty(8, 3).uniform_(-1, 1).requires_grad_()
        >>> loss = loss_fn(cosines, torch.randint(0, 3, (8,)))
        >>> loss.backward()
        >>> sorted(loss_fn.state_dict())
        ['margins']
    """

    margins: Tensor
    class_weight: Tensor | None

    def __init__(
        self,
        class_counts: Tensor | Sequence[float],
        *,
        max_margin: float = 0.5,
        scale: float = 30.0,
        class_weight: Tensor | Sequence[float] | None = None,
        reduction: str = "mean",
        ignore_index: int = -100,
        gather_distributed: bool | None = None,
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        self.max_margin, self.scale = check_ldam_options(
            max_margin=max_margin, scale=scale, reduction=reduction, ignore_index=ignore_index
        )
        check_optional_bool("gather_distributed", gather_distributed)
        check_bool("validate_args", validate_args)
        self.gather_distributed = gather_distributed
        self._warn_once = WarnOnce()
        margins = ldam_margins(class_counts, max_margin=self.max_margin, warn=self._warn_once)
        weights = check_class_weight(class_weight, num_classes=margins.shape[0], validate=True)
        self.register_buffer("margins", margins.to(torch.float32))
        self.register_buffer("class_weight", None if weights is None else weights.to(torch.float32))
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.validate_args = validate_args

    @property
    def num_classes(self) -> int:
        """``C``, the number of classes (the length of ``margins``)."""
        return int(self.margins.shape[0])

    def extra_repr(self) -> str:
        """The hyperparameters shown by ``repr``."""
        return (
            f"num_classes={self.num_classes}, max_margin={self.max_margin!r}, scale={self.scale!r}, "
            f"reweighted={self.class_weight is not None}, reduction={self.reduction!r}, "
            f"ignore_index={self.ignore_index!r}"
        )

    def forward(self, logits: Tensor, targets: Tensor, *, sample_weight: Tensor | None = None) -> Tensor:
        """Compute the loss.

        Args:
            logits: ``(N, C)`` or ``(N, C, d1, ...)``, ideally cosine logits in ``[-1, 1]``.
            targets: Class ids ``(N,)`` or ``(N, d1, ...)``.
            sample_weight: Optional non-negative weights shaped exactly like ``targets``.

        Returns:
            The reduced loss (0-d), or the per-position loss for ``reduction='none'``.

        Raises:
            ValueError: ``logits`` without ``C`` classes along dim 1, a ``class_weight`` that
                is not ``[C]``, or a bad batch (see :func:`~imbalanced_losses.functional.ldam_loss`).
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
                f"`logits` must have C={self.num_classes} classes along dim 1 (the length of `class_counts`), "
                f"got shape {tuple(x.shape)}."
            )
        if resolve_gather(self.gather_distributed):  # the mean runs over the global batch
            x, ids, w = gather_batch(x, ids, w)
        class_weight = self.class_weight
        if class_weight is not None and tuple(class_weight.shape) != (self.num_classes,):
            raise ValueError(
                f"`class_weight` must have shape [C] with C={self.num_classes}, got {tuple(class_weight.shape)}."
            )
        return ldam_core(
            x,
            ids,
            w,
            margins=self.margins,
            class_weight=class_weight,
            scale=self.scale,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
        )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # A saved `class_weight` (e.g. after the DRW switch) loads into a loss built without one.
        saved = state_dict.get(prefix + "class_weight")
        if self.class_weight is None and isinstance(saved, Tensor):
            self.class_weight = torch.empty(saved.shape, dtype=torch.float32, device=self.margins.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
