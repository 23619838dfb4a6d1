"""Tests of ``imbalanced_losses.metrics`` against references that do not share its code.

References: sklearn (``average_precision_score``, ``roc_auc_score``), ``torch.quantile`` plus a
Python loop, a numpy ROC polygon clipped and integrated segment by segment, a numpy ``argsort``
top-k, brute force over every tie-break order, and hand-computed values.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from imbalanced_losses.functional import pauc_at_budget_loss, recall_at_quantile_loss
from imbalanced_losses.metrics import (
    average_precision,
    average_precision_from_masks,
    coverage_at_budget,
    coverage_at_budget_from_masks,
    partial_auc,
    partial_auc_from_masks,
    recall_at_quantile,
    recall_at_quantile_from_masks,
)

skm = pytest.importorskip("sklearn.metrics")

IGNORE = -100


# ----------------------------------------------------------------------------------------------
# Data


def make_scores(n: int, c: int, *, ties: bool, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, generator=g, dtype=torch.float64)
    if ties:
        s = (s * 2).round() / 2  # a handful of distinct values per column
    return s.to(dtype)


def make_targets(n: int, c: int, *, mode: str, seed: int, ignore: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    if mode == "binary":
        t = (torch.rand(n, generator=g) < 0.3).long()
    elif mode == "multiclass":
        t = torch.randint(0, c, (n,), generator=g)
    else:  # multilabel
        t = (torch.rand(n, c, generator=g) < 0.3).long()
    if ignore:
        drop = torch.rand(t.shape, generator=g) < 0.15
        t = t.masked_fill(drop, IGNORE)
    return t


def columns(targets: torch.Tensor, c: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per class: (kept row indices, 0/1 labels of those rows), written without the library."""
    t = targets.numpy()
    out = []
    for k in range(c):
        if t.ndim == 2:
            keep = np.nonzero(t[:, k] != IGNORE)[0]
            out.append((keep, (t[keep, k] == 1).astype(int)))
        elif c == 1:
            keep = np.nonzero(t != IGNORE)[0]
            out.append((keep, (t[keep] != 0).astype(int)))
        else:
            keep = np.nonzero(t != IGNORE)[0]
            out.append((keep, (t[keep] == k).astype(int)))
    return out


def as_input(scores: torch.Tensor, mode: str) -> torch.Tensor:
    return scores[:, 0] if mode == "binary" else scores


CASES = [
    pytest.param("binary", 1, False, id="binary"),
    pytest.param("binary", 1, True, id="binary-ignore"),
    pytest.param("multiclass", 4, False, id="multiclass"),
    pytest.param("multiclass", 4, True, id="multiclass-ignore"),
    pytest.param("multilabel", 3, False, id="multilabel"),
    pytest.param("multilabel", 3, True, id="multilabel-ignore-cells"),
]


# ----------------------------------------------------------------------------------------------
# Independent references


def ref_roc_polygon(y: np.ndarray, s: np.ndarray, w: np.ndarray | None = None) -> list[tuple[float, float]]:
    """ROC vertices at each distinct threshold, by a plain loop (tied rows enter together)."""
    w = np.ones_like(s) if w is None else w
    p_total, n_total = float(np.sum(w[y == 1])), float(np.sum(w[y == 0]))
    pts = [(0.0, 0.0)]
    for thr in sorted(set(s.tolist()), reverse=True):
        above = s >= thr
        pts.append((float(np.sum(w[above & (y == 0)])) / n_total, float(np.sum(w[above & (y == 1)])) / p_total))
    return pts


def ref_band_area(pts: list[tuple[float, float]], a: float, b: float) -> float:
    """Exact area under the polygon between FPR a and b: each segment clipped, then a trapezoid."""
    total = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        lo, hi = max(x0, a), min(x1, b)
        if x1 <= x0 or hi <= lo:
            continue
        y_lo = y0 + (y1 - y0) * (lo - x0) / (x1 - x0)
        y_hi = y0 + (y1 - y0) * (hi - x0) / (x1 - x0)
        total += (hi - lo) * (y_lo + y_hi) / 2
    return total


