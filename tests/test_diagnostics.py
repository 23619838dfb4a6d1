"""``return_diagnostics=True`` on the three ranking losses (SPEC A6).

References, none derived from the diagnostics code:

* counts (``pool_size``, ``pos_count``, ``neg_count``, ``grad_pos_count``, ``queue_fill``) by
  Python loops over the rows of the pool, and over a ring buffer of the known batches;
* ``saturated_fraction`` by double loops over the sigmoid terms of each loss with
  :math:`|x| > 6` (``SATURATION``);
* ``ap`` against :func:`sklearn.metrics.average_precision_score` (unweighted, ties included);
* ``threshold`` against :func:`torch.quantile`; ``recall`` against the hand count of positives
  above it (ties count 1/2) and :func:`imbalanced_losses.metrics.recall_at_quantile`;
* the pAUC band statistics against ``tests/_references.ref_pauc`` (brute-force loops), and
  ``pauc`` against :func:`sklearn.metrics.roc_auc_score` (``max_fpr``, McClish undone) and a
  hand integration of :func:`sklearn.metrics.roc_curve` over ``[alpha, beta]``;
* invariance: loss, gradient and queue state bitwise equal with and without diagnostics;
* multi-label: each column's statistics equal those of the binary call on that column.
"""

from __future__ import annotations

import inspect
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from imbalanced_losses import PAUCAtBudgetLoss, RecallAtQuantileLoss, SmoothAPLoss
from imbalanced_losses.functional import pauc_at_budget_loss, recall_at_quantile_loss, smooth_ap_loss
from imbalanced_losses.functional._diagnostics import SATURATION
from imbalanced_losses.metrics import partial_auc, recall_at_quantile

try:
    from _references import check_unambiguous_level, pauc_levels, ref_pauc
except ImportError:  # pragma: no cover - depends on pytest's import mode
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _references import check_unambiguous_level, pauc_levels, ref_pauc

pytestmark = pytest.mark.filterwarnings("ignore:PAUCAtBudgetLoss. degenerate dispersion:UserWarning")

IGNORE = -100
COMMON = {"pool_size", "pos_count", "neg_count", "saturated_fraction"}
KEYS = {
    "ap": COMMON | {"ap"},
    "recall": COMMON | {"threshold", "tau_eff", "recall"},
    "pauc-trap": COMMON | {"t_alpha", "t_beta", "tau_eff", "band_neg_count", "pauc_var", "grad_pos_count", "pauc"},
}
KEYS["pauc-pair"] = KEYS["pauc-trap"]
COUNT_KEYS = {"pool_size", "pos_count", "neg_count", "band_neg_count", "grad_pos_count", "queue_fill"}

LOSSES: dict[str, tuple[Any, Any, dict[str, Any]]] = {
    "ap": (SmoothAPLoss, smooth_ap_loss, {"temperature": 0.1}),
    "recall": (RecallAtQuantileLoss, recall_at_quantile_loss, {"quantile": 0.3, "temperature": 0.1}),
    "pauc-trap": (PAUCAtBudgetLoss, pauc_at_budget_loss, {"beta": 0.3, "n_knots": 4, "temperature": 0.2}),
    "pauc-pair": (
        PAUCAtBudgetLoss,
        pauc_at_budget_loss,
        {"alpha": 0.05, "beta": 0.4, "surrogate": "pairwise", "temperature": 0.2},
    ),
}
ALL = pytest.mark.parametrize("name", list(LOSSES))
PAUC = ("pauc-trap", "pauc-pair")


def make_batch(
    seed: int, n: int = 45, c: int = 3, *, ties: bool = False, n_ignore: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 logits and class ids (every class at least 4 rows, ``n_ignore`` rows ignored)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64)
    if ties:
        logits = (logits * 2).round() / 2
    if c == 1:
        targets = (torch.rand(n, generator=g) < 0.35).long()
        targets[:4] = torch.tensor([1, 1, 0, 0])
    else:
        targets = torch.randint(0, c, (n,), generator=g)
        targets[: 4 * c] = torch.arange(4 * c) % c
    if n_ignore:
        targets[torch.randperm(n - 4 * c, generator=g)[:n_ignore] + 4 * c] = IGNORE
    return logits, targets


