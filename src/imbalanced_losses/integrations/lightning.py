"""Lightning integration: a callback that drives the loss schedules.

The schedules are :class:`~imbalanced_losses.LossWarmupWrapper` (epoch and step hooks) and
:class:`~imbalanced_losses.DeferredReweighting` (epoch hook).

Importing this module imports Lightning (``lightning.pytorch``, or the older standalone
``pytorch_lightning``); install it with ``pip install "imbalanced-losses[lightning]"``.

Example:
    .. code-block:: python

        from lightning.pytorch import Trainer
        from imbalanced_losses.integrations.lightning import WarmupCallback

        trainer = Trainer(max_epochs=10, callbacks=[WarmupCallback()])
        trainer.fit(model)  # every schedule inside `model` follows the trainer
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from ..drw import DeferredReweighting
from ..warmup_wrapper import LossWarmupWrapper

#: The schedule modules the callback drives.
Schedule = LossWarmupWrapper | DeferredReweighting
SCHEDULES = (LossWarmupWrapper, DeferredReweighting)

try:
    from lightning.pytorch import Callback
except ImportError:  # without `lightning`: tests/test_integrations_import.py
    try:
        from pytorch_lightning import Callback  # type: ignore[assignment]
    except ImportError as exc:
        raise ImportError(
            "imbalanced_losses.integrations.lightning needs Lightning: "
            'pip install "imbalanced-losses[lightning]" (or pip install lightning).'
        ) from exc

__all__ = ["WarmupCallback"]


class WarmupCallback(Callback):
    """Call the hooks of the loss schedules from the trainer.

    At the start of every training epoch it calls ``schedule.on_train_epoch_start(epoch)`` with
    ``trainer.current_epoch``; before every training batch, a
    :class:`~imbalanced_losses.LossWarmupWrapper`'s ``on_train_batch_start(step)`` with
    ``trainer.global_step`` (the number of optimizer steps taken so far). That is all a training
    loop has to do for either schedule (:class:`~imbalanced_losses.DeferredReweighting` counts
    epochs only); with the hooks driven here, do not call them yourself as well.

    The schedules are the ones given to the constructor or, by default, every
    :class:`~imbalanced_losses.LossWarmupWrapper` and
    :class:`~imbalanced_losses.DeferredReweighting` found among the LightningModule's
    sub-modules (``pl_module.modules()``), looked up at each hook so a loss created in
    ``setup()`` is found. A schedule that is a sub-module is checkpointed with the model (its
    position is in its ``_extra_state``), so a resumed ``fit`` continues where it stopped.

    Args:
        wrappers: A schedule or an iterable of schedules to drive; ``None`` (default) finds
            them in the LightningModule.

    Raises:
        TypeError: If ``wrappers`` holds anything but the schedules above.
    """

    def __init__(self, wrappers: Schedule | Iterable[Schedule] | None = None) -> None:
        super().__init__()
        if isinstance(wrappers, SCHEDULES):
            wrappers = [wrappers]
        self._wrappers = None if wrappers is None else list(wrappers)
        for w in self._wrappers or []:
            if not isinstance(w, SCHEDULES):
                raise TypeError(
                    f"`wrappers` must hold LossWarmupWrapper or DeferredReweighting instances, got {type(w).__name__}."
                )

    def _targets(self, pl_module: nn.Module) -> list[Schedule]:
        if self._wrappers is not None:
            return self._wrappers
        return [m for m in pl_module.modules() if isinstance(m, SCHEDULES)]

    def on_train_epoch_start(self, trainer: Any, pl_module: nn.Module) -> None:
        """Advance the epoch schedules (and the warm-up's optional per-epoch queue reset)."""
        for schedule in self._targets(pl_module):
            schedule.on_train_epoch_start(int(trainer.current_epoch))

    def on_train_batch_start(self, trainer: Any, pl_module: nn.Module, batch: Any, batch_idx: int) -> None:
        """Advance the warm-up's step schedule: the latch at the end of the warm-up and the temperature decay."""
        for schedule in self._targets(pl_module):
            if isinstance(schedule, LossWarmupWrapper):
                schedule.on_train_batch_start(int(trainer.global_step))
