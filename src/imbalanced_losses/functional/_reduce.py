"""Reduction of a ranking core's per-class result over its valid classes, and its public return form."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from ._constants import device_constant


class RankingResult(NamedTuple):
    """Unreduced output of a ranking-loss core.

    Attributes:
        loss: ``[C]`` per-class loss; values of invalid classes are finite placeholders. A
            single class read on the host (:func:`host_valid_result`) may give it 0-d: its
            reduction is then the value itself, with no view to form or differentiate.
        valid: ``[C]`` bool, whether the class could be scored on this pool.
        stats: Optional per-class diagnostics (``[C]`` tensors), or ``None``.
        degenerate: Optional ``[C]`` bool, classes skipped for a degenerate score dispersion.
        all_valid: Known on the host that every class is valid (``False``: unknown); the
            reduction then has no placeholder to zero.
    """

    loss: Tensor
    valid: Tensor
    stats: dict[str, Tensor] | None = None
    degenerate: Tensor | None = None
    all_valid: bool = False


def host_valid_result(loss: Tensor, valid: bool, degenerate: Tensor | None = None) -> RankingResult:
    """The result of one class whose validity was read on the host.

    ``valid`` enters both as a cached ``[1]`` tensor and as ``all_valid``, so the two cannot disagree.
    """
    return RankingResult(loss, device_constant((valid,), torch.bool, loss.device), None, degenerate, valid)


def reduce_classes(
    result: RankingResult,
    reduction: str,
    anchor: Tensor,
    class_weight: Tensor | None = None,
    *,
    checked_finite: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""Reduce a per-class result over its valid classes.

    Returns ``(loss, per_class)``: ``per_class`` is ``[C]`` with ``nan`` for invalid classes;
    ``loss`` is that vector for ``'none'``, otherwise :func:`reduce_valid`.
    """
    per_class = torch.where(result.valid, result.loss, float("nan"))
    if reduction == "none":
        return per_class, per_class
    return reduce_valid(result, reduction, anchor, class_weight, checked_finite=checked_finite), per_class


def reduce_valid(
    result: RankingResult,
    reduction: str,
    anchor: Tensor,
    class_weight: Tensor | None = None,
    *,
    checked_finite: bool = False,
) -> Tensor:
    r"""The sum (``'sum'``) or mean (``'mean'``) of a per-class result over its valid classes :math:`V`.

    Weighted by ``class_weight`` :math:`w` when given: :math:`\sum_{c \in V} w_c L_c` and
    :math:`\sum_{c \in V} w_c L_c / \sum_{c \in V} w_c`. When no class is valid the scalar is a
    zero still connected to ``anchor``'s graph (``anchor``'s sum enters with weight 0, so a
    non-finite ``anchor`` still shows). The sum is taken in the loss's dtype: float16 logits
    that are finite but sum past 65504 must not turn the loss into ``0 * inf = nan``.

    ``checked_finite`` says that the logits (``anchor``) were checked finite (``validate_args``):
    the anchor's term can then only be zero, or ``nan`` from an overflowing sum, and it is left
    out whenever the per-class loss is itself connected to the graph (the same values and
    gradients, with fewer operations forward and backward).
    """
    # the placeholders of invalid classes are finite: exactly 0
    kept = result.loss if result.all_valid else result.loss * result.valid
    if class_weight is None:  # weights 1 on the valid classes: nothing to multiply; den counts them
        if kept.ndim == 0 or kept.shape[0] == 1:  # one class: its loss or 0 is the sum, and the mean too
            return _anchored(kept.reshape(()) if kept.ndim else kept, result, anchor, checked_finite)
        total = _anchored(kept.sum(), result, anchor, checked_finite)
        # an integer count >= 1 (exact in any float dtype): the same quotient as a float one
        return total if reduction == "sum" else total / result.valid.sum().clamp_min(1)
    w = result.valid.to(result.loss.dtype) * class_weight.to(device=result.loss.device, dtype=result.loss.dtype)
    total = _anchored((kept * w).sum(), result, anchor, checked_finite)
    if reduction == "sum":
        return total
    den = w.sum()
    return total / torch.where(den > 0, den, 1.0)


def _anchored(total: Tensor, result: RankingResult, anchor: Tensor, checked_finite: bool) -> Tensor:
    """``total + 0 * anchor.sum()`` (see :func:`reduce_valid`), or ``total`` when the term is not needed."""
    if checked_finite and result.loss.requires_grad:
        return total
    return torch.add(total, anchor.sum(dtype=result.loss.dtype), alpha=0.0)


def package(
    result: RankingResult,
    *,
    reduction: str,
    anchor: Tensor,
    return_per_class: bool,
    return_diagnostics: bool = False,
    class_weight: Tensor | None = None,
    checked_finite: bool = False,
) -> Any:
    """Reduce a result and assemble the public return form.

    ``loss``; ``(loss, per_class, valid)`` with ``return_per_class``; ``(loss, stats)`` with
    ``return_diagnostics``; ``(loss, per_class, valid, stats)`` with both. ``checked_finite``:
    see :func:`reduce_valid`.
    """
    if return_per_class or reduction == "none":
        loss, per_class = reduce_classes(result, reduction, anchor, class_weight, checked_finite=checked_finite)
    else:  # the per-class vector is not returned: not built
        loss = per_class = reduce_valid(result, reduction, anchor, class_weight, checked_finite=checked_finite)
    if torch.is_grad_enabled() and not loss.requires_grad:
        # Logits without a graph (e.g. a quick check on torch.randn): the loss is a constant, but
        # `loss.backward()` must still work, as it does for a model's output.
        loss = loss.detach().requires_grad_()
        per_class = loss if reduction == "none" else per_class
    out: tuple[Any, ...] = (loss,)
    if return_per_class:
        out += (per_class, result.valid)
    if return_diagnostics:
        out += (result.stats,)
    return out if len(out) > 1 else loss