def make_ml(seed: int, n: int = 45, c: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64)
    targets = (torch.rand(n, c, generator=g) < 0.35).long()
    targets[torch.rand(n, c, generator=g) < 0.15] = IGNORE
    targets[:3] = 1
    targets[3:6] = 0
    targets[6] = IGNORE
    return logits, targets


def call(name: str, logits: torch.Tensor, targets: torch.Tensor, **kwargs: Any) -> Any:
    _, fn, options = LOSSES[name]
    return fn(logits, targets, **{**options, **kwargs})


def columns(logits: torch.Tensor, targets: torch.Tensor, c: int) -> tuple[list[float], list[bool]]:
    """Scores and positive flags of the rows taking part in class ``c`` (multi-class, binary or multi-hot)."""
    scores, positive = [], []
    num_classes = logits.shape[1]
    for r in range(logits.shape[0]):
        t = targets[r, c] if targets.ndim == 2 else targets[r]
        t = int(t)
        if t == IGNORE:
            continue
        scores.append(float(logits[r, c]))
        positive.append(t == 1 if (targets.ndim == 2 or num_classes == 1) else t == c)
    return scores, positive


def assert_stat(got: torch.Tensor, expected: list[float] | torch.Tensor, key: str, atol: float = 1e-12) -> None:
    expected_t = torch.as_tensor(expected, dtype=got.dtype)
    torch.testing.assert_close(got, expected_t, rtol=0, atol=atol, equal_nan=True, msg=lambda m: f"{key}: {m}")


# --------------------------------------------------------------------------------------------
# Return forms and keys
# --------------------------------------------------------------------------------------------


@ALL
@pytest.mark.parametrize("num_classes", [1, 3])
def test_functional_return_forms_and_keys(name: str, num_classes: int) -> None:
    logits, targets = make_batch(0, c=num_classes)
    loss, stats = call(name, logits, targets, return_diagnostics=True)
    assert loss.ndim == 0
    assert set(stats) == KEYS[name]
    for key, value in stats.items():
        assert isinstance(value, torch.Tensor), key
        assert value.shape == (num_classes,), key
    out = call(name, logits, targets, return_diagnostics=True, return_per_class=True, reduction="none")
    assert len(out) == 4
    assert out[0].shape == out[1].shape == out[2].shape == (num_classes,)
    assert out[2].dtype == torch.bool
    assert set(out[3]) == KEYS[name]
    with pytest.raises(TypeError, match="`return_diagnostics`"):
        call(name, logits, targets, return_diagnostics=1)


@ALL
def test_module_return_forms_and_keys(name: str) -> None:
    cls, _, options = LOSSES[name]
    module = cls(3, queue_size=8, **options).double()
    logits, targets = make_batch(1)
    loss, stats = module(logits, targets, return_diagnostics=True)
    assert loss.ndim == 0
    assert set(stats) == KEYS[name] | {"queue_fill"}
    assert all(v.shape == (3,) for v in stats.values())
    loss, per_class, valid, stats = module(logits, targets, return_per_class=True, return_diagnostics=True)
    assert per_class.shape == valid.shape == (3,)
    assert set(stats) == KEYS[name] | {"queue_fill"}
    assert not isinstance(module(logits, targets), tuple)
    with pytest.raises(TypeError, match="`return_diagnostics`"):
        module(logits, targets, return_diagnostics="yes")


@ALL
def test_return_diagnostics_signature(name: str) -> None:
    cls, fn, _ = LOSSES[name]
    assert inspect.signature(fn).parameters["return_diagnostics"].kind is inspect.Parameter.KEYWORD_ONLY
    params = list(inspect.signature(cls.forward).parameters.values())
    flag = next(p for p in params if p.name == "return_diagnostics")
    assert flag.default is False
    if cls is PAUCAtBudgetLoss:  # positional right after return_per_class
        names = [p.name for p in params]
        assert names.index("return_diagnostics") == names.index("return_per_class") + 1
        assert flag.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    else:  # "modules: keyword"
        assert flag.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def test_pauc_module_accepts_return_diagnostics_positionally() -> None:
    module = PAUCAtBudgetLoss(3, beta=0.3, queue_size=0).double()
    logits, targets = make_batch(2)
    loss, stats = module(logits, targets, None, False, True)
    assert "t_alpha" in stats
    assert "queue_fill" in stats
    loss2, _per_class, _valid, stats2 = module(logits, targets, None, True, True)
    assert torch.equal(loss, loss2)
    assert stats.keys() == stats2.keys()


