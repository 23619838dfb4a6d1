"""Module == functional on the same pool (SPEC A1).

Spec: SPEC.md A1 ("The modules call them; a test asserts module == function on the same pool");
incumbent-behaviour.md §2.3 (pool = live rows followed by all queue slots, ``ignore_index`` rows
dropped), §2.6 (weights travel with rows through the queue), §5.1 (``pos_numerator='live'``
uses the rows of the current call) and §5.5 (diagnostics).

A module without a queue and without ``max_pool_size`` must give the functional's value and
gradient on the same batch; a module with a filled queue must give the functional's value on
the concatenated pool ``[live; queue slots]`` (with ``live_mask``/``iid_mask`` for pAUC) and
the same gradient with respect to the live logits.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from imbalanced_losses import PAUCAtBudgetLoss, RecallAtQuantileLoss, SmoothAPLoss
from imbalanced_losses.functional import pauc_at_budget_loss, recall_at_quantile_loss, smooth_ap_loss

pytestmark = pytest.mark.filterwarnings("ignore:PAUCAtBudgetLoss. degenerate dispersion:UserWarning")

ATOL = 1e-6

# (id, module class, functional, options shared by both; module-only names are mapped below)
CASES: list[tuple[str, Any, Any, dict[str, Any]]] = [
    ("ap-default", SmoothAPLoss, smooth_ap_loss, {}),
    ("ap-tau0.1-sum", SmoothAPLoss, smooth_ap_loss, {"temperature": 0.1, "reduction": "sum"}),
    ("ap-tau1-none", SmoothAPLoss, smooth_ap_loss, {"temperature": 1.0, "reduction": "none"}),
    ("ap-ignore-index-7", SmoothAPLoss, smooth_ap_loss, {"temperature": 0.05, "ignore_index": 7}),
    ("recall-default", RecallAtQuantileLoss, recall_at_quantile_loss, {}),
    (
        "recall-q0.2-linear",
        RecallAtQuantileLoss,
        recall_at_quantile_loss,
        {"quantile": 0.2, "quantile_interpolation": "linear"},
    ),
    (
        "recall-q0.3-lower-sum",
        RecallAtQuantileLoss,
        recall_at_quantile_loss,
        {"quantile": 0.3, "quantile_interpolation": "lower", "reduction": "sum"},
    ),
    (
        "recall-q0.1-nearest-none",
        RecallAtQuantileLoss,
        recall_at_quantile_loss,
        {"quantile": 0.1, "quantile_interpolation": "nearest", "reduction": "none", "temperature": 0.2},
    ),
    (
        "recall-midpoint",
        RecallAtQuantileLoss,
        recall_at_quantile_loss,
        {"quantile": 0.25, "quantile_interpolation": "midpoint"},
    ),
    ("pauc-default", PAUCAtBudgetLoss, pauc_at_budget_loss, {}),
    ("pauc-trap-b0.2", PAUCAtBudgetLoss, pauc_at_budget_loss, {"beta": 0.2}),
    (
        "pauc-trap-5knots-band",
        PAUCAtBudgetLoss,
        pauc_at_budget_loss,
        {"alpha": 0.05, "beta": 0.3, "n_knots": 5, "tau_scale": "band"},
    ),
    ("pauc-trap-live", PAUCAtBudgetLoss, pauc_at_budget_loss, {"beta": 0.2, "pos_numerator": "live"}),
    (
        "pauc-trap-population-linear",
        PAUCAtBudgetLoss,
        pauc_at_budget_loss,
        {"beta": 0.2, "budget_basis": "population", "quantile_interpolation": "linear"},
    ),
    ("pauc-pair", PAUCAtBudgetLoss, pauc_at_budget_loss, {"beta": 0.2, "surrogate": "pairwise"}),
    (
        "pauc-pair-band-live-none",
        PAUCAtBudgetLoss,
        pauc_at_budget_loss,
        {
            "alpha": 0.02,
            "beta": 0.4,
            "surrogate": "pairwise",
            "tau_scale": "band",
            "pos_numerator": "live",
            "reduction": "none",
        },
    ),
    (
        "pauc-pair-population-sum",
        PAUCAtBudgetLoss,
        pauc_at_budget_loss,
        {"beta": 0.3, "surrogate": "pairwise", "budget_basis": "population", "reduction": "sum", "temperature": 0.5},
    ),
]


def module_for(cls: Any, num_classes: int, options: dict[str, Any], **kwargs: Any) -> torch.nn.Module:
    return cls(num_classes=num_classes, **options, **kwargs)


def make_batch(
    n: int, num_classes: int, *, dtype: torch.dtype, ignore_index: int = -100, n_ignore: int = 3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, num_classes, generator=g, dtype=dtype)
    logits[1] = logits[0]  # a tie
    high = 2 if num_classes == 1 else num_classes
    targets = torch.randint(0, high, (n,), generator=g)
    targets[torch.randperm(n, generator=g)[:n_ignore]] = ignore_index
    iid = torch.rand(n, generator=g) < 0.8
    weight = torch.rand(n, generator=g, dtype=dtype) * 2
    return logits, targets, iid, weight


def scalarize(out: torch.Tensor) -> torch.Tensor:
    """A scalar for backward: sum of the finite entries (``'none'`` has ``nan`` for invalid classes)."""
    return out[~torch.isnan(out)].sum() if out.ndim else out


def assert_same(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    assert got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL, equal_nan=True)


def _call_functional(
    fn: Any, logits: torch.Tensor, targets: torch.Tensor, options: dict[str, Any], **kwargs: Any
) -> Any:
    if fn is not pauc_at_budget_loss:
        kwargs.pop("iid_mask", None)
        kwargs.pop("live_mask", None)
        kwargs.pop("return_diagnostics", None)
    return fn(logits, targets, **options, **kwargs)


# --------------------------------------------------------------------------------------------
# No queue: module == functional on the batch
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "cls", "fn", "options"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("num_classes", [1, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_module_without_queue_equals_functional(
    case: str, cls: Any, fn: Any, options: dict[str, Any], num_classes: int, dtype: torch.dtype, weighted: bool
) -> None:
    ignore_index = options.get("ignore_index", -100)
    logits, targets, iid, weight = make_batch(60, num_classes, dtype=dtype, ignore_index=ignore_index)
    sw = weight if weighted else None
    x_mod = logits.clone().requires_grad_()
    x_fun = logits.clone().requires_grad_()
    module = module_for(cls, num_classes, options, queue_size=0)
    got = module(x_mod, targets, iid, sample_weight=sw)
    expected = _call_functional(fn, x_fun, targets, options, iid_mask=iid, sample_weight=sw)
    assert_same(got, expected)
    scalarize(got).backward()
    scalarize(expected).backward()
    assert_same(x_mod.grad, x_fun.grad)
    if dtype == torch.float64:
        assert torch.equal(got, expected) or torch.allclose(got, expected, rtol=0, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize(("case", "cls", "fn", "options"), CASES, ids=[c[0] for c in CASES])
def test_module_without_queue_equals_functional_per_class(
    case: str, cls: Any, fn: Any, options: dict[str, Any]
) -> None:
    ignore_index = options.get("ignore_index", -100)
    logits, targets, iid, _ = make_batch(60, 4, dtype=torch.float32, ignore_index=ignore_index)
    targets[targets == 3] = 2  # class 3 absent: invalid, nan
    module = module_for(cls, 4, options, queue_size=0)
    got = module(logits, targets, iid, return_per_class=True)
    expected = _call_functional(fn, logits, targets, options, iid_mask=iid, return_per_class=True)
    assert len(got) == len(expected) == 3
    for g, e in zip(got, expected, strict=True):
        assert_same(g, e)
    assert got[2].tolist() == [True, True, True, False]


@pytest.mark.parametrize(
    ("case", "cls", "fn", "options"),
    [c for c in CASES if c[1] is PAUCAtBudgetLoss],
    ids=[c[0] for c in CASES if c[1] is PAUCAtBudgetLoss],
)
def test_pauc_module_without_queue_equals_functional_diagnostics(
    case: str, cls: Any, fn: Any, options: dict[str, Any]
) -> None:
    logits, targets, iid, _ = make_batch(80, 4, dtype=torch.float32)
    module = module_for(cls, 4, options, queue_size=0)
    got = module(logits, targets, iid, return_per_class=True, return_diagnostics=True)
    expected = fn(logits, targets, **options, iid_mask=iid, return_per_class=True, return_diagnostics=True)
    for g, e in zip(got[:3], expected[:3], strict=True):
        assert_same(g, e)
    assert got[3].pop("queue_fill").tolist() == [0] * 4  # module only: no queue here
    assert got[3].keys() == expected[3].keys()
    for key in expected[3]:
        assert_same(got[3][key], expected[3][key])
    # Diagnostics change neither loss nor gradient.
    plain = module_for(cls, 4, options, queue_size=0)(logits, targets, iid)
    assert torch.equal(plain, got[0])


# --------------------------------------------------------------------------------------------
# With a queue: module == functional on [live; queue slots]
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "cls", "fn", "options"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("num_classes", [1, 4])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_module_with_queue_equals_functional_on_the_concatenated_pool(
    case: str, cls: Any, fn: Any, options: dict[str, Any], num_classes: int, weighted: bool
) -> None:
    ignore_index = options.get("ignore_index", -100)
    queue_size = 50
    module = module_for(cls, num_classes, options, queue_size=queue_size)
    for seed in (1, 2):  # 2 x 40 rows into 50 slots: wrapped around
        x, y, iid, w = make_batch(40, num_classes, dtype=torch.float32, ignore_index=ignore_index, seed=seed)
        module(x, y, iid, sample_weight=w if weighted else None)
    q = module._queue
    q_logits, q_targets, q_iid, q_weight = (t.clone() for t in (q._q_logits, q._q_targets, q._q_iid, q._q_weight))
    assert q._q_ptr.tolist() == [30]

    logits, targets, iid, weight = make_batch(30, num_classes, dtype=torch.float32, ignore_index=ignore_index, seed=3)
    # Live weights: passed on this call, or (weighted queue, unweighted call) 1 per live row.
    live_weight = weight if weighted else None
    x_mod = logits.clone().requires_grad_()
    x_fun = logits.clone().requires_grad_()
    got = module(x_mod, targets, iid, sample_weight=live_weight)

    pool_x = torch.cat([x_fun, q_logits])
    pool_y = torch.cat([targets, q_targets])
    live = torch.cat([torch.ones(30, dtype=torch.bool), torch.zeros(queue_size, dtype=torch.bool)])
    pool_w = torch.cat([weight, q_weight]) if weighted else None
    expected = _call_functional(
        fn, pool_x, pool_y, options, iid_mask=torch.cat([iid, q_iid]), live_mask=live, sample_weight=pool_w
    )
    assert_same(got, expected)
    scalarize(got).backward()
    scalarize(expected).backward()
    assert_same(x_mod.grad, x_fun.grad)


@pytest.mark.parametrize(("case", "cls", "fn", "options"), CASES, ids=[c[0] for c in CASES])
def test_unweighted_call_against_weighted_queue(case: str, cls: Any, fn: Any, options: dict[str, Any]) -> None:
    ignore_index = options.get("ignore_index", -100)
    module = module_for(cls, 4, options, queue_size=64)
    x, y, iid, w = make_batch(40, 4, dtype=torch.float32, ignore_index=ignore_index, seed=1)
    module(x, y, iid, sample_weight=w)
    q = module._queue
    q_logits, q_targets, q_iid, q_weight = (t.clone() for t in (q._q_logits, q._q_targets, q._q_iid, q._q_weight))

    logits, targets, iid, _ = make_batch(30, 4, dtype=torch.float32, ignore_index=ignore_index, seed=3)
    got = module(logits, targets, iid)
    live = torch.cat([torch.ones(30, dtype=torch.bool), torch.zeros(64, dtype=torch.bool)])
    expected = _call_functional(
        fn,
        torch.cat([logits, q_logits]),
        torch.cat([targets, q_targets]),
        options,
        iid_mask=torch.cat([iid, q_iid]),
        live_mask=live,
        sample_weight=torch.cat([torch.ones(30), q_weight]),
    )
    assert_same(got, expected)


@pytest.mark.parametrize(
    ("case", "cls", "fn", "options"),
    [c for c in CASES if c[1] is PAUCAtBudgetLoss],
    ids=[c[0] for c in CASES if c[1] is PAUCAtBudgetLoss],
)
def test_pauc_module_with_queue_equals_functional_diagnostics(
    case: str, cls: Any, fn: Any, options: dict[str, Any]
) -> None:
    module = module_for(cls, 4, options, queue_size=60)
    x, y, iid, _ = make_batch(50, 4, dtype=torch.float32, seed=1)
    module(x, y, iid)
    q = module._queue
    q_logits, q_targets, q_iid = q._q_logits.clone(), q._q_targets.clone(), q._q_iid.clone()
    logits, targets, iid, _ = make_batch(40, 4, dtype=torch.float32, seed=2)
    _, stats = module(logits, targets, iid, return_diagnostics=True)
    live = torch.cat([torch.ones(40, dtype=torch.bool), torch.zeros(60, dtype=torch.bool)])
    _, expected = fn(
        torch.cat([logits, q_logits]),
        torch.cat([targets, q_targets]),
        **options,
        iid_mask=torch.cat([iid, q_iid]),
        live_mask=live,
        return_diagnostics=True,
    )
    # The first batch's rows were stored; ignore_index rows count as empty slots.
    assert stats.pop("queue_fill").tolist() == [int((q_targets != -100).sum())] * 4
    assert stats.keys() == expected.keys()
    for key in expected:
        assert_same(stats[key], expected[key])
    # grad_pos_count: live positives only.
    assert stats["grad_pos_count"].tolist() == torch.bincount(targets[targets >= 0], minlength=4).tolist()
