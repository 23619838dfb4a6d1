"""Warm-up schedule around a ranking loss (:class:`LossWarmupWrapper`)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ._schedule import Phase, PhaseSchedule, as_position
from ._validation import check_bool, check_float, check_int, check_optional_bool
from ._warnings import WarnOnce, warn
from .focal_loss import SigmoidFocalLoss

__all__ = ["LossWarmupWrapper"]

#: ``switch_step`` value meaning "armed: latch at the next batch hook" (kept for checkpoint compatibility).
_ARMED = -1
#: Training-mode forward calls in the warm-up, with the hook that advances it (epoch mode:
#: ``on_train_epoch_start``; step mode: ``on_train_batch_start``) never called, after which the
#: wrapper warns that the warm-up can never end.
_HOOK_GRACE = 100
#: Warm-up losses that score every logit on its own and need targets shaped like the logits;
#: the wrapper hands them the ranking losses' class ids in that layout (see ``_elementwise_targets``).
ELEMENTWISE_WARMUP_LOSSES: tuple[type[nn.Module], ...] = (nn.BCEWithLogitsLoss, SigmoidFocalLoss)


class _ScheduleState(nn.Module):
    """A module whose schedule position is its ``_extra_state``, which older checkpoints lack.

    Loading a state dict without that entry keeps the current schedule instead of reporting a
    missing key (also with ``strict=True``). The entry is (re)applied before the submodules
    load, so a restored phase is in place when they do.
    """

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
        state_dict.setdefault(prefix + "_extra_state", self.get_extra_state())
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class LossWarmupWrapper(_ScheduleState):
    r"""Train with ``warmup_loss`` first, blend into ``main_loss``, and anneal its temperature.

    Phases, with ``x`` the epoch (epoch mode) or the last global step seen (step mode), ``W``
    the warm-up length, ``B`` the blend length and ``f = final_main_weight``:

    * warm-up (``x < W``): the loss is ``warmup_loss(logits, targets)``;
    * blend (``W <= x < W + B``): ``(1 - w) * warmup + w * main`` with
      :math:`w = f (x - W + 1) / (B + 1)`;
    * main (``x >= W + B``): ``w = f``; for ``f == 1`` only ``main_loss`` runs.

    At the first batch after the warm-up (the start of the blend) the wrapper *latches*: it
    sets ``main_loss.temperature = temp_start`` and empties the main loss's memory queue (the
    queue would otherwise hold stale rows). From then on ``on_train_batch_start`` sets

    .. math::
        \tau = \tau_{start} \left(\tau_{end} / \tau_{start}\right)^{\min(1, (s - s_0) / S)}

    with ``s`` the global step, ``s_0`` the latch step and ``S = temp_decay_steps``. During the
    warm-up the main loss keeps the temperature it was constructed with. Without a warm-up
    (``W == 0``) the main phase starts at once: the temperature is set to ``temp_start`` at
    construction and decays from step 0; no queue reset happens.

    Epoch mode (the default) counts epochs through :meth:`on_train_epoch_start`; step mode
    (``warmup_steps`` given) counts global steps through :meth:`on_train_batch_start`. Call
    both hooks in either mode: the epoch hook drives the phases (epoch mode) and the optional
    per-epoch queue reset, the batch hook drives the latch and the temperature decay.

    **The temperature decay counts global steps in both modes.** ``temp_decay_steps`` is a
    number of batches (optimizer steps) after the latch, also in epoch mode, and its default
    (10,000) is longer than many runs: the temperature then never reaches ``temp_end``. To end
    the decay with the training, size it from your loop: in epoch mode
    ``steps_per_epoch * (epochs - warmup_epochs)``, in step mode ``total_steps - warmup_steps``.

    **Two return forms.** During the warm-up the wrapper returns what ``warmup_loss`` returns
    (a 0-d tensor for the usual losses), even when ``return_per_class=True`` or
    ``return_diagnostics=True`` is passed: those go to the main loss only, which does not run
    yet. From the blend on it returns what ``main_loss`` returns, so a tuple ``(loss, ...)``
    when such a flag is set. This is ``imbalanced-losses`` 0.6's behaviour, kept for drop-in
    compatibility; a loop that asks for diagnostics handles both forms:

    .. code-block:: python

        out = loss_fn(logits, targets, return_diagnostics=True)
        loss, stats = (out, None) if isinstance(out, Tensor) else out  # None during the warm-up

    **Element-wise warm-up losses.** :class:`torch.nn.BCEWithLogitsLoss` and
    :class:`~imbalanced_losses.SigmoidFocalLoss` need targets shaped like the logits, while
    the ranking losses take ``[N]`` class ids. For these warm-up losses the wrapper converts
    ``[N]`` (or ``[N, 1]``) targets against ``[N, C]`` logits: for ``C == 1`` to the float
    labels ``targets.unsqueeze(1)`` (values in ``[0, 1]``), for ``C > 1`` to a float one-hot
    ``[N, C]`` (ids in ``[0, C)``). Targets already shaped like the logits (multi-hot) are
    passed on, cast to the logits' dtype when they are integer or bool. The logits are never
    changed, so a ``pos_weight`` of shape ``[C]`` (``[1]`` for binary) applies per column.
    Rows equal to a ``SigmoidFocalLoss``'s own ``ignore_index`` stay ignored (a row of
    ``ignore_index``); other targets (e.g. ``-100`` rows for ``BCEWithLogitsLoss``) raise a
    ``ValueError``. Other warm-up losses get the targets unchanged.

    The schedule position (epoch, global step, latch step, whether the batch hook was seen,
    temperature) is saved under the state-dict key ``_extra_state`` as a plain dict, so it
    survives ``torch.load(..., weights_only=True)`` and a resume neither re-latches nor wipes
    the restored queue. State dicts of ``imbalanced-losses`` 0.6 load as they are; older ones
    without ``_extra_state`` load (also with ``strict=True``) and keep the current schedule.

    **Under** ``torch.compile``. The schedule's arithmetic runs in the hooks, outside the
    compiled region. ``forward`` reads only which losses run (it changes at the phase
    boundaries) and the blend weights, kept as 0-d tensors; the ranking losses of this library
    likewise hand their temperature to the kernels as a 0-d tensor. So a compiled wrapper (or a
    compiled step that calls it) compiles new frames at the phase changes only, not at every
    step of the blend or of the temperature decay. Changes to the hyperparameter attributes
    (``temp_end``, ...) take effect at the next hook call.

    Args:
        warmup_loss: Loss used during the warm-up (e.g. cross-entropy), called as
            ``warmup_loss(logits, targets)``; it also gets ``sample_weight=`` when the caller
            passes one and its ``forward`` declares ``sample_weight`` or ``**kwargs``. If it
            returns a tuple, its first element is blended.
        main_loss: The loss to end with, typically a ranking loss. Its ``temperature``
            attribute is scheduled and its ``reset_queue()`` called when it has them.
        warmup_epochs: Warm-up length in epochs (epoch mode), ``>= 0``.
        temp_start: Temperature set at the latch, ``> 0``. The defaults are in logit units
            (right for :class:`~imbalanced_losses.SmoothAPLoss`);
            :class:`~imbalanced_losses.RecallAtQuantileLoss`'s and
            :class:`~imbalanced_losses.PAUCAtBudgetLoss`'s temperatures are dimensionless
            multipliers of the score spread (default ``0.1``), so set them, e.g. ``0.5 -> 0.1``.
        temp_end: Temperature reached after ``temp_decay_steps`` steps, ``> 0`` (may exceed
            ``temp_start``: the schedule then increases).
        temp_decay_steps: Global steps (batches) of the geometric decay after the latch,
            ``>= 1``, in epoch mode too; see above for sizing it to a run.
        blend_epochs: Blend length in epochs (epoch mode), ``>= 0``.
        warmup_steps: Warm-up length in global steps; giving it selects step mode.
        blend_steps: Blend length in global steps (step mode only).
        final_main_weight: Weight ``f`` of the main loss after the blend, in ``(0, 1]``; below
            1 both losses run on every step for good.
        reset_queue_each_epoch: Empty the main loss's queue at every epoch start after the
            warm-up.
        gather_distributed: Copied onto ``main_loss.gather_distributed`` when not ``None``
            (and the main loss has that attribute); ``None`` leaves the main loss alone.

    Raises:
        TypeError: ``warmup_loss``/``main_loss`` is not an :class:`~torch.nn.Module`, or an
            argument has the wrong type (e.g. a ``bool`` or ``float`` for an ``int``).
        ValueError: In this order: both ``warmup_epochs`` (non-zero) and ``warmup_steps``;
            both ``blend_epochs`` (non-zero) and ``blend_steps``; ``blend_steps`` without
            ``warmup_steps``; a negative length; ``final_main_weight`` outside ``(0, 1]``;
            ``temp_start`` or ``temp_end`` not finite and ``> 0``; ``temp_decay_steps < 1``.

    Warns:
        UserWarning: At construction if ``main_loss`` has no ``temperature`` (no schedule) or
            ``reset_queue_each_epoch=True`` but it has no ``reset_queue()``; once per instance
            if the main phase runs before ``on_train_batch_start`` was ever called (the
            temperature schedule would never run); once per instance after 100 training-mode
            forward calls in the warm-up without any call of the hook that advances it
            (``on_train_epoch_start`` in epoch mode, ``on_train_batch_start`` in step mode), as
            the warm-up would then never end. Warnings point at the caller's line.

    Note:
        Behaviour that is ours rather than ``imbalanced-losses`` 0.6's: argument *types* are
        checked (``TypeError``; ints must not be bools, numbers must be finite); the two
        temperature checks name the offending argument; the hooks accept any integer-like
        value (``operator.index``) and reject others; the epoch-hook warning above is new;
        construction also warns when ``blend_epochs`` is given in step mode, where it is
        ignored. Kept from 0.6 on purpose: the warm-up temperature is the main loss's own,
        the queue is reset at the start of the blend (not of the pure-main phase), a step
        before the latch step extrapolates the temperature beyond ``temp_start``, and warning
        flags are not saved.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from imbalanced_losses import LossWarmupWrapper, SmoothAPLoss
        >>> loss_fn = LossWarmupWrapper(
        ...     nn.CrossEntropyLoss(),
        ...     SmoothAPLoss(num_classes=3, queue_size=64),
        ...     warmup_epochs=1,
        ...     temp_start=0.5,
        ...     temp_end=0.05,
        ...     temp_decay_steps=4,
        ...     blend_epochs=1,
        ... )
        >>> step = 0
        >>> for epoch in range(3):
        ...     loss_fn.on_train_epoch_start(epoch)
        ...     for _ in range(2):
        ...         loss_fn.on_train_batch_start(step)
        ...         logits = torch.randn(16, 3, requires_grad=True)
        ...         loss_fn(logits, torch.randint(0, 3, (16,))).backward()
        ...         step += 1
        ...     print(epoch, loss_fn.main_weight, round(loss_fn.current_temperature, 3))
        0 0.0 0.01
        1 0.5 0.281
        2 1.0 0.089
    """

    def __init__(
        self,
        warmup_loss: nn.Module,
        main_loss: nn.Module,
        warmup_epochs: int = 0,
        temp_start: float = 0.05,
        temp_end: float = 0.005,
        temp_decay_steps: int = 10_000,
        *,
        blend_epochs: int = 0,
        warmup_steps: int | None = None,
        blend_steps: int | None = None,
        final_main_weight: float = 1.0,
        reset_queue_each_epoch: bool = False,
        gather_distributed: bool | None = None,
    ) -> None:
        super().__init__()
        # Types first, so that the value checks below compare numbers.
        for name, module in (("warmup_loss", warmup_loss), ("main_loss", main_loss)):
            if not isinstance(module, nn.Module):
                raise TypeError(f"`{name}` must be a torch.nn.Module, got {type(module).__name__}.")
        check_int("warmup_epochs", warmup_epochs)
        check_int("temp_decay_steps", temp_decay_steps)
        check_int("blend_epochs", blend_epochs)
        check_int("warmup_steps", warmup_steps, allow_none=True)
        check_int("blend_steps", blend_steps, allow_none=True)
        check_bool("reset_queue_each_epoch", reset_queue_each_epoch)
        check_optional_bool("gather_distributed", gather_distributed)
        # Values, in the order of imbalanced-losses 0.6.
        if warmup_steps is not None and warmup_epochs != 0:
            raise ValueError(
                "Cannot specify both warmup_epochs (non-zero) and warmup_steps: choose epoch mode "
                f"(`warmup_epochs`) or step mode (`warmup_steps`), got warmup_epochs={warmup_epochs!r}, "
                f"warmup_steps={warmup_steps!r}."
            )
        if blend_steps is not None and blend_epochs != 0:
            raise ValueError(
                "Cannot specify both blend_epochs (non-zero) and blend_steps: use `blend_epochs` in epoch mode "
                f"or `blend_steps` in step mode, got blend_epochs={blend_epochs!r}, blend_steps={blend_steps!r}."
            )
        if blend_steps is not None and warmup_steps is None:
            raise ValueError(
                "blend_steps requires warmup_steps: `blend_steps` is the step-mode blend length, "
                f"got blend_steps={blend_steps!r} with warmup_steps=None."
            )
        check_int("warmup_epochs", warmup_epochs, minimum=0)
        check_int("warmup_steps", warmup_steps, minimum=0, allow_none=True)
        check_int("blend_epochs", blend_epochs, minimum=0)
        check_int("blend_steps", blend_steps, minimum=0, allow_none=True)
        final_main_weight = check_float("final_main_weight", final_main_weight, low=0.0, high=1.0, high_open=False)
        temp_start = check_float("temp_start", temp_start, low=0.0)
        temp_end = check_float("temp_end", temp_end, low=0.0)
        check_int("temp_decay_steps", temp_decay_steps, minimum=1)

        self.warmup_loss = warmup_loss
        self.main_loss = main_loss
        self.warmup_epochs = warmup_epochs
        self.temp_start = temp_start
        self.temp_end = temp_end
        self.temp_decay_steps = temp_decay_steps
        self.blend_epochs = blend_epochs
        self.warmup_steps = 0 if warmup_steps is None else warmup_steps
        self.blend_steps = 0 if blend_steps is None else blend_steps
        self.final_main_weight = final_main_weight
        self.reset_queue_each_epoch = reset_queue_each_epoch
        self.gather_distributed = gather_distributed
        self._step_mode = warmup_steps is not None

        main: Any = main_loss  # a duck-typed loss: its optional attributes are probed here
        if gather_distributed is not None and hasattr(main, "gather_distributed"):
            main.gather_distributed = gather_distributed
        self._has_temperature = hasattr(main, "temperature")
        self._can_reset = callable(getattr(main, "reset_queue", None))
        self._warmup_takes_sample_weight = _accepts_sample_weight(warmup_loss)
        if not self._has_temperature:
            warn(
                f"LossWarmupWrapper: main_loss ({type(main_loss).__name__}) has no `temperature` attribute; "
                "temperature scheduling will be skipped."
            )
        if reset_queue_each_epoch and not self._can_reset:
            warn(
                f"LossWarmupWrapper: reset_queue_each_epoch=True but main_loss ({type(main_loss).__name__}) has no "
                "reset_queue() method; no queue will be reset."
            )
        if self._step_mode and blend_epochs != 0:
            warn(
                f"LossWarmupWrapper: blend_epochs={blend_epochs} is ignored in step mode (warmup_steps given); "
                "use blend_steps for a blend."
            )

        self._epoch = 0
        self._global_step = 0
        self._switch_step: int | None = None
        self._batch_hook_seen = False
        self._epoch_hook_seen = False
        self._warmup_forwards = 0
        self._warn_once = WarnOnce()
        # What forward reads (derived from the position by _refresh, never saved): which losses
        # run, and the blend weights (1 - w, w) as 0-d float64 CPU tensors, so that compiled code
        # gets new values without a recompile.
        self._runs = (True, False)
        self._blend_weights = (torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64))
        if self._length(warmup=True) == 0:
            # No warm-up: the main phase (and the temperature schedule) starts at step 0.
            self._switch_step = 0
            self._set_temperature(self.temp_start)
        self._refresh()

    def extra_repr(self) -> str:
        """The schedule's hyperparameters (those of the active mode) for ``repr``."""
        names = ["warmup_steps", "blend_steps"] if self._step_mode else ["warmup_epochs", "blend_epochs"]
        names += ["final_main_weight", "temp_start", "temp_end", "temp_decay_steps", "reset_queue_each_epoch"]
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in names)

    # ------------------------------------------------------------------ phases

    def _length(self, *, warmup: bool) -> int:
        if self._step_mode:
            return self.warmup_steps if warmup else self.blend_steps
        return self.warmup_epochs if warmup else self.blend_epochs

    @property
    def _position(self) -> int:
        return self._global_step if self._step_mode else self._epoch

    @property
    def _schedule(self) -> PhaseSchedule:
        """The schedule's arithmetic, from the current hyperparameters of the active mode."""
        return PhaseSchedule(
            warmup=self._length(warmup=True),
            blend=self._length(warmup=False),
            final_main_weight=self.final_main_weight,
            temp_start=self.temp_start,
            temp_end=self.temp_end,
            temp_decay_steps=self.temp_decay_steps,
        )

    def _refresh(self) -> None:
        """Recompute what ``forward`` reads from the position (after every hook and restore)."""
        schedule, position = self._schedule, self._position
        self._runs = schedule.runs(position)
        point = schedule.at(position)
        values = (point.warmup_weight, point.main_weight)
        if tuple(float(t) for t in self._blend_weights) != values:  # new tensors: never mutated in place
            self._blend_weights = tuple(torch.tensor(v, dtype=torch.float64) for v in values)  # type: ignore[assignment]

    @property
    def in_warmup(self) -> bool:
        """Whether the warm-up loss alone is in use (epoch or last global step ``< W``)."""
        return self._position < self._length(warmup=True)

    @property
    def in_blend(self) -> bool:
        """Whether both losses are being blended with a growing main weight (``W <= x < W + B``)."""
        return self._schedule.phase(self._position) is Phase.BLEND

    @property
    def main_weight(self) -> float:
        """Weight ``w`` of the main loss: 0 in warm-up, ``f (x - W + 1) / (B + 1)`` in the blend, then ``f``."""
        return self._schedule.main_weight(self._position)

    @property
    def current_temperature(self) -> float | None:
        """``main_loss.temperature`` as a float, or ``None`` when the main loss has none."""
        temperature = getattr(self.main_loss, "temperature", None)
        return None if temperature is None else float(temperature)

    # ------------------------------------------------------------------ hooks

    def on_train_epoch_start(self, epoch: int) -> None:
        """Call at the start of every training epoch.

        Records the epoch (which drives the phases in epoch mode). After the warm-up, in epoch
        mode, the first call arms the latch for the next :meth:`on_train_batch_start`; with
        ``reset_queue_each_epoch`` every call after the warm-up empties the main loss's queue.

        Args:
            epoch: The epoch about to start (0-based).
        """
        self._epoch = as_position("epoch", epoch)
        self._epoch_hook_seen = True
        self._refresh()
        if self.in_warmup:
            return
        if not self._step_mode and self._switch_step is None:
            self._switch_step = _ARMED
        if self.reset_queue_each_epoch:
            self._reset_main_queue()

    def on_train_batch_start(self, global_step: int) -> None:
        """Call before every training batch with the global step (optimizer steps so far).

        In step mode the step drives the phases. At the first batch after the warm-up the
        wrapper latches (temperature ``temp_start``, queue emptied); later batches set the
        geometrically decayed temperature.

        Args:
            global_step: The global step of this batch.
        """
        global_step = as_position("global_step", global_step)
        self._batch_hook_seen = True
        if self._step_mode:
            self._global_step = global_step
            self._refresh()
            if not self.in_warmup and self._switch_step is None:
                self._switch_step = _ARMED
        if self.in_warmup or self._switch_step is None:
            return
        if self._switch_step == _ARMED:
            self._switch_step = global_step
            self._set_temperature(self.temp_start)
            self._reset_main_queue()
            return
        self._set_temperature(self._schedule.temperature(global_step - self._switch_step))

    def _set_temperature(self, value: float) -> None:
        if self._has_temperature:
            main: Any = self.main_loss
            main.temperature = value

    def _reset_main_queue(self) -> None:
        if self._can_reset:
            main: Any = self.main_loss
            main.reset_queue()

    # ------------------------------------------------------------------ forward

    def forward(self, logits: Tensor, targets: Tensor, **kwargs: Any) -> Any:
        """Compute the loss of the current phase.

        Args:
            logits: Passed positionally to both losses.
            targets: Passed positionally to both losses.
            **kwargs: Forwarded to ``main_loss`` (e.g. ``iid_mask``, ``return_per_class``,
                ``return_diagnostics``, ``sample_weight``). The warm-up loss only ever gets
                ``sample_weight``, and only when it accepts it.

        Returns:
            In the warm-up, whatever ``warmup_loss`` returns. Afterwards, what ``main_loss``
            returns, with its scalar (the first element of a tuple) replaced by
            ``(1 - w) * warmup + w * main`` while ``w < 1``; the other elements of a tuple
            (per-class values, diagnostics) are the main loss's, unblended. So with
            ``return_per_class``/``return_diagnostics`` the result is a scalar during the
            warm-up and a tuple after it (0.6's behaviour; see the class docstring).

        Raises:
            ValueError: An element-wise warm-up loss (:data:`ELEMENTWISE_WARMUP_LOSSES`) gets
                ``[N]`` targets that are not labels in ``[0, 1]`` (``C == 1``) or class ids in
                ``[0, C)``.
        """
        # Only `_runs` (changes at the phase boundaries) and the 0-d weight tensors are read here,
        # not the step or epoch counters: under torch.compile a new step is no new frame.
        runs_warmup, runs_main = self._runs
        if not runs_main:
            hook_seen = self._batch_hook_seen if self._step_mode else self._epoch_hook_seen
            if self.training and not hook_seen:
                self._warmup_forwards += 1
                if self._warmup_forwards >= _HOOK_GRACE:
                    self._warn_once("missing_hook", self._missing_hook_message())
            return self._warmup_forward(logits, targets, kwargs)
        if not self._batch_hook_seen and self._has_temperature:
            self._warn_once(
                "batch_hook",
                "LossWarmupWrapper: the main loss is in use but on_train_batch_start(global_step) has never been "
                "called, so the temperature schedule never runs (and the queue is not reset at the switch). Call it "
                "before every training batch. (Shown once.)",
            )
        if not runs_warmup:
            return self.main_loss(logits, targets, **kwargs)
        warmup_out = self._warmup_forward(logits, targets, kwargs)
        if isinstance(warmup_out, tuple):
            warmup_out = warmup_out[0]
        main_out = self.main_loss(logits, targets, **kwargs)
        warmup_weight, main_weight = self._blend_weights
        if isinstance(main_out, tuple):
            return (_scaled(warmup_weight, warmup_out) + _scaled(main_weight, main_out[0]), *main_out[1:])
        return _scaled(warmup_weight, warmup_out) + _scaled(main_weight, main_out)

    def _missing_hook_message(self) -> str:
        if self._step_mode:
            hook, length, position = "on_train_batch_start(global_step)", f"warmup_steps={self.warmup_steps}", "step"
        else:
            hook, length, position = "on_train_epoch_start(epoch)", f"warmup_epochs={self.warmup_epochs}", "epoch"
        return (
            f"LossWarmupWrapper: {self._warmup_forwards} training forward calls ({length}) without any {hook} "
            f"call; the {position} stays at 0, so the warm-up never ends. Call {hook} at the start of every "
            f"{'batch' if self._step_mode else 'epoch'} (with Lightning: "
            "imbalanced_losses.integrations.lightning.WarmupCallback). (Shown once.)"
        )

    def _warmup_forward(self, logits: Tensor, targets: Tensor, kwargs: Mapping[str, Any]) -> Any:
        if isinstance(self.warmup_loss, ELEMENTWISE_WARMUP_LOSSES):
            ignore = self.warmup_loss.ignore_index if isinstance(self.warmup_loss, SigmoidFocalLoss) else None
            targets = _elementwise_targets(logits, targets, type(self.warmup_loss).__name__, ignore)
        if "sample_weight" in kwargs and self._warmup_takes_sample_weight:
            return self.warmup_loss(logits, targets, sample_weight=kwargs["sample_weight"])
        return self.warmup_loss(logits, targets)

    # ------------------------------------------------------------------ persistence

    def get_extra_state(self) -> dict[str, Any]:
        """The schedule position, saved under the state-dict key ``_extra_state``.

        Returns:
            ``{"epoch", "global_step", "switch_step", "batch_hook_seen", "temperature"}``
            (plain Python values; ``temperature`` is ``None`` when the main loss has none).
        """
        return {
            "epoch": self._epoch,
            "global_step": self._global_step,
            "switch_step": self._switch_step,
            "batch_hook_seen": self._batch_hook_seen,
            "temperature": self.current_temperature,
        }

    def set_extra_state(self, state: Any) -> None:
        """Restore the schedule position saved by :meth:`get_extra_state`.

        Keys missing from ``state`` keep their current values; a saved temperature is
        re-applied to the main loss.

        Args:
            state: The ``_extra_state`` dict of a checkpoint.

        Raises:
            TypeError: ``state`` is not a mapping.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"`state` must be a dict (the `_extra_state` entry), got {type(state).__name__}.")
        if "epoch" in state:
            self._epoch = int(state["epoch"])
        if "global_step" in state:
            self._global_step = int(state["global_step"])
        if "switch_step" in state:
            switch = state["switch_step"]
            self._switch_step = None if switch is None else int(switch)
        if "batch_hook_seen" in state:
            self._batch_hook_seen = bool(state["batch_hook_seen"])
        temperature = state.get("temperature")
        if temperature is not None:
            self._set_temperature(float(temperature))
        self._refresh()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "_runs" not in self.__dict__:  # pickled before forward read derived tensors
            self._blend_weights = (torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64))
            self._refresh()


def _elementwise_targets(logits: Any, targets: Any, loss_name: str, ignore_index: float | None = None) -> Any:
    """The ranking losses' targets in the layout of an element-wise loss: shaped and typed like ``logits``.

    ``[N]``/``[N, 1]`` targets against ``[N, C]`` logits become float ``[N, 1]`` labels
    (``C == 1``) or a float one-hot ``[N, C]`` (``C > 1``); a row equal to ``ignore_index`` (the
    loss's own, when it has one) becomes a row of ``ignore_index``. Integer or bool targets
    already of the logits' shape are cast to their dtype. Anything else is returned as it is,
    for the loss to report.

    Raises:
        ValueError: ``[N]`` targets outside ``[0, 1]`` (``C == 1``) or not class ids in ``[0, C)``
            (``ignore_index`` apart).
    """
    if not isinstance(logits, Tensor) or not isinstance(targets, Tensor) or not logits.is_floating_point():
        return targets
    if targets.shape == logits.shape:
        return targets if targets.is_floating_point() else targets.to(logits.dtype)
    if logits.ndim != 2 or tuple(targets.shape) not in ((logits.shape[0],), (logits.shape[0], 1)):
        return targets
    n, c = logits.shape
    labels = targets.detach().reshape(n)
    if c == 1:
        bad = ~((labels >= 0) & (labels <= 1))  # NaN fails both comparisons
        want, layout = "labels in [0, 1]", f"float [{n}, 1] labels"
    else:
        bad = ~((labels >= 0) & (labels < c))
        if labels.is_floating_point():
            bad |= labels != labels.floor()
        want, layout = f"class ids in [0, {c})", f"a float one-hot [{n}, {c}]"
    ignored = None if ignore_index is None else labels == ignore_index
    if ignored is not None:
        bad &= ~ignored
        want += f" or ignore_index={ignore_index!r}"
    if bool(bad.any()):
        raise ValueError(
            f"`targets` must be {want} for the element-wise warm-up loss {loss_name} (the wrapper passes "
            f"them as {layout}), got value(s) {torch.unique(labels[bad])[:8].tolist()}."
        )
    if c == 1:
        return labels.to(logits.dtype).unsqueeze(1)
    if ignored is None or ignore_index is None:
        return torch.nn.functional.one_hot(labels.long(), c).to(logits.dtype)
    one_hot = torch.nn.functional.one_hot(labels.masked_fill(ignored, 0).long(), c).to(logits.dtype)
    return one_hot.masked_fill(ignored.unsqueeze(1), ignore_index)


def _accepts_sample_weight(loss: nn.Module) -> bool:
    """Whether ``loss.forward`` declares a ``sample_weight`` parameter or ``**kwargs``."""
    try:
        params = inspect.signature(loss.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "sample_weight" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _scaled(weight: Tensor, value: Tensor) -> Tensor:
    """``weight * value`` for a 0-d float64 CPU ``weight``, as if ``weight`` were a Python float.

    Same dtype and same rounding as ``float(weight) * value``: the scalar enters the product in
    the op-math precision of ``value``'s dtype (float32 for half types) and the product is
    rounded to that dtype. The CPU scalar mixes with CUDA values without a synchronisation.
    """
    # torch.result_type(value, 1.0) and the op-math dtype, without ops that break a Dynamo graph
    dtype = value.dtype if value.is_floating_point() or value.is_complex() else torch.get_default_dtype()
    opmath = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    return (weight.to(opmath) * value).to(dtype)


#: Kept for imports of the former name.
_as_index = as_position
