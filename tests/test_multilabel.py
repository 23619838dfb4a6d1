"""Multi-label (multi-hot ``[N, C]``) targets on the three ranking losses (SPEC A3).

Reference: each column is one-vs-rest, so the multi-label loss of class ``c`` must equal the
*binary* loss (``num_classes=1``) of column ``c`` alone, with the rows whose cell is
``ignore_index`` removed (and the companion row vectors filtered the same way). The binary path
predates multi-label support and is tested against brute-force loops elsewhere
(``test_reference_*``), so it is an independent reference here. Reductions are checked against
hand reductions of those per-column values, gradients against autograd through the per-column
binary calls, and the module's queue against a list-based ring buffer written in this file.

DDP is covered elsewhere.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

from imbalanced_losses import PAUCAtBudgetLoss, RecallAtQuantileLoss, SmoothAPLoss
from imbalanced_losses._sampling import minimum_quota_indices
from imbalanced_losses.functional import _pairs, pauc_at_budget_loss, recall_at_quantile_loss, smooth_ap_loss

pytestmark = [
    pytest.mark.filterwarnings("ignore:PAUCAtBudgetLoss. degenerate dispersion:UserWarning"),
    pytest.mark.usefixtures("on_device"),
]  # also on CUDA when available (tests/conftest.py)

IGNORE = -100
ATOL = 1e-12  # float64 throughout; the per-column computation is the same arithmetic

# id -> (module class, functional, options valid for both)
LOSSES: dict[str, tuple[Any, Any, dict[str, Any]]] = {
    "ap": (SmoothAPLoss, smooth_ap_loss, {"temperature": 0.1}),
    "recall": (RecallAtQuantileLoss, recall_at_quantile_loss, {"quantile": 0.25, "temperature": 0.1}),
    "pauc-trap": (PAUCAtBudgetLoss, pauc_at_budget_loss, {"beta": 0.3, "n_knots": 3, "temperature": 0.2}),
    "pauc-pair": (
        PAUCAtBudgetLoss,
        pauc_at_budget_loss,
        {"alpha": 0.05, "beta": 0.4, "surrogate": "pairwise", "temperature": 0.2},
    ),
}
ALL = pytest.mark.parametrize("name", list(LOSSES))
PAUC = ("pauc-trap", "pauc-pair")


def make_ml(
    seed: int,
    n: int = 48,
    c: int = 3,
    *,
    pos_rate: float = 0.35,
    ignore_rate: float = 0.15,
    ignore_index: int = IGNORE,
    no_positive_class: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 logits ``[n, c]`` and int64 multi-hot targets with scattered ``ignore_index`` cells.

    Every column keeps at least two positives and two negatives (unless it is
    ``no_positive_class``, which gets none); row 0 is entirely ignored, row 1 has no positive.
    """
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64)
    targets = (torch.rand(n, c, generator=g) < pos_rate).long()
    targets[torch.rand(n, c, generator=g) < ignore_rate] = ignore_index
    targets[2:4] = 1
    targets[4:6] = 0
    targets[0] = ignore_index
    targets[1] = 0
    if no_positive_class is not None:
        col = targets[:, no_positive_class]
        targets[:, no_positive_class] = torch.where(col == 1, torch.zeros_like(col), col)
    return logits, targets


def column_kept(targets: torch.Tensor, c: int, ignore_index: int = IGNORE) -> torch.Tensor:
    return targets[:, c] != ignore_index


def pauc_masks(name: str, n: int, seed: int) -> dict[str, torch.Tensor]:
    if name not in PAUC:
        return {}
    g = torch.Generator().manual_seed(seed + 1000)
    iid = torch.rand(n, generator=g) < 0.85
    iid[:6] = True
    return {"iid_mask": iid}


