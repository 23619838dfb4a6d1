"""Validation of class counts and class priors, shared by the long-tail losses.

Counts and priors are passed in, never computed inside a loss, so the losses stay pure
functions of their arguments. An empty class (count 0) would put ``log 0`` or ``1 / 0`` into
a loss: its count is clamped to 1, with a warning.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._warnings import warn as _warn

#: A warning sink ``warn(key, message)``; modules pass their warn-once object.
Warn = Callable[[str, str], None]

#: How far the priors may sum from 1 (they are renormalised within it).
PRIOR_SUM_TOLERANCE = 1e-3


def _warn_always(key: str, message: str) -> None:
    _warn(message)


def _as_vector(name: str, value: Any) -> Tensor:
    """A ``[C]`` float64 tensor from a tensor or a sequence of real numbers (``TypeError`` otherwise)."""
    if isinstance(value, Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"`{name}` must be a real-valued [C] tensor, got dtype {value.dtype}.")
        out = value.detach().to(dtype=torch.float64, copy=True)
    elif isinstance(value, Sequence) and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value):
        out = torch.tensor([float(v) for v in value], dtype=torch.float64)
    else:
        raise TypeError(f"`{name}` must be a [C] tensor or a sequence of numbers, got {type(value).__name__}.")
    if out.ndim != 1 or out.shape[0] == 0:
        raise ValueError(f"`{name}` must have shape [C] with C >= 1 (one entry per class), got {tuple(out.shape)}.")
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"`{name}` must be finite, got {out.tolist()}.")
    return out


def _check_length(name: str, values: Tensor, num_classes: int | None) -> None:
    if num_classes is not None and values.shape[0] != num_classes:
        raise ValueError(f"`{name}` must have one entry per class (C={num_classes}), got {values.shape[0]} entries.")


def check_class_counts(
    class_counts: Any, *, num_classes: int | None = None, name: str = "class_counts", warn: Warn = _warn_always
) -> Tensor:
    """Validate per-class counts; returns them as a ``[C]`` float64 tensor with empty classes clamped to 1.

    Args:
        class_counts: ``[C]`` non-negative counts (a tensor or a sequence of numbers).
        num_classes: The expected ``C``, if known.
        name: The argument's name in error messages.
        warn: Called once with ``(key, message)`` when a count is 0.

    Raises:
        TypeError: Not a tensor or a sequence of real numbers.
        ValueError: Wrong shape or length, a negative or non-finite entry, or every count zero.
    """
    counts = _as_vector(name, class_counts)
    _check_length(name, counts, num_classes)
    if bool((counts < 0).any()):
        raise ValueError(f"`{name}` must be non-negative, got {counts.tolist()}.")
    if not bool((counts > 0).any()):
        raise ValueError(f"`{name}` must have at least one class with a count > 0, got all zeros.")
    empty = (counts == 0).nonzero().squeeze(1).tolist()
    if empty:
        warn(
            "empty_class",
            f"`{name}` has empty classes {empty}: their count is taken as 1, so that their log prior "
            "and margin stay finite.",
        )
        counts = counts.clamp_min(1.0)
    return counts


def check_class_priors(class_priors: Any, *, num_classes: int | None = None, name: str = "class_priors") -> Tensor:
    """Validate class priors (positive, summing to 1 within :data:`PRIOR_SUM_TOLERANCE`); ``[C]`` float64.

    Raises:
        TypeError: Not a tensor or a sequence of real numbers.
        ValueError: Wrong shape or length, a non-positive or non-finite entry, or a sum away from 1.
    """
    priors = _as_vector(name, class_priors)
    _check_length(name, priors, num_classes)
    if bool((priors <= 0).any()):
        raise ValueError(
            f"`{name}` must be > 0 (use class_counts= to have empty classes clamped), got {priors.tolist()}."
        )
    total = float(priors.sum())
    if not math.isclose(total, 1.0, abs_tol=PRIOR_SUM_TOLERANCE):
        raise ValueError(f"`{name}` must sum to 1 (a probability per class), got a sum of {total:g}.")
    return priors / total


def log_priors(
    *,
    class_priors: Any = None,
    class_counts: Any = None,
    num_classes: int | None = None,
    warn: Warn = _warn_always,
    priors_name: str = "class_priors",
) -> Tensor:
    """``[C]`` float64 log class priors from exactly one of ``class_priors`` and ``class_counts``.

    ``priors_name`` is the priors' argument name in error messages.

    Raises:
        ValueError: Both or neither given, or either one invalid (see the checks above).
    """
    if (class_priors is None) == (class_counts is None):
        raise ValueError(
            f"Pass exactly one of `{priors_name}` (probabilities) and `class_counts` (counts per class), got "
            + ("both." if class_priors is not None else "neither.")
        )
    if class_priors is not None:
        return check_class_priors(class_priors, num_classes=num_classes, name=priors_name).log()
    counts = check_class_counts(class_counts, num_classes=num_classes, warn=warn)
    return (counts / counts.sum()).log()
