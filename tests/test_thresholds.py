"""Quantile thresholds (SPEC D5): torch.quantile's exact values, any pool size, half precision."""

from __future__ import annotations

import pytest
import torch

from imbalanced_losses import PAUCAtBudgetLoss, RecallAtQuantileLoss
from imbalanced_losses.functional import _quantiles, pauc_at_budget_loss, recall_at_quantile_loss
from imbalanced_losses.functional._quantiles import masked_column_quantiles

pytestmark = pytest.mark.usefixtures("on_device")  # also on CUDA when available (tests/conftest.py)

MODES = ["linear", "lower", "higher", "nearest", "midpoint"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("rows", [1, 2, 7, 200, 4097])
def test_equals_torch_quantile_bitwise(mode: str, dtype: torch.dtype, rows: int) -> None:
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 3, generator=g, dtype=dtype)
    x[:, 1] = x[:, 1].round()  # ties
    levels = torch.tensor([0.0, 0.005, 0.25, 0.5, 0.75, 0.995, 1 - 1e-4, 1.0], dtype=dtype)
    got, counts = masked_column_quantiles(x, torch.ones_like(x, dtype=torch.bool), levels, mode)
    assert torch.equal(got, torch.quantile(x, levels, dim=0, interpolation=mode))
    assert counts.tolist() == [rows] * 3


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("road", ["sort", "selection"])
def test_every_row_a_member_equals_torch_quantile(mode: str, road: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``member=None`` (no mask, no padding) gives torch.quantile's values on both roads."""
    if road == "selection":
        monkeypatch.setattr(_quantiles, "SORT_MAX", 64)  # a top-k and a k-th value select on a small pool
    g = torch.Generator().manual_seed(3)
    x = torch.randn(500, 3, generator=g)
    x[:, 2] = x[:, 2].round()  # ties
    levels = torch.tensor([0.995, 0.75, 0.25, 0.5])
    got, counts = masked_column_quantiles(x, None, levels, mode)
    assert torch.equal(got, torch.quantile(x, levels, dim=0, interpolation=mode))
    assert counts.tolist() == [500] * 3
    single, _ = masked_column_quantiles(x[:, :1], None, levels, mode)
    assert torch.equal(single, got[:, :1])


@pytest.mark.parametrize("mode", MODES)
def test_masked_columns_equal_per_column_quantile(mode: str) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 4, generator=g)
    member = torch.rand(300, 4, generator=g) < torch.tensor([0.05, 0.3, 0.9, 0.0])
    levels = torch.tensor([0.9, 0.1, 0.5])
    got, counts = masked_column_quantiles(x, member, levels, mode)
    for c in range(3):
        ref = torch.quantile(x[member[:, c], c], levels, interpolation=mode)
        assert torch.equal(got[:, c], ref)
    assert torch.isnan(got[:, 3]).all()
    assert counts[3] == 0


def test_recall_threshold_is_torch_quantile_of_pool() -> None:
    # With tau -> 0 the soft recall counts positives strictly above torch.quantile's threshold.
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1000, 1, generator=g, dtype=torch.float64)
    targets = (torch.rand(1000, generator=g) < 0.1).long()
    theta = torch.quantile(logits[:, 0], 0.9, interpolation="linear")
    hard = (logits[targets == 1, 0] > theta).double().mean()
    loss = recall_at_quantile_loss(logits, targets, quantile=0.1, temperature=1e-9, quantile_interpolation="linear")
    assert loss.item() == pytest.approx(1 - hard.item(), abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize(
    "make_loss",
    [
        lambda: RecallAtQuantileLoss(num_classes=3, quantile=0.05, queue_size=64),
        lambda: PAUCAtBudgetLoss(num_classes=3, beta=0.05, queue_size=64),
        lambda: PAUCAtBudgetLoss(num_classes=3, beta=0.05, surrogate="pairwise", queue_size=64),
    ],
    ids=["recall", "pauc-trapezoid", "pauc-pairwise"],
)
def test_half_precision_logits(dtype: torch.dtype, make_loss) -> None:  # type: ignore[no-untyped-def]
    loss_fn = make_loss()
    logits32 = torch.randn(256, 3)
    targets = torch.randint(0, 3, (256,))
    logits = logits32.to(dtype).requires_grad_()
    loss = loss_fn(logits, targets)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None
    assert logits.grad.dtype == dtype
    assert torch.isfinite(logits.grad).all()
    # Same value as float32 computation on the rounded logits.
    ref = make_loss()(logits.detach().float(), targets)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)


@pytest.mark.slow
def test_pool_larger_than_torch_quantile_limit() -> None:
    # torch.quantile refuses more than 16,777,216 elements; the losses must not.
    m = 16_777_216 + 1_000
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(m, 1, generator=g).requires_grad_()
    targets = (torch.rand(m, generator=g) < 0.001).long()
    loss = pauc_at_budget_loss(logits, targets, beta=0.005)
    loss.backward()
    assert torch.isfinite(loss)
    assert 0.0 <= loss.item() <= 1.0
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    loss_r = recall_at_quantile_loss(logits.detach(), targets, quantile=0.005)
    assert torch.isfinite(loss_r)
