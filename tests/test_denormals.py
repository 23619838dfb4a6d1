"""The pair and threshold kernels flush subnormal numbers on the CPU, and leave the caller's setting as it was.

Sigmoids and exponentials of score differences hundreds of temperatures apart are subnormal,
and x86 CPUs compute with subnormal numbers many times slower; the kernels therefore run with
:func:`torch.set_flush_denormal` on (``functional._arith.FlushDenormals``). That must change
nothing a caller can see: the losses are the same, gradients differ at most in entries below
float32's smallest normal number, and the caller's own flush setting survives the call.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import pytest
import torch

import imbalanced_losses as il
from imbalanced_losses.functional._arith import FlushDenormals

SUBNORMAL = sys.float_info.min * 0.5  # a double below the smallest normal one (0 when flushed)
TINY32 = torch.finfo(torch.float32).tiny

LOSSES: dict[str, Callable[[], torch.nn.Module]] = {
    "smooth_ap": lambda: il.SmoothAPLoss(num_classes=1, queue_size=0),
    "recall": lambda: il.RecallAtQuantileLoss(num_classes=1, queue_size=0),
    "pauc_trapezoid": lambda: il.PAUCAtBudgetLoss(num_classes=1, queue_size=0),
    "pauc_pairwise": lambda: il.PAUCAtBudgetLoss(num_classes=1, queue_size=0, surrogate="pairwise", beta=0.05),
}


def flushing() -> bool:
    """Whether this thread flushes subnormal numbers (a tensor product, independent of the helper's own test)."""
    tiny = torch.tensor([torch.finfo(torch.float64).tiny], dtype=torch.float64)
    return bool((tiny * 0.5 == 0).item())


@pytest.fixture
def caller_flushes() -> Iterator[None]:
    """The caller has turned flushing on; it is turned off again afterwards."""
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormal numbers")
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def far_apart_pool(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """1,024 binary rows with 1 % positives, scores spread over hundreds of temperatures (subnormal sigmoids)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1024, 1, generator=g) * 30.0
    targets = torch.zeros(1024, dtype=torch.long)
    targets[torch.randperm(1024, generator=g)[:10]] = 1
    return logits, targets


def loss_and_grad(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    logits, targets = far_apart_pool()
    logits.requires_grad_()
    loss = LOSSES[name]()(logits, targets)
    loss.backward()
    assert logits.grad is not None
    return loss.detach(), logits.grad


def test_the_context_flushes_inside_and_restores_off() -> None:
    assert not flushing()
    with FlushDenormals(True):
        if not flushing():
            pytest.skip("this CPU cannot flush subnormal numbers")
        assert SUBNORMAL * 1.0 == 0.0 or sys.float_info.min * 0.5 == 0.0
    assert not flushing()
    with pytest.raises(RuntimeError, match="inside"), FlushDenormals(True):
        raise RuntimeError("inside")
    assert not flushing()
    with FlushDenormals(False):
        assert not flushing()


@pytest.mark.usefixtures("caller_flushes")
def test_the_context_leaves_a_callers_flushing_on() -> None:
    with FlushDenormals(True):
        assert flushing()
    assert flushing()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_call_keeps_the_callers_setting(name: str) -> None:
    loss_and_grad(name)
    assert not flushing()


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.usefixtures("caller_flushes")
def test_a_call_keeps_a_callers_flushing_on(name: str) -> None:
    loss_and_grad(name)
    assert flushing()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_flushing_changes_no_loss_and_only_subnormal_scale_gradients(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against the same kernels with subnormal arithmetic kept: the same loss, the same gradient above ~1e-30."""
    loss, grad = loss_and_grad(name)

    def keep_subnormals(self: FlushDenormals) -> None:
        self._restore = False

    monkeypatch.setattr(FlushDenormals, "__enter__", keep_subnormals)
    ref_loss, ref_grad = loss_and_grad(name)
    assert torch.equal(loss, ref_loss)
    differ = grad != ref_grad
    assert ref_grad.abs().max() > TINY32 * 1e20  # a gradient well above the subnormal range
    # Only entries far below anything a step can see may differ (subnormal terms scaled by 1 / tau).
    assert torch.all(ref_grad[differ].abs() < TINY32 * 1e8), ref_grad[differ]
    assert torch.all(grad[differ].abs() < TINY32 * 1e8), grad[differ]
