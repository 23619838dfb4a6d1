"""Coverage at a 50 bps alert budget on an extreme-imbalance problem with a contested top.

The problem
    A synthetic binary task with 0.15% positives (200,000 rows, 20 standard-normal features).
    1.2% of the negatives are *decoys* that share the positives' easy signal (+2.5 on features
    0-2), so a model that only learns the easy signal fills the top of its ranking with decoys.
    Only a nonlinear cue separates positives from decoys: every positive gets ``+1.7 * s`` on
    both features 5 and 6 for a random sign ``s`` (so ``f5 * f6`` is large and positive). A
    further 3% of the negatives are *confounders* that carry the same product cue without the
    easy signal, so leaning on the cue alone lifts them into the mid-range. The first quarter of
    the (shuffled) rows is the evaluation split (about 75 positives), the rest the training
    split.

    The metric is what an alerting system is judged on: *coverage at budget*, the share of all
    evaluation positives among the ``ceil(budget * n_eval)`` highest scores (250 of 50,000 rows
    at the default 50 bps budget). Average precision and AUROC (scikit-learn) are reported too.

The arms (same MLP 20-64-64-1, Adam 1e-3, 15 epochs of batches of 4096, same initial weights
and batch order for every arm of a seed)
    * ``weighted-ce``: ``BCEWithLogitsLoss(pos_weight=n_neg / n_pos)`` throughout.
    * ``smoothap``: :class:`~imbalanced_losses.SmoothAPLoss` (queue of 8192 rows), temperature
      0.1 -> 0.01.
    * ``recall``: :class:`~imbalanced_losses.RecallAtQuantileLoss` at ``quantile = budget`` (queue
      of 8192 rows), temperature multiplier 0.5 -> 0.1 (a multiple of the scores' spread).
    * ``pauc-{trap,pair}-{pool,live}``: :class:`~imbalanced_losses.PAUCAtBudgetLoss` on the FPR
      band ``[budget / 2, 1.5 * budget]`` (queue of 8192 rows) with the ``trapezoid`` or the
      ``pairwise`` surrogate and the ``pool`` or ``live`` positive numerator, temperature
      multiplier 0.5 -> 0.1.

    Every ranking arm runs inside :class:`~imbalanced_losses.LossWarmupWrapper` in step mode:
    the weighted BCE for the first 30% of the ``T`` steps, a linear blend into the ranking loss
    over the next 15%, then the ranking loss alone; its temperature decays geometrically from
    the blend start to the last step (``temp_decay_steps = T - warmup_steps``). Both hooks are
    called every epoch / step.

What to expect
    The pairwise surrogate's band acts as a label-free hard-negative miner: the decoys that sit
    inside the FPR band are exactly the negatives it pushes down, so ``pauc-pair-pool`` recovers
    much of the coverage weighted CE leaves behind (about 0.75 against 0.55). The trapezoid
    surrogate and the recall loss pass the gradient of their thresholds on to the negatives at
    the cut (D12 of the migration page), and come close (about 0.72 and 0.70); with 0.6's
    detached thresholds their logit scale ran away and the trapezoid fell to about 0.4.
    Restricting the numerator to the few live positives per batch (``live``, about 4-5 per
    batch) starves the contrast and falls to about 0.4 with either surrogate. Seed-to-seed
    spread is large with about 75 evaluation positives: compare several seeds.

Running it (needs numpy, scikit-learn, matplotlib and tqdm; ``pip install -e ".[examples]"``)::

    python examples/coverage_at_budget_demo.py                 # 5 seeds, full size (a few minutes on 2 cores)
    python examples/coverage_at_budget_demo.py --seeds 2       # the comparison in the docs
    python examples/coverage_at_budget_demo.py --quick         # 1 seed, 100k rows, 8 epochs: ~10-20 s
    python examples/coverage_at_budget_demo.py --arms weighted-ce pauc-pair-pool --budget 0.01

The script uses only the public API that ``imbalanced-losses`` 0.6 also has, so the same file
runs against either implementation. A table goes to stdout, a progress bar to stderr and a
figure (coverage per arm, and the top-of-ranking ROC and PR curves of the first seed) to
``--out``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imbalanced_losses import LossWarmupWrapper, PAUCAtBudgetLoss, RecallAtQuantileLoss, SmoothAPLoss

try:
    from imbalanced_losses.metrics import budget_rows
except ImportError:  # imbalanced-losses 0.6 has no `metrics`: the same rule, in exact arithmetic

    def budget_rows(budget: float, n: int) -> int:  # type: ignore[misc]
        """``max(1, ceil(budget * n))`` with the budget read as the decimal it was written as."""
        return min(n, max(1, math.ceil(Fraction(repr(budget)) * n)))


try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve
    from tqdm import tqdm
except ImportError as exc:  # pragma: no cover - depends on the environment
    sys.exit(
        f"This demo needs numpy, scikit-learn, matplotlib and tqdm ({exc}).\n"
        'Install them with: pip install -e ".[examples]"  (or: pip install numpy scikit-learn matplotlib tqdm)'
    )

#: Arm identifiers in display order, with their table labels.
ARMS: dict[str, str] = {
    "weighted-ce": "Weighted CE",
    "smoothap": "SmoothAP",
    "recall": "Recall@quantile",
    "pauc-trap-pool": "PAUC trap (pool)",
    "pauc-trap-live": "PAUC trap (live)",
    "pauc-pair-pool": "PAUC pair (pool)",
    "pauc-pair-live": "PAUC pair (live)",
}
QUEUE_SIZE = 8192
WARMUP_FRACTION = 0.30
BLEND_FRACTION = 0.15
SMOOTHAP_TEMPERATURES = (0.1, 0.01)
PAUC_TEMPERATURES = (0.5, 0.1)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One seed's train / evaluation split of the contested-top problem."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_eval: torch.Tensor
    y_eval: np.ndarray

    @property
    def pos_weight(self) -> float:
        """``n_neg / n_pos`` on the training split (the weighted-CE class weight)."""
        n_pos = int(self.y_train.sum())
        return (len(self.y_train) - n_pos) / n_pos


def make_problem(
    seed: int,
    n_samples: int = 200_000,
    n_features: int = 20,
    pos_rate: float = 0.0015,
    decoy_frac: float = 0.012,
    confounder_frac: float = 0.03,
    easy_shift: float = 2.5,
    separator: float = 1.7,
) -> Problem:
    """Draw the contested-top problem for one seed (numpy ``default_rng(seed)``).

    Args:
        seed: Seed of the numpy generator.
        n_samples: Rows in total; the first quarter after shuffling is the evaluation split.
        n_features: Standard-normal features (at least 7).
        pos_rate: Fraction of positives (at least 8 positives are drawn).
        decoy_frac: Fraction of the negatives that share the positives' easy signal.
        confounder_frac: Fraction of the negatives that carry the product cue only.
        easy_shift: Shift added to features 0-2 of positives and decoys.
        separator: Magnitude of the signed shift added to features 5 and 6 of positives and
            confounders.

    Returns:
        The split as float32 feature tensors, int64 training labels and numpy evaluation labels.
    """
    if n_features < 7:
        raise ValueError("n_features must be at least 7 (features 0-2 and 5-6 carry the signal)")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_samples, n_features), dtype=np.float32)
    y = np.zeros(n_samples, dtype=np.int64)

    n_pos = max(8, round(pos_rate * n_samples))
    pos = rng.choice(n_samples, size=n_pos, replace=False)
    y[pos] = 1
    neg = np.flatnonzero(y == 0)
    n_decoy = round(decoy_frac * len(neg))
    n_conf = round(confounder_frac * len(neg))
    chosen = rng.choice(neg, size=n_decoy + n_conf, replace=False)
    decoys, confounders = chosen[:n_decoy], chosen[n_decoy:]

    x[np.concatenate([pos, decoys]), :3] += easy_shift  # easy signal: positives and decoys rise
    for rows in (pos, confounders):  # the product cue f5 * f6 > 0: positives and confounders
        sign = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=len(rows))
        x[rows, 5] += separator * sign
        x[rows, 6] += separator * sign

    perm = rng.permutation(n_samples)
    x, y = x[perm], y[perm]
    n_eval = n_samples // 4
    return Problem(
        x_train=torch.from_numpy(x[n_eval:]),
        y_train=torch.from_numpy(y[n_eval:]),
        x_eval=torch.from_numpy(x[:n_eval]),
        y_eval=y[:n_eval],
    )


# --------------------------------------------------------------------------------------------
# Losses and training
# --------------------------------------------------------------------------------------------


class WeightedBCE(nn.Module):
    """Class-weighted binary cross-entropy on ``[N, 1]`` logits and ``{0, 1}`` ``[N]`` targets."""

    def __init__(self, pos_weight: float) -> None:
        super().__init__()
        self.bce = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean weighted BCE."""
        return self.bce(logits.squeeze(1), targets.float())


