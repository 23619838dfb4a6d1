"""The memory queue: a ring buffer of past batches, all of its state in buffers."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .functional._arith import compute_dtype
from .functional._constants import device_arange

_KEYS = ("_q_logits", "_q_targets", "_q_ptr", "_q_iid", "_q_weight")

#: Ceiling on the memory of the queue's buffers, in bytes (8 GiB). Every call copies the whole
#: queue into the merged pool and builds ``[M, C]`` masks and sorted copies of it, so a call
#: needs several times the buffers' size on the loss's device; a queue past this ceiling is
#: far beyond any useful pool (see ``docs/memory-queue.md``) and almost surely a typo.
MAX_QUEUE_BYTES = 8 * 2**30


def queue_row_bytes(num_classes: int) -> int:
    """Bytes of one queue slot: ``4 C`` (float32 logits) + 8 (int64 target) + 1 (iid flag) + 4 (float32 weight)."""
    return 4 * num_classes + 8 + 1 + 4


def check_queue_size(queue_size: int, num_classes: int) -> None:
    """Refuse a queue whose buffers would take more than :data:`MAX_QUEUE_BYTES` (before allocating anything).

    Raises:
        ValueError: ``queue_size * queue_row_bytes(num_classes) > MAX_QUEUE_BYTES``.
    """
    row = queue_row_bytes(num_classes)
    if queue_size * row > MAX_QUEUE_BYTES:
        raise ValueError(
            f"`queue_size` must be at most {MAX_QUEUE_BYTES // row} for num_classes={num_classes} (the queue's "
            f"buffers take {row} bytes per row and are limited to {MAX_QUEUE_BYTES / 2**30:g} GiB), got "
            f"{queue_size}, which would take {queue_size * row / 2**30:.1f} GiB."
        )


class Merged(NamedTuple):
    """Live rows followed by every queue slot."""

    logits: Tensor  # [N + Q, C]
    targets: Tensor  # [N + Q] int64
    iid: Tensor | None  # [N + Q] bool; None: every row iid (no flag given), or not asked for
    weight: Tensor | None  # [N + Q] or None when no row (live or stored) carries a weight
    is_live: Tensor | None  # [N + Q] bool, True for the first N rows; None (all live) without a queue


class MemoryQueue(nn.Module):
    """Circular buffer of the last ``capacity`` rows seen by a ranking loss.

    Buffers (state-dict keys are those of ``imbalanced-losses`` 0.6, so checkpoints load in
    both directions): ``_q_logits [Q, C]`` (float32 unless the module is cast), ``_q_targets
    [Q]`` int64 (``ignore_index`` marks an empty slot; ``[Q, C]`` multi-hot cells once the loss
    has been fed multi-label targets), ``_q_ptr [1]`` int64 (next write
    position), ``_q_iid [Q]`` bool and ``_q_weight [Q]`` float. With ``capacity == 0`` there
    are no buffers.

    Writes are detached. A batch of ``n >= Q`` rows replaces the buffer with its last ``Q``
    rows in order (pointer back to 0); a smaller batch is written at the pointer with
    wrap-around. The pointer arithmetic stays on the device: no host synchronisation.

    Args:
        capacity: Number of rows ``Q`` (``0`` disables the queue); at most
            ``MAX_QUEUE_BYTES // queue_row_bytes(C)``.
        num_classes: Logit columns ``C``.
        ignore_index: Target value of empty slots.

    Raises:
        ValueError: The buffers would exceed :data:`MAX_QUEUE_BYTES`.
    """

    _q_logits: Tensor
    _q_targets: Tensor
    _q_ptr: Tensor
    _q_iid: Tensor
    _q_weight: Tensor

    def __init__(self, capacity: int, num_classes: int, ignore_index: int) -> None:
        check_queue_size(capacity, num_classes)
        super().__init__()
        self.capacity = capacity
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # True while some stored weight may differ from 1, or some stored iid flag be False;
        # re-derived on reset and load.
        self.weighted = False
        self.flagged = False
        self._mask_cache: dict[tuple[int, torch.device], tuple[Tensor, Tensor]] = {}
        if capacity > 0:
            self.register_buffer("_q_logits", torch.zeros(capacity, num_classes))
            self.register_buffer("_q_targets", torch.full((capacity,), ignore_index, dtype=torch.long))
            self.register_buffer("_q_ptr", torch.zeros(1, dtype=torch.long))
            self.register_buffer("_q_iid", torch.ones(capacity, dtype=torch.bool))
            self.register_buffer("_q_weight", torch.ones(capacity))

    def extra_repr(self) -> str:
        return f"capacity={self.capacity}, num_classes={self.num_classes}"

    @torch.no_grad()
    def reset(self) -> None:
        """Empty the queue in place (slots get ``ignore_index`` targets, pointer 0)."""
        self.weighted = self.flagged = False
        if self.capacity == 0:
            return
        self._q_logits.zero_()
        self._q_targets.fill_(self.ignore_index)
        self._q_ptr.zero_()
        self._q_iid.fill_(True)
        self._q_weight.fill_(1.0)

    def stored_targets(self, targets: Tensor) -> Tensor:
        """The target buffer read in the layout of ``targets``: ``[Q]`` class ids or ``[Q, C]`` multi-hot cells.

        An empty queue of the other layout reads as empty slots of this one (the buffer itself
        switches on the next :meth:`enqueue`); a queue holding rows of the other layout raises
        (mixing the two would silently relabel stored rows). Changes nothing.
        """
        if targets.ndim == self._q_targets.ndim:
            return self._q_targets
        if bool((self._q_targets != self.ignore_index).any()):
            held, got = ("class ids [Q]", "multi-hot [N, C]") if targets.ndim == 2 else ("multi-hot [Q, C]", "[N]")
            raise ValueError(
                f"`targets` are {got} but the memory queue holds {held} targets from earlier calls; "
                "call reset_queue() before switching between multi-class and multi-label targets."
            )
        shape = (self.capacity, self.num_classes) if targets.ndim == 2 else (self.capacity,)
        return torch.full(shape, self.ignore_index, dtype=torch.long, device=self._q_targets.device)

    def match_targets(self, targets: Tensor) -> None:
        """Give the target buffer the layout of ``targets`` (see :meth:`stored_targets`, which raises the same way)."""
        if self.capacity > 0 and targets.ndim != self._q_targets.ndim:
            self._q_targets = self.stored_targets(targets)

    def merge(
        self, logits: Tensor, targets: Tensor, iid: Tensor | None, weight: Tensor | None, *, with_iid: bool = True
    ) -> Merged:
        """Concatenate the live rows with all ``Q`` slots (buffer order), cast to the live dtype and device.

        ``iid=None`` means every live row is iid; the merged flags are ``None`` (every row iid)
        when no row carries a flag (none given since the last reset), or with ``with_iid=False``
        for a loss that does not read them. The weights are in the computation dtype of
        ``logits`` (float32 for half precision: stored weights may exceed float16's range). Without
        a queue the batch is returned as it is, with ``is_live=None`` (every row live): all-ones
        masks are not built.
        """
        if self.capacity == 0:
            return Merged(logits, targets, iid, weight, None)
        stored = self.stored_targets(targets)
        n = logits.shape[0]
        dev = logits.device
        ones, is_live = self._constant_masks(n, dev)
        if not with_iid or (iid is None and not self._flagged()):
            iid = None  # not read, or every row iid
        elif iid is None:
            iid = ones
        if self.weighted and weight is None:
            weight = torch.ones(n, device=dev)
        if weight is not None:
            dtype = compute_dtype(logits)
            weight = torch.cat([weight.to(dtype), self._q_weight.to(device=dev, dtype=dtype)])
        return Merged(
            torch.cat([logits, self._q_logits.to(device=dev, dtype=logits.dtype)]),
            torch.cat([targets, stored.to(dev)]),
            None if iid is None else torch.cat([iid, self._q_iid.to(dev)]),
            weight,
            is_live,
        )

    def _constant_masks(self, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """``[n]`` all-true and the ``[n + Q]`` live-row mask, made once per ``(n, device)``.

        Building them at every call costs three launches on a GPU; they are never written to.
        Not cached under inference mode (such tensors may not enter an autograd graph).
        """
        key = (n, device)
        cache = getattr(self, "_mask_cache", {})  # modules pickled before the cache have none
        cached = None if torch.compiler.is_compiling() else cache.get(key)
        if cached is None:
            ones = torch.ones(n, dtype=torch.bool, device=device)
            cached = (ones, torch.cat([ones, torch.zeros(self.capacity, dtype=torch.bool, device=device)]))
            if not (torch.is_inference_mode_enabled() or torch.compiler.is_compiling()):
                self._mask_cache = {key: cached}  # one batch size at a time: a new one replaces it
        return cached

    def _flagged(self) -> bool:
        """``flagged``; a queue pickled before the flag existed may hold flags (assume so)."""
        return getattr(self, "flagged", True)

    @torch.no_grad()
    def enqueue(self, logits: Tensor, targets: Tensor, iid: Tensor | None, weight: Tensor | None) -> None:
        """Write a batch (all of its rows, ``ignore_index`` rows included) behind the pointer; ``iid=None``: all iid."""
        q, n = self.capacity, logits.shape[0]
        if q == 0 or n == 0:
            return
        self.match_targets(targets)
        self.flagged = self._flagged() or iid is not None
        if weight is not None:
            self.weighted = True
        elif self.weighted:
            weight = torch.ones(n, device=logits.device)
        dev = self._q_logits.device
        if n >= q:  # the last q rows
            slots = torch.arange(q, device=dev)
            logits, targets = logits[n - q :], targets[n - q :]
            iid = None if iid is None else iid[n - q :]
            weight = None if weight is None else weight[n - q :]
            new_ptr = torch.zeros_like(self._q_ptr)
        else:  # every row (no slicing: each view is one more operation on a GPU)
            slots = (self._q_ptr + device_arange(n, dev)) % q
            new_ptr = None
        # Under no_grad: the stored rows need no `detach`.
        self._q_logits.index_copy_(0, slots, logits.to(device=dev, dtype=self._q_logits.dtype))
        self._q_targets.index_copy_(0, slots, targets.to(device=dev, dtype=torch.long))
        if iid is None:
            self._q_iid.index_fill_(0, slots, True)
        else:
            self._q_iid.index_copy_(0, slots, iid.to(device=dev, dtype=torch.bool))
        if weight is not None:
            self._q_weight.index_copy_(0, slots, weight.to(device=dev, dtype=self._q_weight.dtype))
            self.weighted = bool((self._q_weight != 1).any())
        if new_ptr is None:  # in place, after the slots were read from the old pointer
            self._q_ptr.add_(n).remainder_(q)
        else:
            self._q_ptr.copy_(new_ptr)

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
        # Checkpoints from before per-row iid flags and weights load with the defaults.
        if self.capacity > 0:
            stored = state_dict.get(prefix + "_q_targets")
            if isinstance(stored, Tensor) and stored.ndim != self._q_targets.ndim:  # multi-label <-> class ids
                self._q_targets = torch.full(
                    tuple(stored.shape), self.ignore_index, dtype=torch.long, device=self._q_targets.device
                )
            for key, default in (("_q_iid", self._q_iid), ("_q_weight", self._q_weight)):
                if prefix + key not in state_dict and prefix + "_q_logits" in state_dict:
                    state_dict[prefix + key] = torch.ones_like(default)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self.weighted = self.capacity > 0 and bool((self._q_weight != 1).any())
        self.flagged = self.capacity > 0 and not bool(self._q_iid.all())
