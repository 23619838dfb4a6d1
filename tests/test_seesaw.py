"""Seesaw loss: references, gradients, numerics, online class counts, state and DDP.

References are independent of our code: :func:`torch.nn.functional.cross_entropy` for
``p = q = 0``, and a per-position Python loop of the paper's formula (Wang et al. 2021, the
softmax with the negative exponentials scaled by ``S = M * C``, probabilities formed
explicitly, counts clamped to >= 1 as in mmdet) in float64, with the gradient for a constant
``S``.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import time
from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from _ddp import _free_port
from imbalanced_losses import SeesawLoss
from imbalanced_losses.functional import seesaw_loss

F64 = {"rtol": 1e-10, "atol": 1e-12}
REDUCTIONS = ["none", "mean", "sum"]
C = 4
COUNTS = torch.tensor([500, 40, 0, 3])  # class 2 empty: clamped to 1


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(
    seed: int, n: int = 7, c: int = C, spatial: tuple[int, ...] = (), scale: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    x = torch.randn(n, c, *spatial, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, c, (n, *spatial), generator=g)
    w = torch.rand(n, *spatial, generator=g, dtype=torch.float64) + 0.1
    y.view(-1)[1] = -100  # one ignored position
    return x, y, w


# --------------------------------------------------------------------------------------------
# Independent reference: the paper's formula, one position at a time
# --------------------------------------------------------------------------------------------


def ref_seesaw(
    x: torch.Tensor,
    y: torch.Tensor,
    counts: torch.Tensor,
    *,
    p: float,
    q: float,
    reduction: str = "mean",
    w: torch.Tensor | None = None,
    ignore: int = -100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and its gradient w.r.t. ``x`` (with S held constant), in float64."""
    c = x.shape[1]
    rows = x.double().movedim(1, -1).reshape(-1, c).tolist()
    labels = y.reshape(-1).tolist()
    weights = [1.0] * len(labels) if w is None else w.double().reshape(-1).tolist()
    n = [max(float(v), 1.0) for v in counts.tolist()]
    values, grads, den = [], [], 0.0
    for row, t, wi in zip(rows, labels, weights, strict=True):
        if t == ignore:
            values.append(0.0)
            grads.append([0.0] * c)
            continue
        top = max(row)
        e = [math.exp(v - top) for v in row]
        sigma = [v / sum(e) for v in e]
        s = []
        for j in range(c):
            mitigation = (n[j] / n[t]) ** p if j != t and n[j] < n[t] else 1.0
            compensation = (sigma[j] / sigma[t]) ** q if j != t and sigma[j] > sigma[t] else 1.0
            s.append(mitigation * compensation)
        denom = sum(sj * ej for sj, ej in zip(s, e, strict=True))
        values.append(-math.log(e[t] / denom) * wi)
        grads.append([wi * (s[j] * e[j] / denom - (1.0 if j == t else 0.0)) for j in range(c)])
        den += wi
    shape = y.shape
    grad = torch.tensor(grads, dtype=torch.float64).reshape(*shape, c).movedim(-1, 1)
    if reduction == "none":
        return torch.tensor(values, dtype=torch.float64).reshape(shape), grad
    total = math.fsum(values)
    if reduction == "sum":
        return torch.tensor(total, dtype=torch.float64), grad
    d = den if den > 0 else 1.0
    return torch.tensor(total / d, dtype=torch.float64), grad / d


# --------------------------------------------------------------------------------------------
# Identity with cross-entropy, and the reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("spatial", [(), (3, 2)])
@pytest.mark.parametrize("weighted", [False, True])
def test_p_q_zero_is_cross_entropy(reduction: str, spatial: tuple[int, ...], weighted: bool) -> None:
    x, y, w = _batch(1, spatial=spatial)
    sw = w if weighted else None
    ce = torch.nn.functional.cross_entropy(x, y, ignore_index=-100, reduction="none")
    valid = (y != -100).double()
    ww = w if weighted else torch.ones_like(ce)
    expected = {"none": ce * ww, "sum": (ce * ww).sum(), "mean": (ce * ww).sum() / (ww * valid).sum()}[reduction]
    got = seesaw_loss(x, y, class_counts=COUNTS, p=0.0, q=0.0, reduction=reduction, sample_weight=sw)
    torch.testing.assert_close(got, expected, **F64)
    module = SeesawLoss(C, p=0.0, q=0.0, reduction=reduction)
    torch.testing.assert_close(module(x, y, sample_weight=sw), expected, **F64)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("p", "q"), [(0.8, 2.0), (0.8, 0.0), (0.0, 2.0), (1.5, 0.5)])
