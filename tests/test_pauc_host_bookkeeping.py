"""The pairwise pAUC's host bookkeeping gives the tensor road's result, bitwise.

For a single unweighted column on the CPU, :func:`~imbalanced_losses.functional.pauc_at_budget.pauc_at_budget_core`
forms the temperature scale, the counts and the validity of the pairwise surrogate as Python
numbers (:func:`~imbalanced_losses.functional.pauc_at_budget._pairwise_one_column`), each
rounded to the scores' dtype. Here the same calls run with that road switched off
(``host_bookkeeping`` patched to ``False``), and loss, per-class value, validity, gradient and
the degenerate-dispersion warning must be identical, in float32 and float64, across pools that
reach every branch: a regular pool, a flat reference (degenerate), no positive, no negative, a
band without negatives (``budget_basis='population'``, the positives on top), temperatures
drawn at random and one given as a 0-d tensor, ``iid_mask``/``live_mask`` and ``tau_scale='band'``.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

from imbalanced_losses import PAUCAtBudgetLoss
from imbalanced_losses.functional import pauc_at_budget as pauc
from imbalanced_losses.functional import pauc_at_budget_loss

M = 300


def _pool(case: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(M, 1, generator=g, dtype=dtype) * 3.0
    targets = (torch.rand(M, generator=g) < 0.05).long()
    options: dict[str, Any] = {}
    if case == "flat":  # every negative at one score: zero dispersion, a degenerate class
        logits[targets == 0] = 0.25
    elif case == "no_positive":
        targets.zero_()
    elif case == "no_negative":
        targets.fill_(1)
    elif case == "ignored":
        targets[::7] = -100
    elif case == "band_scale":
        options["tau_scale"] = "band"
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
    elif case.startswith("temperature"):  # a float32 product of the temperature and the scale rounds on its own
        options["temperature"] = 0.01 + torch.rand((), generator=torch.Generator().manual_seed(len(case))).item()
    elif case == "wide_band":
        options["beta"] = 0.3
    return logits, targets, options


def _call(logits: torch.Tensor, targets: torch.Tensor, options: dict[str, Any]) -> tuple[Any, ...]:
    x = logits.clone().requires_grad_(True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss, per_class, valid = pauc_at_budget_loss(
            x, targets, **{"surrogate": "pairwise", "beta": 0.05, **options}, return_per_class=True
        )
    loss.backward()
    return loss.detach(), per_class.detach(), valid, x.grad, [str(w.message) for w in caught]


CASES = [
    "regular",
    "flat",
    "no_positive",
    "no_negative",
    "ignored",
    "band_scale",
    "masks",
    "tensor_temperature",
    "population",
    "empty_band",
]
#: Temperatures drawn at random (the case name seeds them): the host road must round as float32 does.
TEMPERATURES = [f"temperature{'_' * i}" for i in range(8)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", [*CASES, *TEMPERATURES, "wide_band"])
def test_host_bookkeeping_equals_the_tensor_road(
    case: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    logits, targets, options = _pool(case, dtype)
    host = _call(logits, targets, options)
    monkeypatch.setattr(pauc, "host_bookkeeping", lambda *args: False)
    tensor = _call(logits, targets, options)
    for got, want in zip(host[:4], tensor[:4], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert host[4] == tensor[4]  # the same warnings (the degenerate dispersion's, for "flat")


def test_the_cases_reach_every_branch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pools above take the host road and cover valid, invalid and degenerate classes."""
    seen: list[tuple[bool, bool]] = []
    original = pauc._pairwise_one_column

    def spy(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        seen.append((bool(result.valid.all()), result.degenerate is not None))
        return result

    monkeypatch.setattr(pauc, "_pairwise_one_column", spy)
    for case in CASES:
        logits, targets, options = _pool(case, torch.float32)
        _call(logits, targets, options)
    assert len(seen) == len(CASES)  # every case took the host road
    assert (True, False) in seen  # valid
    assert (False, False) in seen  # invalid
    assert (False, True) in seen  # degenerate


def test_the_module_takes_the_host_road_on_the_cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights, diagnostics, several classes and the CUDA plan keep the tensor road."""
    calls: list[int] = []
    original = pauc._pairwise_one_column
    monkeypatch.setattr(pauc, "_pairwise_one_column", lambda *a, **k: calls.append(1) or original(*a, **k))
    logits, targets, _ = _pool("regular", torch.float32)
    loss_fn = PAUCAtBudgetLoss(num_classes=1, surrogate="pairwise", beta=0.05)
    loss_fn(logits, targets)
    assert calls == [1]
    loss_fn(logits, targets, sample_weight=torch.ones(M))
    loss_fn(logits, targets, return_diagnostics=True)
    monkeypatch.setenv("IMBALANCED_LOSSES_PLAN", "cuda")
    loss_fn(logits, targets)
    assert calls == [1]