def build_loss(arm: str, pos_weight: float, budget: float, total_steps: int, queue_size: int = QUEUE_SIZE) -> nn.Module:
    """Loss module of one arm (a fresh instance, so every seed starts with an empty queue).

    Args:
        arm: One of :data:`ARMS`.
        pos_weight: Weighted-CE positive weight (also used by the warm-up of the ranking arms).
        budget: Alert budget; the PAUC band is ``[budget / 2, 1.5 * budget]``.
        total_steps: Optimiser steps of the whole run (``T``), sizing the step-mode schedule.
        queue_size: Memory queue of the ranking losses.

    Returns:
        ``WeightedBCE`` for ``weighted-ce``, otherwise a step-mode ``LossWarmupWrapper``.
    """
    bce = WeightedBCE(pos_weight)
    if arm == "weighted-ce":
        return bce
    if arm == "smoothap":
        return warmed_up(bce, SmoothAPLoss(num_classes=1, queue_size=queue_size), SMOOTHAP_TEMPERATURES, total_steps)
    if arm == "recall":
        recall = RecallAtQuantileLoss(num_classes=1, quantile=budget, queue_size=queue_size)
        return warmed_up(bce, recall, PAUC_TEMPERATURES, total_steps)
    _, surrogate, numerator = arm.split("-")
    main = PAUCAtBudgetLoss(
        num_classes=1,
        alpha=budget / 2,
        beta=1.5 * budget,
        surrogate={"trap": "trapezoid", "pair": "pairwise"}[surrogate],
        pos_numerator=numerator,
        queue_size=queue_size,
    )
    return warmed_up(bce, main, PAUC_TEMPERATURES, total_steps)


