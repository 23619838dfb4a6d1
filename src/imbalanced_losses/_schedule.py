r"""The arithmetic of the loss schedules: a position (epoch or step) to phase, loss weights and temperature.

:class:`PhaseSchedule` is a frozen value with no torch state. The modules that schedule a loss
keep the position, the hooks and the side effects (setting a temperature, emptying a queue,
switching class weights on) and ask the schedule for the numbers:

* :class:`~imbalanced_losses.LossWarmupWrapper`: warm-up, blend and main phases, the blend
  weights of the two losses and the temperature decay after the latch;
* :class:`~imbalanced_losses.DeferredReweighting`: a warm-up of ``start_epoch`` epochs without
  class weights, then the main phase with them (no blend, no temperature).

With ``x`` the position, ``W`` the warm-up length, ``B`` the blend length and
``f = final_main_weight``, the main loss's weight is

.. math::
    w(x) = \begin{cases} 0 & x < W \\ f\,(x - W + 1) / (B + 1) & W \le x < W + B \\ f & x \ge W + B
    \end{cases}

and the warm-up loss's weight is ``1 - w``. ``s`` global steps after the latch the temperature is
:math:`\tau_{start} (\tau_{end} / \tau_{start})^{\min(1, s / S)}` with ``S = temp_decay_steps``
(a negative ``s`` extrapolates beyond ``temp_start``, as ``imbalanced-losses`` 0.6 does).

The arguments are not checked here: the modules check their own, with their own messages.
"""

from __future__ import annotations

import contextlib
import enum
import math
import operator
from dataclasses import dataclass
from typing import Any, NamedTuple

from ._validation import check_int

__all__ = ["Phase", "PhaseSchedule", "SchedulePoint", "as_position"]


class Phase(enum.Enum):
    """The phase of a schedule at a position."""

    #: Only the warm-up loss (``x < W``); for re-weighting: no class weights yet.
    WARMUP = "warmup"
    #: Both losses, the main one's weight growing (``W <= x < W + B``).
    BLEND = "blend"
    #: The main loss with weight ``final_main_weight`` (``x >= W + B``).
    MAIN = "main"


class SchedulePoint(NamedTuple):
    """What the schedule says at one position (see :meth:`PhaseSchedule.at`)."""

    phase: Phase
    warmup_weight: float  # 1 - w
    main_weight: float  # w
    temperature: float | None  # None before the latch


@dataclass(frozen=True)
class PhaseSchedule:
    """A warm-up, an optional linear blend, a main phase, and a geometric temperature decay.

    Positions are epochs or global steps, whichever the owner counts; the temperature counts
    global steps after the latch in both cases.

    Args:
        warmup: Warm-up length ``W`` (positions), ``>= 0``.
        blend: Blend length ``B`` (positions), ``>= 0``.
        final_main_weight: Weight ``f`` of the main loss after the blend, in ``(0, 1]``.
        temp_start: Temperature at the latch, ``> 0``.
        temp_end: Temperature ``temp_decay_steps`` steps after the latch, ``> 0``.
        temp_decay_steps: Length ``S`` of the decay in global steps, ``>= 1``.

    Example:
        >>> s = PhaseSchedule(warmup=2, blend=1, temp_start=0.5, temp_end=0.05, temp_decay_steps=10)
        >>> [s.phase(x).value for x in range(4)]
        ['warmup', 'warmup', 'blend', 'main']
        >>> [s.main_weight(x) for x in range(4)]
        [0.0, 0.0, 0.5, 1.0]
        >>> round(s.temperature(5), 4)  # halfway through the decay: the geometric mean
        0.1581
    """

    warmup: int
    blend: int = 0
    final_main_weight: float = 1.0
    temp_start: float = 1.0
    temp_end: float = 1.0
    temp_decay_steps: int = 1

    def phase(self, position: int) -> Phase:
        """The phase at ``position``."""
        if position < self.warmup:
            return Phase.WARMUP
        if self.blend > 0 and position < self.warmup + self.blend:
            return Phase.BLEND
        return Phase.MAIN

    def main_weight(self, position: int) -> float:
        """Weight ``w`` of the main loss at ``position`` (``0`` in the warm-up, ``f`` after the blend)."""
        phase = self.phase(position)
        if phase is Phase.WARMUP:
            return 0.0
        if phase is Phase.MAIN:
            return self.final_main_weight
        return (position - self.warmup + 1) / (self.blend + 1) * self.final_main_weight

    def runs(self, position: int) -> tuple[bool, bool]:
        """Which losses are computed at ``position``: ``(warm-up loss, main loss)``.

        The warm-up loss runs while ``w < 1``, the main loss from the end of the warm-up on.
        """
        weight = self.main_weight(position)
        return weight < 1.0, self.phase(position) is not Phase.WARMUP

    def temperature(self, steps: int) -> float:
        r"""The temperature ``steps`` global steps after the latch.

        :math:`\tau_{start} (\tau_{end} / \tau_{start})^{\min(1, s / S)}`; ``temp_end`` from
        ``s = S`` on.
        """
        progress = min(1.0, steps / self.temp_decay_steps)
        return self.temp_start * math.exp(progress * math.log(self.temp_end / self.temp_start))

    def at(self, position: int, steps_since_latch: int | None = None) -> SchedulePoint:
        """Phase, loss weights and temperature at ``position`` (temperature ``None`` before the latch)."""
        weight = self.main_weight(position)
        temperature = None if steps_since_latch is None else self.temperature(steps_since_latch)
        return SchedulePoint(self.phase(position), 1.0 - weight, weight, temperature)


def as_position(name: str, value: Any) -> int:
    """An epoch or step as a plain ``int`` (numpy and 0-d integer tensors accepted; bools rejected).

    Raises:
        TypeError: ``value`` is not integer-like.
    """
    if not isinstance(value, bool):
        with contextlib.suppress(TypeError):
            value = operator.index(value)
    check_int(name, value)
    return int(value)