def ref_recall(y: np.ndarray, s: torch.Tensor, q: float, interp: str, w: np.ndarray | None = None) -> float:
    """torch.quantile of the column, then a loop over positives with the half-at-threshold rule."""
    theta = float(torch.quantile(s, 1.0 - q, interpolation=interp))
    num = den = 0.0
    for yi, si, wi in zip(y, s.tolist(), np.ones(len(y)) if w is None else w, strict=True):
        if yi == 1:
            den += wi
            num += wi * (1.0 if si > theta else 0.5 if si == theta else 0.0)
    return num / den if den > 0 else math.nan


def ref_rows(budget: float, n: int) -> int:
    """``max(1, ceil(b n))`` in exact rational arithmetic, ``b`` the decimal ``budget`` prints as."""
    return max(1, math.ceil(Fraction(str(budget)) * n))


def ref_coverage_argsort(y: np.ndarray, s: np.ndarray, budget: float) -> float:
    k = ref_rows(budget, len(s))
    top = np.argsort(-s, kind="stable")[:k]
    return float(y[top].sum() / y.sum()) if y.sum() > 0 else math.nan


def ref_coverage_all_orders(y: list[int], s: list[float], budget: float) -> float:
    """Mean top-k coverage over every order of the rows that sorts the scores descending."""
    n = len(s)
    k = ref_rows(budget, n)
    hits, orders = 0, 0
    for perm in itertools.permutations(range(n)):
        if all(s[perm[i]] >= s[perm[i + 1]] for i in range(n - 1)):
            hits += sum(y[j] for j in perm[:k])
            orders += 1
    return hits / orders / sum(y)


def assert_close(actual: torch.Tensor, expected: list[float] | float, tol: float) -> None:
    exp = torch.tensor(expected, dtype=torch.float64)
    act = actual.double()
    assert act.shape == exp.shape, (act.shape, exp.shape)
    assert torch.allclose(act, exp, rtol=0, atol=tol, equal_nan=True), (act, exp)


# ----------------------------------------------------------------------------------------------
# Average precision


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "tied"])
@pytest.mark.parametrize(("mode", "c", "ignore"), CASES)
def test_average_precision_matches_sklearn(mode: str, c: int, ignore: bool, ties: bool) -> None:
    scores = make_scores(60, c, ties=ties, seed=1)
    targets = make_targets(60, c, mode=mode, seed=1, ignore=ignore)
    got = average_precision(as_input(scores, mode), targets)
    expected = [
        skm.average_precision_score(y, scores.numpy()[keep, k]) for k, (keep, y) in enumerate(columns(targets, c))
    ]
    assert_close(got, expected[0] if mode == "binary" else expected, 1e-12)


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "tied"])
def test_average_precision_sample_weight_matches_sklearn(ties: bool) -> None:
    scores = make_scores(80, 3, ties=ties, seed=2)
    targets = make_targets(80, 3, mode="multiclass", seed=2)
    w = torch.rand(80, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 3
    w[::7] = 0.0  # zero weights: sklearn drops those rows
    got = average_precision(scores, targets, sample_weight=w)
    expected = [
        skm.average_precision_score(y, scores.numpy()[keep, k], sample_weight=w.numpy()[keep])
        for k, (keep, y) in enumerate(columns(targets, 3))
    ]
    assert_close(got, expected, 1e-12)


def test_average_precision_hand_computed_with_ties() -> None:
    # Thresholds 0.9: {P}; 0.5: {P, N, N}; 0.1: {P}. AP = 1/3*1 + 1/3*(2/4) + 1/3*(3/5).
    scores = torch.tensor([0.9, 0.5, 0.5, 0.5, 0.1])
    targets = torch.tensor([1, 1, 0, 0, 1])
    assert average_precision(scores, targets).item() == pytest.approx((1 + 0.5 + 0.6) / 3, abs=1e-7)


# ----------------------------------------------------------------------------------------------
# Partial AUC


@pytest.mark.parametrize("beta", [1.0, 0.5, 0.1, 0.03])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "tied"])
@pytest.mark.parametrize(("mode", "c", "ignore"), CASES)
def test_partial_auc_alpha0_mcclish_matches_sklearn(mode: str, c: int, ignore: bool, ties: bool, beta: float) -> None:
    scores = make_scores(70, c, ties=ties, seed=3)
    targets = make_targets(70, c, mode=mode, seed=3, ignore=ignore)
    got = partial_auc(as_input(scores, mode), targets, beta=beta, normalize="mcclish")
    expected = [
        skm.roc_auc_score(y, scores.numpy()[keep, k], max_fpr=beta) for k, (keep, y) in enumerate(columns(targets, c))
    ]
    assert_close(got, expected[0] if mode == "binary" else expected, 1e-12)


