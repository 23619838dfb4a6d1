r"""The gradient of a quantile threshold with respect to the scores that define it.

The recall-at-quantile and trapezoid partial-AUC losses compare positives against score
quantiles of the pool. Taken as constants (``detach``), those thresholds let the surrogate
lift positives but never lower a negative: every step pushes the scores up, the threshold
follows, and the logit scale runs away. Here a threshold keeps its exact value but passes
its gradient on to the rows around it, as the implicit derivative of a kernel-smoothed
quantile does. For the smoothed quantile :math:`\theta` of column :math:`c`, defined by
:math:`\sum_j \sigma((s_j - \theta)/h) = \text{const}` over the member rows,

.. math::
    \frac{\partial \theta}{\partial s_j} = \frac{\sigma'((s_j - \theta)/h)}{\sum_k \sigma'((s_k - \theta)/h)},

a weight distribution over the members (it sums to one, so a common shift of every member
moves the threshold by as much). The weights are formed as a softmax of
:math:`\log \sigma'`, so they stay defined when every member lies many widths away: the
nearest member then takes the whole gradient, the derivative of the exact order statistic.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _kernel_weights(scores: Tensor, threshold: Tensor, member: Tensor, width: Tensor) -> Tensor:
    """``[M, C]`` weights ``d theta_c / d s_jc`` of one threshold row ``[C]`` (zero outside ``member``)."""
    x = ((scores - threshold) / width).abs()
    log_k = -x - 2.0 * torch.nn.functional.softplus(-x)  # log sigma'(x), sigma' being even
    log_k = log_k.masked_fill(~member, float("-inf"))
    weights = torch.softmax(log_k, dim=0)
    return torch.where(member.any(0), weights, 0.0)  # an empty column has no threshold to move


class _ThresholdGrad(torch.autograd.Function):
    """Identity on the detached thresholds in the forward pass; kernel-weighted scatter backward."""

    @staticmethod
    def forward(ctx: Any, scores: Tensor, thresholds: Tensor, member: Tensor, width: Tensor) -> Tensor:
        ctx.save_for_backward(scores.detach(), thresholds, member, width)
        return thresholds.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:
        scores, thresholds, member, width = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        out = torch.zeros_like(scores)
        safe = torch.nan_to_num(thresholds, nan=0.0)
        for level in range(thresholds.shape[0]):  # L is small: thresholds per class, not rows
            out += _kernel_weights(scores, safe[level], member, width) * torch.nan_to_num(grad[level], nan=0.0)
        return out, None, None, None


def attach_thresholds(scores: Tensor, thresholds: Tensor, member: Tensor, width: Tensor) -> Tensor:
    r"""Give detached quantile thresholds a gradient that reaches the member rows around them.

    The value is ``thresholds`` unchanged; the gradient of threshold :math:`\theta_{lc}`
    reaches row :math:`j` of column :math:`c` with weight
    :math:`\sigma'((s_{jc} - \theta_{lc})/h_c) / \sum_{k} \sigma'((s_{kc} - \theta_{lc})/h_c)`
    over the rows with ``member[k, c]`` (see the module docstring).

    Args:
        scores: ``[M, C]`` scores that carry the graph (rows without one, e.g. queued rows,
            simply receive nothing).
        thresholds: ``[L, C]`` threshold values, e.g. from ``masked_column_quantiles``
            (``nan`` columns get no gradient).
        member: ``[M, C]`` bool, the rows that define each column's thresholds.
        width: ``[C]`` or scalar positive kernel width :math:`h`, in score units (the loss's
            effective temperature).

    Returns:
        ``[L, C]`` thresholds, equal to ``thresholds``, differentiable in ``scores``.
    """
    if not scores.requires_grad:
        return thresholds
    width = torch.as_tensor(width, dtype=scores.dtype, device=scores.device).expand(scores.shape[1])
    out: Tensor = _ThresholdGrad.apply(scores, thresholds.detach(), member, width.detach())
    return out
