"""Training through DistributedDataParallel equals training one process on the concatenated batch.

Spec: SPEC.md D2 (after DDP averages over W ranks, parameter gradients equal the single-process
gradients on the global batch: the world-size factor lives in ``gather_batch``), D8
(``max_pool_size`` subsampling picks the same rows on every rank, with or without a user
generator) and incumbent-behaviour.md §8.3 / §6 (queues stay identical across ranks).

One spawn of 2 gloo ranks runs every case and saves its record; the single-process reference
runs in the test process. Per step the ranks hold uneven slices, and each rank is empty once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from _ddp import run_ranks
from imbalanced_losses import (
    AsymmetricLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    PAUCAtBudgetLoss,
    PolyLoss,
    RecallAtQuantileLoss,
    SeesawLoss,
    SigmoidFocalLoss,
    SmoothAPLoss,
    SoftmaxFocalLoss,
)
from imbalanced_losses.distributed import shared_generator

pytestmark = [
    pytest.mark.ddp,
    pytest.mark.filterwarnings("ignore:.*max_pool_size.*:UserWarning"),
    # tiny subsampled pools: a class may have too few negatives for a pAUC band
    pytest.mark.filterwarnings("ignore:.*degenerate dispersion.*:UserWarning"),
]

WORLD = 2
STEP_SIZES = ((5, 7), (0, 6), (4, 3), (6, 0))  # rows per rank at each step
FEATURES, C, Q = 4, 3, 8
LR = 0.5


def _ranking(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    return lambda **kw: factory(num_classes=C, queue_size=Q, **kw)


# name -> (loss factory, target kind: "ids" class ids with some ignore_index rows, "multihot" [N, C] floats)
CASES: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "smooth_ap": (_ranking(lambda **kw: SmoothAPLoss(temperature=0.1, **kw)), "ids"),
    "recall": (_ranking(lambda **kw: RecallAtQuantileLoss(quantile=0.2, temperature=0.1, **kw)), "ids"),
    "pauc_trapezoid": (_ranking(lambda **kw: PAUCAtBudgetLoss(beta=0.3, **kw)), "ids"),
    "pauc_pairwise": (_ranking(lambda **kw: PAUCAtBudgetLoss(beta=0.3, surrogate="pairwise", **kw)), "ids"),
    # the focal losses' means run over the global batch (the global count of valid rows)
    "sigmoid_focal": (lambda: SigmoidFocalLoss(), "multihot"),
    "softmax_focal": (lambda: SoftmaxFocalLoss(alpha=[0.2, 0.3, 0.5]), "ids"),
    # the long-tail losses likewise; Seesaw's class counts are accumulated from the gathered batch
    "logit_adjusted": (lambda: LogitAdjustedLoss(class_counts=[50, 10, 2]), "ids"),
    "ldam": (lambda: LDAMLoss([50, 10, 2], scale=5.0), "ids"),
    "poly": (lambda: PolyLoss(epsilon=1.0), "ids"),
    "seesaw": (lambda: SeesawLoss(C), "ids"),
    "asymmetric": (lambda: AsymmetricLoss(), "multihot"),
}
# max_pool_size subsampling (D8): the pool (live rows, 5 to 12 kept, + up to 8 queued) exceeds K at every step.
SUBSAMPLE_K = 6
SUBSAMPLE_CASES = ("smooth_ap", "recall", "pauc_trapezoid", "pauc_pairwise")
USER_SEED = 1234


def _batch(step: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(10 + step)
    n = sum(STEP_SIZES[step])
    x = torch.randn(n, FEATURES, generator=g, dtype=torch.float64)
    if kind == "multihot":
        return x, (torch.rand(n, C, generator=g) < 0.3).double()
    y = torch.randint(0, C, (n,), generator=g)
    y[torch.rand(n, generator=g) < 0.15] = -100  # ignore_index rows travel through gather and queue
    return x, y


def _rows(rank: int | None, step: int) -> slice:
    if rank is None:  # the single process sees the whole global batch
        return slice(None)
    lo = sum(STEP_SIZES[step][:rank])
    return slice(lo, lo + STEP_SIZES[step][rank])


def _model() -> nn.Module:
    torch.manual_seed(0)  # identical initial weights everywhere
    return nn.Sequential(nn.Linear(FEATURES, 8), nn.Tanh(), nn.Linear(8, C)).double()


def _train(
    loss_fn: nn.Module,
    kind: str,
    rank: int | None,
    *,
    rng_seed: Callable[[int], int] | None = None,
    replay_shared_seed: bool = False,
) -> dict[str, Any]:
    """A few SGD steps; ``rank=None`` is the single-process reference on the concatenated batch.

    ``rng_seed(step)`` seeds the default generator before each step. ``replay_shared_seed``
    (single process) hands the loss the generator a gathered forward would agree on:
    :func:`shared_generator` drawn from the default stream in that same state.
    """
    model = _model()
    net = model if rank is None else DistributedDataParallel(model)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    losses, grads = [], []
    for step in range(len(STEP_SIZES)):
        if rng_seed is not None:
            torch.manual_seed(rng_seed(step))
        if replay_shared_seed:
            loss_fn.generator = shared_generator(torch.device("cpu"))
        x, y = _batch(step, kind)
        rows = _rows(rank, step)
        opt.zero_grad()
        loss = loss_fn(net(x[rows]), y[rows])
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
    return {
        "loss": torch.stack(losses),
        "grads": grads,
        "params": [p.detach().clone() for p in model.parameters()],
        "state": {k: v.clone() for k, v in loss_fn.state_dict().items()},
    }


def _default_seed(rank: int, step: int) -> int:
    return 1000 + 100 * rank + step  # the ranks' default generators differ on purpose


def _worker(rank: int, world: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (factory, kind) in CASES.items():
        out[name] = _train(factory(), kind, rank)
    for name in SUBSAMPLE_CASES:
        factory, kind = CASES[name]
        out[f"{name}/sub"] = _train(
            factory(max_pool_size=SUBSAMPLE_K), kind, rank, rng_seed=lambda step: _default_seed(rank, step)
        )
        user = torch.Generator().manual_seed(USER_SEED)  # seeded identically on every rank: the user's job
        out[f"{name}/sub_user_gen"] = _train(factory(max_pool_size=SUBSAMPLE_K, generator=user), kind, rank)
    return out


@pytest.fixture(scope="module")
def ranks() -> list[dict[str, Any]]:
    return run_ranks(_worker, world=WORLD)


def _assert_matches_single(ranks: list[dict[str, Any]], key: str, single: dict[str, Any]) -> None:
    assert torch.equal(ranks[0][key]["loss"], ranks[1][key]["loss"]), key  # same pool, same rows on every rank
    for r, rec in enumerate(res[key] for res in ranks):
        # (a) every rank computes the single-process loss of the global batch
        torch.testing.assert_close(rec["loss"], single["loss"], rtol=1e-10, atol=1e-12, msg=f"{key} rank {r}")
        # (b) D2: DDP-averaged parameter gradients equal the single-process ones (a missing or
        # doubled world-size factor would be off by exactly W)
        for step, (got, want) in enumerate(zip(rec["grads"], single["grads"], strict=True)):
            for g, w in zip(got, want, strict=True):
                torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12, msg=f"{key} rank {r} step {step}")
        for p, w in zip(rec["params"], single["params"], strict=True):
            torch.testing.assert_close(p, w, rtol=1e-9, atol=1e-12)
        # (c) queues: bit-identical across ranks, equal to the single-process queue
        assert rec["state"].keys() == single["state"].keys()
        for k, v in single["state"].items():
            assert torch.equal(rec["state"][k], ranks[0][key]["state"][k]), (key, k)
            torch.testing.assert_close(rec["state"][k], v, rtol=1e-6, atol=1e-7, msg=f"{key} {k}")


@pytest.mark.parametrize("name", list(CASES))
def test_ddp_training_equals_single_process(ranks: list[dict[str, Any]], name: str) -> None:
    factory, kind = CASES[name]
    single = _train(factory(), kind, None)
    if "_queue._q_ptr" in single["state"]:
        assert single["state"]["_queue._q_ptr"].item() > 0  # the queue was written
    _assert_matches_single(ranks, name, single)


@pytest.mark.parametrize("name", SUBSAMPLE_CASES)
def test_subsampling_without_generator_agrees_across_ranks(ranks: list[dict[str, Any]], name: str) -> None:
    factory, kind = CASES[name]

    # The ranks draw with rank 0's seed: replaying rank 0's default-generator state in one process
    # (shared_generator uses the local draw without a process group) reproduces their choices.
    def single_run(seed_rank: int) -> dict[str, Any]:
        return _train(
            factory(max_pool_size=SUBSAMPLE_K),
            kind,
            None,
            rng_seed=lambda step: _default_seed(seed_rank, step),
            replay_shared_seed=True,
        )

    single = single_run(0)
    _assert_matches_single(ranks, f"{name}/sub", single)
    # Control: rank 1's own default stream picks other rows (so agreement is not luck), and the
    # loss is not the full-pool loss (so subsampling did fire).
    other = single_run(1)
    assert not torch.allclose(other["loss"], single["loss"])
    assert not torch.allclose(_train(factory(), kind, None)["loss"], single["loss"])


@pytest.mark.parametrize("name", SUBSAMPLE_CASES)
def test_subsampling_with_user_generator(ranks: list[dict[str, Any]], name: str) -> None:
    factory, kind = CASES[name]
    user = torch.Generator().manual_seed(USER_SEED)
    single = _train(factory(max_pool_size=SUBSAMPLE_K, generator=user), kind, None)
    _assert_matches_single(ranks, f"{name}/sub_user_gen", single)


def test_shared_generator_without_process_group() -> None:
    torch.manual_seed(5)
    a = torch.rand(3, generator=shared_generator(torch.device("cpu")))
    torch.manual_seed(5)
    b = torch.rand(3, generator=shared_generator(torch.device("cpu")))
    assert torch.equal(a, b)