def per_column_binary(
    fn: Any,
    logits: torch.Tensor,
    targets: torch.Tensor,
    options: dict[str, Any],
    *,
    ignore_index: int = IGNORE,
    rows: dict[str, torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(per_class [C], valid [C])`` from one binary call per column (ignored cells removed)."""
    values, valid = [], []
    for c in range(logits.shape[1]):
        keep = column_kept(targets, c, ignore_index)
        extra = {k: (None if v is None else v[keep]) for k, v in (rows or {}).items()}
        loss, _, ok = fn(
            logits[keep][:, c : c + 1],
            targets[keep, c],
            reduction="none",
            ignore_index=ignore_index,
            return_per_class=True,
            **options,
            **extra,
        )
        values.append(loss.reshape(1))
        valid.append(ok.reshape(1))
    return torch.cat(values), torch.cat(valid)


def assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL, equal_nan=True)


# --------------------------------------------------------------------------------------------
# Functional: per-class value, reductions, gradient
# --------------------------------------------------------------------------------------------


@ALL
@pytest.mark.parametrize("target_dtype", [torch.int64, torch.int32, torch.bool, torch.float32, torch.float64])
def test_functional_per_class_equals_binary_column(name: str, target_dtype: torch.dtype) -> None:
    _, fn, options = LOSSES[name]
    logits, targets = make_ml(3)
    if target_dtype == torch.bool:  # no ignore cells expressible in bool
        targets = targets.clamp_min(0)
    ml_targets = targets.to(target_dtype)
    rows = pauc_masks(name, logits.shape[0], 3)
    loss, per_class, valid = fn(logits, ml_targets, reduction="none", return_per_class=True, **options, **rows)
    ref, ref_valid = per_column_binary(fn, logits, targets, options, rows=rows)
    assert loss.shape == (3,)
    assert bool(ref_valid.all())  # the data make every column valid: a real comparison
    assert torch.equal(valid, ref_valid)
    assert_close(loss, ref)
    assert_close(per_class, ref)


@ALL
def test_functional_ignore_cell_excludes_that_class_only(name: str) -> None:
    """Changing the logit of an ignored cell moves nothing; the row still counts for the other classes."""
    _, fn, options = LOSSES[name]
    logits, targets = make_ml(4)
    targets[10] = torch.tensor([IGNORE, 1, 0])
    out = fn(logits, targets, reduction="none", **options)
    moved = logits.clone()
    moved[10, 0] += 3.7
    assert torch.equal(fn(moved, targets, reduction="none", **options), out)
    moved = logits.clone()
    moved[10, 1] += 3.7  # row 10 is a positive of class 1: its loss must move
    changed = fn(moved, targets, reduction="none", **options)
    assert not torch.equal(changed[1], out[1])
    assert torch.equal(changed[0], out[0])
    assert torch.equal(changed[2], out[2])


@ALL
def test_functional_custom_ignore_index(name: str) -> None:
    _, fn, options = LOSSES[name]
    logits, targets = make_ml(5, ignore_index=-1)
    got = fn(logits, targets, reduction="none", ignore_index=-1, **options)
    ref, _ = per_column_binary(fn, logits, targets, options, ignore_index=-1)
    assert_close(got, ref)


@ALL
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_functional_reduction_over_valid_columns(name: str, reduction: str) -> None:
    """Column 1 has no positive: it is invalid, ``nan`` under 'none', left out of mean and sum."""
    _, fn, options = LOSSES[name]
    logits, targets = make_ml(6, c=4, no_positive_class=1)
    ref, ref_valid = per_column_binary(fn, logits, targets, options)
    assert ref_valid.tolist() == [True, False, True, True]
    none, _, valid = fn(logits, targets, reduction="none", return_per_class=True, **options)
    assert valid.tolist() == [True, False, True, True]
    assert torch.isnan(none[1])
    kept = ref[ref_valid]
    expected = kept.sum() if reduction == "sum" else kept.sum() / 3
    assert_close(fn(logits, targets, reduction=reduction, **options), expected)


@ALL
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_functional_gradient_equals_per_column_binary_gradient(name: str, reduction: str) -> None:
    _, fn, options = LOSSES[name]
    base, targets = make_ml(7, c=4, no_positive_class=2)
    rows = pauc_masks(name, base.shape[0], 7)
    if name in PAUC:
        g = torch.Generator().manual_seed(70)
        rows["sample_weight"] = 0.5 + torch.rand(base.shape[0], generator=g, dtype=torch.float64)

    x = base.clone().requires_grad_()
    fn(x, targets, reduction=reduction, **options, **rows).backward()

    y = base.clone().requires_grad_()
    ref, valid = per_column_binary(fn, y, targets, options, rows=rows)
    total = ref[valid].sum()
    if reduction == "mean":
        total = total / int(valid.sum())
    total.backward()
    assert x.grad is not None
    assert y.grad is not None
    assert bool((y.grad != 0).any())
    assert torch.equal(x.grad[:, 2], torch.zeros_like(x.grad[:, 2]))  # the invalid column gets nothing
    torch.testing.assert_close(x.grad, y.grad, rtol=0, atol=1e-12 * float(y.grad.abs().max()))


LARGE = {
    "ap": (1000, {"temperature": 0.1}),
    "pauc-pair": (1600, {"beta": 0.9, "surrogate": "pairwise", "temperature": 0.2}),
}


@pytest.mark.parametrize("name", list(LARGE))
def test_functional_large_pool_windowed_kernel(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool big enough for the chunked pair kernel (SPEC A2) still matches the per-column binary calls
    (which are small enough for the dense path: a cross-path comparison)."""
    _, fn, _ = LOSSES[name]
    n, options = LARGE[name]
    calls: list[int] = []
    apply = _pairs._PairSums.apply
    monkeypatch.setattr(_pairs._PairSums, "apply", lambda *a: (calls.append(1), apply(*a))[1])
    g = torch.Generator().manual_seed(8)
    c = 3
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * 3
    targets = (torch.rand(n, c, generator=g) < 0.5).long()
    targets[torch.rand(n, c, generator=g) < 0.1] = IGNORE
    x = logits.clone().requires_grad_()
    got = fn(x, targets, reduction="none", **options)
    got.sum().backward()
    assert calls == [1]  # the multi-label call took the windowed kernel
    y = logits.clone().requires_grad_()
    ref, _ = per_column_binary(fn, y, targets, options)
    ref.sum().backward()
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-9)
    assert x.grad is not None
    assert y.grad is not None
    torch.testing.assert_close(x.grad, y.grad, rtol=0, atol=1e-8 * float(y.grad.abs().max()))


def test_functional_pauc_live_mask_per_column() -> None:
    logits, targets = make_ml(9)
    g = torch.Generator().manual_seed(90)
    live = torch.rand(logits.shape[0], generator=g) < 0.6
    live[2:4] = True
    options = {"beta": 0.3, "pos_numerator": "live", "temperature": 0.2}
    got = pauc_at_budget_loss(logits, targets, reduction="none", live_mask=live, **options)
    ref, valid = per_column_binary(pauc_at_budget_loss, logits, targets, options, rows={"live_mask": live})
    assert bool(valid.all())
    assert_close(got, ref)


@ALL
def test_all_positive_or_all_ignored_column(name: str) -> None:
    """A column whose every cell is ignored is invalid, exactly like its (empty) binary call."""
    _, fn, options = LOSSES[name]
    logits, targets = make_ml(10)
    targets[:, 2] = IGNORE
    got, _, valid = fn(logits, targets, reduction="none", return_per_class=True, **options)
    ref, ref_valid = per_column_binary(fn, logits, targets, options)
    assert valid.tolist() == ref_valid.tolist() == [True, True, False]
    assert_close(got, ref)


# --------------------------------------------------------------------------------------------
# Modules: no queue == functional; queue over several calls == functional on [live; stored]
# --------------------------------------------------------------------------------------------


@ALL
def test_module_without_queue_equals_functional(name: str) -> None:
    cls, fn, options = LOSSES[name]
    logits, targets = make_ml(11)
    module = cls(3, queue_size=0, reduction="none", **options)
    rows = pauc_masks(name, logits.shape[0], 11)
    x = logits.clone().requires_grad_()
    got = module(x, targets, rows.get("iid_mask"))
    ref, _ = per_column_binary(fn, logits, targets, options, rows=rows)
    assert_close(got, ref)
    got.sum().backward()
    assert x.grad is not None


class MultiHotRing:
    """A list-based ring buffer of ``[Q, C]`` multi-hot rows (writes in order, wraps around)."""

    def __init__(self, size: int, c: int) -> None:
        self.size = size
        self.logits = torch.zeros(size, c, dtype=torch.float64)
        self.targets = torch.full((size, c), IGNORE, dtype=torch.long)
        self.iid = torch.ones(size, dtype=torch.bool)
        self.ptr = 0

    def push(self, logits: torch.Tensor, targets: torch.Tensor, iid: torch.Tensor) -> None:
        for r in range(logits.shape[0]):
            self.logits[self.ptr] = logits[r].detach()
            self.targets[self.ptr] = targets[r].long()
            self.iid[self.ptr] = iid[r]
            self.ptr = (self.ptr + 1) % self.size


@ALL
@pytest.mark.parametrize("target_dtype", [torch.int64, torch.float32])
def test_module_with_queue_equals_functional_on_concatenated_pool(name: str, target_dtype: torch.dtype) -> None:
    cls, fn, options = LOSSES[name]
    q, n, c = 20, 14, 3
    module = cls(c, queue_size=q, reduction="mean", **options).double()
    ring = MultiHotRing(q, c)
    g = torch.Generator().manual_seed(12)
    for step in range(4):  # 56 rows through a 20-slot queue: wraps around twice
        logits, targets = make_ml(100 + step, n=n, c=c)
        iid = torch.rand(n, generator=g) < 0.8
        x = logits.clone().requires_grad_()
        got = module(x, targets.to(target_dtype), iid, return_per_class=True)

        y = logits.clone().requires_grad_()
        pool_logits = torch.cat([y, ring.logits.clone()])
        pool_targets = torch.cat([targets, ring.targets.clone()])
        extra: dict[str, Any] = {}
        if cls is PAUCAtBudgetLoss:
            extra = {
                "iid_mask": torch.cat([iid, ring.iid.clone()]),
                "live_mask": torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(q, dtype=torch.bool)]),
            }
        ref = fn(pool_logits, pool_targets, reduction="mean", return_per_class=True, **options, **extra)
        for a, b in zip(got, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=ATOL, equal_nan=True)
        if bool(ref[2].any()):
            got[0].backward()
            ref[0].backward()
            assert x.grad is not None
            assert y.grad is not None
            torch.testing.assert_close(x.grad, y.grad, rtol=0, atol=1e-12)
        ring.push(logits, targets, iid)
        # The queue holds [Q, C] multi-hot rows, in slot order.
        assert module._queue._q_targets.shape == (q, c)
        assert module._queue._q_targets.dtype == torch.int64
        assert torch.equal(module._queue._q_targets, ring.targets)
        assert torch.equal(module._queue._q_logits, ring.logits)
        assert torch.equal(module._queue._q_iid, ring.iid)
        assert module._queue._q_ptr.item() == ring.ptr


