"""Elementary tensor arithmetic shared by every loss: computation dtype, grouped sums, safe division."""

from __future__ import annotations

import torch
from torch import Tensor


def compute_dtype(logits: Tensor) -> torch.dtype:
    """Float32 for half-precision logits, otherwise the logits' own dtype."""
    return torch.float32 if logits.dtype in (torch.float16, torch.bfloat16) else logits.dtype


def class_sum(values: Tensor, cls: Tensor, num_classes: int) -> Tensor:
    """``[C]`` sums of ``values [P]`` grouped by ``cls [P]``."""
    return values.new_zeros(num_classes).index_add(0, cls, values)


def safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with zero denominators replaced by 1 (keeps gradients finite)."""
    return num / torch.where(den > 0, den, 1.0)