@pytest.mark.parametrize("normalize", ["band", "mcclish", None])
def test_full_auc_every_normalization(normalize: str | None) -> None:
    scores = make_scores(50, 3, ties=True, seed=4)
    targets = make_targets(50, 3, mode="multiclass", seed=4)
    got = partial_auc(scores, targets, normalize=normalize)
    expected = [skm.roc_auc_score(y, scores.numpy()[keep, k]) for k, (keep, y) in enumerate(columns(targets, 3))]
    assert_close(got, expected, 1e-12)


@pytest.mark.parametrize(("alpha", "beta"), [(0.0, 0.2), (0.05, 0.3), (0.1, 1.0), (0.37, 0.41), (0.5, 0.9)])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "tied"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_partial_auc_band_matches_clipped_polygon(alpha: float, beta: float, ties: bool, weighted: bool) -> None:
    n, c = 45, 3
    scores = make_scores(n, c, ties=ties, seed=5)
    targets = make_targets(n, c, mode="multilabel", seed=5, ignore=True)
    w = torch.rand(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64) if weighted else None
    raw = partial_auc(scores, targets, alpha=alpha, beta=beta, normalize=None, sample_weight=w)
    band = partial_auc(scores, targets, alpha=alpha, beta=beta, normalize="band", sample_weight=w)
    mcclish = partial_auc(scores, targets, alpha=alpha, beta=beta, normalize="mcclish", sample_weight=w)
    areas = []
    for k, (keep, y) in enumerate(columns(targets, c)):
        wk = None if w is None else w.numpy()[keep]
        areas.append(ref_band_area(ref_roc_polygon(y, scores.numpy()[keep, k], wk), alpha, beta))
    a_min, a_max = (beta**2 - alpha**2) / 2, beta - alpha
    assert_close(raw, areas, 1e-12)
    assert_close(band, [a / (beta - alpha) for a in areas], 1e-12)
    assert_close(mcclish, [0.5 * (1 + (a - a_min) / (a_max - a_min)) for a in areas], 1e-12)


def test_partial_auc_reference_self_check() -> None:
    """The clipped-polygon reference itself reproduces sklearn's max_fpr area (so it can judge alpha > 0)."""
    scores = make_scores(40, 1, ties=True, seed=6)[:, 0].numpy()
    y = make_targets(40, 1, mode="binary", seed=6).numpy()
    for beta in (0.2, 0.55, 1.0):
        a = ref_band_area(ref_roc_polygon(y, scores), 0.0, beta)
        mcclish = 0.5 * (1 + (a - beta**2 / 2) / (beta - beta**2 / 2))
        assert mcclish == pytest.approx(skm.roc_auc_score(y, scores, max_fpr=beta), abs=1e-12)


def test_partial_auc_hand_computed_band() -> None:
    # Staircase: P, N, P, N, N. TPR is 1/2 for FPR in (0, 1/3), 1 after. Band [1/6, 1/2]:
    # 1/2 * 1/6 + 1 * 1/6 = 1/4; band-normalised 3/4.
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5], dtype=torch.float64)
    targets = torch.tensor([1, 0, 1, 0, 0])
    assert partial_auc(scores, targets, alpha=1 / 6, beta=0.5, normalize=None).item() == pytest.approx(0.25)
    assert partial_auc(scores, targets, alpha=1 / 6, beta=0.5).item() == pytest.approx(0.75)


def test_partial_auc_pairwise_loss_limit_alpha0() -> None:
    """Genuinely the same quantity here: tie-free scores, beta * n_neg an integer, and the pairwise
    band (negatives >= the 'higher' (1 - beta) quantile) holds exactly beta * n_neg negatives. Then the
    band-normalised pAUC is the mean over those negatives of the share of positives above each."""
    n_neg, n_pos, beta = 100, 20, 0.1
    g = torch.Generator().manual_seed(7)
    ranks = torch.randperm(n_neg + n_pos, generator=g).double()
    scores = ranks / 10 + torch.randn(n_neg + n_pos, generator=g, dtype=torch.float64) / 1e3  # gaps >= ~0.09
    targets = torch.cat([torch.zeros(n_neg), torch.ones(n_pos)]).long()
    scores[n_neg:] += 3.0  # positives mostly on top, still contested
    neg_scores = scores[:n_neg]
    t_beta = torch.quantile(neg_scores, 1 - beta, interpolation="higher")
    assert int((neg_scores >= t_beta).sum()) == round(beta * n_neg)  # the precondition
    loss = pauc_at_budget_loss(
        scores.unsqueeze(1), targets, beta=beta, surrogate="pairwise", temperature=1e-7, reduction="none"
    )
    got = partial_auc(scores, targets, beta=beta)
    assert 0.1 < got.item() < 0.99
    assert got.item() == pytest.approx(1 - loss.item(), abs=1e-9)


