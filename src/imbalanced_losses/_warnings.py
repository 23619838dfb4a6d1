"""Warnings that point at the user's line, at most once per loss instance."""

from __future__ import annotations

import os
import sys
import warnings

import torch

_LIB_DIR = os.path.dirname(os.path.abspath(__file__))
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the first frame outside this package and torch."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not (path.startswith(_LIB_DIR) or path.startswith(_TORCH_DIR)):
            return level
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def warn(message: str) -> None:
    """Emit a :class:`UserWarning` attributed to the user's calling line."""
    warnings.warn(message, UserWarning, stacklevel=user_stacklevel())


class WarnOnce:
    """Per-instance memory of which warnings were already shown.

    Kept as a plain attribute (not in the state dict): a reloaded loss may warn again.
    """

    def __init__(self) -> None:
        self.shown: set[str] = set()

    def __call__(self, key: str, message: str) -> None:
        if key in self.shown:
            return
        self.shown.add(key)
        warnings.warn(message, UserWarning, stacklevel=user_stacklevel())
