r"""The gradient of a quantile threshold with respect to the scores that define it.

The recall-at-quantile and trapezoid partial-AUC losses compare positives against score
quantiles of the pool. Taken as constants (``detach``), those thresholds let the surrogate
lift positives but never lower a negative: every step pushes the scores up, the threshold
follows, and the logit scale runs away. Here a threshold keeps its exact value but passes
its gradient on to the member rows around it, as the implicit derivative of a kernel-smoothed
quantile does. For the smoothed quantile :math:`\theta` of column :math:`c`, defined by
:math:`\sum_j \sigma((s_j - \theta)/h) = \text{const}` over the member rows,

.. math::
    \frac{\partial \theta}{\partial s_j} = \frac{\sigma'((s_j - \theta)/h)}{\sum_k \sigma'((s_k - \theta)/h)},

a weight distribution over the members (it sums to one, so a common shift of every member
moves the threshold by as much). The weights are formed as a softmax of
:math:`\log \sigma'`, so they stay defined when every member lies many widths away: the
nearest member then takes the whole gradient, the derivative of the exact order statistic.

The losses pass the *negatives* that take part in the threshold as the members. A positive at
the cut would otherwise be pushed down by the whole pool's demand on the threshold, more than
its own term lifts it; trained from scratch with a sharp temperature, that sank the positives
below chance. On the negatives alone the pair "positives up, negatives at the cut down" is the
pairwise contrast that keeps the pairwise pAUC surrogate healthy.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._arith import FlushDenormals
from ._plan import PLANS, kernel_plan, override

#: Elements of the ``[levels, C, M]`` kernel block formed at once in the backward pass (16 MB of
#: float32): the CPU plan's value (:mod:`._plan`); another value set here overrides every plan.
BLOCK_ELEMENTS = PLANS["cpu"].threshold_block


def _kernel_weights(scores_t: Tensor, thresholds: Tensor, neg_inv_width: Tensor) -> Tensor:
    """``[L, C, M]`` weights ``d theta_lc / d s_cj`` of thresholds ``[L, C]``.

    ``scores_t`` is class-major (``[C, M]``, contiguous, so that the normalisation reduces
    along contiguous rows) and holds ``inf`` outside the members, whose weights come out 0.
    With ``x = |s - theta| / h >= 0`` and ``x0`` its smallest value over the members,
    ``sigma'(x) = e^{-x} / (1 + e^{-x})^2`` is proportional to ``e^{x0 - x} / (1 + e^{-x})^2``
    within a column: one exponential per cell, and the nearest member's term is at least
    ``1/4``, so the sum never underflows.
    """
    y = (scores_t.unsqueeze(0) - thresholds.unsqueeze(2)).abs_().mul_(neg_inv_width)  # -x; -inf outside
    top = y.amax(2, keepdim=True)  # -x0
    # A column without members: every weight is 0. (`|top| < inf` is `isfinite`, in two
    # operations instead of its four.)
    top = torch.where(top.abs() < float("inf"), top, 0.0)
    k = y.sub_(top).exp_()  # e^{x0 - x}
    k.div_(k.mul(top.exp()).add_(1.0).square_())  # ... / (1 + e^{-x})^2
    return k.div_(k.sum(2, keepdim=True).clamp_min_(torch.finfo(k.dtype).tiny))


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
        if scores.numel() == 0:  # an empty pool: nothing to reach
            return torch.zeros_like(scores), None, None, None
        scores_t = scores.masked_fill(~member, float("inf")).t().contiguous()
        neg_inv_width = width.reciprocal().neg_().unsqueeze(1)
        # A nan threshold (a column without rows) and its nan gradient move nothing.
        grad, thresholds = torch.nan_to_num(grad, nan=0.0), torch.nan_to_num(thresholds, nan=0.0)
        levels = thresholds.shape[0]
        block_elements = override(
            BLOCK_ELEMENTS, PLANS["cpu"].threshold_block, kernel_plan(scores.device).threshold_block
        )
        step = max(1, block_elements // max(1, scores.numel()))
        out = None
        with FlushDenormals(scores.device.type == "cpu" and not torch.compiler.is_compiling()):
            if 0 < levels <= step:  # one block (small pools): no slicing
                out = _contract(_kernel_weights(scores_t, thresholds, neg_inv_width), grad)
            else:  # a few blocks for large pools
                for first in range(0, levels, step):
                    block = slice(first, first + step)
                    part = _contract(_kernel_weights(scores_t, thresholds[block], neg_inv_width), grad[block])
                    out = part if out is None else out.add_(part)
        if out is None:  # no threshold at all
            out = torch.zeros_like(scores_t)
        return out.t(), None, None, None


def _contract(weights: Tensor, grad: Tensor) -> Tensor:
    """``einsum("lcm,lc->cm", weights, grad)``: the one batched product it makes, without its views."""
    c, m = weights.shape[1:]
    return torch.bmm(weights.permute(1, 2, 0), grad.t().unsqueeze(2)).view(c, m)


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
        member: ``[M, C]`` bool, the rows the gradient is spread over (the losses pass the
            negatives that take part in the thresholds).
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
