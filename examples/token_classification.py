"""Token classification with Hugging Face Transformers: a ``Trainer`` that ranks the rare tags with Smooth-AP.

A tiny BERT (a small :class:`~transformers.BertConfig`, random weights: nothing is
downloaded) tags synthetic sequences: a "name" token right after a "trigger" token is an
entity (``PER``, ``LOC`` or the rarer ``ORG``), everything else is the background tag ``O``
(about 95 % of the real tokens); one entity in ten is missed by the annotation and one in ten
gets a random entity tag. Sequences have random lengths, padded to a common length, with the
padding labelled ``-100`` as a Transformers data collator does.

:class:`RankingLossTrainer` is a :class:`transformers.Trainer` whose ``compute_loss`` calls
:class:`~imbalanced_losses.SmoothAPLoss` instead of the model's cross-entropy:

- ``[B, T, C]`` logits -> ``[B*T, C]`` rows, ``[B, T]`` labels -> ``[B*T]``; the ``-100``
  rows (padding, or sub-word pieces a tokenizer labelled ``-100``) are dropped before the
  loss, so that every slot of the memory queue holds a real token;
- ``class_weight`` 0 on the background column: ``O`` is not ranked (its logit gets no gradient);
- the memory queue (``queue_size`` real tokens, about 20 positives of the rarest tag) carries
  the rows of past steps into each step's ranking; the loss module is put in the model's
  train/eval mode, so evaluation steps do not write to it.

Evaluation runs with ``batch_eval_metrics=True``: the Trainer hands ``compute_metrics`` one
batch at a time, and the TorchMetrics metrics of
:mod:`imbalanced_losses.integrations.torchmetrics` (``AveragePrecision``,
``CoverageAtBudget``) accumulate them and return the exact value over the whole validation
set at the last batch. Each tag is scored by its own logit column. The same model, trained by
a plain ``Trainer`` (the model's cross-entropy), is the baseline.

Run::

    python examples/token_classification.py            # ~1 min on 2 CPU cores
    python examples/token_classification.py --quick    # ~15 s
    python examples/token_classification.py --steps 600 --no-baseline

Needs ``pip install "imbalanced-losses[transformers,torchmetrics]"``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import (
    AutoModelForTokenClassification,
    BertConfig,
    EvalPrediction,
    PrinterCallback,
    Trainer,
    TrainingArguments,
)
from transformers.utils import logging as hf_logging

from imbalanced_losses import SmoothAPLoss
from imbalanced_losses.integrations.torchmetrics import AveragePrecision, CoverageAtBudget

TAGS = ["O", "PER", "LOC", "ORG"]  # tag 0 is the background
PAD_ID, IGNORE = 0, -100
VOCAB, MAX_LEN = 64, 32
TRIGGERS = {1: 1, 2: 2, 3: 3}  # token id -> the tag of a name token right after it
NAMES = range(4, 20)  # token ids that are entities after a trigger, background elsewhere
PLANT_RATE = {1: 0.03, 2: 0.02, 3: 0.008}  # per position: a trigger + name pair of each tag
BUDGET = 0.03  # CoverageAtBudget: the share of the real tokens flagged per tag


def make_data(n: int, seed: int) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask`` and ``labels``, each ``[n, MAX_LEN]`` (labels ``-100`` on padding)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(NAMES.start, VOCAB, (n, MAX_LEN), generator=g)  # no trigger, except planted ones
    tags = torch.zeros(n, MAX_LEN, dtype=torch.long)
    for trigger, rate in PLANT_RATE.items():
        rows, cols = (torch.rand(n, MAX_LEN - 1, generator=g) < rate).nonzero().unbind(1)
        tokens[rows, cols] = trigger
        tokens[rows, cols + 1] = torch.randint(NAMES.start, NAMES.stop, (len(rows),), generator=g)
        tag = torch.full((len(rows),), TRIGGERS[trigger])
        noise = torch.rand(len(rows), generator=g)
        tag[noise < 0.2] = torch.randint(1, len(TAGS), (len(rows),), generator=g)[noise < 0.2]
        tag[noise < 0.1] = 0
        tags[rows, cols + 1] = tag
    tags[tokens < NAMES.start] = 0  # a trigger that overwrote the name of an earlier pair
    lengths = torch.randint(MAX_LEN // 4, MAX_LEN + 1, (n,), generator=g)
    padding = torch.arange(MAX_LEN).unsqueeze(0) >= lengths.unsqueeze(1)
    tokens[padding] = PAD_ID
    tags[padding] = IGNORE
    return {"input_ids": tokens, "attention_mask": (~padding).long(), "labels": tags}


class TaggingDataset(Dataset):
    """Rows of :func:`make_data` as the dicts a Transformers data collator stacks."""

    def __init__(self, data: dict[str, torch.Tensor]) -> None:
        self.data = data

    def __len__(self) -> int:
        return self.data["input_ids"].shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {key: value[i] for key, value in self.data.items()}


def tiny_model(seed: int) -> nn.Module:
    """A 2-layer BERT token classifier with random weights (seeded), built from its config alone."""
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=MAX_LEN,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.1,  # wider than BERT's 0.02: a tiny model from scratch learns faster
        pad_token_id=PAD_ID,
        num_labels=len(TAGS),
        id2label=dict(enumerate(TAGS)),
        label2id={tag: i for i, tag in enumerate(TAGS)},
    )
    torch.manual_seed(seed)
    return AutoModelForTokenClassification.from_config(config)


def queue_size_for(labels: torch.Tensor, positives_wanted: int) -> int:
    """Queue slots (real tokens, a multiple of 256) holding about ``positives_wanted`` of the rarest tag."""
    real = labels[labels != IGNORE]
    rate = min(float((real == t).float().mean()) for t in range(1, len(TAGS)))
    return math.ceil(positives_wanted / rate / 256) * 256


class RankingLossTrainer(Trainer):
    """A :class:`transformers.Trainer` whose loss is a ranking loss of ``imbalanced_losses``.

    Args:
        *args: Passed to :class:`transformers.Trainer`.
        loss_fn: The loss module, called on the ``[M, C]`` logits and ``[M]`` labels of the
            real tokens of a batch (``-100`` rows dropped). Moved to the Trainer's device.
        **kwargs: Passed to :class:`transformers.Trainer`.
    """

    def __init__(self, *args: Any, loss_fn: nn.Module, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The loss is a mean over the classes of one micro-batch, not a sum to be divided by the
        # number of labelled tokens: the Trainer then divides it by the gradient-accumulation steps.
        self.model_accepts_loss_kwargs = False
        self.loss_fn = loss_fn.to(self.args.device)
        self.last_stats: dict[str, torch.Tensor] = {}  # diagnostics of the last training step

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """Smooth-AP over the real tokens of the batch and the queue; the model's own loss is not computed."""
        labels = inputs["labels"]
        outputs = model(**{key: value for key, value in inputs.items() if key != "labels"})
        logits = outputs.logits  # [B, T, C]
        keep = labels.reshape(-1) != IGNORE  # padding and unlabelled sub-words: not even queued
        self.loss_fn.train(model.training)  # the queue is written in training steps only
        loss, stats = self.loss_fn(
            logits.reshape(-1, logits.shape[-1])[keep], labels.reshape(-1)[keep], return_diagnostics=True
        )
        if model.training:
            self.last_stats = stats
        return (loss, outputs) if return_outputs else loss