# ----------------------------------------------------------------------------------------------
# Recall at quantile


@pytest.mark.parametrize("interpolation", ["linear", "lower", "higher", "nearest", "midpoint"])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "tied"])
@pytest.mark.parametrize(("mode", "c", "ignore"), CASES)
def test_recall_at_quantile_matches_loop_reference(
    mode: str, c: int, ignore: bool, ties: bool, interpolation: str
) -> None:
    q = 0.15
    scores = make_scores(53, c, ties=ties, seed=8)
    targets = make_targets(53, c, mode=mode, seed=8, ignore=ignore)
    w = torch.rand(53, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = recall_at_quantile(as_input(scores, mode), targets, quantile=q, interpolation=interpolation, sample_weight=w)
    expected = [
        ref_recall(y, scores[torch.from_numpy(keep), k], q, interpolation, w.numpy()[keep])
        for k, (keep, y) in enumerate(columns(targets, c))
    ]
    assert_close(got, expected[0] if mode == "binary" else expected, 1e-12)


@pytest.mark.parametrize(
    ("scores", "targets", "quantile", "interpolation", "weights", "expected"),
    [
        # theta = 3 ('higher': rank ceil(0.5 * 5) = 3 of [1, 2, 3, 3, 3, 4]); positives 3, 3, 4 -> (.5 + .5 + 1) / 3
        ([1, 2, 3, 3, 3, 4], [0, 0, 1, 0, 1, 1], 0.5, "higher", None, 2 / 3),
        # 'linear' threshold 1.5 lies between scores: no tie, positives 1 and 2 -> 1/2
        ([0, 1, 2, 3], [0, 1, 1, 0], 0.5, "linear", None, 0.5),
        # 'lower' threshold 1: the positive at 1 counts half -> (.5 + 1) / 2
        ([0, 1, 2, 3], [0, 1, 1, 0], 0.5, "lower", None, 0.75),
        # weighted: positive at theta = 1 has weight 3, the one above weight 1 -> (3 * .5 + 1) / 4
        ([0, 1, 2, 3], [0, 1, 1, 0], 0.5, "lower", [1, 3, 1, 1], 0.625),
        # every positive tied with the threshold (constant scores) -> 1/2
        ([2, 2, 2, 2], [1, 0, 1, 0], 0.25, "higher", None, 0.5),
    ],
)
def test_recall_tie_rule_hand_computed(
    scores: list[float],
    targets: list[int],
    quantile: float,
    interpolation: str,
    weights: list[float] | None,
    expected: float,
) -> None:
    w = None if weights is None else torch.tensor(weights, dtype=torch.float64)
    got = recall_at_quantile(
        torch.tensor(scores, dtype=torch.float64),
        torch.tensor(targets),
        quantile=quantile,
        interpolation=interpolation,
        sample_weight=w,
    )
    assert got.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("mode", "c"), [("binary", 1), ("multiclass", 4), ("multilabel", 3)])
def test_recall_is_low_temperature_limit_of_loss(mode: str, c: int, dtype: torch.dtype) -> None:
    # Scores on a 1/8 grid: exact in both dtypes, many ties, some sitting at the threshold.
    scores = (make_scores(90, c, ties=False, seed=10) * 8).round().div(8).to(dtype)
    targets = make_targets(90, c, mode=mode, seed=10, ignore=True)
    for q in (0.05, 0.2, 0.5):
        loss = recall_at_quantile_loss(scores, targets, quantile=q, temperature=1e-6, reduction="none")
        got = recall_at_quantile(as_input(scores, mode), targets, quantile=q)
        assert_close(got, (1 - loss.detach()).double().squeeze().tolist(), 1e-6)


# ----------------------------------------------------------------------------------------------
# Coverage at budget