@pytest.mark.parametrize("name", ["ap", "pauc-pair"])
def test_module_queue_bool_targets_stored_as_int(name: str) -> None:
    cls, _, options = LOSSES[name]
    logits, targets = make_ml(13, n=8)
    targets = targets.clamp_min(0).bool()
    module = cls(3, queue_size=8, **options)
    module(logits.float(), targets)
    assert module._queue._q_targets.dtype == torch.int64
    assert torch.equal(module._queue._q_targets, targets.long())


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

BAD_CELLS = [2, -1, 0.5, float("nan"), -100.5]


@ALL
@pytest.mark.parametrize("bad", BAD_CELLS)
def test_functional_rejects_cells_outside_01_ignore(name: str, bad: float) -> None:
    _, fn, options = LOSSES[name]
    logits, targets = make_ml(14)
    targets = targets.double()
    targets[7, 1] = bad
    with pytest.raises(ValueError, match="`targets`"):
        fn(logits, targets, **options)


@ALL
@pytest.mark.parametrize("bad", [2, -1, 5])
def test_module_rejects_bad_cells_and_leaves_queue_untouched(name: str, bad: int) -> None:
    cls, _, options = LOSSES[name]
    module = cls(3, queue_size=16, **options).double()
    logits, targets = make_ml(15, n=10)
    module(logits, targets)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    targets = targets.clone()
    targets[4, 2] = bad
    with pytest.raises(ValueError, match="`targets`"):
        module(logits, targets)
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@ALL
def test_validate_args_false_counts_non_zero_cells_as_positive(name: str) -> None:
    _, fn, options = LOSSES[name]
    logits, targets = make_ml(16)
    odd = targets.clone()
    odd[odd == 1] = 3
    got = fn(logits, odd, reduction="none", validate_args=False, **options)
    assert_close(got, fn(logits, targets, reduction="none", **options))