# --------------------------------------------------------------------------------------------
# Diagnostics change neither loss nor gradient (nor the queue)
# --------------------------------------------------------------------------------------------


@ALL
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_functional_loss_and_gradient_unchanged(name: str, reduction: str) -> None:
    logits, targets = make_batch(3, ties=True)
    g = torch.Generator().manual_seed(3)
    sw = 0.5 + torch.rand(logits.shape[0], generator=g, dtype=torch.float64)
    x = logits.clone().requires_grad_()
    plain = call(name, x, targets, reduction=reduction, sample_weight=sw)
    plain.sum().backward()
    y = logits.clone().requires_grad_()
    with_diag, _ = call(name, y, targets, reduction=reduction, sample_weight=sw, return_diagnostics=True)
    with_diag.sum().backward()
    assert torch.equal(plain, with_diag)
    assert x.grad is not None
    assert y.grad is not None
    assert torch.equal(x.grad, y.grad)


@ALL
def test_module_with_queue_unchanged_in_lockstep(name: str) -> None:
    cls, _, options = LOSSES[name]
    plain = cls(3, queue_size=24, **options).double()
    diag = cls(3, queue_size=24, **options).double()
    for step in range(4):
        logits, targets = make_batch(10 + step, n=15, n_ignore=2)
        x = logits.clone().requires_grad_()
        y = logits.clone().requires_grad_()
        a = plain(x, targets)
        b, _ = diag(y, targets, return_diagnostics=True)
        assert torch.equal(a, b)
        a.backward()
        b.backward()
        assert x.grad is not None
        assert y.grad is not None
        assert torch.equal(x.grad, y.grad)
        sa, sb = plain.state_dict(), diag.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------------------------
# Counts
# --------------------------------------------------------------------------------------------


@ALL
@pytest.mark.parametrize("layout", ["multiclass", "binary", "multilabel"])
def test_pool_counts_by_hand(name: str, layout: str) -> None:
    if layout == "multilabel":
        logits, targets = make_ml(4)
    else:
        logits, targets = make_batch(4, c=1 if layout == "binary" else 3)
    _, stats = call(name, logits, targets, return_diagnostics=True)
    pool, pos, neg = [], [], []
    for c in range(logits.shape[1]):
        _, positive = columns(logits, targets, c)
        pool.append(len(positive))
        pos.append(sum(positive))
        neg.append(len(positive) - sum(positive))
    assert stats["pool_size"].tolist() == pool
    assert stats["pos_count"].tolist() == pos
    assert stats["neg_count"].tolist() == neg
    if layout == "multilabel":
        assert len(set(pool)) > 1  # the cells make the classes' pools differ: a real check


def test_pauc_grad_pos_count_functional_uses_live_mask() -> None:
    logits, targets = make_batch(5)
    g = torch.Generator().manual_seed(5)
    live = torch.rand(logits.shape[0], generator=g) < 0.5
    live[:12] = True
    _, stats = call("pauc-trap", logits, targets, live_mask=live, return_diagnostics=True)
    expected = [sum(1 for r in range(len(targets)) if bool(live[r]) and int(targets[r]) == c) for c in range(3)]
    assert stats["grad_pos_count"].tolist() == expected
    assert expected != stats["pos_count"].tolist()


