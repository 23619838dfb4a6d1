"""Deferred re-weighting (DRW, Cao et al. 2019): switch a loss's class weights on at a given epoch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._schedule import Phase, PhaseSchedule, as_position
from ._validation import ArgumentTypeError, check_int
from ._warnings import WarnOnce, warn
from .warmup_wrapper import _HOOK_GRACE, _ScheduleState

__all__ = ["DeferredReweighting"]


class DeferredReweighting(_ScheduleState):
    r"""Train a loss unweighted, then with per-class weights from ``start_epoch`` on (DRW).

    The schedule of LDAM-DRW (Cao et al., 2019): the wrapped loss's class-weight attribute
    (``attribute``, ``'class_weight'`` by default) is ``None`` (uniform) in the epochs
    ``epoch < start_epoch`` and ``class_weight`` from then on:

    .. math::
        w^{(e)} = \begin{cases} \text{None (uniform)} & e < e_0 \\ w & e \ge e_0 \end{cases}

    The usual ``w`` are the class-balanced ("effective number") weights
    :math:`w_c \propto (1 - \beta) / (1 - \beta^{n_c})` with :math:`\beta = 0.9999`, normalised to
    sum to ``C``; the paper switches at the first learning-rate decay (epoch 160 of 200 on
    CIFAR-LT). The wrapper only sets the attribute; ``forward`` calls the wrapped loss
    unchanged, so it works for any loss whose weights live in an attribute that may be
    ``None`` or a ``[C]`` tensor: :class:`~imbalanced_losses.LDAMLoss` (``'class_weight'``),
    :class:`torch.nn.CrossEntropyLoss` (``attribute='weight'``),
    :class:`~imbalanced_losses.SoftmaxFocalLoss` (``attribute='alpha'``).

    Drive it with :meth:`on_train_epoch_start` at the start of every epoch (0-based, as
    Lightning's ``trainer.current_epoch``; the Lightning ``WarmupCallback`` does it). The
    epoch is saved in the wrapper's ``_extra_state`` (like
    :class:`~imbalanced_losses.LossWarmupWrapper`'s schedule), so a checkpoint restores the
    phase and the wrapped loss's weights; the target weights are the persistent float32 buffer
    ``class_weight`` and follow ``.to()``.

    Design: this reuses the warm-up wrapper's machinery where it fits (the schedule's arithmetic,
    a warm-up of ``start_epoch`` epochs and then the main phase, without blend; the epoch hook
    and its integer-like argument check, the checkpointed ``_extra_state`` with old checkpoints
    accepted, the once-per-instance warning when the hook is never called) but is not a
    :class:`~imbalanced_losses.LossWarmupWrapper`: that one switches between *two* loss
    modules, and DRW with two copies of a loss (weighted and not) would double any state the
    loss keeps (queues, online counts) and blend values instead of switching one attribute.

    Args:
        loss: The loss to re-weight, an :class:`~torch.nn.Module` with the attribute
            ``attribute``.
        class_weight: ``[C]`` finite, non-negative weights, not all zero (a tensor or a
            sequence of numbers).
        start_epoch: First epoch (0-based) that uses ``class_weight``, ``>= 0``; ``0`` re-weights
            from the start.
        attribute: Name of the loss's class-weight attribute.

    Raises:
        TypeError: ``loss`` is not a module, ``class_weight`` is not a real tensor or sequence,
            or ``start_epoch`` is not an int.
        ValueError: ``loss`` has no attribute ``attribute``, ``class_weight`` is not a
            non-empty 1-D vector of finite non-negative values with a positive sum, or its
            length differs from that of the loss's current weights or margins,
            ``start_epoch < 0``.

    Warns:
        UserWarning: At construction when the loss already holds class weights (they are
            replaced by the schedule); once per instance after 100 training-mode forward calls
            without any :meth:`on_train_epoch_start` call while re-weighting is still to come.

    Example:
        >>> import torch
        >>> from imbalanced_losses import DeferredReweighting, LDAMLoss
        >>> counts = torch.tensor([500.0, 50.0, 5.0])
        >>> beta = 0.9999
        >>> weights = (1 - beta) / (1 - beta**counts)
        >>> weights = weights / weights.sum() * len(counts)  # class-balanced weights, sum C
        >>> loss_fn = DeferredReweighting(LDAMLoss(counts), weights, start_epoch=2)
        >>> for epoch in range(4):
        ...     loss_fn.on_train_epoch_start(epoch)
        ...     print(epoch, loss_fn.reweighting, loss_fn.loss.class_weight is not None)
        0 False False
        1 False False
        2 True True
        3 True True
    """

    class_weight: Tensor

    def __init__(
        self,
        loss: nn.Module,
        class_weight: Tensor | Sequence[float],
        *,
        start_epoch: int,
        attribute: str = "class_weight",
    ) -> None:
        super().__init__()
        if not isinstance(loss, nn.Module):
            raise TypeError(f"`loss` must be a torch.nn.Module, got {type(loss).__name__}.")
        check_int("start_epoch", start_epoch)
        if not isinstance(attribute, str):
            raise ArgumentTypeError(f"`attribute` must be a str, got {type(attribute).__name__}.")
        if not hasattr(loss, attribute):
            raise ValueError(
                f"`loss` ({type(loss).__name__}) has no attribute {attribute!r} to hold the class weights; "
                "pass `attribute=` (e.g. 'weight' for torch.nn.CrossEntropyLoss, 'alpha' for SoftmaxFocalLoss)."
            )
        check_int("start_epoch", start_epoch, minimum=0)
        weights = _check_weights(class_weight)
        current = getattr(loss, attribute)
        reference = current if isinstance(current, Tensor) else getattr(loss, "margins", None)
        if isinstance(reference, Tensor) and reference.ndim == 1 and reference.shape[0] != weights.shape[0]:
            raise ValueError(
                f"`class_weight` must have one weight per class of the loss (C={reference.shape[0]}), "
                f"got {weights.shape[0]} entries."
            )
        if current is not None:
            warn(
                f"DeferredReweighting: `loss.{attribute}` is already set; the schedule replaces it "
                f"(None before start_epoch={start_epoch}, `class_weight` from then on)."
            )
        self.loss = loss
        self.start_epoch = start_epoch
        self.attribute = attribute
        device = reference.device if isinstance(reference, Tensor) else None
        self.register_buffer("class_weight", weights.to(device=device, dtype=torch.float32))
        self._epoch = 0
        self._epoch_hook_seen = False
        self._forwards_without_hook = 0
        self._warn_once = WarnOnce()
        self._apply_schedule()

    def extra_repr(self) -> str:
        """The schedule shown by ``repr``."""
        return f"start_epoch={self.start_epoch}, attribute={self.attribute!r}, epoch={self._epoch}"

    @property
    def epoch(self) -> int:
        """The epoch last passed to :meth:`on_train_epoch_start` (0 before any call)."""
        return self._epoch

    @property
    def reweighting(self) -> bool:
        """Whether the class weights are in use (``epoch >= start_epoch``)."""
        return PhaseSchedule(warmup=self.start_epoch).phase(self._epoch) is not Phase.WARMUP

    def on_train_epoch_start(self, epoch: int) -> None:
        """Call at the start of every training epoch; sets the loss's weights for that epoch.

        Args:
            epoch: The epoch about to start (0-based; an int, or integer-like such as a 0-d
                integer tensor).

        Raises:
            TypeError: ``epoch`` is not integer-like.
            ValueError: ``epoch < 0``.
        """
        epoch = as_position("epoch", epoch)
        check_int("epoch", epoch, minimum=0)
        self._epoch = epoch
        self._epoch_hook_seen = True
        self._apply_schedule()

    def _apply_schedule(self) -> None:
        value = self.class_weight.clone() if self.reweighting else None
        setattr(self.loss, self.attribute, value)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped loss with the same arguments (its weights set by the schedule).

        Returns:
            Whatever the wrapped loss returns.
        """
        if self.training and not self._epoch_hook_seen and not self.reweighting:
            self._forwards_without_hook += 1
            if self._forwards_without_hook >= _HOOK_GRACE:
                self._warn_once(
                    "missing_hook",
                    f"DeferredReweighting: {self._forwards_without_hook} training forward calls without any "
                    f"on_train_epoch_start(epoch) call; the epoch stays at 0, so the re-weighting "
                    f"(start_epoch={self.start_epoch}) never starts. Call it at the start of every epoch. "
                    "(Shown once.)",
                )
        return self.loss(*args, **kwargs)

    # ------------------------------------------------------------------ persistence

    def get_extra_state(self) -> dict[str, Any]:
        """The schedule position, saved under the state-dict key ``_extra_state``.

        Returns:
            ``{"epoch", "epoch_hook_seen"}`` (plain Python values).
        """
        return {"epoch": self._epoch, "epoch_hook_seen": self._epoch_hook_seen}

    def set_extra_state(self, state: Any) -> None:
        """Restore the schedule saved by :meth:`get_extra_state` and set the loss's weights to match.

        Keys missing from ``state`` keep their current values.

        Args:
            state: The ``_extra_state`` dict of a checkpoint.

        Raises:
            TypeError: ``state`` is not a mapping.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"`state` must be a dict (the `_extra_state` entry), got {type(state).__name__}.")
        if "epoch" in state:
            self._epoch = int(state["epoch"])
        if "epoch_hook_seen" in state:
            self._epoch_hook_seen = bool(state["epoch_hook_seen"])
        self._apply_schedule()


def _check_weights(class_weight: Any) -> Tensor:
    """``class_weight`` as a ``[C]`` float64 tensor: finite, non-negative, positive sum."""
    if isinstance(class_weight, Tensor):
        if class_weight.dtype == torch.bool or class_weight.is_complex():
            raise TypeError(f"`class_weight` must be a real-valued [C] tensor, got dtype {class_weight.dtype}.")
        out = class_weight.detach().to(dtype=torch.float64, copy=True)
    elif isinstance(class_weight, Sequence) and not isinstance(class_weight, str):
        try:
            out = torch.tensor([float(v) for v in class_weight], dtype=torch.float64)
        except (TypeError, ValueError) as err:
            raise TypeError("`class_weight` must be a [C] tensor or a sequence of numbers.") from err
    else:
        raise TypeError(
            f"`class_weight` must be a [C] tensor or a sequence of numbers, got {type(class_weight).__name__}."
        )
    if out.ndim != 1 or out.shape[0] == 0:
        raise ValueError(f"`class_weight` must have shape [C] with C >= 1, got {tuple(out.shape)}.")
    if not bool((torch.isfinite(out) & (out >= 0)).all()) or not bool(out.sum() > 0):
        raise ValueError(
            f"`class_weight` must be finite and non-negative with a positive sum, got {out.cpu().tolist()}."
        )
    return out
