"""Stateful metrics (imbalanced_losses.integrations.torchmetrics): exact over batches and ranks, bounded option."""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import time
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

pytest.importorskip("torchmetrics")

from _ddp import _entry, _free_port
from imbalanced_losses import metrics as ilm
from imbalanced_losses.integrations.torchmetrics import (
    AveragePrecision,
    CoverageAtBudget,
    PartialAUC,
    RecallAtQuantile,
)

N, C = 203, 3
BATCH = 17  # uneven: the last batch is short


def _pairs() -> dict[str, tuple[Any, Any]]:
    """Name -> (metric factory, function on the concatenation)."""
    return {
        "ap": (lambda **kw: AveragePrecision(**kw), lambda s, t, **kw: ilm.average_precision(s, t, **kw)),
        "recall": (
            lambda **kw: RecallAtQuantile(quantile=0.2, **kw),
            lambda s, t, **kw: ilm.recall_at_quantile(s, t, quantile=0.2, **kw),
        ),
        "pauc": (
            lambda **kw: PartialAUC(beta=0.3, normalize="mcclish", **kw),
            lambda s, t, **kw: ilm.partial_auc(s, t, beta=0.3, normalize="mcclish", **kw),
        ),
        "coverage": (
            lambda **kw: CoverageAtBudget(budget=0.1, **kw),
            lambda s, t, **kw: ilm.coverage_at_budget(s, t, budget=0.1, **kw),
        ),
    }


def _data(layout: str, ignore: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Rounded scores: many ties, across batch boundaries too.
    if layout == "binary":
        scores = torch.randn(N, generator=g, dtype=torch.float64).round(decimals=1)
        targets = (torch.rand(N, generator=g) < 0.2).long()
    elif layout == "multiclass":
        scores = torch.randn(N, C, generator=g, dtype=torch.float64).round(decimals=1)
        targets = torch.randint(0, C, (N,), generator=g)
    else:
        scores = torch.randn(N, C, generator=g, dtype=torch.float64).round(decimals=1)
        targets = (torch.rand(N, C, generator=g) < 0.25).long()
    if ignore:
        targets = targets.masked_fill(torch.rand(targets.shape, generator=g) < 0.15, -7)
    weights = torch.rand(N, generator=g, dtype=torch.float64) * 2
    return scores, targets, weights


def _assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize(
    ("name", "weighted"),
    [
        ("ap", False),
        ("ap", True),
        ("recall", False),
        ("recall", True),
        ("pauc", False),
        ("pauc", True),
        ("coverage", False),
    ],
)
@pytest.mark.parametrize("layout", ["binary", "multiclass", "multilabel"])
@pytest.mark.parametrize("ignore", [False, True])
def test_update_over_batches_equals_the_function_on_the_concatenation(
    name: str, weighted: bool, layout: str, ignore: bool
) -> None:
    # ("coverage", True) is absent: coverage_at_budget takes no sample_weight.
    make, fn = _pairs()[name]
    scores, targets, weights = _data(layout, ignore)
    kw: dict[str, Any] = {"ignore_index": -7} if ignore else {}
    metric = make(**kw)
    for lo in range(0, N, BATCH):
        rows = slice(lo, lo + BATCH)
        if weighted:
            metric.update(scores[rows], targets[rows], sample_weight=weights[rows])
        else:
            metric.update(scores[rows], targets[rows])
    want = fn(scores, targets, sample_weight=weights, **kw) if weighted else fn(scores, targets, **kw)
    _assert_same(metric.compute(), want)
    assert want.ndim == (0 if layout == "binary" else 1)


def test_reset_and_macro_average_and_no_rows() -> None:
    scores, targets, weights = _data("multiclass", False)
    metric = AveragePrecision(average="macro")
    with pytest.raises(ValueError, match="at least one row"), pytest.warns(UserWarning, match="before the"):
        metric.compute()
    metric.update(torch.randn(50, C, dtype=torch.float64), torch.randint(0, C, (50,)))
    metric.compute()
    metric.reset()
    metric.update(scores[:100], targets[:100], sample_weight=weights[:100])
    metric.update(scores[100:], targets[100:], sample_weight=weights[100:])
    _assert_same(metric.compute(), ilm.average_precision(scores, targets, sample_weight=weights).nanmean())
    # 'macro' leaves out the undefined classes (class 2 has no positive here).
    metric.reset()
    metric.update(scores, targets.clamp_max(1))
    assert ilm.average_precision(scores, targets.clamp_max(1))[2].isnan()
    _assert_same(metric.compute(), ilm.average_precision(scores, targets.clamp_max(1))[:2].mean())
    # Rows without weights weigh 1, mixed with weighted batches.
    metric = PartialAUC()
    metric.update(scores[:100], targets[:100])
    metric.update(scores[100:], targets[100:], sample_weight=weights[100:])
    w = torch.cat([torch.ones(100, dtype=torch.float64), weights[100:]])
    _assert_same(metric.compute(), ilm.partial_auc(scores, targets, sample_weight=w))


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="average"):
        AveragePrecision(average="micro")
    with pytest.raises(ValueError, match="max_rows"):
        AveragePrecision(max_rows=0)
    with pytest.raises(ValueError, match="quantile"):
        RecallAtQuantile(quantile=1.5)
    with pytest.raises(ValueError, match="alpha"):
        PartialAUC(alpha=0.5, beta=0.2)
    with pytest.raises(ValueError, match="budget"):
        CoverageAtBudget(budget=0.0)
    metric = AveragePrecision()
    with pytest.raises(ValueError, match="targets"):
        metric.update(torch.randn(4, 2), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="sample_weight"):
        metric.update(torch.randn(4, 2), torch.zeros(4, dtype=torch.long), sample_weight=torch.ones(3))


