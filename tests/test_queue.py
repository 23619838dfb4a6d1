"""The memory queue of the ranking losses: write order, pool order, gating, casting, persistence.

Spec: incumbent-behaviour.md §6 (storage, write, read, gating and reset, state-dict keys and
checkpoint shims), §2.3 steps 7, 8 and 13, §2.6 (weights stored per row); SPEC.md D3 and D10
(a call that raises leaves the queue untouched), and item 2 (state-dict keys: a checkpoint
saved with either library loads into the other).
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

from imbalanced_losses import PAUCAtBudgetLoss, RecallAtQuantileLoss, SmoothAPLoss
from imbalanced_losses.functional import pauc_at_budget_loss, recall_at_quantile_loss, smooth_ap_loss

KEYS = ("_queue._q_logits", "_queue._q_targets", "_queue._q_ptr", "_queue._q_iid", "_queue._q_weight")

MAKERS = {
    "SmoothAP": lambda **kw: SmoothAPLoss(num_classes=3, **kw),
    "Recall": lambda **kw: RecallAtQuantileLoss(num_classes=3, quantile=0.3, **kw),
    "PAUC": lambda **kw: PAUCAtBudgetLoss(num_classes=3, beta=0.3, **kw),
}
ALL = pytest.mark.parametrize("name", list(MAKERS))

# Tiny pools make the pAUC reference dispersion degenerate; that warning is not under test here.
pytestmark = [
    pytest.mark.filterwarnings("ignore:PAUCAtBudgetLoss. degenerate dispersion:UserWarning"),
    pytest.mark.usefixtures("on_device"),
]  # also on CUDA when available (tests/conftest.py)


def batch(n: int, num_classes: int = 3, *, start: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` rows; with ``start`` the logits of row ``i`` are all ``start + i`` (easy to trace)."""
    if start is None:
        logits = torch.randn(n, num_classes)
    else:
        logits = (start + torch.arange(n, dtype=torch.float32)).unsqueeze(1).repeat(1, num_classes)
    targets = torch.arange(n) % num_classes
    return logits, targets


