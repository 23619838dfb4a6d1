"""Argument and input checks shared by every loss.

One error template everywhere: the message names the argument, what was expected and what
was received, e.g. ``"`temperature` must be positive (a finite number >= 1e-20), got -1.0."``.
Bad values and shapes raise :class:`ValueError`; wrong Python types or tensor dtypes raise
:class:`TypeError`. Where imbalanced-losses 0.6 raised or warned with a recognisable phrase
("must be positive", "invalid reduction", "alpha ... beta", "Expected logits [N, C]", ...),
the message keeps it (see ``tests/test_error_phrases_06.py``).

Checks that need a host synchronisation (finiteness of the logits, the range of the target
ids) run only when ``validate_args`` is true; shape and dtype checks always run.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")
INTERPOLATIONS = ("linear", "lower", "higher", "nearest", "midpoint")

#: The smallest temperature accepted by every ranking loss (module and functional forms).
#: The losses compute in float32 at least (half precision is promoted) and divide score
#: differences by the temperature: the slope of a tied pair is ``1 / (4 tau)``, and pAUC's
#: effective temperature is ``temperature * dispersion`` with a dispersion above ``1e-12``.
#: From ``1e-20`` up, ``1 / tau`` stays below ``1e32`` (pAUC) or ``1e20`` in float32 (max
#: ``3.4e38``): room for sums of a million slopes. Below it (e.g. ``1e-45``, a float32
#: subnormal, or ``1e-39``, whose reciprocal overflows) values or gradients turn into
#: ``inf``/``nan``. In logit units ``1e-20`` is already a hard step: nothing is lost.
TEMPERATURE_MIN = 1e-20


#: Arguments that imbalanced-losses 0.6 reported as "must be positive" when ``<= 0``; their
#: messages keep the phrase (the other ``> 0`` arguments read "must be a finite number in (0, inf)").
_POSITIVE_06 = frozenset({"temperature", "temp_start", "temp_end"})


class ArgumentTypeError(TypeError, ValueError):
    """A hyperparameter of the wrong Python type.

    A :class:`TypeError` by our error convention, and also a :class:`ValueError` because the
    losses we are drop-in compatible with raised ``ValueError`` for some of these (e.g.
    ``n_knots=2.0``): code catching either keeps working.
    """


def _fmt(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return repr(value)


def check_int(name: str, value: Any, *, minimum: int | None = None, allow_none: bool = False) -> None:
    """Require a plain Python ``int`` (not ``bool``), optionally ``>= minimum``."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"`{name}` must be an int, got {_fmt(value)} of type {type(value).__name__}.")
    if minimum is not None and value < minimum:
        if minimum == 1:  # "must be positive": 0.6's phrase for num_classes and max_pool_size
            raise ValueError(f"`{name}` must be positive (an int >= 1), got {value!r}.")
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")


def check_float(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = True,
    high_open: bool = True,
    constraint: str | None = None,
) -> float:
    """Require a finite real number inside an interval and return it as ``float``.

    ``low_open``/``high_open`` choose open or closed interval ends; ``None`` means unbounded.
    ``constraint`` (e.g. ``"0 <= alpha < beta <= 1"``) is quoted in the error message. The
    arguments of :data:`_POSITIVE_06` are reported as "must be positive" (0.6's phrase). A
    value named ``temperature`` must also be at least :data:`TEMPERATURE_MIN`: every ranking
    loss checks its temperature here (constructors, each module call, the functional forms).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, Tensor) and value.numel() == 1 and value.is_floating_point():
            value = float(value.item())
        else:
            raise ArgumentTypeError(
                f"`{name}` must be a real number, got {_fmt(value)} of type {type(value).__name__}."
            )
    out = float(value)
    lo_txt = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi_txt = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
    bad = not math.isfinite(out)
    if low is not None:
        bad = bad or (out <= low if low_open else out < low)
    if high is not None:
        bad = bad or (out >= high if high_open else out > high)
    if bad:
        if name in _POSITIVE_06 and low == 0.0 and low_open and high is None:
            least = f">= {TEMPERATURE_MIN:g}" if name == "temperature" else "> 0"
            raise ValueError(f"`{name}` must be positive (a finite number {least}), got {value!r}.")
        extra = f" ({constraint})" if constraint else ""
        raise ValueError(f"`{name}` must be a finite number in {lo_txt}, {hi_txt}{extra}, got {value!r}.")
    if name == "temperature" and 0.0 < out < TEMPERATURE_MIN:
        raise ValueError(
            f"`temperature` must be a finite number >= {TEMPERATURE_MIN:g} (smaller temperatures overflow "
            f"1 / temperature and the sigmoid slopes in float32), got {value!r}."
        )
    return out


def check_choice(name: str, value: Any, choices: Iterable[str]) -> None:
    """Require ``value`` to be one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        # "invalid reduction '<value>'": 0.6's phrase for the ranking losses
        what = f"an invalid reduction {value!r}" if name == "reduction" else repr(value)
        raise ValueError(f"`{name}` must be one of {choices}, got {what}.")