@pytest.mark.parametrize("spatial", [(), (2, 3)])
def test_matches_loop_reference(reduction: str, p: float, q: float, spatial: tuple[int, ...]) -> None:
    x, y, w = _batch(2, n=9, spatial=spatial)
    x.requires_grad_()
    got = seesaw_loss(x, y, class_counts=COUNTS, p=p, q=q, reduction=reduction, sample_weight=w)
    expected, grad = ref_seesaw(x.detach(), y, COUNTS, p=p, q=q, reduction=reduction, w=w)
    torch.testing.assert_close(got, expected, **F64)
    # The gradient holds S constant (paper's analysis, mmdet's detached scores).
    got.sum().backward()  # for 'none' the sum of the per-position losses: the same gradient
    torch.testing.assert_close(x.grad, grad, **F64)


def test_reference_differs_from_cross_entropy() -> None:
    # Guards the reference tests against a vacuous pass (factors of 1 everywhere).
    x, y, _ = _batch(3, n=20)
    ce = torch.nn.functional.cross_entropy(x, y)
    for p, q in [(0.8, 0.0), (0.0, 2.0)]:
        assert abs(float(seesaw_loss(x, y, class_counts=COUNTS, p=p, q=q)) - float(ce)) > 1e-3


def test_empty_counts_and_empty_target_class_are_finite() -> None:
    x, y, _ = _batch(4)
    for counts in (torch.zeros(C, dtype=torch.int64), torch.tensor([0.0, 7.0, 0.0, 2.5])):
        got = seesaw_loss(x, y, class_counts=counts)
        assert torch.isfinite(got)
        torch.testing.assert_close(got, ref_seesaw(x, y, counts, p=0.8, q=2.0)[0], **F64)
    zero = seesaw_loss(x, y, class_counts=torch.zeros(C), q=0.0)  # all counts clamp to 1: no mitigation
    torch.testing.assert_close(zero, torch.nn.functional.cross_entropy(x, y), **F64)