def warmed_up(
    warmup: nn.Module, main: nn.Module, temperatures: tuple[float, float], total_steps: int
) -> LossWarmupWrapper:
    """The step-mode schedule of every ranking arm.

    ``warmup`` alone for 30 % of the steps, a 15 % blend, then ``main`` with its temperature
    decaying from ``temperatures[0]`` to ``temperatures[1]`` over the remaining steps.
    """
    warmup_steps = int(WARMUP_FRACTION * total_steps)
    return LossWarmupWrapper(
        warmup,
        main,
        temp_start=temperatures[0],
        temp_end=temperatures[1],
        temp_decay_steps=max(1, total_steps - warmup_steps),
        warmup_steps=warmup_steps,
        blend_steps=int(BLEND_FRACTION * total_steps),
    )


def make_mlp(n_features: int) -> nn.Module:
    """The MLP ``n_features -> 64 -> ReLU -> 64 -> ReLU -> 1``."""
    return nn.Sequential(nn.Linear(n_features, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))


def train_arm(
    arm: str,
    problem: Problem,
    seed: int,
    epochs: int,
    batch_size: int,
    budget: float,
    progress: tqdm,
) -> nn.Module:
    """Train one arm for one seed and return the model (in eval mode)."""
    torch.manual_seed(seed)
    model = make_mlp(problem.x_train.shape[1])
    total_steps = epochs * math.ceil(len(problem.y_train) / batch_size)
    loss_fn = build_loss(arm, problem.pos_weight, budget, total_steps)
    return fit(model, loss_fn, problem.x_train, problem.y_train, epochs, batch_size, seed, progress)