@ALL
@pytest.mark.parametrize("shape", [(48, 2), (48, 4), (47, 3), (48, 3, 1)])
def test_wrong_target_shape_raises(name: str, shape: tuple[int, ...]) -> None:
    cls, fn, options = LOSSES[name]
    logits, _ = make_ml(17)
    targets = torch.zeros(shape, dtype=torch.long)
    with pytest.raises(ValueError, match="`targets`"):
        fn(logits, targets, **options)
    with pytest.raises(ValueError, match="`targets`"):
        cls(3, **options)(logits, targets)


# --------------------------------------------------------------------------------------------
# Switching between class ids and multi-hot targets
# --------------------------------------------------------------------------------------------


def class_id_batch(seed: int, n: int = 12, c: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=torch.float64), torch.arange(n) % c


@ALL
def test_multi_label_then_class_ids_raises_until_reset(name: str) -> None:
    cls, _, options = LOSSES[name]
    module = cls(3, queue_size=16, **options).double()
    module(*make_ml(18, n=10))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(ValueError, match=r"`targets`.*reset_queue"):
        module(*class_id_batch(0))
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing enqueued by the failed call
    module.reset_queue()
    module(*class_id_batch(0))
    assert module._queue._q_targets.shape == (16,)
    assert module._queue._q_targets[:12].tolist() == (torch.arange(12) % 3).tolist()