def snapshot(loss_fn: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in loss_fn.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


def slot_ids(loss_fn: torch.nn.Module) -> list[float]:
    return loss_fn._queue._q_logits[:, 0].tolist()


# --------------------------------------------------------------------------------------------
# Write order
# --------------------------------------------------------------------------------------------


@ALL
def test_circular_write_and_wrap_around(name: str) -> None:
    loss_fn = MAKERS[name](queue_size=5)
    q = loss_fn._queue
    loss_fn(*batch(3, start=10))  # rows 10, 11, 12 -> slots 0..2
    assert slot_ids(loss_fn) == [10, 11, 12, 0, 0]
    assert q._q_ptr.tolist() == [3]
    assert q._q_targets.tolist() == [0, 1, 2, -100, -100]

    loss_fn(*batch(3, start=20))  # rows 20, 21, 22 -> slots 3, 4, then 0
    assert slot_ids(loss_fn) == [22, 11, 12, 20, 21]
    assert q._q_ptr.tolist() == [1]
    assert q._q_targets.tolist() == [2, 1, 2, 0, 1]

    loss_fn(*batch(7, start=30))  # 7 >= Q: the last 5 rows, in order, pointer back to 0
    assert slot_ids(loss_fn) == [32, 33, 34, 35, 36]
    assert q._q_ptr.tolist() == [0]
    assert q._q_targets.tolist() == [2, 0, 1, 2, 0]


@ALL
def test_batch_of_exactly_queue_size(name: str) -> None:
    loss_fn = MAKERS[name](queue_size=5)
    loss_fn(*batch(2, start=1))
    loss_fn(*batch(5, start=10))
    assert slot_ids(loss_fn) == [10, 11, 12, 13, 14]
    assert loss_fn._queue._q_ptr.tolist() == [0]


def test_over_capacity_batch_keeps_last_rows_and_their_flags() -> None:
    loss_fn = PAUCAtBudgetLoss(num_classes=3, beta=0.3, queue_size=4)
    logits, targets = batch(10, start=0)
    iid = torch.tensor([True, False] * 5)
    loss_fn(logits, targets, iid, sample_weight=torch.arange(10, dtype=torch.float32))
    q = loss_fn._queue
    assert slot_ids(loss_fn) == [6, 7, 8, 9]
    assert q._q_targets.tolist() == targets[6:].tolist()
    assert q._q_iid.tolist() == [True, False, True, False]
    assert q._q_weight.tolist() == [6.0, 7.0, 8.0, 9.0]
    assert q._q_ptr.tolist() == [0]


def test_queue_stores_detached_rows_in_float32() -> None:
    loss_fn = SmoothAPLoss(num_classes=3, queue_size=8)
    logits = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    loss_fn(logits, torch.tensor([0, 1, 2, 0]))
    q = loss_fn._queue._q_logits
    assert q.dtype == torch.float32
    assert not q.requires_grad
    assert torch.equal(q[:4], logits.detach().float())


@ALL
def test_ignore_index_rows_are_enqueued_too(name: str) -> None:
    loss_fn = MAKERS[name](queue_size=8)
    logits, targets = batch(6, start=1)
    targets[[1, 4]] = -100
    loss_fn(logits, targets)
    q = loss_fn._queue
    assert q._q_ptr.tolist() == [6]
    assert q._q_targets[:6].tolist() == targets.tolist()
    assert slot_ids(loss_fn)[:6] == [1, 2, 3, 4, 5, 6]


def test_custom_ignore_index_marks_empty_slots() -> None:
    loss_fn = SmoothAPLoss(num_classes=3, queue_size=4, ignore_index=-1)
    assert loss_fn._queue._q_targets.tolist() == [-1] * 4
    logits, targets = batch(3)
    loss_fn(logits, targets)
    loss_fn.reset_queue()
    assert loss_fn._queue._q_targets.tolist() == [-1] * 4


# --------------------------------------------------------------------------------------------
# Read: the pool is the live rows followed by all Q slots
# --------------------------------------------------------------------------------------------


def test_merge_order_is_live_rows_then_all_slots_in_buffer_order() -> None:
    loss_fn = SmoothAPLoss(num_classes=3, queue_size=5)
    loss_fn(*batch(3, start=10))
    loss_fn(*batch(3, start=20))  # buffer order [22, 11, 12, 20, 21], not chronological
    logits, targets = batch(2, start=100)
    iid = torch.tensor([True, False])
    merged = loss_fn._queue.merge(logits, targets, iid, None)
    assert merged.logits[:, 0].tolist() == [100, 101, 22, 11, 12, 20, 21]
    assert merged.targets.tolist() == [0, 1, 2, 1, 2, 0, 1]
    assert merged.iid.tolist() == [True, False, True, True, True, True, True]
    assert merged.is_live.tolist() == [True, True, False, False, False, False, False]
    assert merged.weight is None


def test_queue_rows_are_cast_to_the_live_dtype_and_never_carry_gradient() -> None:
    loss_fn = SmoothAPLoss(num_classes=3, queue_size=6)
    loss_fn(*batch(4))
    logits = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    merged = loss_fn._queue.merge(logits, torch.tensor([0, 1, 2]), torch.ones(3, dtype=torch.bool), None)
    assert merged.logits.dtype == torch.float64
    merged.logits.sum().backward()
    assert logits.grad is not None
    assert (logits.grad == 1).all()


@ALL
def test_loss_reads_the_queue_in_eval_mode(name: str) -> None:
    loss_fn = MAKERS[name](queue_size=32)
    loss_fn(*batch(24))
    state = snapshot(loss_fn)
    loss_fn.eval()
    logits, targets = batch(9)
    with_queue = loss_fn(logits, targets)
    loss_fn.reset_queue()
    without = loss_fn(logits, targets)
    assert not torch.equal(with_queue, without)
    loss_fn.load_state_dict(state)
    assert torch.equal(loss_fn(logits, targets), with_queue)


# --------------------------------------------------------------------------------------------
# Gating and reset
# --------------------------------------------------------------------------------------------


@ALL
def test_eval_mode_freezes_the_queue(name: str) -> None:
    loss_fn = MAKERS[name](queue_size=16)
    loss_fn(*batch(6))
    before = snapshot(loss_fn)
    loss_fn.eval()
    for _ in range(3):
        loss_fn(*batch(6))
    assert_same_state(before, snapshot(loss_fn))


@ALL
def test_update_queue_in_eval(name: str) -> None:
    loss_fn = MAKERS[name](queue_size=16, update_queue_in_eval=True)
    loss_fn(*batch(6))
    loss_fn.eval()
    loss_fn(*batch(5, start=50))
    assert loss_fn._queue._q_ptr.tolist() == [11]
    assert slot_ids(loss_fn)[6:11] == [50, 51, 52, 53, 54]


@ALL
def test_train_mode_updates_even_under_no_grad(name: str) -> None:
    loss_fn = MAKERS[name](queue_size=16)
    with torch.no_grad():
        loss_fn(*batch(6))
    assert loss_fn._queue._q_ptr.tolist() == [6]


@ALL
def test_reset_queue(name: str) -> None:
    loss_fn = MAKERS[name](queue_size=8)
    loss_fn(*batch(6), torch.tensor([True, False] * 3), sample_weight=torch.full((6,), 2.0))
    loss_fn.reset_queue()
    q = loss_fn._queue
    assert (q._q_logits == 0).all()
    assert (q._q_targets == -100).all()
    assert q._q_ptr.tolist() == [0]
    assert q._q_iid.all()
    assert (q._q_weight == 1).all()
    assert q.weighted is False
    # Behaves like a fresh loss afterwards.
    fresh = MAKERS[name](queue_size=8)
    logits, targets = batch(7)
    assert torch.equal(loss_fn(logits, targets), fresh(logits, targets))
    assert_same_state(snapshot(loss_fn), snapshot(fresh))


def test_reset_queue_is_a_noop_without_queue() -> None:
    loss_fn = SmoothAPLoss(num_classes=3, queue_size=0)
    loss_fn.reset_queue()
    assert loss_fn.state_dict() == {}


# --------------------------------------------------------------------------------------------
# Casting
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cast", ["to", "double"])
def test_float_cast_changes_logits_and_weight_buffers_only(cast: str) -> None:
    loss_fn = SmoothAPLoss(num_classes=3, queue_size=8)
    loss_fn(*batch(4))
    loss_fn = loss_fn.to(torch.float64) if cast == "to" else loss_fn.double()
    q = loss_fn._queue
    assert q._q_logits.dtype == torch.float64
    assert q._q_weight.dtype == torch.float64
    assert q._q_targets.dtype == torch.int64
    assert q._q_ptr.dtype == torch.int64
    assert q._q_iid.dtype == torch.bool
    logits = torch.randn(5, 3, dtype=torch.float64)
    loss_fn(logits, torch.tensor([0, 1, 2, 0, 1]))
    # Stored at full float64 precision: slots 4..7, then wrap-around to slot 0.
    assert torch.equal(q._q_logits[4:8], logits[:4])
    assert torch.equal(q._q_logits[0], logits[4])


def test_half_cast() -> None:
    loss_fn = SmoothAPLoss(num_classes=3, queue_size=8).half()
    q = loss_fn._queue
    assert q._q_logits.dtype == torch.float16
    assert q._q_weight.dtype == torch.float16
    assert q._q_targets.dtype == torch.int64
    assert q._q_iid.dtype == torch.bool


def test_default_buffer_dtypes_and_shapes() -> None:
    loss_fn = PAUCAtBudgetLoss(num_classes=4, queue_size=6)
    sd = loss_fn.state_dict()
    assert sd["_queue._q_logits"].shape == (6, 4)
    assert sd["_queue._q_logits"].dtype == torch.float32
    assert sd["_queue._q_targets"].shape == (6,)
    assert sd["_queue._q_targets"].dtype == torch.int64
    assert sd["_queue._q_ptr"].shape == (1,)
    assert sd["_queue._q_ptr"].dtype == torch.int64
    assert sd["_queue._q_iid"].shape == (6,)
    assert sd["_queue._q_iid"].dtype == torch.bool
    assert sd["_queue._q_weight"].shape == (6,)
    assert sd["_queue._q_weight"].dtype == torch.float32
    assert (sd["_queue._q_targets"] == -100).all()
    assert sd["_queue._q_iid"].all()
    assert (sd["_queue._q_weight"] == 1).all()
    assert (sd["_queue._q_logits"] == 0).all()


# --------------------------------------------------------------------------------------------
# State dict
# --------------------------------------------------------------------------------------------


@ALL
def test_state_dict_keys(name: str) -> None:
    loss_fn = MAKERS[name](queue_size=8)
    assert sorted(loss_fn.state_dict()) == sorted(KEYS)
    assert len(loss_fn.state_dict()) == 5


@ALL
def test_no_queue_means_no_buffers_and_empty_state_dict(name: str) -> None:
    loss_fn = MAKERS[name](queue_size=0)
    assert list(loss_fn.buffers()) == []
    assert loss_fn.state_dict() == {}
    loss_fn(*batch(6))
    assert loss_fn.state_dict() == {}
    loss_fn.load_state_dict({})


@ALL
def test_state_dict_round_trip(name: str) -> None:
    torch.manual_seed(3)
    src = MAKERS[name](queue_size=16)
    for _ in range(3):
        logits, targets = batch(7)
        src(logits, targets, torch.rand(7) < 0.8)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst = MAKERS[name](queue_size=16)
    dst.load_state_dict(torch.load(buf), strict=True)
    assert_same_state(snapshot(src), snapshot(dst))
    for _ in range(3):
        logits, targets = batch(9)
        assert torch.equal(src(logits, targets), dst(logits, targets))
    assert_same_state(snapshot(src), snapshot(dst))


def incumbent_checkpoint(prefix: str = "_queue.", *, with_iid_weight: bool = True) -> dict[str, torch.Tensor]:
    """A hand-written 3-class, Q=6 queue checkpoint, as imbalanced-losses 0.6.0 would save it."""
    sd = {
        prefix + "_q_logits": torch.tensor(
            [[0.5, -1.0, 2.0], [1.5, 0.0, -0.5], [-2.0, 1.0, 0.3], [0.1, 0.2, 0.9], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
        ),
        prefix + "_q_targets": torch.tensor([0, 1, 2, 2, -100, -100]),
        prefix + "_q_ptr": torch.tensor([4]),
    }
    if with_iid_weight:
        sd[prefix + "_q_iid"] = torch.tensor([True, False, True, True, True, True])
        sd[prefix + "_q_weight"] = torch.ones(6)
    return sd


def test_loads_a_hand_written_incumbent_checkpoint() -> None:
    sd = incumbent_checkpoint()
    loss_fn = PAUCAtBudgetLoss(num_classes=3, beta=0.5, queue_size=6)
    result = loss_fn.load_state_dict(sd, strict=True)
    assert list(result.missing_keys) == []
    assert list(result.unexpected_keys) == []
    for key, value in sd.items():
        assert torch.equal(loss_fn.state_dict()[key], value), key
    logits, targets = torch.randn(4, 3), torch.arange(4) % 3
    got = loss_fn(logits, targets)
    expected = pauc_at_budget_loss(
        torch.cat([logits, sd["_queue._q_logits"]]),
        torch.cat([targets, sd["_queue._q_targets"]]),
        beta=0.5,
        iid_mask=torch.cat([torch.ones(4, dtype=torch.bool), sd["_queue._q_iid"]]),
        live_mask=torch.cat([torch.ones(4, dtype=torch.bool), torch.zeros(6, dtype=torch.bool)]),
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # The next write starts at the checkpoint's pointer (slot 4) and wraps around.
    q = loss_fn._queue
    assert q._q_ptr.tolist() == [2]
    assert torch.equal(q._q_logits[[4, 5, 0, 1]], logits)
    assert torch.equal(q._q_logits[2:4], sd["_queue._q_logits"][2:4])


@pytest.mark.parametrize("with_iid_weight", [True, False], ids=["all-keys", "no-iid-weight"])
def test_loads_old_flat_keys(with_iid_weight: bool) -> None:
    sd = incumbent_checkpoint(prefix="", with_iid_weight=with_iid_weight)
    loss_fn = SmoothAPLoss(num_classes=3, queue_size=6)
    loss_fn.load_state_dict(dict(sd), strict=True)
    q = loss_fn._queue
    assert torch.equal(q._q_logits, sd["_q_logits"])
    assert torch.equal(q._q_targets, sd["_q_targets"])
    assert q._q_ptr.tolist() == [4]
    expected_iid = sd["_q_iid"] if with_iid_weight else torch.ones(6, dtype=torch.bool)
    assert torch.equal(q._q_iid, expected_iid)
    assert (q._q_weight == 1).all()
    assert sorted(loss_fn.state_dict()) == sorted(KEYS)


def test_missing_iid_and_weight_load_with_defaults_under_strict() -> None:
    loss_fn = PAUCAtBudgetLoss(num_classes=3, beta=0.5, queue_size=6)
    # Put non-default flags and weights in place first: the defaults must replace them.
    loss_fn(
        torch.randn(6, 3), torch.arange(6) % 3, torch.zeros(6, dtype=torch.bool), sample_weight=torch.full((6,), 3.0)
    )
    assert not loss_fn._queue._q_iid.any()
    assert loss_fn._queue.weighted
    loss_fn.load_state_dict(incumbent_checkpoint(with_iid_weight=False), strict=True)
    q = loss_fn._queue
    assert q._q_iid.all()
    assert (q._q_weight == 1).all()
    assert q.weighted is False


def test_strict_load_still_rejects_unknown_keys() -> None:
    loss_fn = SmoothAPLoss(num_classes=3, queue_size=6)
    sd = incumbent_checkpoint()
    sd["_queue._q_bogus"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="_q_bogus"):
        loss_fn.load_state_dict(sd, strict=True)


def test_loading_weights_restores_weighted_mode() -> None:
    sd = incumbent_checkpoint()
    sd["_queue._q_weight"] = torch.tensor([2.0, 0.5, 1.0, 3.0, 1.0, 1.0])
    loss_fn = SmoothAPLoss(num_classes=3, queue_size=6, temperature=0.1)
    loss_fn.load_state_dict(sd)
    logits, targets = torch.randn(8, 3), torch.arange(8) % 3
    got = loss_fn(logits, targets)
    expected = smooth_ap_loss(
        torch.cat([logits, sd["_queue._q_logits"]]),
        torch.cat([targets, sd["_queue._q_targets"]]),
        temperature=0.1,
        sample_weight=torch.cat([torch.ones(8), sd["_queue._q_weight"]]),
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# A call that raises leaves the queue untouched (SPEC D3, D10)
# --------------------------------------------------------------------------------------------


@ALL
@pytest.mark.parametrize(
    "bad",
    ["class-id-C", "class-id-negative", "nan-logit", "inf-logit", "fractional-target", "negative-weight"],
)
def test_queue_untouched_when_a_call_raises(name: str, bad: str) -> None:
    loss_fn = MAKERS[name](queue_size=16)
    loss_fn(*batch(5))
    before = snapshot(loss_fn)
    logits, targets = batch(6)
    kwargs = {}
    if bad == "class-id-C":
        targets[2] = 3
    elif bad == "class-id-negative":
        targets[2] = -1
    elif bad == "nan-logit":
        logits[1, 1] = float("nan")
    elif bad == "inf-logit":
        logits[1, 1] = float("inf")
    elif bad == "fractional-target":
        targets = targets.float()
        targets[0] = 0.5
    elif bad == "negative-weight":
        kwargs["sample_weight"] = torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"`(logits|targets|sample_weight)`"):
        loss_fn(logits, targets, **kwargs)
    assert_same_state(before, snapshot(loss_fn))


@ALL
def test_queue_untouched_when_temperature_was_made_invalid(name: str) -> None:
    loss_fn = MAKERS[name](queue_size=16)
    loss_fn(*batch(5))
    before = snapshot(loss_fn)
    loss_fn.temperature = -1.0
    with pytest.raises(ValueError, match="temperature"):
        loss_fn(*batch(6))
    assert_same_state(before, snapshot(loss_fn))


# --------------------------------------------------------------------------------------------
# Copies
# --------------------------------------------------------------------------------------------


@ALL
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copy_of_a_filled_queue(name: str, how: str) -> None:
    loss_fn = MAKERS[name](queue_size=16)
    for _ in range(3):
        loss_fn(*batch(7), sample_weight=torch.rand(7) + 0.5)
    clone = copy.deepcopy(loss_fn) if how == "deepcopy" else pickle.loads(pickle.dumps(loss_fn))
    assert_same_state(snapshot(loss_fn), snapshot(clone))
    assert clone._queue.weighted == loss_fn._queue.weighted
    logits, targets = batch(5)
    assert torch.equal(clone(logits, targets), loss_fn(logits, targets))
    # Independent storage.
    clone.reset_queue()
    assert (loss_fn._queue._q_targets != -100).any()


# --------------------------------------------------------------------------------------------
# Weighted queue (incumbent §2.6)
# --------------------------------------------------------------------------------------------


def test_weights_are_stored_and_later_unweighted_calls_still_use_them() -> None:
    loss_fn = SmoothAPLoss(num_classes=3, queue_size=12, temperature=0.1)
    w = torch.tensor([0.5, 2.0, 1.0, 3.0, 0.0, 1.5])
    loss_fn(*batch(6), sample_weight=w)
    assert loss_fn._queue._q_weight[:6].tolist() == w.tolist()
    assert (loss_fn._queue._q_weight[6:] == 1).all()
    q_logits, q_targets = loss_fn._queue._q_logits.clone(), loss_fn._queue._q_targets.clone()
    q_weight = loss_fn._queue._q_weight.clone()

    logits, targets = batch(6)
    got = loss_fn(logits, targets)  # no sample_weight: live rows weigh 1, queue rows keep theirs
    pool_logits, pool_targets = torch.cat([logits, q_logits]), torch.cat([targets, q_targets])
    weighted = smooth_ap_loss(
        pool_logits, pool_targets, temperature=0.1, sample_weight=torch.cat([torch.ones(6), q_weight])
    )
    unweighted = smooth_ap_loss(pool_logits, pool_targets, temperature=0.1)
    torch.testing.assert_close(got, weighted, rtol=0, atol=1e-6)
    assert not torch.allclose(got, unweighted, rtol=0, atol=1e-4)
    # The unweighted call stored weight 1 for its rows.
    assert (loss_fn._queue._q_weight[6:12] == 1).all()


def test_overwriting_all_weighted_rows_returns_to_the_unweighted_path() -> None:
    loss_fn = RecallAtQuantileLoss(num_classes=3, quantile=0.3, queue_size=6)
    loss_fn(*batch(6), sample_weight=torch.full((6,), 2.0))
    assert loss_fn._queue.weighted
    loss_fn(*batch(6))
    assert loss_fn._queue.weighted is False
    assert (loss_fn._queue._q_weight == 1).all()
    logits, targets = batch(5)
    q_logits, q_targets = loss_fn._queue._q_logits.clone(), loss_fn._queue._q_targets.clone()
    got = loss_fn(logits, targets)
    expected = recall_at_quantile_loss(torch.cat([logits, q_logits]), torch.cat([targets, q_targets]), quantile=0.3)
    assert torch.equal(got, expected)


def test_iid_flags_are_stored_per_row() -> None:
    loss_fn = PAUCAtBudgetLoss(num_classes=3, beta=0.3, queue_size=8)
    loss_fn(*batch(3))  # None -> True
    loss_fn(*batch(3), torch.tensor([1, 0, 1]))  # any dtype, cast to bool
    assert loss_fn._queue._q_iid.tolist() == [True, True, True, True, False, True, True, True]


def _pauc_on_pool(logits: torch.Tensor, targets: torch.Tensor, iid: torch.Tensor) -> torch.Tensor:
    return pauc_at_budget_loss(logits, targets, beta=0.5, iid_mask=iid, reduction="none")


def test_stored_non_iid_rows_still_count_in_a_call_without_flags() -> None:
    """A call without ``iid_mask`` after one with it: the stored ``False`` flags still leave their rows out."""
    g = torch.Generator().manual_seed(3)
    loss_fn = PAUCAtBudgetLoss(num_classes=3, beta=0.5, queue_size=24, reduction="none")
    first, targets = torch.randn(24, 3, generator=g), torch.arange(24) % 3
    flags = torch.rand(24, generator=g) < 0.5
    loss_fn(first, targets, flags)
    live = torch.randn(12, 3, generator=g)
    got = loss_fn(live, targets[:12])
    pool, pool_targets = torch.cat([live, first]), torch.cat([targets[:12], targets])
    expected = _pauc_on_pool(pool, pool_targets, torch.cat([torch.ones(12, dtype=torch.bool), flags]))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, equal_nan=True)
    assert not torch.allclose(
        expected, _pauc_on_pool(pool, pool_targets, torch.ones(36, dtype=torch.bool)), equal_nan=True
    )  # the flags matter for this pool


def test_loaded_non_iid_flags_count_and_reset_clears_them() -> None:
    sd = incumbent_checkpoint()  # slot 1 (a class-1 row) is not iid
    loss_fn = PAUCAtBudgetLoss(num_classes=3, beta=0.5, queue_size=6, reduction="none")
    loss_fn.load_state_dict(sd)
    logits, targets = torch.randn(9, 3, generator=torch.Generator().manual_seed(4)), torch.arange(9) % 3
    pool = torch.cat([logits, sd["_queue._q_logits"]])
    pool_targets = torch.cat([targets, sd["_queue._q_targets"]])
    expected = _pauc_on_pool(pool, pool_targets, torch.cat([torch.ones(9, dtype=torch.bool), sd["_queue._q_iid"]]))
    torch.testing.assert_close(loss_fn(logits, targets), expected, rtol=0, atol=1e-6, equal_nan=True)
    assert loss_fn._queue.flagged
    loss_fn.reset_queue()
    assert not loss_fn._queue.flagged


@ALL
def test_empty_pool_call_does_not_enqueue(name: str) -> None:
    """incumbent §2.3 step 10: a call whose pool is empty (fresh queue, all rows ignored) enqueues nothing."""
    loss_fn = MAKERS[name](queue_size=8)
    before = snapshot(loss_fn)
    logits, _ = batch(4)
    loss_fn(logits, torch.full((4,), -100))
    assert_same_state(before, snapshot(loss_fn))
    # With rows already in the queue the pool is not empty, and the ignored rows are stored.
    loss_fn(*batch(2))
    loss_fn(logits, torch.full((4,), -100))
    assert loss_fn._queue._q_ptr.tolist() == [6]
