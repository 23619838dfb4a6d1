"""The threshold losses train without a runaway logit scale under their default arguments.

A small contested-top problem (positives and decoy negatives share an easy cue; only an
interaction separates them) is trained with the documented warm-up schedule: weighted BCE,
a blend, then the ranking loss with default arguments. With detached thresholds (0.6's
gradient, ``detach_thresholds=True``) the recall and trapezoid losses lift positives against a
threshold that only follows them: the threshold diagnostic climbs without bound and coverage
falls behind weighted BCE. With the default gradient through the thresholds neither happens.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from imbalanced_losses import LossWarmupWrapper, PAUCAtBudgetLoss, RecallAtQuantileLoss

BUDGET = 0.01
EPOCHS, WARMUP, BLEND = 14, 3, 1
#: The thresholds after warm-up sit at 3-6 logits; 0.6's gradient takes them past 80 in this run.
THRESHOLD_BOUND = 25.0
#: Coverage may trail weighted BCE's by at most this much (about two of ~75 held-out positives).
COVERAGE_MARGIN = 0.03


def _problem(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n, d = 30_000, 8
    x = torch.randn(n, d, generator=g)
    y = torch.zeros(n, dtype=torch.long)
    order = torch.randperm(n, generator=g)
    n_pos, n_decoy = n // 200, n // 40
    pos, decoy = order[:n_pos], order[n_pos : n_pos + n_decoy]
    y[pos] = 1
    x[torch.cat([pos, decoy]), :2] += 2.5  # the easy cue: positives and decoys
    sign = (torch.randint(0, 2, (n_pos,), generator=g) * 2 - 1).float()
    x[pos, 4] += 1.7 * sign  # x4 * x5 > 0 separates positives from decoys
    x[pos, 5] += 1.7 * sign
    cut = n // 2
    return x[cut:], y[cut:], x[:cut], y[:cut]


class _WeightedBCE(nn.Module):
    def __init__(self, pos_weight: float) -> None:
        super().__init__()
        self.bce = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.bce(logits.squeeze(1), targets.float())


def _coverage(scores: torch.Tensor, labels: torch.Tensor) -> float:
    k = math.ceil(BUDGET * len(scores))
    return float(labels[scores.topk(k).indices].sum() / labels.sum())


def _train(main: nn.Module | None, seed: int, key: str, temps: tuple[float, float]) -> tuple[float, list[float]]:
    x, y, x_eval, y_eval = _problem(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x.shape[1], 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
    bce = _WeightedBCE(float((y == 0).sum() / (y == 1).sum()))
    loss_fn: nn.Module = bce
    wrapper = None
    if main is not None:
        steps_per_epoch = math.ceil(len(y) / 1024)
        wrapper = LossWarmupWrapper(
            bce,
            main,
            warmup_epochs=WARMUP,
            blend_epochs=BLEND,
            temp_start=temps[0],
            temp_end=temps[1],
            temp_decay_steps=(EPOCHS - WARMUP) * steps_per_epoch,
        )
        loss_fn = wrapper
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(seed)
    thresholds: list[float] = []
    step = 0
    for epoch in range(EPOCHS):
        if wrapper is not None:
            wrapper.on_train_epoch_start(epoch)
        for idx in torch.randperm(len(y), generator=order).split(1024):
            if wrapper is not None:
                wrapper.on_train_batch_start(step)
            logits = model(x[idx])
            if main is not None and epoch >= WARMUP + BLEND:
                loss, stats = loss_fn(logits, y[idx], return_diagnostics=True)
                thresholds.append(float(stats[key][0]))
            else:
                loss = loss_fn(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    with torch.no_grad():
        return _coverage(model(x_eval)[:, 0], y_eval), thresholds


def _recall(legacy: bool) -> nn.Module:
    if legacy:  # 0.6's loss and gradient
        return RecallAtQuantileLoss(
            num_classes=1, quantile=BUDGET, queue_size=2048, tau_scale="logit", detach_thresholds=True
        )
    return RecallAtQuantileLoss(num_classes=1, quantile=BUDGET, queue_size=2048)


def _trapezoid(legacy: bool) -> nn.Module:
    return PAUCAtBudgetLoss(num_classes=1, beta=BUDGET, queue_size=2048, detach_thresholds=legacy)


CASES = {
    "recall": (_recall, "threshold", (0.05, 0.01)),
    "trapezoid": (_trapezoid, "t_alpha", (0.5, 0.1)),
}


@pytest.fixture(scope="module")
def bce_coverage() -> float:
    return _train(None, 0, "", (0.0, 0.0))[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_default_arguments_do_not_run_away(name: str, bce_coverage: float) -> None:
    build, key, temps = CASES[name]
    coverage, thresholds = _train(build(False), 0, key, temps)
    assert max(abs(t) for t in thresholds) < THRESHOLD_BOUND, thresholds[-5:]
    assert coverage >= bce_coverage - COVERAGE_MARGIN, (coverage, bce_coverage)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_the_0_6_gradient_runs_away_on_the_same_problem(name: str, bce_coverage: float) -> None:
    """The failure the defaults fix, on the same run: the threshold climbs, coverage falls behind."""
    build, key, temps = CASES[name]
    coverage, thresholds = _train(build(True), 0, key, temps)
    assert max(abs(t) for t in thresholds) > THRESHOLD_BOUND
    assert coverage < bce_coverage - COVERAGE_MARGIN
