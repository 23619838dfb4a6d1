"""The soft-threshold kernel of the recall and trapezoid pAUC losses (``functional/_soft_threshold.py``).

Its values and gradients are checked against independent references elsewhere
(``test_reference_recall.py``, ``test_reference_pauc.py``, and the smoothed-quantile derivative
in ``test_gradcheck.py``); here its own roads must agree with one another: thresholds read at
ranks formed on the host (every row a member) against the masked selection, the threshold
weights in blocks against one block, the weights as ``sech^2`` ratios (a plan with free host
reads) against the softmax of ``log sigma'`` (and the fallback to it where a level's mass
underflows), one column against the same column among several, ``log(1 + e^y)`` as one
``softplus`` against ``exp``, ``+1``, ``log``, and the host-ranked quantiles against
``torch.quantile``.
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


def _weights_road(monkeypatch: pytest.MonkeyPatch, road: str) -> None:
    """Every plan forms the threshold weights as ``sech^2`` ratios (``direct``) or as a softmax (``softmax``)."""
    for name in ("cpu", "cuda"):
        plan = dataclasses.replace(_plan.PLANS[name], host_reads=road == "direct")
        monkeypatch.setitem(_plan.PLANS, name, plan)


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


@pytest.mark.parametrize("road", ["direct", "softmax"])
@pytest.mark.parametrize("columns", [1, 3])
@pytest.mark.parametrize("knots", [RECALL, TRAPEZOID], ids=["recall", "trapezoid"])
def test_threshold_weights_in_blocks_equal_one_block(
    knots: Knots, columns: int, road: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(300, columns, generator=g, dtype=torch.float64)
    pos = torch.rand(300, columns, generator=g) < 0.3
    options = dict(ref=~pos, numer=pos, spread=~pos, weight=None, knots=knots, temperature=0.2, interpolation="higher")
    _weights_road(monkeypatch, road)
    loss, _, grad = _run(scores, **options)
    blocks = []
    monkeypatch.setattr(_soft_threshold, "BLOCK_ELEMENTS", 2 * 300 * columns)  # two levels at a time
    name = "cosh_" if road == "direct" else "softmax"  # each block's first operation of its road
    method = getattr(torch.Tensor, name)
    monkeypatch.setattr(torch.Tensor, name, lambda self, *args: blocks.append(self.shape[0]) or method(self, *args))
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
        for name in ("cpu", "cuda"):  # the softmax road, where the softplus serves
            plan = dataclasses.replace(_plan.PLANS[name], softplus_max=limit, host_reads=False)
            monkeypatch.setitem(_plan.PLANS, name, plan)
        roads.append(_run(scores, interpolation="higher", **options))
        roads.append(len(calls))
    (loss, _, grad), used, (loss_exp, _, grad_exp), used_after = roads
    assert (used, used_after) == (1, 1)  # one softplus block, then none
    assert torch.equal(loss, loss_exp)  # the forward does not use it
    assert grad.abs().max() > 0
    torch.testing.assert_close(grad, grad_exp, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("columns", [1, 3])
@pytest.mark.parametrize("knots", [RECALL, TRAPEZOID, BAND], ids=["recall", "trapezoid", "band"])
def test_sech2_weights_equal_the_softmax_weights(
    knots: Knots, columns: int, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The threshold weights as ``sech^2`` ratios: the softmax road's gradient to rounding, its loss bitwise."""
    g = torch.Generator().manual_seed(5)
    scores = torch.randn(257, columns, generator=g, dtype=dtype)
    pos = torch.rand(257, columns, generator=g) < 0.2
    weight = torch.rand(257, generator=g, dtype=dtype)
    options = dict(ref=None if columns == 1 else torch.ones_like(pos), numer=pos, spread=~pos, weight=weight)
    runs = []
    for road in ("direct", "softmax"):
        _weights_road(monkeypatch, road)
        runs.append(_run(scores, knots=knots, temperature=0.1, interpolation="linear", **options))
    (loss, _, grad), (ref_loss, _, ref_grad) = runs
    assert torch.equal(loss, ref_loss)
    assert grad.abs().max() > 0
    tolerance = dict(rtol=1e-5, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grad, ref_grad, **tolerance)


@pytest.mark.parametrize("columns", [1, 3])
def test_a_level_whose_members_lie_far_away_takes_the_softmax(columns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every member thousands of temperatures from the thresholds: ``sech^2`` underflows, the softmax does not.

    The direct road hands those blocks to the softmax (the same gradient, bitwise), and the
    nearest member takes each threshold's whole gradient: finite, never ``nan``.
    """
    g = torch.Generator().manual_seed(6)
    scores = torch.rand(200, columns, generator=g, dtype=torch.float64)
    pos = torch.ones(200, columns, dtype=torch.bool)
    pos[:20] = False  # the members: 20 negatives far below the positives, 10 apart, the nearest at -1000
    scores[:20] = -1000.0 - 10.0 * torch.arange(20, dtype=torch.float64).unsqueeze(1)
    options = dict(ref=None if columns == 1 else torch.ones_like(pos), numer=pos, spread=~pos, weight=None)
    softmax, calls = torch.Tensor.softmax, []
    monkeypatch.setattr(torch.Tensor, "softmax", lambda self, dim: calls.append(dim) or softmax(self, dim))
    runs = []
    for road in ("direct", "softmax"):
        _weights_road(monkeypatch, road)
        runs.append(_run(scores, knots=RECALL, temperature=0.05, interpolation="higher", **options)[2])
    grad, ref_grad = runs
    assert len(calls) == 2  # one block each: the direct road fell back
    assert torch.equal(grad, ref_grad)
    assert torch.isfinite(grad).all()
    nearest, others = grad[0], grad[1:20]
    assert (nearest != 0).all()
    assert (others.abs() <= 1e-100 * nearest.abs()).all()  # hundreds of temperatures further: e^-400 of it


@pytest.mark.parametrize("road", ["direct", "softmax"])
@pytest.mark.parametrize("knots", [RECALL, TRAPEZOID], ids=["recall", "trapezoid"])
def test_one_column_equals_the_same_column_among_several(
    knots: Knots, road: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A single column (its positives' term folded into one ``addmm``) against a column of a three-column pool."""
    g = torch.Generator().manual_seed(7)
    scores = torch.randn(301, 3, generator=g, dtype=torch.float64)
    pos = torch.rand(301, 3, generator=g) < 0.25
    weight = torch.rand(301, generator=g, dtype=torch.float64)
    _weights_road(monkeypatch, road)
    options = dict(knots=knots, temperature=0.2, interpolation="linear", weight=weight)
    loss, _, grad = _run(scores, ref=torch.ones_like(pos), numer=pos, spread=~pos, **options)
    one_loss, _, one_grad = _run(scores[:, :1], ref=None, numer=pos[:, :1], spread=~pos[:, :1], **options)
    torch.testing.assert_close(one_loss, loss[:1], rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(one_grad, grad[:, :1], rtol=1e-12, atol=1e-15)


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