# ----------------------------------------------------------------------------------------------
# Bounded memory: a uniform sample of max_rows rows


def _drifting_stream(n_batches: int = 100, batch: int = 1000) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches whose prevalence and separation drift: a sample of the first or last rows is badly off."""
    g = torch.Generator().manual_seed(123)
    out = []
    for b in range(n_batches):
        prevalence = 0.02 + 0.08 * b / n_batches
        y = (torch.rand(batch, generator=g) < prevalence).long()
        s = torch.randn(batch, generator=g, dtype=torch.float64) + (0.5 + 2.0 * b / n_batches) * y
        out.append((s, y))
    return out


@pytest.mark.parametrize("name", ["ap", "recall", "pauc", "coverage"])
def test_bounded_memory_sample_stays_within_its_sampling_error(name: str) -> None:
    make, fn = _pairs()[name]
    stream = _drifting_stream()
    max_rows = 20_000  # of 100_000 rows; ~6 % positives: ~1200 positives kept
    metric = make(max_rows=max_rows, seed=5)
    for s, y in stream:
        metric.update(s, y)
        assert sum(k.shape[0] for k in metric.keys) <= max_rows
        assert sum(x.shape[0] for x in metric.scores) <= max_rows
    scores = torch.cat([s for s, _ in stream])
    targets = torch.cat([y for _, y in stream])
    exact = fn(scores, targets)
    kept_pos = int(torch.cat(metric.targets).sum())
    assert 1000 < kept_pos < 1400
    # Stated tolerance: 3 / sqrt(positives kept) (about 0.09); the error of order 1/sqrt(m).
    assert abs(metric.compute().item() - exact.item()) < 3 / kept_pos**0.5
    # The sample is uniform over the epoch: as many rows from each half of the stream.
    kept_scores = set(torch.cat(metric.scores).tolist())
    first_half = set(scores[: scores.shape[0] // 2].tolist())
    share = len(kept_scores & first_half) / len(kept_scores)
    assert abs(share - 0.5) < 0.02


def test_bounded_memory_holds_through_forward() -> None:
    stream = _drifting_stream(n_batches=20, batch=100)
    metric = AveragePrecision(max_rows=150)
    for s, y in stream:
        _assert_same(metric(s, y), ilm.average_precision(s, y))  # forward: the batch's value
        assert sum(k.shape[0] for k in metric.keys) <= 150
        assert sum(x.shape[0] for x in metric.scores) <= 150
    assert 0.0 < metric.compute().item() < 1.0


def test_bounded_memory_is_exact_when_everything_fits_and_leaves_the_global_rng_alone() -> None:
    scores, targets, weights = _data("multiclass", True)
    metric = RecallAtQuantile(quantile=0.2, ignore_index=-7, max_rows=N)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    for lo in range(0, N, BATCH):
        metric.update(scores[lo : lo + BATCH], targets[lo : lo + BATCH], sample_weight=weights[lo : lo + BATCH])
    assert torch.equal(torch.get_rng_state(), state)
    want = ilm.recall_at_quantile(scores, targets, quantile=0.2, ignore_index=-7, sample_weight=weights)
    _assert_same(metric.compute(), want)


# ----------------------------------------------------------------------------------------------
# Two gloo processes


RANK_BATCHES = ((0, 3, 4, 9), (1, 2, 5, 6, 7, 8, 10, 11))  # batch indices of each rank: uneven


def _dist_worker(rank: int, world: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layout in ("binary", "multiclass", "multilabel"):
        scores, targets, weights = _data(layout, True)
        for name, (make, _) in _pairs().items():
            for max_rows in (None, 60):
                metric = make(ignore_index=-7, max_rows=max_rows)
                for b in RANK_BATCHES[rank]:
                    rows = slice(b * BATCH, (b + 1) * BATCH)
                    if name == "coverage":
                        metric.update(scores[rows], targets[rows])
                    else:
                        metric.update(scores[rows], targets[rows], sample_weight=weights[rows])
                local: dict[str, torch.Tensor] = {}
                if max_rows is not None:  # what this rank kept, before the sync
                    for state in ("keys", "scores", "targets", "weights"):
                        if hasattr(metric, state):
                            local[state] = torch.cat(getattr(metric, state))
                out[f"{layout}/{name}/{max_rows}"] = (metric.compute(), local)
                # Rank 0 sees no row at all: it still gets everyone's value.
                metric = make(ignore_index=-7, max_rows=max_rows)
                if rank == 1:
                    if name == "coverage":
                        metric.update(scores, targets)
                    else:
                        metric.update(scores, targets, sample_weight=weights)
                out[f"{layout}/{name}/{max_rows}/empty"] = metric.compute()
    return out


def _run_ranks_with_timeout(worker: Any, world: int = 2, timeout: float = 240.0) -> list[dict[str, Any]]:
    """`_ddp.run_ranks` that fails, instead of hanging, when the ranks do not finish in time."""
    with tempfile.TemporaryDirectory() as out_dir:
        ctx = mp.start_processes(
            _entry, args=(world, _free_port(), out_dir, worker, ()), nprocs=world, join=False, start_method="spawn"
        )
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                pytest.fail(f"the {world} ranks did not finish within {timeout} s")
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world)]


@pytest.mark.ddp
def test_two_gloo_processes_equal_one_process_on_everything() -> None:
    results = _run_ranks_with_timeout(_dist_worker)
    assert sum(len(b) for b in RANK_BATCHES) * BATCH >= N
    for layout in ("binary", "multiclass", "multilabel"):
        scores, targets, weights = _data(layout, True)
        for name, (_, fn) in _pairs().items():
            kw: dict[str, Any] = {"ignore_index": -7}
            if name != "coverage":
                kw["sample_weight"] = weights
            want = fn(scores, targets, **kw)
            for rank in range(2):
                got, _ = results[rank][f"{layout}/{name}/None"]
                _assert_same(got, want)
                _assert_same(results[rank][f"{layout}/{name}/None/empty"], want)
                # N = 203 > 60 rows on rank 1 alone: the sample is rank 1's, the same on both ranks.
                _assert_same(results[rank][f"{layout}/{name}/60/empty"], results[1][f"{layout}/{name}/60/empty"])
            # Bounded: the global bottom-60 of the union of both ranks' samples.
            locals_ = [results[r][f"{layout}/{name}/60"][1] for r in range(2)]
            union = {k: torch.cat([loc[k] for loc in locals_]) for k in locals_[0]}
            assert union["keys"].shape[0] == 120
            keep = union["keys"].topk(60, largest=False).indices
            kw = {"ignore_index": -7}
            if name != "coverage":
                kw["sample_weight"] = union["weights"][keep]
            want = fn(union["scores"][keep], union["targets"][keep], **kw)
            for rank in range(2):
                _assert_same(results[rank][f"{layout}/{name}/60"][0], want)


# ----------------------------------------------------------------------------------------------
# Lightning: self.log(name, metric) in validation_step


def test_logged_from_a_lightning_validation_step() -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x_train, y_train = torch.randn(64, 4, generator=g), torch.randint(0, C, (64,), generator=g)
    x_val, y_val = torch.randn(100, 4, generator=g), torch.randint(0, C, (100,), generator=g)

    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, C)
            self.val_ap = AveragePrecision(average="macro")
            self.val_pauc = PartialAUC(beta=0.5, average="macro")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.cross_entropy(self(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            scores = self(x)
            self.val_ap.update(scores, y)
            self.val_pauc(scores, y)
            self.log("val_ap", self.val_ap, on_epoch=True)
            self.log("val_pauc", self.val_pauc, on_epoch=True)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.5)

    model = Net()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(
        model,
        DataLoader(TensorDataset(x_train, y_train), batch_size=16),
        DataLoader(TensorDataset(x_val, y_val), batch_size=16),  # 7 batches, the last of 4 rows
    )
    with torch.no_grad():
        scores = model(x_val)
    want_ap = ilm.average_precision(scores, y_val).nanmean()
    want_pauc = ilm.partial_auc(scores, y_val, beta=0.5).nanmean()
    torch.testing.assert_close(trainer.callback_metrics["val_ap"], want_ap, rtol=0, atol=1e-6)
    torch.testing.assert_close(trainer.callback_metrics["val_pauc"], want_pauc, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Without torchmetrics


def test_missing_torchmetrics_raises_an_import_error_that_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = "imbalanced_losses.integrations.torchmetrics"
    monkeypatch.setitem(sys.modules, "torchmetrics", None)  # type: ignore[arg-type]
    monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError) as info:
        importlib.import_module(name)
    assert str(info.value).startswith(f"{name} needs TorchMetrics")
    assert 'pip install "imbalanced-losses[torchmetrics]"' in str(info.value)
