"""The host road of one column's per-class values gives the tensor road's result, bitwise.

For a single column on the CPU (:func:`~imbalanced_losses.functional._plan.host_scalars`), the
recall and trapezoid pAUC kernel (:mod:`~imbalanced_losses.functional._soft_threshold`, its
``Scalars``), the pairwise pAUC's bookkeeping
(:func:`~imbalanced_losses.functional.pauc_at_budget._pairwise_one_column`) and Smooth-AP's
(:func:`~imbalanced_losses.functional.smooth_ap._one_column`) form the temperature (scale), the
totals and the validity as Python numbers, each rounded to the scores' dtype as the
tensor arithmetic rounds it. Here the same calls run with that road switched off
(``host_scalars`` patched to ``False`` where each kernel reads it), and loss, per-class value,
validity, gradient and warnings must be identical, in float32 and float64, across pools that
reach every branch: a regular pool, a flat reference (degenerate), no positive, no negative,
ignored rows, sample weights (summing to less than 1, and all zero), a band without negatives
(``budget_basis='population'``, the positives on top), temperatures drawn at random and one
given as a 0-d tensor, ``iid_mask``/``live_mask``, the other temperature scales, detached
thresholds and three knots.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch

from imbalanced_losses import PAUCAtBudgetLoss, RecallAtQuantileLoss, SmoothAPLoss
from imbalanced_losses.functional import (
    _plan,
    _soft_threshold,
    pauc_at_budget_loss,
    recall_at_quantile_loss,
    smooth_ap,
    smooth_ap_loss,
)
from imbalanced_losses.functional import pauc_at_budget as pauc

M = 300
LOSSES = ("pairwise", "trapezoid", "recall", "smooth_ap")
THRESHOLDED = ("pairwise", "trapezoid", "recall")  # the losses with a temperature scale


def _pool(case: str, dtype: torch.dtype, loss: str) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(M, 1, generator=g, dtype=dtype) * 3.0
    targets = (torch.rand(M, generator=g) < 0.05).long()
    options: dict[str, Any] = {}
    if case == "flat":  # every negative (recall: every row) at one score: zero dispersion
        logits[targets == 0] = 0.25
        if loss == "recall":
            logits[:] = 0.25
    elif case == "no_positive":
        targets.zero_()
    elif case == "no_negative":
        targets.fill_(1)
    elif case == "ignored":
        targets[::7] = -100
    elif case == "weighted":
        options["sample_weight"] = torch.rand(M, generator=g, dtype=dtype) * 2.0
    elif case == "zero_weight":
        options["sample_weight"] = torch.zeros(M, dtype=dtype)
    elif case == "small_weight":  # the positives' total weight below 1: 1 / total, not 1 / max(total, 1)
        options["sample_weight"] = torch.rand(M, generator=g, dtype=dtype) * 0.01
    elif case == "other_scale":
        options["tau_scale"] = "logit" if loss == "recall" else "band"
    elif case == "detached":
        options["detach_thresholds"] = True
    elif case == "masks":
        options["iid_mask"] = torch.rand(M, generator=g) < 0.8
        options["live_mask"] = torch.rand(M, generator=g) < 0.5
        options["pos_numerator"] = "live"
    elif case == "tensor_temperature":
        options["temperature"] = torch.tensor(0.07, dtype=torch.float64)
    elif case == "population":
        options["budget_basis"] = "population"
    elif case == "empty_band":  # the top 5 % of the pool are all positives: no negative in the band
        targets = (logits[:, 0] > logits[:, 0].quantile(0.9)).long()
        options["budget_basis"] = "population"
    elif case == "three_knots":
        options["n_knots"] = 3
    elif case.startswith("temperature"):  # a float32 product of the temperature and the scale rounds on its own
        options["temperature"] = 0.01 + torch.rand((), generator=torch.Generator().manual_seed(len(case))).item()
    elif case == "wide_band":
        options["beta"] = 0.3
    return logits, targets, options


#: Cases and the losses they apply to (the pAUC-only options).
CASES: dict[str, tuple[str, ...]] = {
    "regular": LOSSES,
    "flat": LOSSES,
    "no_positive": LOSSES,
    "no_negative": LOSSES,
    "ignored": LOSSES,
    "weighted": LOSSES,
    "zero_weight": LOSSES,
    "small_weight": LOSSES,
    "other_scale": THRESHOLDED,
    "detached": ("trapezoid", "recall"),
    "masks": ("pairwise", "trapezoid"),
    "tensor_temperature": LOSSES,
    "population": ("pairwise", "trapezoid"),
    "empty_band": ("pairwise", "trapezoid"),
    "three_knots": ("trapezoid",),
    "wide_band": ("pairwise", "trapezoid"),
    **{f"temperature{'_' * i}": LOSSES for i in range(8)},  # drawn at random: each rounds on its own
}
PARAMS = [(loss, case) for case, losses in CASES.items() for loss in losses]


def _call(loss: str, logits: torch.Tensor, targets: torch.Tensor, options: dict[str, Any]) -> tuple[Any, ...]:
    x = logits.clone().requires_grad_(True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if loss == "recall":
            value, per_class, valid = recall_at_quantile_loss(
                x, targets, quantile=0.05, **options, return_per_class=True
            )
        elif loss == "smooth_ap":
            value, per_class, valid = smooth_ap_loss(x, targets, **options, return_per_class=True)
        else:
            value, per_class, valid = pauc_at_budget_loss(
                x, targets, **{"surrogate": loss, "beta": 0.05, **options}, return_per_class=True
            )
    value.backward()
    return value.detach(), per_class.detach(), valid, x.grad, [str(w.message) for w in caught]


def _tensor_road(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_plan, "host_scalars", lambda scores, plan=None: False)  # host_bookkeeping: pairwise, Smooth-AP
    monkeypatch.setattr(_soft_threshold, "host_scalars", lambda scores, plan=None: False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("loss", "case"), PARAMS)
def test_host_road_equals_the_tensor_road(
    loss: str, case: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    logits, targets, options = _pool(case, dtype, loss)
    host = _call(loss, logits, targets, options)
    _tensor_road(monkeypatch)
    tensor = _call(loss, logits, targets, options)
    for got, want in zip(host[:4], tensor[:4], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert host[4] == tensor[4]  # the same warnings (the degenerate dispersion's, for "flat")


def _spy(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, outcome: Callable[[Any], Any]) -> list[Any]:
    seen: list[Any] = []
    original = getattr(module, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        seen.append(outcome(result))
        return result

    monkeypatch.setattr(module, name, spy)
    return seen


@pytest.mark.parametrize("loss", LOSSES)
def test_the_cases_take_the_host_road_and_reach_every_branch(loss: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every case above takes the host road (but the weighted pairwise ones); valid, invalid and flat classes occur."""
    kernel = _spy(monkeypatch, _soft_threshold, "_scalars", lambda s: s.flat)
    pairwise = _spy(monkeypatch, pauc, "_pairwise_one_column", lambda r: r.degenerate is not None)
    ranking = _spy(monkeypatch, smooth_ap, "_one_column", lambda r: False)
    outcomes = []
    cases = [case for case, losses in CASES.items() if loss in losses]
    for case in cases:
        logits, targets, options = _pool(case, torch.float32, loss)
        outcomes.append(bool(_call(loss, logits, targets, options)[2].all()))
    roads = kernel + pairwise + ranking
    weighted = sum(loss in ("pairwise", "smooth_ap") and "weight" in case for case in cases)
    # every call took the host road (the pairwise pAUC and Smooth-AP: unweighted)
    assert len(roads) == len(cases) - weighted
    assert loss == "smooth_ap" or any(roads)  # a flat scale (or a degenerate class)
    assert any(outcomes)  # a valid class
    assert not all(outcomes)  # an invalid one


