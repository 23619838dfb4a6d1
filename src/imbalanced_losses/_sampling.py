"""``max_pool_size`` minimum-quota subsampling, vectorised and reproducible."""

from __future__ import annotations

import torch
from torch import Tensor


def minimum_quota_indices(targets: Tensor, max_pool_size: int, generator: torch.Generator | None = None) -> Tensor:
    """Choose ``max_pool_size`` rows of a pool so that every observed class keeps a quota.

    With ``G`` distinct target values in the pool, each class reserves
    ``q = max(1, max_pool_size // (2 G))`` of its rows (all of them if it has fewer), chosen at
    random. If the reserved rows already reach ``max_pool_size``, a random ``max_pool_size``
    of them are kept; otherwise the remaining budget is filled uniformly at random, without
    replacement, from the unreserved rows. Rare classes are therefore over-represented
    relative to their natural frequency (this is not proportional sampling).

    Two random keys per row (one orders rows inside their class, an independent one picks
    among reserved or unreserved rows) drive every choice, so the same ``generator`` state
    gives the same selection on every rank.

    In multi-label mode (``targets`` of shape ``[M, C]``) a row's class for the quota is the
    lowest class it is a positive of; rows positive for no class form one more group.

    Args:
        targets: ``[M]`` int64 target ids of the pool (``ignore_index`` rows already removed),
            or ``[M, C]`` multi-hot cells.
        max_pool_size: The cap ``K``; callers only subsample when ``M > K``.
        generator: Optional :class:`torch.Generator` (on ``targets``' device); the process
            default generator when ``None``.

    Returns:
        ``[K]`` int64 row indices (or all ``M`` rows, in order, when ``M <= K``): the reserved
        rows grouped by ascending class id (random order within a class), then the fill rows.
    """
    m, k = targets.shape[0], max_pool_size
    device = targets.device
    if targets.ndim == 2:
        positive = targets == 1
        targets = torch.where(positive.any(1), positive.int().argmax(1), targets.shape[1])
    if m <= k:
        return torch.arange(m, device=device)
    keys = torch.rand(m, generator=generator, device=device)
    pick_keys = torch.rand(m, generator=generator, device=device)
    # Random order, then grouped by class (stable): rank of each row inside its class.
    shuffled = torch.argsort(keys)
    grouped = shuffled[torch.argsort(targets[shuffled], stable=True)]
    classes, counts = torch.unique_consecutive(targets[grouped], return_counts=True)
    quota = max(1, k // (2 * classes.numel()))
    starts = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.arange(m, device=device) - torch.repeat_interleave(starts, counts)
    reserved = rank_in_class < quota
    chosen_reserved = grouped[reserved]
    if chosen_reserved.numel() >= k:
        # Keep a random subset of the reserved rows, preserving the class grouping.
        pick = torch.argsort(pick_keys[chosen_reserved])[:k]
        return chosen_reserved[pick.sort().values]
    fill = grouped[~reserved]
    fill = fill[torch.argsort(pick_keys[fill])][: k - chosen_reserved.numel()]
    return torch.cat([chosen_reserved, fill])
