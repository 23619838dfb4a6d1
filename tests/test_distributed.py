"""All-gather under torch.distributed: 2 real gloo processes on CPU, uneven batch sizes.

Spec: incumbent-behaviour.md §8 (helpers, what is global, local-slice gradient); SPEC.md D1
(``gather_distributed=True`` needs a process group) and D2 (the world-size factor on the local
slice, applied only by ``gather_batch``). Training through DDP: ``test_ddp_training.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from _ddp import run_ranks
from imbalanced_losses import (
    PAUCAtBudgetLoss,
    RecallAtQuantileLoss,
    SmoothAPLoss,
    all_gather_no_grad,
    all_gather_with_grad,
)
from imbalanced_losses.distributed import resolve_gather

pytestmark = pytest.mark.ddp

WORLD = 2
SIZES = (5, 7)  # helper tests: uneven on purpose
STEP_SIZES = ((5, 7), (0, 9), (6, 0))  # rows per rank at each loss step: uneven, and each rank once empty
C = 3


def _global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    n = sum(STEP_SIZES[step])
    return torch.randn(n, C, generator=g, dtype=torch.float64), torch.randint(0, C, (n,), generator=g)


def _losses() -> dict[str, torch.nn.Module]:
    return {
        "smooth_ap": SmoothAPLoss(num_classes=C, queue_size=16, temperature=0.1),
        "recall": RecallAtQuantileLoss(num_classes=C, quantile=0.2, queue_size=16, temperature=0.1),
        "pauc_pairwise": PAUCAtBudgetLoss(num_classes=C, beta=0.3, surrogate="pairwise", queue_size=16),
        "pauc_trapezoid": PAUCAtBudgetLoss(num_classes=C, beta=0.3, queue_size=16),
    }


def _local_rows(rank: int, step: int) -> slice:
    lo = sum(STEP_SIZES[step][:rank])
    return slice(lo, lo + STEP_SIZES[step][rank])


def _worker(rank: int, world: int) -> dict[str, object]:
    results: dict[str, object] = {}
    # Helpers: uneven sizes, gradient only to the local slice (unscaled unless asked).
    for scale in (False, True):
        x = torch.arange(SIZES[rank] * 2, dtype=torch.float64).reshape(-1, 2).add(100 * rank).requires_grad_()
        gathered = all_gather_with_grad(x, scale_grad_by_world_size=scale)
        (gathered * torch.arange(1.0, gathered.shape[0] + 1, dtype=torch.float64)[:, None]).sum().backward()
        results[f"gathered_{scale}"] = gathered.detach()
        results[f"gathered_grad_{scale}"] = x.grad
    empty = torch.zeros(0, 2, requires_grad=True) if rank == 0 else torch.ones(3, 2, requires_grad=True)
    all_gather_with_grad(empty).sum().backward()  # rank 0 sends zero rows
    results["empty_grad"] = empty.grad
    results["no_grad"] = all_gather_no_grad(torch.full((rank,), float(rank)))  # rank 0 sends zero rows
    for name, loss_fn in _losses().items():
        values, grads = [], []
        for step in range(len(STEP_SIZES)):
            logits, targets = _global_batch(step)
            rows = _local_rows(rank, step)
            local = logits[rows].clone().requires_grad_()
            loss = loss_fn(local, targets[rows])
            loss.backward()
            values.append(loss.detach())
            grads.append(local.grad)
        results[name] = (torch.stack(values), grads, {k: v.clone() for k, v in loss_fn.state_dict().items()})
    return results


@pytest.fixture(scope="module")
def ddp_results() -> list[dict]:
    return run_ranks(_worker, world=WORLD)


@pytest.mark.parametrize("scale", [False, True])
def test_gather_helpers_uneven(ddp_results: list[dict], scale: bool) -> None:
    expected = torch.cat(
        [torch.arange(n * 2, dtype=torch.float64).reshape(-1, 2).add(100 * r) for r, n in enumerate(SIZES)]
    )
    factor = WORLD if scale else 1
    for r, res in enumerate(ddp_results):
        assert torch.equal(res[f"gathered_{scale}"], expected)
        lo = sum(SIZES[:r])
        row_weight = torch.arange(lo + 1, lo + SIZES[r] + 1, dtype=torch.float64)[:, None].expand(-1, 2)
        assert torch.equal(res[f"gathered_grad_{scale}"], factor * row_weight)


def test_gather_helpers_zero_rows(ddp_results: list[dict]) -> None:
    assert ddp_results[0]["empty_grad"].shape == (0, 2)
    assert torch.equal(ddp_results[1]["empty_grad"], torch.ones(3, 2))
    for res in ddp_results:
        assert torch.equal(res["no_grad"], torch.tensor([1.0]))  # rank 0 contributed no rows


@pytest.mark.parametrize("name", list(_losses()))
def test_loss_equals_single_process_on_concatenated_batch(ddp_results: list[dict], name: str) -> None:
    single = _losses()[name]
    ref_values, ref_grads = [], []
    for step in range(len(STEP_SIZES)):
        logits, targets = _global_batch(step)
        logits.requires_grad_()
        loss = single(logits, targets)
        loss.backward()
        ref_values.append(loss.detach())
        ref_grads.append(logits.grad)
    for r, res in enumerate(ddp_results):
        values, grads, state = res[name]
        torch.testing.assert_close(values, torch.stack(ref_values), rtol=1e-12, atol=1e-12)
        for step in range(len(STEP_SIZES)):
            # D2: each rank's logit gradient is W times the single-process gradient of its own rows,
            # so that DDP's average over W ranks gives the single-process parameter gradient.
            expected = WORLD * ref_grads[step][_local_rows(r, step)]
            torch.testing.assert_close(grads[step], expected, rtol=1e-10, atol=1e-12)
        for key, value in single.state_dict().items():
            assert torch.equal(state[key], value), key  # identical queues on every rank


def test_resolve_gather_without_process_group() -> None:
    assert not dist.is_initialized()
    assert resolve_gather(None) is False
    assert resolve_gather(False) is False
    with pytest.raises(RuntimeError, match="gather_distributed=True"):
        resolve_gather(True)
    loss_fn = SmoothAPLoss(num_classes=2, gather_distributed=True)
    with pytest.raises(RuntimeError, match="not initialized"):
        loss_fn(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))
    assert loss_fn.state_dict()["_queue._q_ptr"].item() == 0  # nothing enqueued
    with pytest.raises(RuntimeError, match="not initialized"):
        all_gather_with_grad(torch.zeros(2))