def fit(
    model: nn.Module,
    loss_fn: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    batch_size: int,
    seed: int,
    progress: tqdm,
) -> nn.Module:
    """Adam (lr 1e-3) over shuffled batches; returns the model in eval mode.

    The caller seeds the initial weights (``torch.manual_seed(seed)``); the batch order comes
    from a generator seeded with ``seed``, so every arm of a seed sees the same batches and the
    arms are paired. A ``LossWarmupWrapper`` gets its epoch and step hooks called.
    """
    wrapper = loss_fn if isinstance(loss_fn, LossWarmupWrapper) else None
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(seed)
    model.train()
    loss_fn.train()
    step = 0
    for epoch in range(epochs):
        if wrapper is not None:
            wrapper.on_train_epoch_start(epoch)
        for idx in torch.randperm(len(y), generator=order).split(batch_size):
            if wrapper is not None:
                wrapper.on_train_batch_start(step)
            loss = loss_fn(model(x[idx]), y[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            step += 1
        progress.update(1)
    return model.eval()


# --------------------------------------------------------------------------------------------
# Metrics, table and figure
# --------------------------------------------------------------------------------------------


def coverage_at_budget(scores: np.ndarray, labels: np.ndarray, budget: float) -> float:
    """Share of all positives among the ``budget_rows(budget, n)`` highest scores (NaN if none).

    ``budget_rows`` is ``max(1, ceil(budget * n))`` without the row that float rounding can add
    (``0.07 * 100`` is ``7.000000000000001``): the library's rule, as in
    :func:`imbalanced_losses.metrics.coverage_at_budget`.
    """
    n_pos = int(labels.sum())
    if n_pos == 0:
        return float("nan")
    k = budget_rows(budget, len(scores))
    top = np.argsort(-scores, kind="stable")[:k]
    return float(labels[top].sum() / n_pos)


@dataclass
class ArmResult:
    """Per-seed metrics of one arm, and the first seed's evaluation scores."""

    coverage: list[float] = field(default_factory=list)
    ap: list[float] = field(default_factory=list)
    auroc: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    first_scores: np.ndarray | None = None


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std())


def print_table(results: dict[str, ArmResult], budget: float) -> None:
    """Print one row per arm: AP, AUROC, coverage (mean ± population std over seeds), times.

    ``s/seed`` is the wall time of one seed (training and scoring), ``cpu/seed`` the process CPU
    time over all threads (less sensitive to other load on a shared machine).
    """
    bps = budget * 1e4
    base = mean_std(results["weighted-ce"].coverage)[0] if "weighted-ce" in results else None
    header = f"{'arm':<18} {'AP':>15} {'AUROC':>15} {f'coverage@{bps:g}bps':>17} {'vs CE':>7} "
    header += f"{'s/seed':>7} {'cpu/seed':>8} {'total s':>8}"
    print(header)
    print("-" * len(header))
    for arm, res in results.items():
        ap, ap_sd = mean_std(res.ap)
        auc, auc_sd = mean_std(res.auroc)
        cov, cov_sd = mean_std(res.coverage)
        lift = f"{cov / base - 1:+.0%}" if base and arm != "weighted-ce" else ""
        secs = float(np.sum(res.seconds))
        cpu = float(np.mean(res.cpu_seconds))
        print(
            f"{ARMS[arm]:<18} {ap:>7.4f} ± {ap_sd:<5.3f} {auc:>7.4f} ± {auc_sd:<5.3f} "
            f"{cov:>8.4f} ± {cov_sd:<6.4f} {lift:>7} {secs / len(res.seconds):>7.1f} {cpu:>8.1f} {secs:>8.1f}"
        )


def plot(results: dict[str, ArmResult], y_eval: np.ndarray, budget: float, seeds: Sequence[int], out: Path) -> None:
    """Coverage per arm (mean ± std, seeds as dots) and the first seed's top-ROC and PR curves."""
    fig, (ax_cov, ax_roc, ax_pr) = plt.subplots(1, 3, figsize=(16, 4.8))
    names = list(results)
    colours = plt.get_cmap("tab10")(np.arange(len(names)))
    bps = budget * 1e4

    for i, arm in enumerate(names):
        cov = np.asarray(results[arm].coverage)
        ax_cov.bar(i, cov.mean(), yerr=cov.std(), color=colours[i], alpha=0.75, capsize=4)
        ax_cov.scatter(np.full(len(cov), i), cov, color="k", s=10, zorder=3)
    ax_cov.set_xticks(range(len(names)), [ARMS[a] for a in names], rotation=30, ha="right")
    ax_cov.set_ylabel(f"coverage@{bps:g} bps (eval positives in top {budget:.2%})")
    ax_cov.set_ylim(0, 1)
    ax_cov.set_title(f"Coverage at budget, {len(seeds)} seed(s), mean ± std")

    max_fpr = 4 * budget
    for i, arm in enumerate(names):
        scores = results[arm].first_scores
        assert scores is not None
        fpr, tpr, _ = roc_curve(y_eval, scores)
        keep = fpr <= max_fpr
        ax_roc.step(fpr[keep], tpr[keep], where="post", color=colours[i], label=ARMS[arm])
        prec, rec, _ = precision_recall_curve(y_eval, scores)
        ax_pr.plot(rec, prec, color=colours[i], label=ARMS[arm])
    ax_roc.axvline(budget, color="grey", ls="--", lw=1)
    ax_roc.set_xlim(0, max_fpr)
    ax_roc.set_ylim(0, 1)
    ax_roc.set_xlabel("false-positive rate")
    ax_roc.set_ylabel("true-positive rate")
    ax_roc.set_title(f"Top of the ROC (FPR ≤ {max_fpr:.1%}), seed {seeds[0]}")
    ax_roc.legend(fontsize=8, loc="lower right")
    ax_pr.set_xlabel("recall")
    ax_pr.set_ylabel("precision")
    ax_pr.set_xlim(0, 1)
    ax_pr.set_ylim(0, 1)
    ax_pr.set_title(f"Precision-recall, seed {seeds[0]}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--quick`` only changes the defaults it is documented to change)."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds, 42, 43, ... (default 5; quick 1)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 15; quick 8)")
    parser.add_argument("--n-samples", type=int, default=None, help="rows, 1/4 eval (default 200000; quick 100000)")
    parser.add_argument("--batch-size", type=int, default=4096, help="rows per optimiser step")
    parser.add_argument("--budget", type=float, default=0.005, help="alert budget (0.005 = 50 bps)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="arms to run")
    parser.add_argument("--quick", action="store_true", help="1 seed, 100k rows, 8 epochs (well under a minute)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("examples/output/coverage_at_budget.png"), help="figure")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    quick = {"seeds": 1, "epochs": 8, "n_samples": 100_000}
    full = {"seeds": 5, "epochs": 15, "n_samples": 200_000}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.seeds < 1 or args.epochs < 1 or args.n_samples < 100 or not 0 < args.budget < 1:
        parser.error("need --seeds >= 1, --epochs >= 1, --n-samples >= 100 and 0 < --budget < 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run every arm for every seed, print the table and save the figure."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    arms = [a for a in ARMS if a in args.arms]
    seeds = list(range(42, 42 + args.seeds))
    results = {arm: ArmResult() for arm in arms}
    start, cpu_start = time.perf_counter(), time.process_time()
    first_y_eval: np.ndarray | None = None
    eval_pos: list[int] = []
    with tqdm(
        total=len(seeds) * len(arms) * args.epochs, unit="epoch", file=sys.stderr, disable=args.no_progress
    ) as progress:
        for seed in seeds:
            problem = make_problem(seed, n_samples=args.n_samples)
            eval_pos.append(int(problem.y_eval.sum()))
            if first_y_eval is None:
                first_y_eval = problem.y_eval
            for arm in arms:
                progress.set_postfix_str(f"seed {seed}, {arm}")
                t0, c0 = time.perf_counter(), time.process_time()
                model = train_arm(arm, problem, seed, args.epochs, args.batch_size, args.budget, progress)
                with torch.no_grad():
                    scores = model(problem.x_eval).squeeze(1).double().numpy()
                res = results[arm]
                res.seconds.append(time.perf_counter() - t0)
                res.cpu_seconds.append(time.process_time() - c0)
                res.coverage.append(coverage_at_budget(scores, problem.y_eval, args.budget))
                res.ap.append(float(average_precision_score(problem.y_eval, scores)))
                res.auroc.append(float(roc_auc_score(problem.y_eval, scores)))
                if res.first_scores is None:
                    res.first_scores = scores
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start

    n_eval = args.n_samples // 4
    k = budget_rows(args.budget, n_eval)
    print(
        f"{args.n_samples} rows ({n_eval} eval, top k={k}), {args.epochs} epochs, batch {args.batch_size}, "
        f"seeds {seeds[0]}..{seeds[-1]}; eval positives per seed: {eval_pos}; torch threads {torch.get_num_threads()}"
    )
    print_table(results, args.budget)
    print(f"wall time {wall:.1f} s, CPU time {cpu:.1f} s (mean ± population std over seeds)")
    assert first_y_eval is not None
    plot(results, first_y_eval, args.budget, seeds, args.out)
    print(f"figure: {args.out}")
    if "weighted-ce" in results:
        print_advice(results["weighted-ce"], first_y_eval, args.budget, seeds[0])


def print_advice(baseline: ArmResult, y_eval: np.ndarray, budget: float, seed: int) -> None:
    """The advisor's report on the weighted-CE model of the first seed (skipped where there is none).

    On the evaluation split, for want of a separate validation split in this demo; on your own
    data run it on validation scores (``python -m imbalanced_losses.advisor FILE --budget B``).
    """
    try:
        from imbalanced_losses.advisor import advise
    except ImportError:  # imbalanced-losses 0.6 has no advisor
        return
    assert baseline.first_scores is not None
    scores, labels = torch.from_numpy(baseline.first_scores), torch.from_numpy(y_eval)
    print(f"\nAdvisor on the weighted-CE model of seed {seed} (evaluation split):")
    print(advise(scores, labels, budget=budget, n_boot=200, generator=torch.Generator().manual_seed(seed)))


if __name__ == "__main__":
    main()