class TagMetrics:
    """``compute_metrics`` for ``batch_eval_metrics=True``: per-tag AP and coverage over the whole eval set.

    The Trainer calls it on every evaluation batch (``[B, T, C]`` logits, ``[B, T]`` labels),
    with ``compute_result=True`` at the last one. The TorchMetrics states keep the rows, so
    the values are those of the whole set, not means of per-batch values. The Trainer already
    gathers every rank's logits before calling it, hence ``sync_on_compute=False``.
    """

    def __init__(self, budget: float = BUDGET) -> None:
        self.ap = AveragePrecision(sync_on_compute=False)  # ignore_index=-100: padding rows skipped
        self.coverage = CoverageAtBudget(budget=budget, sync_on_compute=False)

    def __call__(self, eval_pred: EvalPrediction, compute_result: bool) -> dict[str, float]:
        logits = torch.as_tensor(eval_pred.predictions)
        labels = torch.as_tensor(eval_pred.label_ids)
        scores, targets = logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1)
        self.ap.update(scores, targets)  # each tag ranked by its own logit column
        self.coverage.update(scores, targets)
        if not compute_result:
            return {}
        ap, coverage = self.ap.compute(), self.coverage.compute()
        self.ap.reset()
        self.coverage.reset()
        out = {f"ap_{tag}": ap[t].item() for t, tag in enumerate(TAGS) if t > 0}
        out |= {f"coverage_{tag}": coverage[t].item() for t, tag in enumerate(TAGS) if t > 0}
        out["ap_entities"] = ap[1:].mean().item()  # O is not what the ranking loss trains
        return out


