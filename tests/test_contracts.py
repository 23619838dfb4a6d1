"""Contracts of the ranking losses' shared pipeline: dtypes, ownership, atomicity, limits, DDP agreement.

Each test pins one promise of the module API (README, ``docs/memory-queue.md``, the error
convention of ``_validation.py``) against the brute-force references of ``_references.py``,
written from the formulas and independent of the library code.
"""

from __future__ import annotations

import inspect
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from _ddp import _free_port
from _references import ref_pauc, ref_recall_at_quantile, ref_smooth_ap
from imbalanced_losses import PAUCAtBudgetLoss, RecallAtQuantileLoss, SmoothAPLoss
from imbalanced_losses.functional import pauc_at_budget_loss, recall_at_quantile_loss, smooth_ap_loss

NAMES = ("smooth_ap", "recall", "pauc")
#: Hyperparameters of each loss in these tests (temperatures wide enough that no sigmoid saturates).
KWARGS: dict[str, dict[str, Any]] = {
    "smooth_ap": {"temperature": 0.5},
    "recall": {"quantile": 0.3, "temperature": 0.5},
    "pauc": {"beta": 0.3, "temperature": 0.5},
}
if "tau_scale" in inspect.signature(RecallAtQuantileLoss).parameters:  # temperature in logits, as the reference
    KWARGS["recall"]["tau_scale"] = "logit"
MODULES: dict[str, Callable[..., Any]] = {
    "smooth_ap": SmoothAPLoss,
    "recall": RecallAtQuantileLoss,
    "pauc": PAUCAtBudgetLoss,
}
FUNCTIONALS: dict[str, Callable[..., Any]] = {
    "smooth_ap": smooth_ap_loss,
    "recall": recall_at_quantile_loss,
    "pauc": pauc_at_budget_loss,
}


def _make(name: str, **kwargs: Any) -> Any:
    return MODULES[name](**{**KWARGS[name], **kwargs})


def _reference(name: str, logits: Tensor, targets: Tensor, sample_weight: Tensor | None = None) -> Tensor:
    """``(per_class, valid)`` of the brute-force reference, in float64."""
    x = logits.detach().double()
    if name == "smooth_ap":
        per_class, valid = ref_smooth_ap(x, targets, temperature=0.5, sample_weight=sample_weight)
    elif name == "recall":
        extra = {"tau_scale": "logit"} if "tau_scale" in inspect.signature(ref_recall_at_quantile).parameters else {}
        per_class, valid = ref_recall_at_quantile(
            x, targets, quantile=0.3, temperature=0.5, sample_weight=sample_weight, **extra
        )
    else:
        per_class, valid, _ = ref_pauc(x, targets, beta=0.3, temperature=0.5, sample_weight=sample_weight)
    return per_class, valid


def _ref_mean(name: str, logits: Tensor, targets: Tensor, sample_weight: Tensor | None = None) -> Tensor:
    per_class, valid = _reference(name, logits, targets, sample_weight)
    return per_class[valid].mean()