def check_bool(name: str, value: Any) -> None:
    """Require a Python ``bool``."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"`{name}` must be a bool, got {_fmt(value)} of type {type(value).__name__}.")


def check_optional_bool(name: str, value: Any) -> None:
    """Require ``None`` or a Python ``bool``."""
    if value is not None:
        check_bool(name, value)


def check_tensor(name: str, value: Any) -> Tensor:
    """Require a :class:`torch.Tensor`."""
    if not isinstance(value, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}.")
    return value


def check_logits(logits: Any, num_classes: int | None = None, name: str = "logits") -> Tensor:
    """Require floating-point scores ``name`` of shape ``[N, C]`` (``C == num_classes`` when given)."""
    logits = check_tensor(name, logits)
    if not logits.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {logits.dtype}.")
    if logits.ndim != 2 or (num_classes is not None and logits.shape[1] != num_classes):
        want = f"[N, {num_classes}]" if num_classes is not None else "[N, C]"
        if logits.ndim == 1 and num_classes in (None, 1):
            hint = f"binary scores of shape [N] need a class dim: pass `{name}.unsqueeze(1)`"
        elif logits.ndim > 2:
            hint = "flatten sequence dimensions first"
        else:
            hint = "one column per class"
        c_txt = f" with C={num_classes}" if num_classes is not None else ""
        raise ValueError(  # "Expected logits [N, C]": 0.6's phrase
            f"Expected {name} [N, C]{c_txt}: `{name}` must have shape {want} ({hint}), got shape {tuple(logits.shape)}."
        )
    return logits


def check_targets(targets: Any, n: int, num_classes: int = 1) -> Tensor:
    """Require targets of shape ``[N]`` (a trailing singleton ``[N, 1]`` is squeezed) or, multi-label, ``[N, C]``.

    A two-dimensional ``[N, C]`` target with ``C == num_classes > 1`` is a multi-hot matrix
    (see :func:`to_multi_hot`). Integer, bool and floating-point targets are accepted here;
    the values are checked later.
    """
    targets = check_tensor("targets", targets)
    if targets.ndim == 2 and targets.shape[1] == 1:
        targets = targets.squeeze(1)
    multi_label = targets.ndim == 2 and num_classes > 1 and tuple(targets.shape) == (n, num_classes)
    if not multi_label and (targets.ndim != 1 or targets.shape[0] != n):
        multi = f" or [{n}, {num_classes}] (multi-hot)" if num_classes > 1 else ""
        raise ValueError(
            f"`targets` must have shape [{n}] (or [{n}, 1]){multi} to match `logits`, got {tuple(targets.shape)}."
        )
    if targets.is_complex():
        raise TypeError(f"`targets` must be an integer, bool or float tensor, got dtype {targets.dtype}.")
    return targets


def to_multi_hot(targets: Tensor, *, ignore_index: int, validate_args: bool) -> Tensor:
    """Convert a multi-hot ``[N, C]`` target to ``int64`` cells in ``{0, 1, ignore_index}``.

    Each cell is one row's label for one class: ``1`` positive, ``0`` negative,
    ``ignore_index`` left out of that class only. With ``validate_args`` any other value
    raises; without it, every non-zero cell other than ``ignore_index`` counts as positive.
    """
    if targets.dtype == torch.bool:
        return targets.long()
    if validate_args and targets.numel() > 0:
        t = targets.detach()
        bad = (t != 0) & (t != 1) & (t != ignore_index)
        if bool(bad.any()):
            vals = [float(v) if t.is_floating_point() else int(v) for v in torch.unique(t[bad])[:8].tolist()]
            raise ValueError(
                f"Multi-label `targets` [N, C] must hold 0, 1 or ignore_index={ignore_index} in every cell, "
                f"got value(s) {vals}."
            )
    ignored = targets == ignore_index
    return (targets != 0).long().masked_fill(ignored, ignore_index)


def check_row_vector(name: str, value: Any, n: int) -> Tensor | None:
    """Require ``None`` or a tensor of shape ``[N]``."""
    if value is None:
        return None
    value = check_tensor(name, value)
    if value.ndim != 1 or value.shape[0] != n:
        raise ValueError(f"`{name}` must have shape [{n}] to match `logits`, got {tuple(value.shape)}.")
    return value


def check_sample_weight(sample_weight: Any, n: int, *, validate_args: bool) -> Tensor | None:
    """Validate a per-row weight ``[N]``: finite and non-negative. Returns it detached."""
    w = check_row_vector("sample_weight", sample_weight, n)
    return None if w is None else check_weight_values(w, validate_args=validate_args)


def check_weight_values(w: Tensor, *, validate_args: bool, name: str = "sample_weight") -> Tensor:
    """Require a real-valued weight tensor ``name`` of any shape, finite and non-negative. Returns it detached.

    The value checks (one host synchronisation) run only when ``validate_args`` is true.
    """
    if not (w.is_floating_point() or w.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"`{name}` must be a real-valued tensor, got dtype {w.dtype}.")
    w = w.detach()
    if validate_args and w.numel() > 0:
        if w.is_floating_point() and not bool(torch.isfinite(w).all()):
            raise ValueError(f"`{name}` must be finite, got NaN or inf.")
        w_min = w.min()
        if bool(w_min < 0):
            raise ValueError(f"`{name}` must be non-negative, got min {w_min.item()!r}.")
    return w


def check_finite_logits(logits: Tensor, name: str = "logits") -> None:
    """Raise if the logits (argument ``name``) contain NaN or +-inf (one host synchronisation).

    A finite sum proves every entry finite (a NaN or an infinity makes the sum NaN or
    infinite) in one reduction instead of two; only a non-finite sum, which finite values can
    also reach by overflow, takes the exact elementwise test.
    """
    if logits.numel() == 0 or math.isfinite(logits.detach().sum().item()):
        return
    if not bool(torch.isfinite(logits).all()):  # boolean ops record no graph
        n_bad = int((~torch.isfinite(logits.detach())).sum())
        raise ValueError(
            f"`{name}` must be finite, got {n_bad} NaN or infinite value(s); "
            "check the model output (e.g. a diverged step or an overflow under float16)."
        )


def to_class_ids(targets: Tensor, *, num_classes: int, ignore_index: int, validate_args: bool) -> Tensor:
    """Convert multi-class targets to ``int64`` class ids and check their range.

    Floating-point targets are accepted when every value is integral. Ids must lie in
    ``[0, num_classes)`` or equal ``ignore_index``.
    """
    if targets.dtype == torch.bool:
        raise TypeError(
            f"`targets` must hold integer class ids when num_classes={num_classes} > 1, got dtype torch.bool."
        )
    if targets.is_floating_point():
        if validate_args and targets.numel() > 0:
            t = targets.detach()
            if not bool(torch.isfinite(t).all()) or not bool((t == t.round()).all()):
                raise ValueError(
                    "`targets` must hold integral class ids for multi-class losses, "
                    f"got a {targets.dtype} tensor with fractional or non-finite values."
                )
        targets = targets.long()
    elif targets.dtype != torch.int64:
        targets = targets.long()
    if validate_args and targets.numel() > 0:
        bad = (targets != ignore_index) & ((targets < 0) | (targets >= num_classes))
        if bool(bad.any()):
            vals = torch.unique(targets[bad])[:8].tolist()
            raise ValueError(  # "targets contain class ids outside [0, C)": 0.6's phrase
                f"`targets` must be class ids in [0, {num_classes}) or ignore_index={ignore_index}, "
                f"got out-of-range value(s) {vals} (targets contain class ids outside [0, {num_classes}))."
            )
    return targets


def binary_offenders(targets: Tensor, ignore_index: int) -> list[float]:
    """Values (up to 8) of binary targets that are neither 0 nor 1 nor ``ignore_index``."""
    if targets.numel() == 0 or targets.dtype == torch.bool:
        return []
    if not targets.is_floating_point() and binary_range(targets):  # integers in [0, 1]: only 0 and 1
        return []
    t = targets.detach()
    bad = (t != 0) & (t != 1) & (t != ignore_index)
    if not bool(bad.any()):
        return []
    return [float(v) if t.is_floating_point() else int(v) for v in torch.unique(t[bad])[:8].tolist()]


def binary_range(targets: Tensor) -> bool:
    """Whether the non-empty, non-bool ``targets`` all lie in ``[0, 1]`` (one host synchronisation).

    For integer targets it means every value is 0 or 1: a cheap first test for
    :func:`binary_offenders` (one ``aminmax`` instead of the five comparisons of the exact
    check, which only runs when this one fails).
    """
    low, high = torch.aminmax(targets.detach() if targets.requires_grad else targets)
    return low.item() >= 0 and high.item() <= 1  # host comparisons: no further tensor operation
