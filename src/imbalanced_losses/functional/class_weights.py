r"""Per-class weights from class counts: the class-balanced "effective number" (Cui et al., 2019).

References:
    Cui, Jia, Lin, Song, Belongie. *Class-Balanced Loss Based on Effective Number of Samples*,
    CVPR 2019. https://arxiv.org/abs/1901.05555
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._validation import check_float
from ._priors import check_class_counts

__all__ = ["class_balanced_weights"]


def class_balanced_weights(class_counts: Tensor | Any, *, beta: float = 0.9999) -> Tensor:
    r"""Class-balanced weights :math:`w_c \propto (1 - \beta) / (1 - \beta^{n_c})`, summing to ``C``.

    :math:`(1 - \beta^{n}) / (1 - \beta)` is the *effective number* of :math:`n` samples;
    each class is weighted by its inverse, then the weights are rescaled so that
    :math:`\sum_c w_c = C`:

    .. math::
        w_c = C\, \frac{(1 - \beta) / (1 - \beta^{n_c})}{\sum_{j=1}^{C} (1 - \beta) / (1 - \beta^{n_j})}
            = C\, \frac{1 / (1 - \beta^{n_c})}{\sum_j 1 / (1 - \beta^{n_j})}.

    :math:`\beta = 0` gives equal weights (all 1); :math:`\beta \to 1` tends to inverse
    class frequency. Use the result as ``class_weight`` of the ranking losses, as ``weight`` of
    :class:`torch.nn.CrossEntropyLoss`, or to weight any per-sample loss by ``w[targets]``.
    For deferred re-weighting (DRW, Cao et al. 2019), switch to these weights late in training.

    Args:
        class_counts: ``(C,)`` non-negative training counts per class (tensor or sequence of
            numbers), at least one > 0. A count of 0 is taken as 1, with a warning.
        beta: :math:`\beta \in [0, 1)`; 0.9999 as in the LDAM-DRW code (Cui et al. tune it
            among 0.9, 0.99, 0.999, 0.9999).

    Returns:
        ``(C,)`` float32 weights on the CPU, positive, summing to ``C`` (computed in float64).

    Raises:
        ValueError: ``beta`` outside ``[0, 1)``, or counts of the wrong shape, negative,
            non-finite or all zero.
        TypeError: ``beta`` not a real number, or bool/complex counts.

    Example:
        >>> import torch
        >>> from imbalanced_losses.functional import class_balanced_weights
        >>> w = class_balanced_weights([1000, 100, 10], beta=0.99)
        >>> [round(v, 4) for v in w.tolist()]
        [0.2301, 0.363, 2.4068]
        >>> loss_fn = torch.nn.CrossEntropyLoss(weight=w)
    """
    beta = check_float("beta", beta, low=0.0, high=1.0, low_open=False, high_open=True)
    counts = check_class_counts(class_counts)
    if beta == 0.0:
        inv_effective = torch.ones_like(counts)
    else:
        # 1 - beta^n = -expm1(n log beta), log beta = log1p(beta - 1) (beta - 1 is exact): accurate
        # for beta near 1, where 1 - beta^n would cancel.
        inv_effective = (-torch.expm1(counts * math.log1p(beta - 1.0))).reciprocal()
    weights = inv_effective * (counts.shape[0] / inv_effective.sum())
    return weights.to(torch.float32)