@pytest.mark.parametrize(
    "make",
    [
        lambda: PAUCAtBudgetLoss(num_classes=1, surrogate="pairwise", beta=0.05),
        lambda: PAUCAtBudgetLoss(num_classes=1, beta=0.05),
        lambda: RecallAtQuantileLoss(num_classes=1, quantile=0.05),
        lambda: SmoothAPLoss(num_classes=1),
    ],
)
def test_the_modules_take_the_host_road_on_the_cpu_only(
    make: Callable[[], torch.nn.Module], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Diagnostics, several classes and the CUDA plan keep the tensor road (the pairwise pAUC: weights too)."""
    kernel = _spy(monkeypatch, _soft_threshold, "_scalars", lambda s: 1)
    pairwise = _spy(monkeypatch, pauc, "_pairwise_one_column", lambda r: 1)
    ranking = _spy(monkeypatch, smooth_ap, "_one_column", lambda r: 1)
    logits, targets, _ = _pool("regular", torch.float32, "recall")
    loss_fn = make()
    loss_fn(logits, targets)
    assert len(kernel) + len(pairwise) + len(ranking) == 1
    loss_fn(logits, targets, return_diagnostics=True)
    PAUCAtBudgetLoss(num_classes=2, beta=0.05)(torch.randn(M, 2), targets)
    SmoothAPLoss(num_classes=2)(torch.randn(M, 2), targets)
    monkeypatch.setenv("IMBALANCED_LOSSES_PLAN", "cuda")
    loss_fn(logits, targets)
    assert len(kernel) + len(pairwise) + len(ranking) == 1
