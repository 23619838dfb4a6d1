"""Shared pytest configuration: deterministic seeds, default dtype hygiene, and the test device.

Device tests. A test (or a module, through ``pytestmark = pytest.mark.usefixtures("on_device")``)
that uses the ``device`` fixture runs once per available device: on the CPU always, and also on
CUDA when ``torch.cuda.is_available()``. On a machine without CUDA nothing is generated for it
(the test count and ids stay those of a CPU-only run; ``tests/test_devices.py`` reports the
skip once). ``IMBALANCED_LOSSES_TEST_DEVICES=cuda`` (or ``cpu,cuda``) picks the devices by hand;
``cpu:0`` runs the CPU through the same rebinding as CUDA (a check of this machinery without a GPU).

``on_device`` runs an unchanged CPU test on the device: on ``cpu`` it does nothing at all (the
assertions are literally the CPU ones); on another device it rebinds, for the duration of the
test, the test module's imported library losses (functions and ``nn.Module`` classes) to versions
that move their tensor arguments to the device (differentiably: gradients flow back to the CPU
leaves the test built) and bring their results back to the CPU, and its ``torch`` to a view in
which ``torch.equal`` is a tolerance check (atomics make CUDA sums not bitwise repeatable) and
``torch.testing.assert_close`` accepts tensors on different devices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import os
import sys
import types
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _seed_and_threads() -> None:
    torch.manual_seed(0)


# ----------------------------------------------------------------------------------------------
# Devices
# ----------------------------------------------------------------------------------------------


def available_test_devices() -> list[str]:
    """The devices the ``device`` fixture runs on: ``cpu``, plus ``cuda`` when available."""
    chosen = os.environ.get("IMBALANCED_LOSSES_TEST_DEVICES")
    if chosen:
        return [d.strip() for d in chosen.split(",") if d.strip()]
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: the CUDA instance of a device-parametrised test")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    devices = available_test_devices()
    if "device" in metafunc.fixturenames and devices != ["cpu"]:
        params = [pytest.param(d, marks=pytest.mark.cuda) if d.startswith("cuda") else d for d in devices]
        metafunc.parametrize("device", params, indirect=True)


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    """The device of this instance of the test (``cpu`` unless parametrised by ``pytest_generate_tests``)."""
    name = getattr(request, "param", "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    return torch.device(name)


# ----------------------------------------------------------------------------------------------
# Running a CPU test on another device
# ----------------------------------------------------------------------------------------------

CPU = torch.device("cpu")
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
#: Tolerance of ``torch.equal`` on a non-CPU device, by dtype (relative, and absolute at scale 1).
EQUAL_TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor (also inside tuples, lists and dicts) moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(to_device(v, device) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(
            value, **{f.name: to_device(getattr(value, f.name), device) for f in dataclasses.fields(value) if f.init}
        )
    return value


def _user_frame() -> types.FrameType | None:
    """The innermost frame outside this file, contextlib and torch (the test's line)."""
    frame = sys._getframe(1)
    while frame is not None and (
        frame.f_code.co_filename in (__file__, contextlib.__file__) or frame.f_code.co_filename.startswith(_TORCH_DIR)
    ):
        frame = frame.f_back  # type: ignore[assignment]
    return frame


@contextlib.contextmanager
def _warnings_at_caller() -> Iterator[None]:
    """Re-emit the warnings of the body; those the library attributed to this file go to the test's line.

    The library points its warnings at the first frame outside itself and torch: with a shim in
    between, that frame is the shim's, not the test's.
    """
    frame, caught = _user_frame(), []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        _reemit(caught, frame)


def _reemit(caught: list[warnings.WarningMessage], frame: types.FrameType | None) -> None:
    for w in caught:
        if w.filename == __file__ and frame is not None:
            where: dict[str, Any] = frame.f_globals
            filename, lineno = frame.f_code.co_filename, frame.f_lineno
        else:
            where, filename, lineno = {}, w.filename, w.lineno
        registry = where.setdefault("__warningregistry__", {}) if where else None
        warnings.warn_explicit(w.message, w.category, filename, lineno, registry=registry)


def _on(fn: Any, device: torch.device) -> Any:
    """``fn`` run on ``device``: tensor arguments moved there, results moved back to the CPU."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with _warnings_at_caller():
            out = fn(*to_device(args, device), **to_device(kwargs, device))
        return to_device(out, CPU)

    return call


def _patch_class(cls: type[nn.Module], device: torch.device, monkeypatch: pytest.MonkeyPatch) -> None:
    """Until the test ends, instances of ``cls`` live on ``device`` and take and return CPU tensors.

    Patched in place (not subclassed), so ``isinstance``, ``is``, pickling and signatures see the
    library's own class.
    """
    init, forward = cls.__init__, cls.forward

    @functools.wraps(init)
    def patched_init(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        init(self, *to_device(args, device), **to_device(kwargs, device))
        if type(self) is cls:
            self.to(device)

    @functools.wraps(forward)
    def patched_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        self.to(device)  # a subclass's own buffers, or a module unpickled elsewhere
        with _warnings_at_caller():
            out = forward(self, *to_device(args, device), **to_device(kwargs, device))
        return to_device(out, CPU)

    monkeypatch.setattr(cls, "__init__", patched_init)
    monkeypatch.setattr(cls, "forward", patched_forward)


def _tolerant_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.detach().cpu(), b.detach().cpu()
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    tol = EQUAL_TOL.get(a.dtype, 1e-6)
    scale = float(b.abs().nan_to_num(0.0, 0.0, 0.0).max()) if b.numel() else 0.0
    return torch.allclose(a, b, rtol=tol, atol=tol * max(1.0, scale), equal_nan=True)


def _close(actual: Any, expected: Any, *args: Any, **kwargs: Any) -> None:
    kwargs.setdefault("check_device", False)
    torch.testing.assert_close(to_device(actual, CPU), to_device(expected, CPU), *args, **kwargs)


def _tolerant_torch() -> types.ModuleType:
    """A stand-in for the ``torch`` module of a test module (every attribute forwarded)."""

    class TolerantTorch(types.ModuleType):
        def __getattr__(self, name: str) -> Any:
            return getattr(torch, name)

    view = TolerantTorch("torch")
    view.equal = _tolerant_equal  # type: ignore[attr-defined]
    testing = types.ModuleType("torch.testing")
    testing.__dict__.update(vars(torch.testing))
    testing.assert_close = _close  # type: ignore[attr-defined]
    view.testing = testing  # type: ignore[attr-defined]
    return view


@pytest.fixture
def on_device(device: torch.device, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> torch.device:
    """Run the requesting test module's library calls on ``device`` (nothing at all on the CPU).

    ``cpu:0`` takes the full rebinding road on the CPU: a check of this machinery without a GPU.
    """
    if device == torch.device("cpu"):
        return device
    module = request.module
    for name, value in list(vars(module).items()):
        owner = getattr(value, "__module__", None) or ""
        if not owner.startswith("imbalanced_losses") or name.startswith("__"):
            continue
        if inspect.isclass(value) and issubclass(value, nn.Module):
            _patch_class(value, device, monkeypatch)
        elif inspect.isfunction(value):
            monkeypatch.setattr(module, name, _on(value, device))
    if getattr(module, "torch", None) is torch:
        monkeypatch.setattr(module, "torch", _tolerant_torch())
    return device
