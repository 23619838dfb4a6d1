"""All-gather under torch.distributed: 2 real gloo processes on CPU, uneven batch sizes."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from imbalanced_losses import (
    PAUCAtBudgetLoss,
    RecallAtQuantileLoss,
    SmoothAPLoss,
    all_gather_no_grad,
    all_gather_with_grad,
)
from imbalanced_losses.distributed import resolve_gather

pytestmark = pytest.mark.ddp

SIZES = (5, 7)  # rows per rank: uneven on purpose
C = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    n = sum(SIZES)
    return torch.randn(n, C, generator=g, dtype=torch.float64), torch.randint(0, C, (n,), generator=g)


def _losses() -> dict[str, torch.nn.Module]:
    return {
        "smooth_ap": SmoothAPLoss(num_classes=C, queue_size=16, temperature=0.1),
        "recall": RecallAtQuantileLoss(num_classes=C, quantile=0.2, queue_size=16, temperature=0.1),
        "pauc_pairwise": PAUCAtBudgetLoss(num_classes=C, beta=0.3, surrogate="pairwise", queue_size=16),
        "pauc_trapezoid": PAUCAtBudgetLoss(num_classes=C, beta=0.3, queue_size=16),
    }


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        lo = sum(SIZES[:rank])
        hi = lo + SIZES[rank]
        results: dict[str, object] = {}
        # Helpers: uneven sizes, gradient only to the local slice.
        x = torch.arange(SIZES[rank] * 2, dtype=torch.float64).reshape(-1, 2).add(100 * rank).requires_grad_()
        gathered = all_gather_with_grad(x)
        gathered.sum().backward()
        results["gathered"] = gathered.detach()
        results["gathered_grad"] = x.grad
        results["no_grad"] = all_gather_no_grad(torch.full((rank,), float(rank)))  # rank 0 sends zero rows
        for name, loss_fn in _losses().items():
            values, grads = [], []
            for step in range(3):
                logits, targets = _global_batch(step)
                local = logits[lo:hi].clone().requires_grad_()
                loss = loss_fn(local, targets[lo:hi])
                loss.backward()
                values.append(loss.detach())
                grads.append(local.grad)
            results[name] = (torch.stack(values), grads, {k: v.clone() for k, v in loss_fn.state_dict().items()})
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results() -> list[dict]:
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(_worker, args=(2, _free_port(), out_dir), nprocs=2, join=True, start_method="spawn")
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(2)]


def test_gather_helpers_uneven(ddp_results: list[dict]) -> None:
    expected = torch.cat(
        [torch.arange(n * 2, dtype=torch.float64).reshape(-1, 2).add(100 * r) for r, n in enumerate(SIZES)]
    )
    for r, res in enumerate(ddp_results):
        assert torch.equal(res["gathered"], expected)
        assert torch.equal(res["gathered_grad"], torch.ones(SIZES[r], 2, dtype=torch.float64))
        assert torch.equal(res["no_grad"], torch.tensor([1.0]))  # rank 0 contributed no rows


@pytest.mark.parametrize("name", list(_losses()))
def test_loss_equals_single_process_on_concatenated_batch(ddp_results: list[dict], name: str) -> None:
    single = _losses()[name]
    ref_values, ref_grads = [], []
    for step in range(3):
        logits, targets = _global_batch(step)
        logits.requires_grad_()
        loss = single(logits, targets)
        loss.backward()
        ref_values.append(loss.detach())
        ref_grads.append(logits.grad)
    for r, res in enumerate(ddp_results):
        values, grads, state = res[name]
        torch.testing.assert_close(values, torch.stack(ref_values), rtol=1e-12, atol=1e-12)
        lo = sum(SIZES[:r])
        for step in range(3):
            # Each rank's gradient is the single-process gradient restricted to its own rows.
            torch.testing.assert_close(grads[step], ref_grads[step][lo : lo + SIZES[r]], rtol=1e-10, atol=1e-12)
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
