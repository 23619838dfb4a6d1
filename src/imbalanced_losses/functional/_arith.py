"""Elementary tensor arithmetic shared by every loss: computation dtype, grouped sums, safe division."""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

#: Smallest positive normal double: half of it is subnormal, or 0 where subnormals are flushed.
_SMALLEST_NORMAL = sys.float_info.min


_FLOAT32 = struct.Struct("f")


def _round_float32(value: float) -> float:
    """``value`` rounded to the nearest float32 (ties to even), as a Python float."""
    return float(_FLOAT32.unpack(_FLOAT32.pack(value))[0])


#: Rounding of a Python float to each dtype whose arithmetic a host road reproduces: a float32
#: ``+ - * /`` of float32 values equals the double result rounded once to float32.
HOST_ROUNDING: dict[torch.dtype, Callable[[float], float]] = {torch.float32: _round_float32, torch.float64: float}


def host_safe_reciprocal(value: float, dtype: torch.dtype) -> float:
    """:func:`safe_reciprocal` of a number as a tensor of ``dtype`` holding it forms it: 1 where ``value <= 0``.

    The value is converted to the dtype first (a count above 2^24 rounds in float32), then
    inverted with one rounding (:data:`HOST_ROUNDING`).
    """
    rounded = HOST_ROUNDING[dtype]
    return rounded(1.0 / rounded(value)) if value > 0 else 1.0


def compute_dtype(logits: Tensor) -> torch.dtype:
    """Float32 for half-precision logits, otherwise the logits' own dtype."""
    return torch.float32 if logits.dtype in (torch.float16, torch.bfloat16) else logits.dtype


def class_sum(values: Tensor, cls: Tensor, num_classes: int) -> Tensor:
    """``[C]`` sums of ``values [P]`` grouped by ``cls [P]``."""
    return values.new_zeros(num_classes).index_add(0, cls, values)


def safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with zero denominators replaced by 1 (keeps gradients finite)."""
    return num / torch.where(den > 0, den, 1.0)


def safe_reciprocal(den: Tensor, positive: Tensor | None = None) -> Tensor:
    """``safe_divide(ones_like(den), den)`` in one operation fewer (``1 / x`` rounds the same as ``x.reciprocal()``).

    ``positive`` may pass ``den > 0`` when the caller has it already.
    """
    # masked_fill takes the 1 as a scalar (where would first make it a tensor: one more operation)
    return den.masked_fill(den <= 0 if positive is None else ~positive, 1.0).reciprocal()


class FlushDenormals:
    """Context in which this thread's CPU float arithmetic flushes subnormal numbers to zero.

    The pair and threshold kernels evaluate sigmoids and exponentials of differences that lie
    hundreds of temperatures apart; their results there are subnormal (below ``1.2e-38`` in
    float32), and x86 CPUs handle subnormal operands and results many times slower (a sigmoid
    of a 1,024 x 10 block: ~26 us instead of ~5 us). Inside the context such values are 0.
    Only numbers below the smallest normal one change: a sum holding any term of ordinary size
    (a sigmoid of 1/2, a count, a weight) cannot see them, so the losses are unchanged, and a
    gradient entry can change only where it is itself tiny (below 1e-28 wherever we looked). The
    caller's setting (:func:`torch.set_flush_denormal`, which has no getter) is read from the
    host's own float arithmetic, which the same control register governs, and restored on
    exit. ``enabled=False`` (a GPU tensor, a compiled region) does nothing.
    """

    __slots__ = ("_restore",)

    def __init__(self, enabled: bool) -> None:
        self._restore = enabled

    def __enter__(self) -> None:
        already = _SMALLEST_NORMAL * 0.5 == 0.0
        self._restore = self._restore and not already and torch.set_flush_denormal(True)

    def __exit__(self, *exc: Any) -> None:
        if self._restore:
            torch.set_flush_denormal(False)