def train(
    trainer_cls: type[Trainer],
    *,
    steps: int,
    train_set: TaggingDataset,
    eval_set: TaggingDataset,
    seed: int,
    output_dir: str,
    **trainer_kwargs: Any,
) -> tuple[Trainer, dict[str, float]]:
    """Train a fresh :func:`tiny_model` for ``steps`` steps on the CPU, then evaluate it."""
    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=128,
        learning_rate=3e-3,
        warmup_steps=max(1, steps // 20),
        lr_scheduler_type="linear",
        logging_steps=max(1, steps // 10),
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        batch_eval_metrics=True,
        dataloader_num_workers=0,
        seed=seed,
    )
    trainer = trainer_cls(
        model=tiny_model(seed),
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        compute_metrics=TagMetrics(),
        **trainer_kwargs,
    )
    trainer.remove_callback(PrinterCallback)  # the logs stay in trainer.state.log_history
    trainer.train()
    print(f"{trainer_cls.__name__}: {steps} steps in {trainer.state.log_history[-1]['train_runtime']:.0f} s")
    return trainer, trainer.evaluate()


def training_losses(trainer: Trainer) -> list[float]:
    """The training losses the Trainer logged (one every ``logging_steps`` steps)."""
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry and "eval_loss" not in entry]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the example; return the trainers and the evaluation metrics (used by the tests)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 300, 100 with --quick)")
    parser.add_argument("--quick", action="store_true", help="fewer steps and a smaller data set")
    parser.add_argument("--no-baseline", action="store_true", help="skip the cross-entropy Trainer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    steps = args.steps if args.steps is not None else (100 if args.quick else 300)
    n_train, n_eval = (2000, 500) if args.quick else (6000, 1500)
    hf_logging.set_verbosity_error()  # the Trainer's notices; the metrics are printed below
    start = time.perf_counter()

    train_data, eval_data = make_data(n_train, args.seed), make_data(n_eval, args.seed + 1)
    labels = train_data["labels"]
    real = labels[labels != IGNORE]
    shares = torch.bincount(real, minlength=len(TAGS)).double() / real.numel()
    tag_shares = ", ".join(f"{tag} {share:.2%}" for tag, share in zip(TAGS, shares.tolist(), strict=True))
    print(f"{real.numel()} real training tokens; tag shares: {tag_shares}")
    queue_size = queue_size_for(labels, positives_wanted=20)
    loss_fn = SmoothAPLoss(
        num_classes=len(TAGS),
        queue_size=queue_size,
        temperature=0.05,
        class_weight=[0.0, 1.0, 1.0, 1.0],  # background O: not ranked, not computed
    )
    print(f"Smooth-AP with a queue of {queue_size} real tokens (~20 {TAGS[-1]} positives), {steps} steps")

    results: dict[str, Any] = {"queue_size": queue_size, "eval_data": eval_data}
    with tempfile.TemporaryDirectory() as output_dir:  # the Trainer wants one; nothing is saved
        common = {
            "steps": steps,
            "train_set": TaggingDataset(train_data),
            "eval_set": TaggingDataset(eval_data),
            "seed": args.seed,
            "output_dir": output_dir,
        }
        ranking, results["smooth_ap"] = train(RankingLossTrainer, loss_fn=loss_fn, **common)
        results["trainer"] = ranking
        fill = ranking.last_stats["queue_fill"].tolist()
        print(f"last step: real rows from the queue per entity tag {fill[1:]} (of {queue_size})")
        if not args.no_baseline:
            results["baseline_trainer"], results["cross_entropy"] = train(Trainer, **common)

    runs = [("smooth_ap", "Smooth-AP")] + ([] if args.no_baseline else [("cross_entropy", "CE")])
    eval_labels = eval_data["labels"]
    header = f"{'tag':<5} {'positives':>9}"
    for _, name in runs:
        header += f" {'AP ' + name:>13} {f'cov@{BUDGET:.0%} ' + name:>16}"
    print(header)
    for t, tag in enumerate(TAGS[1:], start=1):
        row = f"{tag:<5} {int((eval_labels == t).sum()):>9}"
        for key, _ in runs:
            row += f" {results[key][f'eval_ap_{tag}']:>13.3f} {results[key][f'eval_coverage_{tag}']:>16.3f}"
        print(row)
    means = ", ".join(f"{name} {results[key]['eval_ap_entities']:.3f}" for key, name in runs)
    print(f"mean AP over the entity tags: {means} ({time.perf_counter() - start:.0f} s)")
    return results


if __name__ == "__main__":
    torch.set_num_threads(min(2, torch.get_num_threads()))  # tiny tensors: more threads do not help
    main()