def test_all_ignored_gives_connected_zero() -> None:
    x = torch.randn(3, C, requires_grad=True)
    loss = seesaw_loss(x, torch.full((3,), -100), class_counts=COUNTS)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(x.grad, torch.zeros_like(x))


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.grad
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_float64(reduction: str) -> None:
    # With q = 0, S = M depends on the counts only, so the detached loss is the full function.
    x, y, w = _batch(5, n=6, spatial=(2,))
    x.requires_grad_()

    def fn(inp: torch.Tensor) -> torch.Tensor:
        return seesaw_loss(inp, y, class_counts=COUNTS, p=0.8, q=0.0, reduction=reduction, sample_weight=w)

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.grad
def test_gradcheck_compensation_with_constant_s() -> None:
    # With q > 0 the numerical gradient would differentiate C too; S is a constant by design.
    # Feeding the factor log S (computed once from the detached logits) as a constant
    # offset must give the same loss and gradient.
    x, y, _ = _batch(6, n=5)
    x.requires_grad_()
    loss = seesaw_loss(x, y, class_counts=COUNTS, p=0.8, q=2.0, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    valid = y != -100
    t = y.masked_fill(~valid, 0)
    log_n = COUNTS.double().clamp_min(1).log()
    xd = x.detach()
    log_s = 0.8 * (log_n[None, :] - log_n[t][:, None]).clamp_max(0) + 2.0 * (xd - xd.gather(1, t[:, None])).clamp_min(0)

    def fn(inp: torch.Tensor) -> torch.Tensor:
        per = (inp + log_s).logsumexp(1) - inp.gather(1, t[:, None]).squeeze(1)
        return (per * valid).sum()

    torch.testing.assert_close(loss, fn(x), **F64)
    assert torch.autograd.gradcheck(fn, (x,))
    torch.testing.assert_close(grad, torch.autograd.grad(fn(x), x)[0], **F64)


# --------------------------------------------------------------------------------------------
# Numerics: saturated logits, half precision
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_saturated_logits_finite(dtype: torch.dtype) -> None:
    x = torch.tensor([[1e4, -1e4, 0.0, 5.0], [-1e4, 1e4, -1e4, 1e4], [0.0, 0.0, 1e4, -1e4]], dtype=dtype)
    y = torch.tensor([1, 1, 2])
    x.requires_grad_()
    loss = seesaw_loss(x, y, class_counts=COUNTS, reduction="none")
    loss.sum().backward()
    assert loss.dtype == torch.float32
    assert x.grad is not None
    assert x.grad.dtype == dtype
    assert torch.isfinite(loss).all()
    assert torch.isfinite(x.grad).all()
    big = x[0, 0].item()  # 1e4 as rounded in `dtype`
    # Row 0 (y=1, N=40): j=0 dominates, adjusted logit x_0 + 2 (x_0 - x_1) (N_0 > N_1: no mitigation).
    assert loss[0].item() == pytest.approx(6 * big, rel=1e-6)  # 5 x_0 - x_1
    # Row 1: x_y is the joint maximum (tie with class 3, N_3 = 3 < 40): log(1 + (3/40)^0.8), up to
    # the float32 spacing at 1e4 (~1e-3), which cross-entropy shares.
    assert loss[1].item() == pytest.approx(math.log1p((3 / 40) ** 0.8), abs=2e-3)
    assert loss[2].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_half_precision_computed_in_float32(dtype: torch.dtype, reduction: str) -> None:
    x, y, w = _batch(7, n=16, scale=4.0)
    xh = x.to(dtype).requires_grad_()
    x32 = xh.detach().float().requires_grad_()
    got = seesaw_loss(xh, y, class_counts=COUNTS, reduction=reduction, sample_weight=w.to(dtype))
    want = seesaw_loss(x32, y, class_counts=COUNTS, reduction=reduction, sample_weight=w.to(dtype).float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    got.sum().backward()
    want.sum().backward()
    assert xh.grad is not None
    assert xh.grad.dtype == dtype
    torch.testing.assert_close(xh.grad, x32.grad.to(dtype))


# --------------------------------------------------------------------------------------------
# Online counts, state dict, module == function
# --------------------------------------------------------------------------------------------


def test_counts_accumulate_in_train_mode_only() -> None:
    loss_fn = SeesawLoss(C)
    assert loss_fn.class_counts.dtype == torch.int64
    assert torch.equal(loss_fn.class_counts, torch.zeros(C, dtype=torch.int64))
    loss_fn(torch.randn(4, C), torch.tensor([0, 0, 1, -100]))
    assert loss_fn.class_counts.tolist() == [2, 1, 0, 0]
    loss_fn(torch.randn(2, C, 3), torch.tensor([[3, 3, 0], [-100, 3, 1]]))  # spatial positions count
    assert loss_fn.class_counts.tolist() == [3, 2, 0, 3]
    loss_fn.eval()
    loss_fn(torch.randn(5, C), torch.tensor([2, 2, 2, 2, 2]))
    assert loss_fn.class_counts.tolist() == [3, 2, 0, 3]
    loss_fn.train()
    loss_fn(torch.randn(1, C), torch.tensor([2]))
    assert loss_fn.class_counts.tolist() == [3, 2, 1, 3]
    assert not loss_fn.class_counts.requires_grad


def test_checkpoint_round_trip() -> None:
    loss_fn = SeesawLoss(C, p=0.5, q=1.0)
    for seed in range(3):
        x, y, _ = _batch(10 + seed, n=12)
        loss_fn(x, y)
    assert sorted(loss_fn.state_dict()) == ["class_counts"]
    buf = io.BytesIO()
    torch.save(loss_fn.state_dict(), buf)
    buf.seek(0)
    restored = SeesawLoss(C, p=0.5, q=1.0)
    restored.load_state_dict(torch.load(buf))
    assert restored.class_counts.dtype == torch.int64
    assert torch.equal(restored.class_counts, loss_fn.class_counts)
    x, y, _ = _batch(20, n=8)
    torch.testing.assert_close(restored(x, y), loss_fn(x, y), **F64)  # train mode: both update
    assert torch.equal(restored.class_counts, loss_fn.class_counts)
    assert loss_fn.to(torch.float64).class_counts.dtype == torch.int64  # .to(dtype) keeps counts exact
    with pytest.raises(RuntimeError, match="class_counts"):
        SeesawLoss(C + 1).load_state_dict(loss_fn.state_dict())


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("p", "q"), [(0.8, 2.0), (0.3, 0.0)])
def test_module_with_preset_counts_equals_function(reduction: str, p: float, q: float) -> None:
    x, y, w = _batch(8, n=10, spatial=(2,))
    loss_fn = SeesawLoss(C, p=p, q=q, reduction=reduction)
    loss_fn.class_counts.copy_(COUNTS)
    kwargs: dict[str, Any] = {"p": p, "q": q, "reduction": reduction, "sample_weight": w}
    # eval: the preset counts as they are
    torch.testing.assert_close(loss_fn.eval()(x, y, sample_weight=w), seesaw_loss(x, y, class_counts=COUNTS, **kwargs))
    # train: the batch is counted first, then the loss uses the updated counts (mmdet's order)
    updated = COUNTS + torch.bincount(y[y != -100], minlength=C)
    got = loss_fn.train()(x, y, sample_weight=w)
    assert torch.equal(loss_fn.class_counts, updated)
    torch.testing.assert_close(got, seesaw_loss(x, y, class_counts=updated, **kwargs))
    torch.testing.assert_close(got, ref_seesaw(x, y, updated, p=p, q=q, reduction=reduction, w=w)[0], **F64)


def test_module_repr_and_gather_without_group() -> None:
    assert "num_classes=4, p=0.8, q=2.0" in repr(SeesawLoss(C))
    with pytest.raises(RuntimeError, match="gather_distributed=True"):
        SeesawLoss(C, gather_distributed=True)(torch.randn(2, C), torch.tensor([0, 1]))


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"num_classes": 1}, ValueError, "num_classes"),
        ({"num_classes": 2.0}, TypeError, "num_classes"),
        ({"num_classes": True}, TypeError, "num_classes"),
        ({"p": -0.1}, ValueError, "p"),
        ({"p": float("nan")}, ValueError, "p"),
        ({"p": "0.8"}, TypeError, "p"),
        ({"q": -1.0}, ValueError, "q"),
        ({"q": float("inf")}, ValueError, "q"),
        ({"reduction": "mean_positive"}, ValueError, "reduction"),
        ({"ignore_index": 1.5}, TypeError, "ignore_index"),
        ({"validate_args": 1}, TypeError, "validate_args"),
        ({"gather_distributed": "yes"}, TypeError, "gather_distributed"),
    ],
)
def test_module_bad_hyperparameters(kwargs: dict[str, Any], exc: type[Exception], name: str) -> None:
    args = {"num_classes": C, **kwargs}
    num_classes = args.pop("num_classes")
    with pytest.raises(exc, match=f"`{name}`"):
        SeesawLoss(num_classes, **args)


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"p": -1.0}, ValueError, "p"),
        ({"q": float("nan")}, ValueError, "q"),
        ({"q": None}, TypeError, "q"),
        ({"reduction": "batchmean"}, ValueError, "reduction"),
        ({"class_counts": [1, 2, 3, 4]}, TypeError, "class_counts"),
        ({"class_counts": torch.ones(C + 1)}, ValueError, "class_counts"),
        ({"class_counts": torch.ones(1, C)}, ValueError, "class_counts"),
        ({"class_counts": torch.tensor([1.0, -1.0, 2.0, 3.0])}, ValueError, "class_counts"),
        ({"class_counts": torch.tensor([1.0, float("nan"), 2.0, 3.0])}, ValueError, "class_counts"),
        ({"class_counts": torch.ones(C, dtype=torch.bool)}, TypeError, "class_counts"),
        ({"sample_weight": torch.ones(3)}, ValueError, "sample_weight"),
    ],
)
def test_function_bad_arguments(kwargs: dict[str, Any], exc: type[Exception], name: str) -> None:
    args: dict[str, Any] = {"class_counts": COUNTS, **kwargs}
    with pytest.raises(exc, match=f"`{name}`"):
        seesaw_loss(torch.randn(5, C), torch.tensor([0, 1, 2, 3, 0]), **args)