class Ring:
    """The last ``size`` rows written, in slot order (``None`` for a never-written slot)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.slots: list[torch.Tensor | None] = [None] * size
        self.ptr = 0

    def push(self, targets: torch.Tensor) -> None:
        for row in targets:
            self.slots[self.ptr] = row.clone()
            self.ptr = (self.ptr + 1) % self.size

    def fill(self, c: int) -> list[int]:
        """Stored rows taking part in each class."""
        out = []
        for k in range(c):
            count = 0
            for t in self.slots:
                if t is None:
                    continue
                cell = int(t[k]) if t.ndim == 1 else int(t)
                count += cell != IGNORE
            out.append(count)
        return out


@ALL
@pytest.mark.parametrize("layout", ["multiclass", "multilabel"])
def test_queue_fill_after_known_batches(name: str, layout: str) -> None:
    cls, _, options = LOSSES[name]
    q = 16
    module = cls(3, queue_size=q, **options).double()
    ring = Ring(q)
    g = torch.Generator().manual_seed(20)
    for step in range(5):  # 5 x 7 rows through 16 slots: partial fill, then wrap-around
        if layout == "multilabel":
            logits, targets = make_ml(20 + step, n=7)
        else:
            logits = torch.randn(7, 3, generator=g, dtype=torch.float64)
            targets = torch.tensor([0, 1, 2, 0, 1, 2, 0])
            targets[torch.rand(7, generator=g) < 0.3] = IGNORE
        _, stats = module(logits, targets, return_diagnostics=True)
        assert stats["queue_fill"].tolist() == ring.fill(3), step
        live = [len(columns(logits, targets, c)[1]) for c in range(3)]
        assert stats["pool_size"].tolist() == [a + b for a, b in zip(live, ring.fill(3), strict=True)]
        ring.push(targets)


@ALL
def test_queue_fill_is_zero_without_a_queue_and_in_eval(name: str) -> None:
    cls, _, options = LOSSES[name]
    logits, targets = make_batch(6)
    _, stats = cls(3, queue_size=0, **options).double()(logits, targets, return_diagnostics=True)
    assert stats["queue_fill"].tolist() == [0, 0, 0]
    module = cls(3, queue_size=32, **options).double().eval()
    module(logits, targets)
    _, stats = module(logits, targets, return_diagnostics=True)
    assert stats["queue_fill"].tolist() == [0, 0, 0]  # a frozen queue stays empty


def test_pauc_module_grad_pos_count_is_live_positives() -> None:
    module = PAUCAtBudgetLoss(3, beta=0.3, queue_size=32).double()
    module(*make_batch(7, n=20, n_ignore=2))
    logits, targets = make_batch(8, n=20, n_ignore=2)
    _, stats = module(logits, targets, return_diagnostics=True)
    assert stats["grad_pos_count"].tolist() == [int((targets == c).sum()) for c in range(3)]
    assert bool((stats["pos_count"] > stats["grad_pos_count"]).all())


@ALL
def test_queue_fill_counts_only_stored_rows_used_under_subsampling(name: str) -> None:
    cls, _, options = LOSSES[name]
    module = cls(3, queue_size=64, max_pool_size=20, generator=torch.Generator().manual_seed(0), **options).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step in range(3):
            module(*make_batch(30 + step, n=32, n_ignore=0))
        _, stats = module(*make_batch(40, n=32, n_ignore=0), return_diagnostics=True)
    assert stats["pool_size"].tolist() == [20, 20, 20]
    assert bool((stats["queue_fill"] <= stats["pool_size"]).all()), stats["queue_fill"]


# --------------------------------------------------------------------------------------------
# saturated_fraction: double loops
# --------------------------------------------------------------------------------------------


def frac(far: int, total: int) -> float:
    return far / total if total else math.nan


@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("ties", [False, True])
def test_smooth_ap_saturated_fraction(num_classes: int, ties: bool) -> None:
    tau = 0.1
    logits, targets = make_batch(9, c=num_classes, ties=ties)
    _, stats = smooth_ap_loss(logits, targets, temperature=tau, return_diagnostics=True)
    expected = []
    for c in range(num_classes):
        s, p = columns(logits, targets, c)
        far = total = 0
        for k in range(len(s)):
            if not p[k]:
                continue
            for j in range(len(s)):
                if j == k:
                    continue
                total += 1
                far += abs((s[j] - s[k]) / tau) > SATURATION
        expected.append(frac(far, total))
    assert all(0 < e < 1 for e in expected)
    assert_stat(stats["saturated_fraction"], expected, "saturated_fraction")


@pytest.mark.parametrize("interpolation", ["higher", "linear", "lower"])
def test_recall_threshold_recall_and_saturated_fraction(interpolation: str) -> None:
    tau, quantile = 0.1, 0.3
    logits, targets = make_batch(10, n=47, ties=True)
    _, stats = recall_at_quantile_loss(
        logits,
        targets,
        quantile=quantile,
        temperature=tau,
        quantile_interpolation=interpolation,
        return_diagnostics=True,
    )
    thresholds, recalls, saturated, widths = [], [], [], []
    on_threshold = 0
    for c in range(3):
        s, p = columns(logits, targets, c)
        check_unambiguous_level(len(s), 1 - quantile, interpolation)
        col = torch.tensor(s, dtype=torch.float64)
        theta = float(torch.quantile(col, 1 - quantile, interpolation=interpolation))
        # The sigmoid's width: tau times the column's inter-quartile range (tau_scale="iqr").
        upper, lower = (torch.quantile(col, lv, interpolation=interpolation) for lv in (0.75, 0.25))
        width = tau * float(upper - lower)
        widths.append(width)
        thresholds.append(theta)
        positives = [v for v, is_pos in zip(s, p, strict=True) if is_pos]
        hits = sum(1.0 if v > theta else 0.5 if v == theta else 0.0 for v in positives)
        on_threshold += sum(v == theta for v in positives)
        recalls.append(hits / len(positives))
        saturated.append(frac(sum(abs((v - theta) / width) > SATURATION for v in positives), len(positives)))
    assert_stat(stats["threshold"], thresholds, "threshold", atol=0)
    assert_stat(stats["tau_eff"], widths, "tau_eff")
    assert_stat(stats["recall"], recalls, "recall")
    metric = recall_at_quantile(logits, targets, quantile=quantile, interpolation=interpolation)
    assert_stat(stats["recall"], metric, "recall vs metrics")
    assert_stat(stats["saturated_fraction"], saturated, "saturated_fraction")
    assert all(0 < v < 1 for v in saturated)
    if interpolation != "linear":  # positives exactly on a threshold (ties count 1/2): a real tie-rule check
        assert on_threshold > 0


def test_recall_binary_threshold_equals_torch_quantile() -> None:
    logits, targets = make_batch(11, n=61, c=1)
    _, stats = recall_at_quantile_loss(logits, targets, quantile=0.1, return_diagnostics=True)
    s, _ = columns(logits, targets, 0)
    check_unambiguous_level(len(s), 0.9, "higher")
    expected = torch.quantile(torch.tensor(s, dtype=torch.float64), 0.9, interpolation="higher")
    assert torch.equal(stats["threshold"], expected.reshape(1))


# --------------------------------------------------------------------------------------------
# Smooth-AP: exact average precision
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("ties", [False, True])
def test_smooth_ap_ap_equals_sklearn_unweighted(num_classes: int, ties: bool) -> None:
    logits, targets = make_batch(12, c=num_classes, ties=ties)
    g = torch.Generator().manual_seed(12)
    sw = 0.1 + 3 * torch.rand(logits.shape[0], generator=g, dtype=torch.float64)  # must not matter
    _, stats = smooth_ap_loss(logits, targets, sample_weight=sw, return_diagnostics=True)
    expected = []
    for c in range(num_classes):
        s, p = columns(logits, targets, c)
        expected.append(average_precision_score(np.array(p, dtype=int), np.array(s)))
    assert_stat(stats["ap"], expected, "ap")


# --------------------------------------------------------------------------------------------
# pAUC: band statistics, exact pAUC, saturated_fraction
# --------------------------------------------------------------------------------------------


def band_area(fpr: np.ndarray, tpr: np.ndarray, alpha: float, beta: float) -> float:
    """Mean TPR over FPR in ``[alpha, beta]`` of the piecewise-linear ROC polygon."""
    area = 0.0
    for i in range(len(fpr) - 1):
        f0, f1, t0, t1 = fpr[i], fpr[i + 1], tpr[i], tpr[i + 1]
        lo, hi = max(f0, alpha), min(f1, beta)
        if f1 <= f0 or hi <= lo:
            continue
        t_lo = t0 + (t1 - t0) * (lo - f0) / (f1 - f0)
        t_hi = t0 + (t1 - t0) * (hi - f0) / (f1 - f0)
        area += (hi - lo) * (t_lo + t_hi) / 2
    return area / (beta - alpha)


PAUC_CASES = [
    ("trap-a0", {"beta": 0.3, "n_knots": 4, "temperature": 0.2}),
    ("trap-band", {"alpha": 0.1, "beta": 0.5, "n_knots": 3, "tau_scale": "band", "temperature": 0.05}),
    ("pair-a0", {"beta": 0.4, "surrogate": "pairwise", "temperature": 0.2}),
    ("pair-alpha", {"alpha": 0.05, "beta": 0.4, "surrogate": "pairwise", "temperature": 0.2}),
]


@pytest.mark.parametrize(("case", "options"), PAUC_CASES, ids=[c[0] for c in PAUC_CASES])
@pytest.mark.parametrize("ties", [False, True])
def test_pauc_statistics_against_brute_force(case: str, options: dict[str, Any], ties: bool) -> None:
    logits, targets = make_batch(13, n=57, ties=ties)
    g = torch.Generator().manual_seed(13)
    iid = torch.rand(logits.shape[0], generator=g) < 0.9
    _, stats = pauc_at_budget_loss(logits, targets, iid_mask=iid, return_diagnostics=True, **options)
    _, valid, ref = ref_pauc(logits, targets, iid_mask=iid, **options)
    assert bool(valid.all())
    for key in ("t_alpha", "t_beta", "tau_eff", "pauc_var"):
        assert_stat(stats[key], ref[key], key)
    assert torch.equal(stats["band_neg_count"], ref["band_neg_count"])

    alpha, beta = options.get("alpha", 0.0), options["beta"]
    surrogate = options.get("surrogate", "trapezoid")
    pauc, saturated = [], []
    for c in range(3):
        s, p = columns(logits, targets, c)
        y = np.array(p, dtype=int)
        fpr, tpr, _ = roc_curve(y, np.array(s), drop_intermediate=False)
        pauc.append(band_area(fpr, tpr, alpha, beta))
        if alpha == 0:  # sklearn's standardised partial AUC, McClish undone
            mcclish = roc_auc_score(y, np.array(s), max_fpr=beta)
            a_min, a_max = beta**2 / 2, beta
            assert pauc[-1] == pytest.approx((a_min + (2 * mcclish - 1) * (a_max - a_min)) / beta, abs=1e-12)
        t_alpha, t_beta, tau_eff = (float(ref[k][c]) for k in ("t_alpha", "t_beta", "tau_eff"))
        positives = [v for v, is_pos in zip(s, p, strict=True) if is_pos]
        far = total = 0
        if surrogate == "trapezoid":
            # iid negatives of the class define the knots (budget_basis='fpr')
            neg_iid = [
                float(logits[r, c]) for r in range(len(targets)) if bool(iid[r]) and int(targets[r]) not in (c, IGNORE)
            ]
            levels = pauc_levels(alpha, beta, options["n_knots"])
            knots = [
                float(torch.quantile(torch.tensor(neg_iid, dtype=torch.float64), lv, interpolation="higher"))
                for lv in levels
            ]
            assert knots[0] == t_alpha
            assert knots[-1] == t_beta
            for v in positives:
                for t in knots:
                    total += 1
                    far += abs((v - t) / tau_eff) > SATURATION
        else:
            band = [v for v, is_pos in zip(s, p, strict=True) if not is_pos and t_beta <= v <= t_alpha]
            for v in positives:
                for b in band:
                    total += 1
                    far += abs((v - b) / tau_eff) > SATURATION
        saturated.append(frac(far, total))
    assert_stat(stats["pauc"], pauc, "pauc")
    assert_stat(stats["pauc"], partial_auc(logits, targets, alpha=alpha, beta=beta), "pauc vs metrics")
    assert_stat(stats["saturated_fraction"], saturated, "saturated_fraction")
    assert all(0 < v < 1 for v in saturated)


def test_pauc_invalid_class_statistics_are_nan() -> None:
    """A class without positives: band statistics nan, counts still reported."""
    logits, targets = make_batch(14)
    targets[targets == 2] = 0
    _, stats = pauc_at_budget_loss(logits, targets, beta=0.3, return_diagnostics=True)
    for key in ("t_alpha", "t_beta", "tau_eff", "pauc_var", "saturated_fraction", "pauc"):
        assert math.isnan(stats[key][2]), key
    assert stats["band_neg_count"][2] == 0
    assert stats["pos_count"][2] == 0
    assert stats["neg_count"][2] == stats["pool_size"][2] > 0


# --------------------------------------------------------------------------------------------
# class_weight: zero-weight classes
# --------------------------------------------------------------------------------------------


def assert_zero_weight_entries(stats: dict[str, torch.Tensor], skipped: int) -> None:
    for key, value in stats.items():
        if key in COUNT_KEYS:
            assert int(value[skipped]) == 0, key
        else:
            assert math.isnan(float(value[skipped])), key


@ALL
@pytest.mark.parametrize("form", ["functional", "module"])
def test_zero_weight_class_statistics(name: str, form: str) -> None:
    cls, fn, options = LOSSES[name]
    logits, targets = make_batch(15)
    weights = [1.0, 0.0, 2.0]
    if form == "functional":
        _, stats = fn(logits, targets, class_weight=weights, return_diagnostics=True, **options)
        _, full = fn(logits, targets, return_diagnostics=True, **options)
    else:
        _, stats = cls(3, queue_size=0, class_weight=weights, **options)(logits, targets, return_diagnostics=True)
        _, full = cls(3, queue_size=0, **options)(logits, targets, return_diagnostics=True)
    assert set(stats) == set(full)
    assert_zero_weight_entries(stats, 1)
    for key in stats:  # the kept classes report what an unweighted call reports
        torch.testing.assert_close(stats[key][[0, 2]], full[key][[0, 2]], rtol=1e-12, atol=0, msg=key)


@ALL
def test_zero_weight_class_module_only_statistics_are_zero(name: str) -> None:
    cls, _, options = LOSSES[name]
    module = cls(3, queue_size=16, class_weight=[1.0, 0.0, 2.0], **options).double()
    module(*make_batch(16, n=16, n_ignore=0))
    _, stats = module(*make_batch(17, n=16, n_ignore=0), return_diagnostics=True)
    assert_zero_weight_entries(stats, 1)


# --------------------------------------------------------------------------------------------
# Multi-label: each column's statistics equal the binary call on that column
# --------------------------------------------------------------------------------------------


@ALL
def test_multilabel_statistics_equal_binary_column_statistics(name: str) -> None:
    logits, targets = make_ml(18, n=60)
    g = torch.Generator().manual_seed(18)
    extra: dict[str, torch.Tensor] = {}
    if name in PAUC:
        extra = {"iid_mask": torch.rand(60, generator=g) < 0.85, "live_mask": torch.rand(60, generator=g) < 0.7}
    _, stats = call(name, logits, targets, return_diagnostics=True, **extra)
    for c in range(3):
        keep = targets[:, c] != IGNORE
        _, ref = call(
            name,
            logits[keep][:, c : c + 1],
            targets[keep, c],
            return_diagnostics=True,
            **{k: v[keep] for k, v in extra.items()},
        )
        assert set(ref) == set(stats)
        for key in stats:
            torch.testing.assert_close(
                stats[key][c : c + 1], ref[key], rtol=0, atol=1e-12, equal_nan=True, msg=lambda m, k=key: f"{k}: {m}"
            )


@ALL
def test_multilabel_module_statistics_with_queue(name: str) -> None:
    """Module stats per column == the functional binary stats on [live; stored] cells of that column."""
    cls, fn, options = LOSSES[name]
    module = cls(3, queue_size=12, **options).double()
    first = make_ml(19, n=12)
    module(*first)
    logits, targets = make_ml(20, n=20)
    _, stats = module(logits, targets, return_diagnostics=True)
    pool_logits = torch.cat([logits, first[0]])
    pool_targets = torch.cat([targets, first[1]])
    live = torch.cat([torch.ones(20, dtype=torch.bool), torch.zeros(12, dtype=torch.bool)])
    for c in range(3):
        keep = pool_targets[:, c] != IGNORE
        extra = {"live_mask": live[keep]} if name in PAUC else {}
        _, ref = fn(pool_logits[keep][:, c : c + 1], pool_targets[keep, c], return_diagnostics=True, **options, **extra)
        for key in ref:
            if key == "grad_pos_count":  # the module counts this call's live positives
                assert int(stats[key][c]) == int((targets[:, c] == 1).sum())
                continue
            torch.testing.assert_close(stats[key][c : c + 1], ref[key], rtol=0, atol=1e-12, equal_nan=True)
        assert int(stats["queue_fill"][c]) == int((first[1][:, c] != IGNORE).sum())
