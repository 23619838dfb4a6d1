"""All-gather helpers for ranking over the global batch under ``torch.distributed``.

Batches may differ in size across ranks (dim 0); a rank may contribute zero rows. Pieces
are concatenated in rank order. :func:`all_gather_with_grad` puts the caller's own tensor
back into its slot, so autograd reaches the local rows and remote rows are constants.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_gather_no_grad", "all_gather_with_grad", "resolve_gather"]


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def _require_initialized(fn: str) -> None:
    if not _initialized():
        raise RuntimeError(
            f"{fn}: torch.distributed is not initialized; call torch.distributed.init_process_group() first."
        )


def resolve_gather(gather_distributed: bool | None) -> bool:
    """Whether a loss should all-gather on this call.

    ``False`` never gathers; ``None`` gathers whenever a process group with more than one rank
    is initialised (checked on every call, so a loss built before ``init_process_group``
    still gathers later); ``True`` requires an initialised process group.

    Raises:
        RuntimeError: ``gather_distributed=True`` without an initialised process group.
    """
    if gather_distributed is False:
        return False
    if not _initialized():
        if gather_distributed:
            raise RuntimeError(
                "gather_distributed=True but torch.distributed is not initialized; call "
                "torch.distributed.init_process_group() before the forward pass, or pass gather_distributed=None."
            )
        return False
    return dist.get_world_size() > 1


def _row_counts(n: int, device: torch.device) -> list[int]:
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.long, device=device))
    return [int(s) for s in sizes]


def _gather(tensor: Tensor, counts: list[int]) -> list[Tensor]:
    """All-gather ``tensor`` (dim 0 may differ by rank, per ``counts``) into per-rank pieces."""
    send = tensor.detach()
    is_bool = send.dtype == torch.bool
    if is_bool:  # not every backend gathers bool tensors
        send = send.to(torch.uint8)
    longest = max(counts)
    if send.shape[0] < longest:
        pad = send.new_zeros((longest - send.shape[0], *send.shape[1:]))
        send = torch.cat([send, pad])
    pieces = [torch.empty_like(send) for _ in counts]
    dist.all_gather(pieces, send.contiguous())
    out = [p[:c] for p, c in zip(pieces, counts, strict=True)]
    return [p.bool() for p in out] if is_bool else out


def all_gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate every rank's ``tensor`` along dim 0, keeping autograd for the local rows.

    Args:
        tensor: ``[n_r, ...]`` on this rank (``n_r`` may differ across ranks, even be 0).

    Returns:
        ``[sum_r n_r, ...]`` in rank order. With one process the input itself is returned.

    Raises:
        RuntimeError: If no process group is initialised.
    """
    _require_initialized("all_gather_with_grad")
    if dist.get_world_size() == 1:
        return tensor
    return gather_batch(tensor)[0]


def all_gather_no_grad(tensor: Tensor) -> Tensor:
    """Concatenate every rank's ``tensor`` along dim 0 (no gradient to any piece).

    Raises:
        RuntimeError: If no process group is initialised.
    """
    _require_initialized("all_gather_no_grad")
    if dist.get_world_size() == 1:
        return tensor
    return torch.cat(_gather(tensor, _row_counts(tensor.shape[0], tensor.device)))


def gather_batch(logits: Tensor, *others: Tensor | None) -> tuple[Tensor, ...]:
    """Gather a batch's row-aligned tensors with one size exchange; ``None`` entries stay ``None``.

    ``logits`` keeps its gradient for the local slice; the others are gathered as constants.
    """
    counts = _row_counts(logits.shape[0], logits.device)
    rank = dist.get_rank()
    pieces = _gather(logits, counts)
    pieces[rank] = logits
    out: list[Tensor | None] = [torch.cat(pieces)]
    for t in others:
        out.append(None if t is None else torch.cat(_gather(t, counts)))
    return tuple(out)  # type: ignore[arg-type]
