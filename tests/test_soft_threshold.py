"""The soft-threshold kernel of the recall and trapezoid pAUC losses (``functional/_soft_threshold.py``).

Its values and gradients are checked against independent references elsewhere
(``test_reference_recall.py``, ``test_reference_pauc.py``, and the smoothed-quantile derivative
in ``test_gradcheck.py``); here its own roads must agree with one another: thresholds read at
ranks formed on the host (every row a member) against the masked selection, the threshold
weights in blocks against one block, ``log(1 + e^y)`` as one ``softplus`` against ``exp``, ``+1``,
``log``, and the host-ranked quantiles against ``torch.quantile``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from imbalanced_losses.functional import _plan, _soft_threshold, recall_at_quantile_loss
from imbalanced_losses.functional._quantiles import sorted_column_quantiles
from imbalanced_losses.functional._soft_threshold import Knots, soft_crossings

pytestmark = pytest.mark.usefixtures("on_device")  # also on CUDA when available (tests/conftest.py)

MODES = ["linear", "lower", "higher", "nearest", "midpoint"]
RECALL = Knots(levels=(0.9, 0.75, 0.25), weights=(1.0,), scale=(1, 2))
TRAPEZOID = Knots(levels=(1.0, 0.8, 0.6, 0.75, 0.25), weights=(0.25, 0.5, 0.25), scale=(3, 4))
BAND = Knots(levels=(1.0, 0.8, 0.6), weights=(0.25, 0.5, 0.25), scale=(0, 2))


def _pool(rows: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, 1, generator=g, dtype=dtype)
    pos = torch.rand(rows, 1, generator=g) < 0.2
    weight = torch.rand(rows, generator=g, dtype=dtype)
    return scores, pos, weight


def _run(scores: torch.Tensor, **options: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = scores.clone().requires_grad_()
    out = soft_crossings(x, **options)  # type: ignore[arg-type]
    out.loss.sum().backward()
    assert x.grad is not None
    return out.loss.detach(), out.thresholds, x.grad


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("knots", [RECALL, TRAPEZOID, BAND], ids=["recall", "trapezoid", "band"])
def test_every_row_road_equals_the_masked_road(mode: str, dtype: torch.dtype, knots: Knots) -> None:
    """``ref=None`` (host ranks) gives the masked selection's thresholds and loss bitwise, its gradient to rounding."""
    scores, pos, weight = _pool(203, dtype, 1)
    options = dict(numer=pos, spread=~pos, weight=weight, knots=knots, temperature=0.3, interpolation=mode)
    loss, thresholds, grad = _run(scores, ref=None, **options)
    ref_loss, ref_thresholds, ref_grad = _run(scores, ref=torch.ones_like(pos), **options)
    assert torch.equal(thresholds, ref_thresholds)
    assert torch.equal(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-7 if dtype == torch.float32 else 1e-15)


@pytest.mark.parametrize("knots", [RECALL, TRAPEZOID], ids=["recall", "trapezoid"])
def test_threshold_weights_in_blocks_equal_one_block(knots: Knots, monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(300, 3, generator=g, dtype=torch.float64)
    pos = torch.rand(300, 3, generator=g) < 0.3
    options = dict(ref=~pos, numer=pos, spread=~pos, weight=None, knots=knots, temperature=0.2, interpolation="higher")
    loss, _, grad = _run(scores, **options)
    blocks = []
    monkeypatch.setattr(_soft_threshold, "BLOCK_ELEMENTS", 2 * 300 * 3)  # two levels at a time
    monkeypatch.setattr(
        torch.Tensor, "softmax", lambda self, dim: blocks.append(self.shape[0]) or torch.softmax(self, dim)
    )
    blocked_loss, _, blocked_grad = _run(scores, **options)
    assert blocks == [2] * (len(knots.levels) // 2) + [1] * (len(knots.levels) % 2), blocks
    assert torch.equal(blocked_loss, loss)
    torch.testing.assert_close(blocked_grad, grad, rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("knots", [RECALL, TRAPEZOID], ids=["recall", "trapezoid"])
def test_softplus_road_equals_the_exp_log_road(
    dtype: torch.dtype, knots: Knots, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small threshold blocks take ``log(1 + e^y)`` as one ``softplus``: the same gradient to rounding."""
    scores, pos, weight = _pool(203, dtype, 4)
    scores[::7] *= 40.0  # members hundreds of temperatures from every threshold
    options = dict(ref=None, numer=pos, spread=~pos, weight=weight, knots=knots, temperature=0.05)
    calls = []
    softplus = torch.nn.functional.softplus
    monkeypatch.setattr(torch.nn.functional, "softplus", lambda y: calls.append(y.numel()) or softplus(y))
    roads = []
    for limit in (1 << 62, 0):  # every block by softplus, then none
        for name in ("cpu", "cuda"):
            monkeypatch.setitem(_plan.PLANS, name, dataclasses.replace(_plan.PLANS[name], softplus_max=limit))
        roads.append(_run(scores, interpolation="higher", **options))
        roads.append(len(calls))
    (loss, _, grad), used, (loss_exp, _, grad_exp), used_after = roads
    assert (used, used_after) == (1, 1)  # one softplus block, then none
    assert torch.equal(loss, loss_exp)  # the forward does not use it
    assert grad.abs().max() > 0
    torch.testing.assert_close(grad, grad_exp, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-12)


def test_a_class_without_negatives_gets_no_threshold_gradient_and_no_nan() -> None:
    """Nothing to spread the thresholds' gradient over: the positives' own terms only, finite."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(40, 1, generator=g, dtype=torch.float64)
    x = logits.clone().requires_grad_()
    loss = recall_at_quantile_loss(x, torch.ones(40, dtype=torch.long), quantile=0.2, temperature=0.5)
    loss.backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert torch.isfinite(loss)
    # Only the positives' sigmoid terms: each row's gradient is -sigma'(z) / (tau * P), all negative.
    assert (x.grad < 0).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("rows", [1, 2, 9, 1001])
def test_sorted_column_quantiles_equal_torch_quantile_bitwise(mode: str, dtype: torch.dtype, rows: int) -> None:
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 3, generator=g, dtype=dtype)
    x[:, 1] = x[:, 1].round()  # ties
    levels = (0.0, 0.005, 0.25, 0.5, 0.75, 0.995, 1 - 1e-4, 1.0)
    expected = torch.quantile(x, torch.tensor(levels, dtype=dtype), dim=0, interpolation=mode)
    assert torch.equal(sorted_column_quantiles(x.sort(dim=0).values, levels, mode), expected)
    assert torch.equal(sorted_column_quantiles(x[:, 0].sort().values, levels, mode), expected[:, 0])
    assert sorted_column_quantiles(x[:0], levels, mode).isnan().all()
