"""Train a binary alerting model with Lightning, weighted BCE first, then the pairwise pAUC loss.

:class:`~imbalanced_losses.integrations.lightning.WarmupCallback` drives the warm-up schedule
of :class:`~imbalanced_losses.LossWarmupWrapper` from the ``Trainer``: no hook calls in the
training step. The loss is a sub-module of the ``LightningModule``, so its memory queue and
schedule are saved in Lightning checkpoints.

Run (needs ``pip install "imbalanced-losses[lightning,examples]"``)::

    python examples/lightning_warmup.py            # 12 epochs, ~20 s on 2 CPU cores
    python examples/lightning_warmup.py --quick    # 3 epochs
"""

from __future__ import annotations

import argparse
import warnings

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn

from imbalanced_losses import LossWarmupWrapper, PAUCAtBudgetLoss
from imbalanced_losses.integrations.lightning import WarmupCallback
from imbalanced_losses.metrics import average_precision, coverage_at_budget

BUDGET = 0.01  # alert on the top 1 % of cases


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 % positives; a linear cue lifts positives and some decoys, a product cue separates them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    y = (torch.rand(n, generator=g) < 0.005).long()
    decoy = (torch.rand(n, generator=g) < 0.02) & (y == 0)
    x[:, :2] += 2.0 * (y.bool() | decoy).float().unsqueeze(1)
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    x[:, 2] += 1.5 * sign * y
    x[:, 3] += 1.5 * sign * y
    return x, y


class WeightedBCE(nn.Module):
    """Class-weighted BCE on ``[N, 1]`` logits and ``[N]`` 0/1 targets (the ranking losses' layout)."""

    def __init__(self, pos_weight: float) -> None:
        super().__init__()
        self.register_buffer("pos_weight", torch.tensor(pos_weight))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(
            logits.squeeze(1), targets.float(), pos_weight=self.pos_weight
        )


class AlertModel(LightningModule):
    """A small MLP whose loss is a warm-up wrapper around the pairwise pAUC."""

    def __init__(self, steps_per_epoch: int, warmup_epochs: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
        self.loss = LossWarmupWrapper(
            warmup_loss=WeightedBCE(pos_weight=50.0),
            main_loss=PAUCAtBudgetLoss(num_classes=1, beta=BUDGET, surrogate="pairwise", queue_size=4096),
            warmup_epochs=warmup_epochs,
            blend_epochs=1,
            temp_start=0.5,  # PAUC's temperature is a multiplier of the score spread
            temp_end=0.1,
            temp_decay_steps=max(1, 2 * steps_per_epoch),
        )

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss(self.net(x), y)
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="3 epochs on fewer rows")
    args = parser.parse_args()
    epochs, n = (3, 20_000) if args.quick else (args.epochs, 60_000)
    torch.manual_seed(0)
    x, y = make_data(n, seed=0)
    x_test, y_test = make_data(n // 2, seed=1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=1024, shuffle=True)
    model = AlertModel(steps_per_epoch=len(loader), warmup_epochs=max(1, epochs // 3))
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        callbacks=[WarmupCallback()],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*num_workers.*")
        trainer.fit(model, loader)
    with torch.no_grad():
        scores = model.net(x_test).squeeze(1)
    print(f"temperature at the end: {model.loss.current_temperature:.3f} (schedule 0.5 -> 0.1)")
    print(f"test AP {average_precision(scores, y_test).item():.3f}, ", end="")
    print(f"coverage at {BUDGET:.0%}: {coverage_at_budget(scores, y_test, budget=BUDGET).item():.3f}")


if __name__ == "__main__":
    main()