@pytest.mark.parametrize("budget", [0.01, 0.1, 0.25, 0.5, 1.0])
@pytest.mark.parametrize(("mode", "c", "ignore"), CASES)
def test_coverage_matches_argsort_on_distinct_scores(mode: str, c: int, ignore: bool, budget: float) -> None:
    scores = make_scores(83, c, ties=False, seed=11)
    targets = make_targets(83, c, mode=mode, seed=11, ignore=ignore)
    got = coverage_at_budget(as_input(scores, mode), targets, budget=budget)
    expected = [
        ref_coverage_argsort(y, scores.numpy()[keep, k], budget) for k, (keep, y) in enumerate(columns(targets, c))
    ]
    assert_close(got, expected[0] if mode == "binary" else expected, 1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("budget", [0.1, 0.3, 0.5, 0.8])
def test_coverage_ties_equal_mean_over_all_tie_breaks(seed: int, budget: float) -> None:
    n, c = 7, 3
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 3, (n, c), generator=g).double()  # heavy ties
    targets = (torch.rand(n, c, generator=g) < 0.5).long()
    targets[0] = 1  # every class has a positive
    if seed % 2:
        targets[n - 1, 1] = IGNORE  # a class with 6 rows
    got = coverage_at_budget(scores, targets, budget=budget)
    expected = [
        ref_coverage_all_orders(y.tolist(), scores.numpy()[keep, k].tolist(), budget)
        for k, (keep, y) in enumerate(columns(targets, c))
    ]
    assert_close(got, expected, 1e-12)


@pytest.mark.parametrize("quantile", [0.005, 0.5])
def test_recall_large_pool_selection_path(quantile: float) -> None:
    """Pools above the sort limit of the quantile helper (top-k for small q, kthvalue for the median)."""
    n, c = 34_000, 3
    scores = (torch.randn(n, c, generator=torch.Generator().manual_seed(21), dtype=torch.float64) * 64).round()
    targets = make_targets(n, c, mode="multilabel", seed=21, ignore=True)
    got = recall_at_quantile(scores, targets, quantile=quantile)
    expected = []
    for k, (keep, y) in enumerate(columns(targets, c)):
        col = scores[torch.from_numpy(keep), k]
        theta = float(torch.quantile(col, 1 - quantile, interpolation="higher"))
        s = col.numpy()[y == 1]
        expected.append(float(((s > theta).sum() + 0.5 * (s == theta).sum()) / len(s)))
    assert_close(got, expected, 1e-12)


