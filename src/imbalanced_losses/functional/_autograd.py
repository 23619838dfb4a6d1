"""Autograd helpers of the kernels whose Functions form their gradient in the forward pass."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch.autograd.function import once_differentiable


def once_differentiable_backward(fn: Callable[..., Any]) -> Callable[..., Any]:
    """:func:`torch.autograd.function.once_differentiable`, without its ``no_grad`` context where grad mode is off.

    A plain ``backward()`` runs with grad mode off: the context would change nothing, and it
    costs as much as a small operation. Under ``create_graph=True`` the wrapped form runs, so a
    second derivative through the stored gradient raises as before.
    """
    once = once_differentiable(fn)

    @functools.wraps(fn)
    def backward(ctx: Any, *grads: Any) -> Any:
        return once(ctx, *grads) if torch.is_grad_enabled() else fn(ctx, *grads)

    return backward
