"""The shared orchestration of the three ranking losses.

``forward`` runs one path: validate (every argument) -> gather across ranks -> merge with
the queue -> drop ``ignore_index`` rows -> subsample (``max_pool_size``) -> call the
functional core -> reduce -> enqueue the live batch. The queue is written last, so a call
that raises leaves it as it was. The math lives in :mod:`imbalanced_losses.functional`.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ._queue import MemoryQueue, Merged, check_queue_size
from ._sampling import minimum_quota_indices
from ._validation import (
    REDUCTIONS,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_optional_bool,
    check_row_vector,
)
from ._warnings import WarnOnce
from .distributed import gather_batch, resolve_gather, shared_generator
from .functional._arith import compute_dtype
from .functional._classes import ClassWeight, check_class_weight, run_on_classes
from .functional._plan import kernel_plan
from .functional._pool import Pool, kept_rows, make_pool, validate_batch
from .functional._reduce import RankingResult, package

#: ``core(pool, iid [M] bool or None, live [M] bool or None) -> RankingResult`` (``None``: every row)
Core = Callable[..., RankingResult]


class Step(NamedTuple):
    """What :meth:`RankingLoss._run` hands to :meth:`RankingLoss._finish`."""

    result: RankingResult  # the core's result on the full class axis
    local_ids: Tensor  # this rank's normalised target ids (before any all-gather)
    commit: Callable[[], None]  # writes the live batch to the queue (or nothing); called last


class RankingLoss(nn.Module):
    """Base class of the ranking losses: owns the queue, the warn-once flags and the sampling generator.

    Subclasses validate their own hyperparameters, then call ``super().__init__`` and
    implement ``forward`` by handing their functional core to :meth:`_run`.
    """

    #: Whether the core reads the pool's ``iid`` flags (otherwise they are only stored in the queue).
    _reads_iid = True

    def __init__(
        self,
        num_classes: int,
        queue_size: int,
        temperature: float,
        reduction: str,
        ignore_index: int,
        update_queue_in_eval: bool,
        gather_distributed: bool | None,
        max_pool_size: int | None,
        *,
        generator: torch.Generator | None = None,
        validate_args: bool = True,
        class_weight: Tensor | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        check_int("num_classes", num_classes, minimum=1)
        check_int("queue_size", queue_size, minimum=0)
        check_queue_size(queue_size, num_classes)
        temperature = check_float("temperature", temperature, low=0.0)
        check_choice("reduction", reduction, REDUCTIONS)
        check_int("max_pool_size", max_pool_size, minimum=1, allow_none=True)
        check_int("ignore_index", ignore_index)
        check_bool("update_queue_in_eval", update_queue_in_eval)
        check_optional_bool("gather_distributed", gather_distributed)
        check_bool("validate_args", validate_args)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"`generator` must be a torch.Generator or None, got {type(generator).__name__}.")
        self.num_classes = num_classes
        self.queue_size = queue_size
        self._temperature_tensor: Tensor | None = None
        self.temperature = temperature
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.update_queue_in_eval = update_queue_in_eval
        self.gather_distributed = gather_distributed
        self.max_pool_size = max_pool_size
        self.generator = generator
        self.validate_args = validate_args
        self._queue = MemoryQueue(queue_size, num_classes, ignore_index)
        self._warn_once = WarnOnce()
        # Fixed at construction; not in the state dict (checkpoints stay interchangeable with 0.6).
        weights = check_class_weight(class_weight, num_classes)
        self.class_weight: Tensor | None
        self._class_keep: Tensor | None
        self.register_buffer("class_weight", None if weights is None else weights.weight, persistent=False)
        self.register_buffer("_class_keep", None if weights is None else weights.keep, persistent=False)

    def extra_repr(self) -> str:
        names = ["num_classes", "queue_size", "temperature", "reduction", *self._extra_repr_names(), "max_pool_size"]
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in names)

    def _extra_repr_names(self) -> list[str]:
        return []

    @property
    def temperature(self) -> float:
        """The sigmoid temperature; assign to change it (e.g. from a schedule), checked at the next call.

        The forward pass reads a 0-d float64 CPU tensor made at each assignment of a valid number,
        not the float, so under ``torch.compile`` a temperature schedule does not recompile the
        loss at every step. Other values (e.g. a tensor) are checked and converted at every call,
        as before.
        """
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._temperature: Any = value
        tensor = None
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            with contextlib.suppress(TypeError, ValueError):  # an invalid value raises at the next call
                tensor = torch.tensor(check_float("temperature", value, low=0.0), dtype=torch.float64)
        self._temperature_tensor = tensor  # a new tensor, never changed in place (autograd may hold it)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Modules pickled before the temperature became a property kept it in `__dict__`.
        temperature = state.pop("temperature", None)
        super().__setstate__(state)
        if "_temperature" not in self.__dict__:
            self.temperature = temperature

    def _temperature_arg(self) -> float | Tensor:
        """The temperature for the core: the 0-d tensor, or the checked float of a value of another type."""
        if self._temperature_tensor is not None:
            return self._temperature_tensor
        return check_float("temperature", self.temperature, low=0.0)

    def reset_queue(self) -> None:
        """Empty the memory queue (e.g. before validation or after a schedule switch)."""
        self._queue.reset()

    def _run(
        self,
        logits: Tensor,
        targets: Tensor,
        iid_mask: Tensor | None,
        sample_weight: Tensor | None,
        core: Core,
        *,
        return_per_class: bool,
        return_diagnostics: bool,
    ) -> Step:
        """Run the shared pipeline up to the core's result; the queue is written by :meth:`_finish`.

        Every argument of the call is checked before anything else, and the live batch is only
        enqueued once the result is packaged: a call that raises leaves the queue as it was.
        """
        num_classes, ignore_index = self.num_classes, self.ignore_index
        check_bool("return_per_class", return_per_class)
        check_bool("return_diagnostics", return_diagnostics)
        if self._temperature_tensor is None:  # not a valid number: raise, or check a tensor at every call
            check_float("temperature", self.temperature, low=0.0)
        if isinstance(iid_mask, bool):
            raise TypeError(
                f"`iid_mask` (the third positional argument) must be a [N] tensor or None, got {iid_mask!r}; "
                "pass flags by keyword, e.g. return_per_class=True."
            )
        logits, ids, weight, all_kept = validate_batch(
            logits,
            targets,
            sample_weight,
            num_classes=num_classes,
            ignore_index=ignore_index,
            validate_args=self.validate_args,
            warn=self._warn_once,
        )
        self._follow_device(logits.device)
        n = logits.shape[0]
        iid = check_row_vector("iid_mask", iid_mask, n)
        iid = None if iid is None else iid.detach().bool()
        if weight is not None:
            weight = weight.to(device=logits.device, dtype=compute_dtype(logits))
        local_ids = ids

        gathered = resolve_gather(self.gather_distributed)
        if gathered:  # the local slice of `logits` gets the world-size gradient factor (D2)
            # Every rank must gather the same tensors: a default mask is materialised, and
            # gather_batch gives ranks without a sample_weight ones when another rank has one.
            iid = torch.ones(n, dtype=torch.bool, device=logits.device) if iid is None else iid
            logits, ids, iid, weight = gather_batch(logits, ids, iid, weight)

        merged = self._queue.merge(logits, ids, iid, weight, with_iid=self._reads_iid)
        size = merged.targets.shape[0]
        # Rows to keep; None = all of them, known without a look at the targets when the batch
        # has no ignore_index row (see validate_batch) and there is neither a queue nor a gather.
        rows = None
        # Under a GPU plan the rows are only looked for when something needs their number (a host
        # synchronisation): a queue (nothing is enqueued from an empty pool) or `max_pool_size`.
        # Elsewhere the class masks leave the ignored rows out of every class anyway.
        needed = not (all_kept and not gathered and self._queue.capacity == 0) and (
            self._queue.capacity > 0 or self.max_pool_size is not None or kernel_plan(merged.logits.device).compact_pool
        )
        if needed:
            rows = kept_rows(merged.targets, ignore_index).nonzero().squeeze(1)
        kept = size if rows is None else rows.numel()
        if self.max_pool_size is not None and kept > self.max_pool_size:
            self._warn_once(
                "subsample",
                f"{type(self).__name__}: the pool has {kept} rows, more than max_pool_size="
                f"{self.max_pool_size}; minimum-quota subsampling is applied and the loss is now stochastic. "
                "(Shown once.)",
            )
            # The merged pool is identical on every rank, so all ranks get here together; without a
            # user generator they agree on a seed (one broadcast) to keep the same rows (D8).
            generator = self.generator
            if generator is None and gathered:
                generator = shared_generator(merged.targets.device)
            if rows is None:
                rows = torch.arange(size, device=merged.targets.device)
            rows = rows[minimum_quota_indices(merged.targets[rows], self.max_pool_size, generator)]
            kept = rows.numel()
        if rows is not None and rows.numel() < size:
            merged = Merged(*(None if t is None else t.index_select(0, rows) for t in merged))  # type: ignore[arg-type]
        all_rows = rows is not None or (all_kept and not gathered and self._queue.capacity == 0)
        pool = make_pool(merged.logits, merged.targets, merged.weight, ignore_index, all_rows=all_rows)

        def run(p: Pool) -> RankingResult:
            out = core(p, merged.iid, merged.is_live)
            if out.stats is not None:  # the stored rows each class of this call used
                is_live = merged.is_live
                out.stats["queue_fill"] = (
                    p.pos.new_zeros(p.pos.shape[1], dtype=torch.long)
                    if is_live is None
                    else ((p.pos | p.neg) & ~is_live.unsqueeze(1)).sum(0)
                )
            return out

        result = run_on_classes(run, pool, self._class_weights())
        # no queue: nothing to write (and no call into `enqueue`, whose no_grad context costs as much as an operation)
        enqueue = kept > 0 and self._queue.capacity > 0 and (self.training or self.update_queue_in_eval)

        def commit() -> None:
            if enqueue:
                self._queue.enqueue(logits, ids, iid, weight)

        return Step(result, local_ids, commit)

    def _follow_device(self, device: torch.device) -> None:
        """Move the module's buffers (queue, class weights) to the logits' ``device`` once, with a warning.

        A loss left on the CPU while the model runs on a GPU would otherwise copy its whole queue
        to the device and back at every call (blocking copies: each one a host synchronisation).
        """
        buffer = self._queue._q_logits if self._queue.capacity > 0 else self.class_weight
        if buffer is None or buffer.device == device:  # no data read: free, and static under torch.compile
            return
        self._warn_once(
            "device",
            f"{type(self).__name__}: its buffers (memory queue, class weights) are on {buffer.device} and the "
            f"logits on {device}; the module was moved to {device}. Call `.to({str(device)!r})` on the "
            "loss (or on the model that owns it) to avoid this. (Shown once.)",
        )
        self.to(device)

    def _class_weights(self) -> ClassWeight | None:
        return None if self.class_weight is None else ClassWeight(self.class_weight, self._class_keep)

    def _finish(self, step: Step, anchor: Tensor, return_per_class: bool, return_diagnostics: bool = False) -> Any:
        """Package the result (the flags were checked by :meth:`_run`), then enqueue the live batch."""
        out = package(
            step.result,
            reduction=self.reduction,
            anchor=anchor,
            return_per_class=return_per_class,
            return_diagnostics=return_diagnostics,
            class_weight=self.class_weight,
            checked_finite=self.validate_args,
        )
        step.commit()
        return out

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
        # Early checkpoints kept the queue buffers directly on the loss: move them under `_queue.`.
        for key in ("_q_logits", "_q_targets", "_q_ptr", "_q_iid", "_q_weight"):
            if prefix + key in state_dict and prefix + "_queue." + key not in state_dict:
                state_dict[prefix + "_queue." + key] = state_dict.pop(prefix + key)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