def test_bad_batches() -> None:
    with pytest.raises(ValueError, match="num_classes=4"):
        SeesawLoss(C)(torch.randn(2, C + 1), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="targets"):
        seesaw_loss(torch.randn(2, C), torch.tensor([0, C]), class_counts=COUNTS)
    with pytest.raises(ValueError, match="finite"):
        seesaw_loss(torch.tensor([[0.0, float("nan"), 0.0, 0.0]]), torch.tensor([0]), class_counts=COUNTS)
    loss_fn = SeesawLoss(C)
    with pytest.raises(ValueError, match="targets"):
        loss_fn(torch.randn(2, C), torch.tensor([0, -1]))
    assert loss_fn.class_counts.sum() == 0  # a rejected batch is not counted


# --------------------------------------------------------------------------------------------
# Two gloo processes: global counts, loss = one process on the concatenated batches
# --------------------------------------------------------------------------------------------

WORLD = 2
STEP_SIZES = ((5, 7), (0, 9), (6, 0), (4, 3))  # rows per rank: uneven, each rank once empty
EVAL_STEP = 3  # the last step runs in eval mode
DDP_TIMEOUT_S = 180.0


def _global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = _gen(300 + step)
    n = sum(STEP_SIZES[step])
    x = torch.randn(n, C, generator=g, dtype=torch.float64) * 2
    y = torch.multinomial(torch.tensor([0.6, 0.25, 0.1, 0.05]), n, replacement=True, generator=g)
    if n > 2:
        y[2] = -100
    return x, y, torch.rand(n, generator=g, dtype=torch.float64) + 0.5


