"""Lightning integration: a callback that drives :class:`~imbalanced_losses.LossWarmupWrapper`.

Importing this module imports Lightning (``lightning.pytorch``, or the older standalone
``pytorch_lightning``); install it with ``pip install "imbalanced-losses[lightning]"``.

Example:
    .. code-block:: python

        from lightning.pytorch import Trainer
        from imbalanced_losses.integrations.lightning import WarmupCallback

        trainer = Trainer(max_epochs=10, callbacks=[WarmupCallback()])
        trainer.fit(model)  # every LossWarmupWrapper inside `model` follows the trainer
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from ..warmup_wrapper import LossWarmupWrapper

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
    """Call the schedule hooks of :class:`~imbalanced_losses.LossWarmupWrapper` from the trainer.

    At the start of every training epoch it calls ``wrapper.on_train_epoch_start(epoch)`` with
    ``trainer.current_epoch``; before every training batch, ``wrapper.on_train_batch_start(step)``
    with ``trainer.global_step`` (the number of optimizer steps taken so far). That is all a
    training loop has to do for the wrapper in either of its modes; with the hooks driven here,
    do not call them yourself as well.

    The wrappers are the ones given to the constructor or, by default, every
    :class:`~imbalanced_losses.LossWarmupWrapper` found among the LightningModule's sub-modules
    (``pl_module.modules()``), looked up at each hook so a loss created in ``setup()`` is found.
    A wrapper that is a sub-module is checkpointed with the model (its schedule is in its
    ``_extra_state``), so a resumed ``fit`` continues the schedule where it stopped.

    Args:
        wrappers: A wrapper or an iterable of wrappers to drive; ``None`` (default) finds them
            in the LightningModule.

    Raises:
        TypeError: If ``wrappers`` holds anything but :class:`~imbalanced_losses.LossWarmupWrapper`.
    """

    def __init__(self, wrappers: LossWarmupWrapper | Iterable[LossWarmupWrapper] | None = None) -> None:
        super().__init__()
        if isinstance(wrappers, LossWarmupWrapper):
            wrappers = [wrappers]
        self._wrappers = None if wrappers is None else list(wrappers)
        for w in self._wrappers or []:
            if not isinstance(w, LossWarmupWrapper):
                raise TypeError(f"`wrappers` must hold LossWarmupWrapper instances, got {type(w).__name__}.")

    def _targets(self, pl_module: nn.Module) -> list[LossWarmupWrapper]:
        if self._wrappers is not None:
            return self._wrappers
        return [m for m in pl_module.modules() if isinstance(m, LossWarmupWrapper)]

    def on_train_epoch_start(self, trainer: Any, pl_module: nn.Module) -> None:
        """Advance the epoch schedule (and the optional per-epoch queue reset)."""
        for wrapper in self._targets(pl_module):
            wrapper.on_train_epoch_start(int(trainer.current_epoch))

    def on_train_batch_start(self, trainer: Any, pl_module: nn.Module, batch: Any, batch_idx: int) -> None:
        """Advance the step schedule: the latch at the end of the warm-up and the temperature decay."""
        for wrapper in self._targets(pl_module):
            wrapper.on_train_batch_start(int(trainer.global_step))
