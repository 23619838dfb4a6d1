"""WarmupCallback drives LossWarmupWrapper from a real (tiny, CPU) Lightning Trainer."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn

lightning = pytest.importorskip("lightning.pytorch", reason="the `lightning` extra is not installed")

from imbalanced_losses import DeferredReweighting, LossWarmupWrapper, SmoothAPLoss  # noqa: E402
from imbalanced_losses.integrations.lightning import WarmupCallback  # noqa: E402

BATCHES, BATCH = 4, 32


class CountingAP(SmoothAPLoss):
    """Smooth-AP that counts its queue resets and records the temperature of each forward."""

    def __init__(self) -> None:
        super().__init__(num_classes=1, queue_size=64, temperature=0.05)
        self.resets = 0
        self.seen: list[float] = []

    def reset_queue(self) -> None:
        self.resets += 1
        super().reset_queue()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.seen.append(float(self.temperature))
        return super().forward(*args, **kwargs)


class Tiny(lightning.LightningModule):  # type: ignore[misc,name-defined]
    def __init__(self, loss: LossWarmupWrapper) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)
        self.loss = loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return self.loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(BATCHES * BATCH, 4, generator=g)
        y = (x[:, 0] + 0.5 * torch.randn(BATCHES * BATCH, generator=g) > 1.0).long()
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)


class BCE(nn.Module):
    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits.squeeze(1), targets.float())


def fit(model: Tiny, epochs: int, callback: Any) -> list[str]:
    """Train; returns the messages of the warnings raised (Lightning's advice on workers included)."""
    trainer = lightning.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model)
    return [str(w.message) for w in caught]


def test_epoch_mode_schedule_advances_and_queue_resets_once() -> None:
    main = CountingAP()
    wrapper = LossWarmupWrapper(BCE(), main, warmup_epochs=1, temp_start=0.02, temp_end=0.01, temp_decay_steps=4)
    model = Tiny(wrapper)
    fit(model, epochs=3, callback=WarmupCallback())  # found inside the LightningModule
    assert wrapper._epoch == 2
    assert not wrapper.in_warmup
    assert main.resets == 1  # the latch at the first batch after the warm-up, and only then
    assert wrapper._switch_step == BATCHES  # latched at global step 4 (first batch of epoch 1)
    # Warm-up epoch: the main loss never ran. Then temp_start at the latch, decaying to temp_end.
    assert len(main.seen) == 2 * BATCHES
    assert main.seen[0] == pytest.approx(0.02)
    assert main.seen[-1] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(main.seen, main.seen[1:], strict=False))
    # The schedule is part of the LightningModule's checkpoint.
    assert "loss._extra_state" in model.state_dict()


def test_step_mode_with_explicit_wrapper() -> None:
    main = CountingAP()
    wrapper = LossWarmupWrapper(
        BCE(), main, warmup_steps=3, blend_steps=2, temp_start=0.04, temp_end=0.01, temp_decay_steps=2
    )
    fit(Tiny(wrapper), epochs=2, callback=WarmupCallback(wrapper))
    assert wrapper._global_step == 2 * BATCHES - 1  # the hook saw every batch's global step
    assert wrapper._switch_step == 3
    assert main.resets == 1
    assert wrapper.current_temperature == pytest.approx(0.01)


def test_without_the_callback_nothing_advances(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("imbalanced_losses.warmup_wrapper._HOOK_GRACE", BATCHES)
    main = CountingAP()
    wrapper = LossWarmupWrapper(BCE(), main, warmup_steps=3, temp_start=0.02, temp_end=0.01, temp_decay_steps=2)

    class Nothing(lightning.Callback):  # type: ignore[misc,name-defined]
        pass

    messages = fit(Tiny(wrapper), epochs=1, callback=Nothing())
    assert any("warm-up never ends" in m and "WarmupCallback" in m for m in messages)
    assert wrapper.in_warmup
    assert main.resets == 0


class WeightRecorder(nn.Module):
    """Weighted BCE over two one-vs-rest columns that records the class weights of each forward."""

    def __init__(self) -> None:
        super().__init__()
        self.class_weight: torch.Tensor | None = None
        self.seen: list[torch.Tensor | None] = []

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.seen.append(self.class_weight)
        weight = 1.0 if self.class_weight is None else self.class_weight[targets]
        return (
            weight
            * nn.functional.binary_cross_entropy_with_logits(logits.squeeze(1), targets.float(), reduction="none")
        ).mean()


def test_deferred_reweighting_is_driven_by_epoch() -> None:
    loss = WeightRecorder()
    drw = DeferredReweighting(loss, torch.tensor([0.5, 3.0]), start_epoch=2)
    model = Tiny(drw)  # type: ignore[arg-type]
    fit(model, epochs=3, callback=WarmupCallback())  # found inside the LightningModule
    assert [w is None for w in loss.seen] == [True] * (2 * BATCHES) + [False] * BATCHES
    assert "loss._extra_state" in model.state_dict()


def test_rejects_non_wrappers() -> None:
    with pytest.raises(TypeError, match="`wrappers`"):
        WarmupCallback([nn.Linear(1, 1)])  # type: ignore[list-item]


@pytest.mark.slow
def test_example_script_runs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "lightning_warmup.py"
    monkeypatch.setattr("sys.argv", [str(script), "--quick"])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "temperature at the end: 0.10" in out  # the schedule reached temp_end
    assert "coverage at 1%" in out