def _rows(rank: int, step: int) -> slice:
    lo = sum(STEP_SIZES[step][:rank])
    return slice(lo, lo + STEP_SIZES[step][rank])


def _ddp_worker(rank: int, world: int) -> dict[str, Any]:
    gathered, local_only = SeesawLoss(C), SeesawLoss(C, gather_distributed=False)
    values, grads, counts, local_counts = [], [], [], []
    for step in range(len(STEP_SIZES)):
        gathered.train(step != EVAL_STEP)
        x, y, w = _global_batch(step)
        rows = _rows(rank, step)
        local = x[rows].clone().requires_grad_()
        loss = gathered(local, y[rows], sample_weight=w[rows])
        loss.backward()
        local_only(x[rows], y[rows])
        values.append(loss.detach())
        grads.append(local.grad)
        counts.append(gathered.class_counts.clone())
        local_counts.append(local_only.class_counts.clone())
    return {"values": values, "grads": grads, "counts": counts, "local_counts": local_counts}


def _ddp_entry(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=DDP_TIMEOUT_S / 2))
    try:
        torch.save(_ddp_worker(rank, world), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _run_ranks_with_timeout(world: int, timeout_s: float) -> list[dict[str, Any]]:
    """Like ``_ddp.run_ranks``, but a hang fails the test after ``timeout_s`` (its ranks are killed)."""
    with tempfile.TemporaryDirectory() as out_dir:
        ctx = mp.start_processes(
            _ddp_entry, args=(world, _free_port(), out_dir), nprocs=world, join=False, start_method="spawn"
        )
        deadline = time.monotonic() + timeout_s
        try:
            while not ctx.join(timeout=1.0):
                if time.monotonic() > deadline:
                    pytest.fail(f"2-process seesaw test did not finish within {timeout_s:.0f} s")
        finally:
            for proc in ctx.processes:
                if proc.is_alive():
                    proc.kill()
                    proc.join()
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world)]


@pytest.fixture(scope="module")
def ddp_results() -> list[dict[str, Any]]:
    return _run_ranks_with_timeout(WORLD, DDP_TIMEOUT_S)


@pytest.mark.ddp
def test_ddp_counts_and_loss_equal_single_process(ddp_results: list[dict[str, Any]]) -> None:
    single = SeesawLoss(C)
    for step in range(len(STEP_SIZES)):
        single.train(step != EVAL_STEP)
        x, y, w = _global_batch(step)
        x.requires_grad_()
        loss = single(x, y, sample_weight=w)
        loss.backward()
        assert x.grad is not None
        for rank, res in enumerate(ddp_results):
            assert torch.equal(res["counts"][step], single.class_counts), (rank, step)
            torch.testing.assert_close(res["values"][step], loss.detach(), **F64)
            # SPEC D2: a rank's logit gradient is W times the single-process gradient of its rows.
            torch.testing.assert_close(res["grads"][step], WORLD * x.grad[_rows(rank, step)], **F64)
    assert single.class_counts.sum() > 0


@pytest.mark.ddp
def test_ddp_local_counts_without_gather(ddp_results: list[dict[str, Any]]) -> None:
    for rank, res in enumerate(ddp_results):
        expected = torch.zeros(C, dtype=torch.int64)
        for step in range(len(STEP_SIZES)):
            y = _global_batch(step)[1][_rows(rank, step)]
            expected += torch.bincount(y[y != -100], minlength=C)
            assert torch.equal(res["local_counts"][step], expected)
