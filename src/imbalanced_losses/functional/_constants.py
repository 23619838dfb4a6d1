"""Small constant tensors (levels, weights, indices), made once per device and then reused.

Building a constant from host values at every call is a blocking host-to-device copy on a GPU
(a synchronisation). Under ``torch.compile`` a fresh constant is made (the tracer folds it), and
under inference mode too (an inference tensor may not enter a later autograd graph).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor


def device_constant(values: tuple[Any, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``torch.tensor(values, dtype=dtype, device=device)``, cached per key: never write to it.

    ``values`` is a tuple of numbers, or of equal-length tuples of numbers (a 2-D constant).
    """
    if torch.compiler.is_compiling() or torch.is_inference_mode_enabled():
        return torch.tensor(values, dtype=dtype, device=device)
    return _cached(values, dtype, device)


@functools.lru_cache(maxsize=256)
def _cached(values: tuple[Any, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


def device_arange(n: int, device: torch.device) -> Tensor:
    """``torch.arange(n, device=device)``, cached per ``(n, device)``: never write to it."""
    if torch.compiler.is_compiling() or torch.is_inference_mode_enabled():
        return torch.arange(n, device=device)
    return _cached_arange(n, device)


@functools.lru_cache(maxsize=16)
def _cached_arange(n: int, device: torch.device) -> Tensor:
    return torch.arange(n, device=device)