def test_coverage_large_pool_selection_path() -> None:
    """Pools above the sort limit of ``order_statistics`` take the top-k selection route."""
    n, c = 34_000, 3
    scores = torch.randn(n, c, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    targets = make_targets(n, c, mode="multiclass", seed=12, ignore=True)
    got = coverage_at_budget(scores, targets, budget=0.005)
    expected = [
        ref_coverage_argsort(y, scores.numpy()[keep, k], 0.005) for k, (keep, y) in enumerate(columns(targets, c))
    ]
    assert_close(got, expected, 1e-12)


def test_coverage_at_least_one_row_flagged() -> None:
    scores = torch.tensor([5.0, 1.0, 0.0, -1.0])
    assert coverage_at_budget(scores, torch.tensor([1, 1, 0, 0]), budget=1e-6).item() == 0.5  # k = 1


def test_coverage_budget_float_rounding_adds_no_row() -> None:
    """0.07 * 100 is 7.000000000000001 in float64; k is 7 (tests/test_contracts_focal_warmup.py has the sweep)."""
    scores = -torch.arange(100.0)
    targets = torch.zeros(100, dtype=torch.long)
    targets[7] = 1  # the 8th best row
    assert coverage_at_budget(scores, targets, budget=0.07).item() == 0.0  # k = 7
    assert coverage_at_budget(scores, targets, budget=0.07 + 1e-9).item() == 1.0  # k = 8


# ----------------------------------------------------------------------------------------------
# Cross-cutting behaviour


ALL = [
    pytest.param(average_precision, {}, id="ap"),
    pytest.param(partial_auc, {"beta": 0.3}, id="pauc"),
    pytest.param(recall_at_quantile, {"quantile": 0.2}, id="recall"),
    pytest.param(coverage_at_budget, {"budget": 0.2}, id="coverage"),
]

MASK_FUNCS = [
    pytest.param(average_precision, average_precision_from_masks, {}, id="ap"),
    pytest.param(partial_auc, partial_auc_from_masks, {"alpha": 0.1, "beta": 0.6}, id="pauc"),
    pytest.param(recall_at_quantile, recall_at_quantile_from_masks, {"quantile": 0.3}, id="recall"),
    pytest.param(coverage_at_budget, coverage_at_budget_from_masks, {"budget": 0.3}, id="coverage"),
]


@pytest.mark.parametrize(("fn", "kw"), ALL)
@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
def test_vectorised_equals_per_column_binary_call(fn, kw, mode: str) -> None:
    n, c = 64, 5
    scores = make_scores(n, c, ties=True, seed=13)
    targets = make_targets(n, c, mode=mode, seed=13, ignore=True)
    got = fn(scores, targets, **kw)
    assert got.shape == (c,)
    for k, (keep, y) in enumerate(columns(targets, c)):
        idx = torch.from_numpy(keep)
        one = fn(scores[idx, k], torch.from_numpy(y), **kw)
        assert one.ndim == 0
        # Same value up to summation order (non-member rows only add exact zeros on CPU).
        assert torch.allclose(got[k], one, rtol=0, atol=1e-12, equal_nan=True), (k, got[k], one)


@pytest.mark.parametrize(("public", "from_masks", "kw"), MASK_FUNCS)
def test_mask_level_function_equals_public(public, from_masks, kw) -> None:
    scores = make_scores(40, 3, ties=True, seed=14, dtype=torch.float32)
    targets = make_targets(40, 3, mode="multiclass", seed=14, ignore=True)
    pos = targets.unsqueeze(1) == torch.arange(3)
    neg = (targets != IGNORE).unsqueeze(1) & ~pos
    assert torch.equal(public(scores, targets, **kw), from_masks(scores, pos, neg, **kw))


@pytest.mark.parametrize(("fn", "kw"), ALL)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes(fn, kw, dtype: torch.dtype) -> None:
    scores = make_scores(50, 3, ties=False, seed=15).to(dtype)
    targets = make_targets(50, 3, mode="multiclass", seed=15)
    got = fn(scores, targets, **kw)
    expected_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert got.dtype == expected_dtype
    # Half precision is computed in float32 on the same (exactly representable) values.
    ref = fn(scores.to(expected_dtype), targets, **kw)
    assert torch.equal(got, ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_ap_and_auc_match_sklearn(dtype: torch.dtype) -> None:
    scores = make_scores(200, 2, ties=False, seed=16).to(dtype)  # rounding to half creates ties
    targets = make_targets(200, 2, mode="multilabel", seed=16)
    s64 = scores.double().numpy()
    ap = average_precision(scores, targets)
    auc = partial_auc(scores, targets, beta=0.2, normalize="mcclish")
    cols = columns(targets, 2)
    assert_close(ap, [skm.average_precision_score(y, s64[keep, k]) for k, (keep, y) in enumerate(cols)], 1e-6)
    assert_close(auc, [skm.roc_auc_score(y, s64[keep, k], max_fpr=0.2) for k, (keep, y) in enumerate(cols)], 1e-6)


def test_undefined_classes_are_nan() -> None:
    scores = make_scores(12, 3, ties=False, seed=17)
    # class 0: no positive; class 1: only positives (no negative); class 2: both.
    targets = torch.tensor([[0, 1, 1], [0, 1, 0]] * 6)
    assert average_precision(scores, targets).isnan().tolist() == [True, False, False]
    assert average_precision(scores, targets)[1].item() == 1.0  # sklearn's AP with no negative
    assert partial_auc(scores, targets).isnan().tolist() == [True, True, False]
    assert recall_at_quantile(scores, targets, quantile=0.5).isnan().tolist() == [True, False, False]
    assert coverage_at_budget(scores, targets, budget=0.5).isnan().tolist() == [True, False, False]


@pytest.mark.parametrize(("fn", "kw"), ALL)
def test_empty_and_zero_weight(fn, kw) -> None:
    assert fn(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), **kw).isnan().all()
    assert fn(torch.zeros(0), torch.zeros(0, dtype=torch.long), **kw).isnan()
    if fn is not coverage_at_budget:
        scores, targets = torch.randn(6), torch.tensor([1, 0, 1, 0, 1, 0])
        with pytest.warns(UserWarning, match="entirely zero"):
            assert fn(scores, targets, sample_weight=torch.zeros(6), **kw).isnan()


@pytest.mark.parametrize(("fn", "kw"), ALL)
def test_shape_and_detach(fn, kw) -> None:
    scores = torch.randn(20, 2, requires_grad=True)
    targets = make_targets(20, 2, mode="multiclass", seed=18)
    out = fn(scores, targets, **kw)
    assert out.shape == (2,)
    assert not out.requires_grad
    assert fn(scores[:, :1], (targets == 1).long(), **kw).shape == (1,)  # [N, 1] stays [1]


@pytest.mark.parametrize(("fn", "kw"), ALL)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_scores_raise(fn, kw, bad: float) -> None:
    scores = torch.randn(10)
    scores[3] = bad
    with pytest.raises(ValueError, match="`scores` must be finite"):
        fn(scores, torch.tensor([0, 1] * 5), **kw)


@pytest.mark.parametrize(
    ("fn", "kw", "exc", "match"),
    [
        (recall_at_quantile, {"quantile": 0.0}, ValueError, "`quantile`"),
        (recall_at_quantile, {"quantile": 1.0}, ValueError, "`quantile`"),
        (recall_at_quantile, {"quantile": "0.1"}, TypeError, "`quantile`"),
        (recall_at_quantile, {"quantile": 0.1, "interpolation": "cubic"}, ValueError, "`interpolation`"),
        (coverage_at_budget, {"budget": 0.0}, ValueError, "`budget`"),
        (coverage_at_budget, {"budget": 1.5}, ValueError, "`budget`"),
        (partial_auc, {"alpha": 0.5, "beta": 0.5}, ValueError, "`alpha` and `beta`"),
        (partial_auc, {"alpha": -0.1}, ValueError, "`alpha`"),
        (partial_auc, {"beta": 1.2}, ValueError, "`beta`"),
        (partial_auc, {"normalize": "max"}, ValueError, "`normalize`"),
        (average_precision, {"ignore_index": 1.5}, TypeError, "`ignore_index`"),
        (average_precision, {"validate_args": 1}, TypeError, "`validate_args`"),
    ],
)
def test_bad_options_raise(fn, kw, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        fn(torch.randn(6), torch.tensor([0, 1] * 3), **kw)


@pytest.mark.parametrize(
    ("scores", "targets", "exc", "match"),
    [
        (torch.arange(6), torch.tensor([0, 1] * 3), TypeError, "`scores` must be a floating-point"),
        (torch.randn(2, 3, 1), torch.tensor([0, 1]), ValueError, r"`scores` must have shape \[N\] or \[N, C\]"),
        ([0.1, 0.2], torch.tensor([0, 1]), TypeError, "`scores` must be a torch.Tensor"),
        (torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 0, 1]), ValueError, r"class ids in \[0, 3\)"),
        (torch.randn(6, 3), torch.full((6, 3), 2), ValueError, "Multi-label `targets`"),
        (torch.randn(6), torch.tensor([0, 1]), ValueError, "`targets` must have shape"),
    ],
)
def test_bad_inputs_raise(scores, targets, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        average_precision(scores, targets)


def test_ignore_index_rows_equal_removal() -> None:
    scores = make_scores(40, 3, ties=True, seed=19)
    targets = make_targets(40, 3, mode="multiclass", seed=19)
    dropped = targets.clone()
    dropped[::4] = 7
    keep = dropped != 7
    for fn, kw in [(average_precision, {}), (partial_auc, {"alpha": 0.2, "beta": 0.7})]:
        got = fn(scores, dropped, ignore_index=7, **kw)
        assert torch.equal(got, fn(scores[keep], targets[keep], **kw))
    got = coverage_at_budget(scores, dropped, budget=0.3, ignore_index=7)
    assert torch.equal(got, coverage_at_budget(scores[keep], targets[keep], budget=0.3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("fn", "kw"), ALL)
def test_cuda_matches_cpu(fn, kw) -> None:
    for n in (300, 50_000):  # the second one crosses the selection-path size of the quantile helpers
        scores = make_scores(n, 4, ties=True, seed=20)
        targets = make_targets(n, 4, mode="multiclass", seed=20, ignore=True)
        cpu = fn(scores, targets, **kw)
        gpu = fn(scores.cuda(), targets.cuda(), **kw)
        assert gpu.device.type == "cuda"
        assert torch.allclose(gpu.cpu(), cpu, rtol=0, atol=1e-12, equal_nan=True)