@ALL
def test_class_ids_then_multi_label_raises_until_reset(name: str) -> None:
    cls, _, options = LOSSES[name]
    module = cls(3, queue_size=16, **options).double()
    module(*class_id_batch(1))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(ValueError, match=r"`targets`.*reset_queue"):
        module(*make_ml(19, n=10))
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    module.reset_queue()
    logits, targets = make_ml(19, n=10)
    module(logits, targets)
    assert torch.equal(module._queue._q_targets[:10], targets)


@ALL
def test_empty_queue_switches_silently(name: str) -> None:
    """A queue holding only ``ignore_index`` slots switches layout without an error, both ways."""
    cls, fn, options = LOSSES[name]
    module = cls(3, queue_size=16, **options).double()
    logits, _ = class_id_batch(2)
    module(logits, torch.full((12,), IGNORE))  # enqueues only empty rows
    ml_logits, ml_targets = make_ml(20, n=16)
    got = module(ml_logits, ml_targets)
    assert_close(got, fn(ml_logits, ml_targets, **options))
    module.reset_queue()
    module.eval()  # frozen queue: still empty
    module(*class_id_batch(3))
    module(ml_logits, ml_targets)


@ALL
def test_no_queue_accepts_both_layouts_in_turn(name: str) -> None:
    cls, fn, options = LOSSES[name]
    module = cls(3, queue_size=0, **options)
    ml_logits, ml_targets = make_ml(21)
    ids_logits, ids = class_id_batch(4, n=30)
    for _ in range(2):
        assert_close(module(ml_logits, ml_targets), fn(ml_logits, ml_targets, **options))
        assert_close(module(ids_logits, ids), fn(ids_logits, ids, **options))


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


@ALL
def test_multi_label_checkpoint_round_trip_into_a_fresh_module(name: str) -> None:
    cls, _, options = LOSSES[name]
    trained = cls(3, queue_size=16, **options).double()
    for step in range(3):
        trained(*make_ml(30 + step, n=10))
    state = trained.state_dict()
    assert state["_queue._q_targets"].shape == (16, 3)
    assert set(state) == {f"_queue.{k}" for k in ("_q_logits", "_q_targets", "_q_ptr", "_q_iid", "_q_weight")}

    fresh = cls(3, queue_size=16, **options).double()
    fresh.load_state_dict(state)
    for key, value in state.items():
        assert torch.equal(fresh.state_dict()[key], value), key
    logits, targets = make_ml(40, n=10)
    assert torch.equal(fresh(logits, targets), trained(logits, targets))
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    with pytest.raises(ValueError, match="reset_queue"):  # the loaded queue holds multi-hot rows
        fresh(*class_id_batch(5))