def _batch(seed: int, n: int, num_classes: int = 1, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Distinct scores; every class (binary: both labels) present."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, num_classes, generator=g, dtype=torch.float64).to(dtype)
    k = 2 if num_classes == 1 else num_classes
    targets = torch.arange(n) % k
    return logits, targets[torch.randperm(n, generator=g)]


def _close(got: Tensor, expected: Tensor) -> None:
    torch.testing.assert_close(got.detach().double(), expected.detach().double(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# B2: stored sample weights keep the computation dtype
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_queued_large_weights_survive_float16_logits(name: str) -> None:
    """Weights of 1e5 in the queue overflow float16 (max 65504): they must stay in float32.

    The stored logits are read in the live batch's dtype (``MemoryQueue.merge``), so the
    reference pool holds the float32 rows of the first call rounded to float16.
    """
    loss_fn = _make(name, num_classes=1, queue_size=20)
    x1, t1 = _batch(1, 20)
    w1 = torch.full((20,), 1e5)
    loss_fn(x1, t1, sample_weight=w1)
    x2, t2 = _batch(2, 12, dtype=torch.float16)

    # No weight in this call: the live rows weigh 1.
    loss = loss_fn(x2, t2)
    assert torch.isfinite(loss)
    pool_x, pool_t = torch.cat([x2.double(), x1.half().double()]), torch.cat([t2, t1])
    _close(loss, _ref_mean(name, pool_x, pool_t, torch.cat([torch.ones(12), w1]).double()))

    # Weights in this call as well (the queue now holds x2 in slots 0..11, x1's last 8 rows after).
    w3 = torch.linspace(0.5, 2.0, 12)
    x3, t3 = _batch(3, 12, dtype=torch.float16)
    loss = loss_fn(x3, t3, sample_weight=w3)
    assert torch.isfinite(loss)
    pool_x = torch.cat([x3.double(), x2.double(), x1[12:].half().double()])
    pool_w = torch.cat([w3, torch.ones(12), w1[12:]]).double()
    _close(loss, _ref_mean(name, pool_x, torch.cat([t3, t2, t1[12:]]), pool_w))


# ---------------------------------------------------------------------------------------------
# B3: class_weight is copied at construction
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_class_weight_tensor_is_copied_at_construction(name: str) -> None:
    weight = torch.tensor([1.0, 0.0, 2.0])
    loss_fn = _make(name, num_classes=3, queue_size=0, class_weight=weight)
    weight.copy_(torch.tensor([0.0, 3.0, 1.0]))  # the caller reuses its tensor
    x, t = _batch(4, 24, num_classes=3)
    loss = loss_fn(x, t)
    per_class, valid = _reference(name, x, t)
    assert bool(valid.all())
    expected = (1.0 * per_class[0] + 2.0 * per_class[2]) / 3.0  # the weights given at construction
    _close(loss, expected)
    assert torch.equal(loss_fn.class_weight, torch.tensor([1.0, 0.0, 2.0]))


# ---------------------------------------------------------------------------------------------
# B4: a call that raises leaves the queue as it was
# ---------------------------------------------------------------------------------------------


def _queue_state(loss_fn: Any) -> dict[str, Tensor]:
    q = loss_fn._queue
    return {k: getattr(q, k).clone() for k in ("_q_logits", "_q_targets", "_q_ptr", "_q_iid", "_q_weight")}


def _assert_queue_unchanged(loss_fn: Any, before: dict[str, Tensor]) -> None:
    for key, value in _queue_state(loss_fn).items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("name", NAMES)
def test_bad_flag_raises_before_the_queue_changes(name: str) -> None:
    loss_fn = _make(name, num_classes=2, queue_size=16)
    x, t = _batch(5, 10, num_classes=2)
    loss_fn(x, t)  # a queue holding rows, pointer past 0
    before = _queue_state(loss_fn)
    x2, t2 = _batch(6, 6, num_classes=2)
    with pytest.raises(TypeError, match="`return_per_class`"):
        loss_fn(x2, t2, return_per_class="yes")
    _assert_queue_unchanged(loss_fn, before)
    with pytest.raises(TypeError, match="`return_diagnostics`"):
        loss_fn(x2, t2, return_diagnostics="yes")
    _assert_queue_unchanged(loss_fn, before)


def test_warning_raised_as_error_leaves_the_queue_unchanged() -> None:
    """Under ``-W error`` the degenerate-dispersion warning raises: nothing may be enqueued before it."""
    loss_fn = PAUCAtBudgetLoss(num_classes=1, beta=0.3, queue_size=16)
    before = _queue_state(loss_fn)
    x = torch.tensor([[0.0], [0.0], [0.0], [0.0], [1.0], [2.0]])  # every negative tied: no dispersion
    t = torch.tensor([0, 0, 0, 0, 1, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="dispersion"):
            loss_fn(x, t)
    _assert_queue_unchanged(loss_fn, before)


# ---------------------------------------------------------------------------------------------
# B6: an absurd queue_size is refused before anything is allocated
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("queue_size", "num_classes", "gib"), [(10**12, 1, "15832.5 GiB"), (10**10, 8, "419.1 GiB")])
def test_huge_queue_size_is_refused_before_allocating(name: str, queue_size: int, num_classes: int, gib: str) -> None:
    # bytes per row: 4 C (logits) + 8 (target) + 1 (iid flag) + 4 (weight)
    assert f"{queue_size * (4 * num_classes + 13) / 2**30:.1f} GiB" == gib
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"^`queue_size`") as info:
        _make(name, num_classes=num_classes, queue_size=queue_size)
    assert time.perf_counter() - start < 1.0
    message = str(info.value)
    assert gib in message
    assert "8 GiB" in message
    assert str(queue_size) in message


# ---------------------------------------------------------------------------------------------
# B8: temperatures that underflow the computation are refused
# ---------------------------------------------------------------------------------------------

TINY_TEMPERATURES = (1e-45, 5e-324, 1e-39, 1e-30)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("temperature", TINY_TEMPERATURES)
def test_tiny_temperature_is_refused(name: str, temperature: float) -> None:
    x, t = _batch(7, 16)
    with pytest.raises(ValueError, match=r"^`temperature` must be"):
        _make(name, num_classes=1, temperature=temperature)
    with pytest.raises(ValueError, match=r"^`temperature` must be"):
        FUNCTIONALS[name](x, t, **{**KWARGS[name], "temperature": temperature})
    loss_fn = _make(name, num_classes=1, queue_size=4)
    loss_fn.temperature = temperature  # as a scheduler would
    with pytest.raises(ValueError, match=r"^`temperature` must be"):
        loss_fn(x, t)


def test_temperature_floor_keeps_values_finite() -> None:
    """The smallest temperatures the bound still admits give finite values and gradients in float32."""
    x = torch.tensor([[0.0], [0.0], [1.0], [1.0], [-1.0], [2.0]])  # ties: the sigmoid slope peaks there
    t = torch.tensor([1, 0, 1, 0, 0, 1])
    with pytest.raises(ValueError, match=r"^`temperature` must be"):  # 1 / 1e-45 overflows float32: nan before
        smooth_ap_loss(x, t, temperature=1e-45)
    for name in NAMES:
        kwargs = {**KWARGS[name], "temperature": 1e-20}
        if name == "pauc":
            kwargs["surrogate"] = "pairwise"
        leaf = (x * 1e-11).requires_grad_()  # pAUC: a dispersion just above its floor
        loss = FUNCTIONALS[name](leaf, t, **kwargs)
        loss.backward()
        assert torch.isfinite(loss), name
        assert leaf.grad is not None
        assert bool(torch.isfinite(leaf.grad).all()), name


# ---------------------------------------------------------------------------------------------
# B7: ranks that disagree on sample_weight issue the same collectives
# ---------------------------------------------------------------------------------------------

DDP_SIZES = (7, 5)
DDP_TIMEOUT_S = 120.0


def _ddp_global_batch() -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(11)
    n = sum(DDP_SIZES)
    logits = torch.randn(n, 2, generator=g, dtype=torch.float64)
    targets = torch.arange(n) % 2
    weight = torch.rand(DDP_SIZES[0], generator=g, dtype=torch.float64) + 0.5
    return logits, targets, weight


def _ddp_entry(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=30))
    try:
        logits, targets, weight = _ddp_global_batch()
        lo = sum(DDP_SIZES[:rank])
        rows = slice(lo, lo + DDP_SIZES[rank])
        out = {}
        for name in NAMES:
            loss_fn = _make(name, num_classes=2, queue_size=0)
            out[name] = loss_fn(logits[rows], targets[rows], sample_weight=weight if rank == 0 else None).detach()
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_sample_weight_on_some_ranks_only() -> None:
    world = 2
    with tempfile.TemporaryDirectory() as out_dir:
        ctx = mp.start_processes(
            _ddp_entry, args=(world, _free_port(), out_dir), nprocs=world, join=False, start_method="spawn"
        )
        deadline = time.monotonic() + DDP_TIMEOUT_S
        try:
            while not ctx.join(timeout=max(deadline - time.monotonic(), 0.1)):
                if time.monotonic() > deadline:
                    pytest.fail(f"ranks still running after {DDP_TIMEOUT_S:g} s: the collectives diverged")
        finally:
            for process in ctx.processes:
                if process.is_alive():
                    process.terminate()
                    process.join(5)
        results = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(world)]
    logits, targets, weight = _ddp_global_batch()
    full_weight = torch.cat([weight, torch.ones(DDP_SIZES[1], dtype=torch.float64)])
    for name in NAMES:
        expected = _ref_mean(name, logits, targets, full_weight)
        single = _make(name, num_classes=2, queue_size=0)(logits, targets, sample_weight=full_weight)
        for r in range(world):
            torch.testing.assert_close(results[r][name], single, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(results[r][name], expected, rtol=1e-9, atol=1e-12)
    assert math.isfinite(float(expected))
