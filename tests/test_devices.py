"""Devices: a loss left on another device than its logits, and what only CUDA can show.

The kernel, reference, threshold, multi-label, class-weight, focal, AMP, queue and gradcheck
tests run on every available device through the ``device`` / ``on_device`` fixtures of
``conftest.py`` (the CPU always; CUDA when present). This file holds what those cannot say:

* A ranking loss whose buffers (memory queue, class weights) sit on another device than the
  logits moves them there once, with one warning, instead of copying the queue at every call.
  On the CPU this is checked with the ``meta`` device (no data, so only where the buffers go);
  on CUDA with a real training sequence, against a loss built on the device from the start.
* Autocast on CUDA (float16 and bfloat16): ``test_amp.py`` autocasts on the CPU, whose CUDA
  instance feeds the half-precision logits made there to the device; here the logits come from
  a ``nn.Linear`` under ``torch.autocast("cuda")``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

from imbalanced_losses import PAUCAtBudgetLoss, RecallAtQuantileLoss, SigmoidFocalLoss, SmoothAPLoss, SoftmaxFocalLoss


def CUDA(test: Callable[..., None]) -> Callable[..., None]:
    """CUDA only: marked ``cuda`` (``pytest -m cuda``) and skipped without a GPU."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")(test))


RANKING = {
    "smooth_ap": lambda **kw: SmoothAPLoss(**kw),
    "recall": lambda **kw: RecallAtQuantileLoss(**kw),
    "pauc_trapezoid": lambda **kw: PAUCAtBudgetLoss(surrogate="trapezoid", **kw),
    "pauc_pairwise": lambda **kw: PAUCAtBudgetLoss(surrogate="pairwise", **kw),
}
MOVED = "the module was moved to"


def batch(seed: int, n: int = 64, c: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g), torch.arange(n) % c


@pytest.mark.cuda
@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="CUDA absent: the device-parametrised tests (conftest.py `device`) ran on the CPU only",
)
def test_cuda_instances_of_the_device_tests_are_generated() -> None:
    """Skipped (with this reason shown) wherever the device-parametrised tests ran on the CPU only."""
    from conftest import available_test_devices

    assert "cuda" in available_test_devices()


@pytest.mark.parametrize("name", sorted(RANKING))
def test_buffers_follow_the_logits_device_once_with_one_warning(name: str) -> None:
    loss_fn = RANKING[name](num_classes=3, queue_size=16, class_weight=[1.0, 0.0, 2.0])
    with pytest.warns(UserWarning, match=f"are on cpu and the logits on meta; {MOVED} meta") as caught:
        loss_fn._follow_device(torch.device("meta"))
    assert len([w for w in caught if MOVED in str(w.message)]) == 1
    assert {b.device.type for b in loss_fn.buffers()} == {"meta"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_fn._follow_device(torch.device("meta"))  # already there: nothing to do, no warning


@pytest.mark.parametrize("name", sorted(RANKING))
def test_no_warning_and_no_move_when_the_devices_agree(name: str) -> None:
    loss_fn = RANKING[name](num_classes=3, queue_size=16)
    before = {k: v.data_ptr() for k, v in loss_fn.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for seed in range(2):
            loss_fn(*batch(seed))
    assert {k: v.data_ptr() for k, v in loss_fn.state_dict().items()} == before


@CUDA
@pytest.mark.parametrize("name", sorted(RANKING))
def test_a_loss_left_on_the_cpu_moves_to_cuda_once_and_matches_one_built_there(name: str) -> None:
    left = RANKING[name](num_classes=3, queue_size=96, class_weight=[1.0, 0.5, 2.0])
    there = RANKING[name](num_classes=3, queue_size=96, class_weight=[1.0, 0.5, 2.0]).cuda()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for seed in range(3):
            x, t = batch(seed)
            got, want = left(x.cuda(), t.cuda()), there(x.cuda(), t.cuda())
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert sum(MOVED in str(w.message) for w in caught) == 1
    assert {b.device.type for b in left.buffers()} == {"cuda"}
    for key, value in there.state_dict().items():
        torch.testing.assert_close(left.state_dict()[key], value, rtol=1e-6, atol=1e-7)


@CUDA
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", [*sorted(RANKING), "sigmoid_focal", "softmax_focal"])
def test_cuda_autocast_computes_in_float32(name: str, dtype: torch.dtype) -> None:
    """Under ``torch.autocast("cuda")`` the loss is float32 and equals the float32 computation."""
    torch.manual_seed(0)
    layer = nn.Linear(8, 3).cuda()
    features = torch.randn(256, 8, device="cuda")
    targets = (torch.arange(256, device="cuda") % 3)[torch.randperm(256, device="cuda")]

    def make() -> nn.Module:
        if name == "sigmoid_focal":
            return SigmoidFocalLoss()
        if name == "softmax_focal":
            return SoftmaxFocalLoss()
        return RANKING[name](num_classes=3, queue_size=0)

    def target_for(loss_fn: nn.Module) -> torch.Tensor:
        return nn.functional.one_hot(targets, 3).float() if name == "sigmoid_focal" else targets

    with torch.autocast("cuda", dtype=dtype):
        logits = layer(features)
        loss_fn = make()
        out = loss_fn(logits, target_for(loss_fn))
    assert logits.dtype == dtype
    assert out.dtype == torch.float32
    half = logits.detach().clone().requires_grad_()
    reference = make()(half.float(), target_for(loss_fn))
    torch.testing.assert_close(out, reference, atol=1e-6, rtol=1e-5)
    out.backward()
    assert layer.weight.grad is not None
    assert torch.isfinite(layer.weight.grad).all()
