"""Per-class diagnostics of the ranking losses: pool counts and saturated-sigmoid fractions."""

from __future__ import annotations

import torch
from torch import Tensor

from ._arith import class_sum, safe_divide
from ._pool import Pairs, Pool

#: A sigmoid term :math:`\sigma(x)` counts as saturated in the diagnostics when :math:`|x|` exceeds
#: this (its derivative is then below 1% of its peak value 1/4).
SATURATION = 6.0


def pool_stats(pool: Pool) -> dict[str, Tensor]:
    """Diagnostics every ranking loss reports, each ``[C]``: ``pool_size``, ``pos_count``, ``neg_count``.

    ``pool_size`` counts the rows that take part in the class (``ignore_index`` rows and
    multi-label cells excluded).
    """
    return {
        "pool_size": (pool.pos | pool.neg).sum(0),
        "pos_count": pool.pos.sum(0),
        "neg_count": pool.neg.sum(0),
    }


def saturated_pair_fraction(
    scores: Tensor, queries: Tensor, keys: Tensor, width: Tensor, *, exclude_self: bool
) -> Tensor:
    r"""Per class, the fraction of (query, key) pairs with :math:`|s_i - s_j| > \mathrm{width}_c`.

    Pairs run over the ``queries [M, C]`` x ``keys [M, C]`` members of each class (a row's pair
    with itself left out when ``exclude_self``); ``width [C]`` is ``SATURATION`` times the
    class's temperature. Counted by binary search in the sorted keys: ``O(C M log M)``, no pair
    tensor. Classes without pairs get ``nan``.
    """
    s = scores.detach().t().contiguous()  # [C, M]
    width = width.detach().unsqueeze(1)
    sorted_keys = s.masked_fill(~keys.t(), float("inf")).sort(dim=1).values
    near = torch.searchsorted(sorted_keys, s + width, right=True) - torch.searchsorted(sorted_keys, s - width)
    q = queries.t()
    # A query that is also a key meets itself inside its window: not a pair when excluded.
    self_pair = (q & keys.t()).long() if exclude_self else torch.zeros_like(near)
    per_query = keys.sum(0).unsqueeze(1) - self_pair  # pairs of each query
    far = ((per_query - near + self_pair) * q).sum(1)
    total = (per_query * q).sum(1)
    return torch.where(total > 0, far.to(s.dtype) / total.clamp_min(1), float("nan"))


def saturated_threshold_fraction(pairs: Pairs, thresholds: Tensor, width: Tensor, num_classes: int) -> Tensor:
    r"""Per class, the fraction of (entry, threshold) terms with :math:`|s_i - t_{c,k}| > \mathrm{width}_c`.

    ``pairs`` are the entries of each class (e.g. its positives), ``thresholds [C, K]`` the
    detached thresholds each entry is compared with, ``width [C]`` ``SATURATION`` times the
    class's temperature. Classes without entries get ``nan``.
    """
    s = pairs.scores.detach().unsqueeze(1)
    far = (s - thresholds[pairs.cls]).abs() > width[pairs.cls].unsqueeze(1)  # [P, K]
    n_terms = class_sum(torch.full_like(pairs.scores.detach(), thresholds.shape[1]), pairs.cls, num_classes)
    fraction = safe_divide(class_sum(far.sum(1).to(n_terms.dtype), pairs.cls, num_classes), n_terms)
    return torch.where(n_terms > 0, fraction, float("nan"))