@ALL
def test_class_id_checkpoint_loads_into_a_multi_label_module(name: str) -> None:
    cls, _, options = LOSSES[name]
    ids_module = cls(3, queue_size=16, **options).double()
    ids_module(*class_id_batch(6))
    ml_module = cls(3, queue_size=16, **options).double()
    ml_module(*make_ml(41, n=10))
    ml_module.load_state_dict(ids_module.state_dict())
    assert ml_module._queue._q_targets.shape == (16,)
    batch = class_id_batch(7)
    assert torch.equal(ml_module(*batch), ids_module(*batch))
    with pytest.raises(ValueError, match="reset_queue"):
        ml_module(*make_ml(42, n=10))


# --------------------------------------------------------------------------------------------
# Pool assembly: fully ignored rows, max_pool_size grouping
# --------------------------------------------------------------------------------------------


@ALL
def test_fully_ignored_rows_do_not_count_toward_max_pool_size(name: str) -> None:
    cls, fn, options = LOSSES[name]
    logits, targets = make_ml(43, n=20)
    targets[0] = 0  # no fully ignored row among the first 20
    padding = torch.full((30, 3), IGNORE)
    all_logits = torch.cat([logits, torch.randn(30, 3, dtype=torch.float64)])
    all_targets = torch.cat([targets, padding])
    module = cls(3, queue_size=0, max_pool_size=20, reduction="none", **options)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*max_pool_size.*")
        got = module(all_logits, all_targets)
    assert_close(got, fn(logits, targets, reduction="none", **options))


def test_partially_ignored_row_counts_toward_max_pool_size() -> None:
    logits, targets = make_ml(44, n=20)
    targets[0] = torch.tensor([IGNORE, IGNORE, 0])
    module = SmoothAPLoss(3, queue_size=0, max_pool_size=19)
    with pytest.warns(UserWarning, match="max_pool_size"):
        module(logits, targets)


def lowest_positive_group(targets: torch.Tensor) -> torch.Tensor:
    """Group id of each multi-hot row, by a loop: its lowest positive class, or ``C`` if none."""
    c = targets.shape[1]
    out = []
    for row in targets.tolist():
        out.append(next((k for k, v in enumerate(row) if v == 1), c))
    return torch.tensor(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_subsampling_groups_rows_by_lowest_positive_class(seed: int) -> None:
    """Same generator state: the multi-hot selection equals the class-id selection of the group ids."""
    _, targets = make_ml(45 + seed, n=80, c=4)
    targets = targets[kept := (targets != IGNORE).any(1)]
    assert kept.sum() > 30
    groups = lowest_positive_group(targets)
    a = minimum_quota_indices(targets, 30, torch.Generator().manual_seed(seed))
    b = minimum_quota_indices(groups, 30, torch.Generator().manual_seed(seed))
    assert torch.equal(a, b)


@pytest.mark.parametrize("seed", range(4))
def test_subsampling_keeps_a_quota_of_each_group(seed: int) -> None:
    """Rare groups (defined by the lowest positive class only) survive a tight ``max_pool_size``."""
    c = 3
    rows = [[1, 1, 1]] * 60 + [[0, 1, 1]] * 2 + [[0, 0, 1]] * 2 + [[0, 0, 0]] * 60
    targets = torch.tensor(rows)
    logits = torch.randn(len(rows), c, dtype=torch.float64)
    module = SmoothAPLoss(c, queue_size=0, max_pool_size=8, generator=torch.Generator().manual_seed(seed))
    with pytest.warns(UserWarning, match="max_pool_size"):
        _, stats = module(logits, targets, return_diagnostics=True)
    # 4 groups -> quota max(1, 8 // 8) = 1 row each: group 1 ([0,1,1]) and group 2 ([0,0,1]) are kept.
    assert stats["pool_size"].tolist() == [8, 8, 8]
    pos = stats["pos_count"].tolist()
    assert pos[1] - pos[0] >= 1  # a [0, 1, 1] row
    assert pos[2] - pos[1] >= 1  # a [0, 0, 1] row
    assert stats["neg_count"][2] >= 1  # a [0, 0, 0] row
