"""All-gather helpers for ranking over the global batch under ``torch.distributed``.

Batches may differ in size across ranks (dim 0); a rank may contribute zero rows. Pieces
are concatenated in rank order. The caller's own tensor is put back into its slot, so
autograd reaches the local rows and remote rows are constants.

Gradient contract (SPEC D2). Every loss module gathers through :func:`gather_batch`, so each
of the ``W`` ranks computes the same global loss ``L`` and back-propagates ``dL/dx`` into its
own rows only. :class:`~torch.nn.parallel.DistributedDataParallel` then *averages* parameter
gradients over the ranks, which would leave ``(1/W) * dL/dtheta``. :func:`gather_batch`
therefore wraps the local slice in an identity whose backward multiplies the gradient by
``W`` (forward: the same tensor, no copy). After DDP's average the parameter gradient equals
the single-process gradient on the concatenated global batch. This is the only place the
factor is applied. Consequences:

* The gradient a rank sees on its local logits is ``W`` times the single-process gradient
  of those rows; what the optimiser sees after DDP's average is the single-process gradient.
* If you reduce gradients yourself with a *sum* instead of DDP's average, divide the loss by
  ``W``.
* :func:`all_gather_with_grad` applies no factor by default (as in ``imbalanced-losses``
  0.6). A hand-written loss over its output, trained under DDP, gets ``1/W`` of the
  single-process gradient unless it passes ``scale_grad_by_world_size=True``.

Subsampling under DDP (SPEC D8). When ``max_pool_size`` subsampling fires on a gathered pool
with no user generator, the ranks agree on a seed with :func:`shared_generator` (one
broadcast, only on those calls), so every rank keeps the same rows.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .functional._arith import compute_dtype

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

    Args:
        gather_distributed: The loss's ``gather_distributed`` setting.

    Returns:
        ``True`` when the batch should be gathered across ranks.

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


class _ScaleGrad(torch.autograd.Function):
    """Identity in the forward pass; multiplies the incoming gradient by ``factor``."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.factor, None


def _row_counts(n: int, device: torch.device, flags: tuple[bool, ...] = ()) -> tuple[list[int], list[bool]]:
    """Every rank's row count, and per flag whether any rank set it: one all-gather of ``[1 + F]`` integers."""
    send = torch.tensor([n, *flags], dtype=torch.long, device=device)
    pieces = [torch.zeros_like(send) for _ in range(dist.get_world_size())]
    dist.all_gather(pieces, send)
    table = torch.stack(pieces).tolist()
    return [int(row[0]) for row in table], [any(row[1 + i] for row in table) for i in range(len(flags))]


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


def _gather_with_grad(tensor: Tensor, counts: list[int], grad_factor: float) -> Tensor:
    """Gathered ``tensor`` whose local slice is ``tensor`` itself (gradient times ``grad_factor``)."""
    pieces = _gather(tensor, counts)
    local = tensor if grad_factor == 1 or not tensor.requires_grad else _ScaleGrad.apply(tensor, grad_factor)
    pieces[dist.get_rank()] = local
    return torch.cat(pieces)


def all_gather_with_grad(tensor: Tensor, *, scale_grad_by_world_size: bool = False) -> Tensor:
    """Concatenate every rank's ``tensor`` along dim 0, keeping autograd for the local rows.

    Args:
        tensor: ``[n_r, ...]`` on this rank (``n_r`` may differ across ranks, even be 0).
        scale_grad_by_world_size: Multiply the gradient reaching ``tensor`` by the world size
            ``W``. Use it when every rank computes the same loss over the gathered tensor and
            DDP averages parameter gradients: the optimiser then sees the single-process
            gradient of that loss. The default (``False``) matches ``imbalanced-losses`` 0.6.

    Returns:
        ``[sum_r n_r, ...]`` in rank order. With one process the input itself is returned.

    Raises:
        RuntimeError: If no process group is initialised.
    """
    _require_initialized("all_gather_with_grad")
    world = dist.get_world_size()
    if world == 1:
        return tensor
    factor = float(world) if scale_grad_by_world_size else 1.0
    return _gather_with_grad(tensor, _row_counts(tensor.shape[0], tensor.device)[0], factor)


def all_gather_no_grad(tensor: Tensor) -> Tensor:
    """Concatenate every rank's ``tensor`` along dim 0 (no gradient to any piece).

    Args:
        tensor: ``[n_r, ...]`` on this rank (``n_r`` may differ across ranks, even be 0).

    Returns:
        ``[sum_r n_r, ...]`` in rank order. With one process the input itself is returned.

    Raises:
        RuntimeError: If no process group is initialised.
    """
    _require_initialized("all_gather_no_grad")
    if dist.get_world_size() == 1:
        return tensor
    return torch.cat(_gather(tensor, _row_counts(tensor.shape[0], tensor.device)[0]))


def gather_batch(logits: Tensor, *others: Tensor | None) -> tuple[Tensor, ...]:
    """Gather a batch's row-aligned tensors with one size exchange; ``None`` entries stay ``None``.

    The path every loss module uses. ``logits`` keeps its gradient for the local slice, scaled
    by the world size ``W`` in the backward pass (the module docstring explains why: after
    DDP averages, parameter gradients equal the single-process ones). The others are gathered
    as constants.

    The ranks agree on which companions exist in the same collective as the row counts (no
    extra one): a companion that is ``None`` on every rank stays ``None``; one that is ``None``
    on some ranks only (e.g. ``sample_weight``) is taken as ones ``[n_r]`` on those ranks, in
    the computation dtype of ``logits`` (float32 for half precision), so that every rank issues
    the same collectives.

    Args:
        logits: ``[n_r, ...]`` local scores (the tensor that carries gradient).
        *others: Row-aligned ``[n_r, ...]`` companions (targets, flags, weights) or ``None``.

    Returns:
        The gathered ``logits`` followed by the gathered companions, in argument order.
    """
    world = dist.get_world_size()
    if world == 1:
        return (logits, *others)  # type: ignore[arg-type]
    n = logits.shape[0]
    counts, present = _row_counts(n, logits.device, tuple(t is not None for t in others))
    out: list[Tensor | None] = [_gather_with_grad(logits, counts, float(world))]
    for t, anywhere in zip(others, present, strict=True):
        if t is None and anywhere:
            t = torch.ones(n, dtype=compute_dtype(logits), device=logits.device)
        out.append(None if t is None else torch.cat(_gather(t, counts)))
    return tuple(out)  # type: ignore[arg-type]


def shared_generator(device: torch.device) -> torch.Generator:
    """A fresh generator seeded identically on every rank (rank 0's draw, broadcast).

    Every rank draws an int64 seed from its process default generator for ``device`` (so the
    default streams advance the same way on all ranks), then rank 0's seed is broadcast: one
    collective, which every rank of the group must issue. Without a multi-rank process group
    the local draw is used, so a single process whose default generator is in rank 0's state
    gets rank 0's generator.

    Args:
        device: Device of the generator (and of the broadcast tensor: a CUDA device under NCCL).

    Returns:
        A :class:`torch.Generator` on ``device``, in the same state on every rank.
    """
    seed = torch.randint(0, 2**63 - 1, (1,), dtype=torch.long, device=device)
    if _initialized() and dist.get_world_size() > 1:
        dist.broadcast(seed, src=0)
    return torch.Generator(device=device).manual_seed(int(seed))
