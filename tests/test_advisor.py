"""Tests of ``imbalanced_losses.advisor``: contestable mass, the advice and the command line.

References, none sharing the advisor's code:

* ``ref_column``: exact ``Fraction`` arithmetic over the ranked rows of one class, one rank at
  a time (the probability that rank ``r`` holds a positive is its tie group's positive share);
* ``enumerate_orders``: every tie-break order of a tiny pool, counts averaged over them;
* hand-computed cases, and :func:`imbalanced_losses.metrics.coverage_at_budget`.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from imbalanced_losses import PAUCAtBudgetLoss, RecallAtQuantileLoss
from imbalanced_losses.advisor import (
    CONTESTEDNESS_MIN,
    HEADROOM_MIN,
    KEEP_CROSS_ENTROPY,
    TEMPERATURE_SPREAD_FACTOR,
    ContestableMass,
    advise,
    contestable_mass,
    main,
)
from imbalanced_losses.advisor import _mass as mass_module
from imbalanced_losses.advisor._mass import _Curve, _prefix, _rank, _stats
from imbalanced_losses.metrics import budget_rows, coverage_at_budget

IGNORE = -100
FIELDS = ("false_alerts", "near_misses", "far_misses", "coverage", "headroom", "contestedness")


# ----------------------------------------------------------------------------------------------
# Independent references


def ref_column(scores: list[float], labels: list[int], budget: float, near: float) -> dict[str, Fraction | float]:
    """Statistics of one class; ``labels`` 1 / 0 / None (left out). Exact fractions, nan if undefined."""
    rows = sorted(((s, y) for s, y in zip(scores, labels, strict=True) if y is not None), key=lambda r: -r[0])
    n = len(rows)
    n_pos = sum(y for _, y in rows)
    n_neg = n - n_pos
    k = budget_rows(budget, n)
    m = min(n, max(k, math.ceil(Fraction(str(near)) * k)))
    share = {}  # score -> probability that a rank inside its tie group holds a positive
    for s in {s for s, _ in rows}:
        group = [y for t, y in rows if t == s]
        share[s] = Fraction(sum(group), len(group))
    t = [Fraction(0)]
    for s, _ in rows:
        t.append(t[-1] + share[s])  # T(r) = T(r - 1) + P(rank r holds a positive)
    fa = k - t[k]
    nm = t[m] - t[k]
    fm = n_pos - t[m]
    h = min(fa, nm)
    nan = float("nan")
    out: dict[str, Fraction | float] = {
        "k": k,
        "near_k": m,
        "positives": n_pos,
        "false_alerts": fa,
        "near_misses": nm,
        "far_misses": fm,
        "coverage": t[k] / n_pos if n_pos else nan,
        "headroom": h / n_pos if n_pos else nan,
        "contestedness": nm / (nm + fm) if nm + fm > 0 else nan,
        "fpr_lo": nan,
        "fpr_hi": nan,
    }
    if h > 0 and n_neg > 0:
        r_star = next(r for r in range(k, m + 1) if t[r] == t[m])  # the lowest near miss
        out["fpr_lo"] = (fa - h) / n_neg
        out["fpr_hi"] = (r_star - t[r_star]) / n_neg
    return out


def enumerate_orders(scores: list[float], labels: list[int], k: int, m: int) -> tuple[float, float, float]:
    """Mean (FA, NM, FM) over every order of the rows that sorts the scores descending."""
    sums = [0, 0, 0]
    count = 0
    for perm in itertools.permutations(range(len(scores))):
        if any(scores[perm[i]] < scores[perm[i + 1]] for i in range(len(perm) - 1)):
            continue
        ys = [labels[i] for i in perm]
        sums[0] += ys[:k].count(0)
        sums[1] += ys[k:m].count(1)
        sums[2] += ys[m:].count(1)
        count += 1
    return sums[0] / count, sums[1] / count, sums[2] / count


def columns(targets: torch.Tensor, c: int, n_cls: int) -> list[int]:
    """Labels of class ``c`` (1 / 0 / None) from ``[N]`` ids (binary when ``n_cls == 1``) or multi-hot."""
    out = []
    for row in targets.tolist():
        v = row[c] if isinstance(row, list) else row
        if v == IGNORE:
            out.append(None)
        elif isinstance(row, list) or n_cls == 1:
            out.append(int(v))
        else:
            out.append(int(v == c))
    return out


def close(got: torch.Tensor, want: Fraction | float, tol: float = 1e-12) -> bool:
    g, w = float(got), float(want)
    return (math.isnan(g) and math.isnan(w)) or abs(g - w) <= tol


def check_against_reference(
    mass: ContestableMass, scores: torch.Tensor, targets: torch.Tensor, budget: float, near: float
):
    n_cls = 1 if scores.ndim == 1 else scores.shape[1]
    s2 = scores.reshape(scores.shape[0], -1)
    for c in range(n_cls):
        ref = ref_column(s2[:, c].tolist(), columns(targets, c, n_cls), budget, near)

        def pick(t: torch.Tensor, c: int = c) -> torch.Tensor:
            return t if t.ndim == 0 else t[c]

        assert int(pick(mass.k)) == ref["k"]
        assert int(pick(mass.near_k)) == ref["near_k"]
        assert int(pick(mass.positives)) == ref["positives"]
        for f in FIELDS:
            assert close(pick(getattr(mass, f)), ref[f]), (c, f, pick(getattr(mass, f)), ref[f])
        assert close(pick(mass.fpr_window[0]), ref["fpr_lo"]), (c, mass.fpr_window, ref)
        assert close(pick(mass.fpr_window[1]), ref["fpr_hi"]), (c, mass.fpr_window, ref)


def tied_scores(n: int, c: int, seed: int, levels: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, (n, c), generator=g).double()


# ----------------------------------------------------------------------------------------------
# Hand-computed cases


def test_hand_case_without_ties():
    scores = torch.linspace(1.0, 0.1, 10)
    targets = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 0, 0])
    cm = contestable_mass(scores, targets, budget=0.2)  # k = 2, m = 4
    assert (cm.k.item(), cm.near_k.item(), cm.positives.item(), cm.negatives.item()) == (2, 4, 4, 6)
    assert (cm.false_alerts.item(), cm.near_misses.item(), cm.far_misses.item()) == (1.0, 2.0, 1.0)
    assert cm.headroom.item() == 0.25
    assert cm.contestedness.item() == pytest.approx(2 / 3)
    assert cm.fpr_window[0].item() == 0.0
    assert cm.fpr_window[1].item() == pytest.approx(1 / 6)  # one negative above the lowest near miss (rank 4)
    assert cm.headroom.ndim == 0
    assert cm.headroom_interval is None


def test_hand_case_ties_straddling_both_cuts():
    # Ranks: 1 | 2-4 tied (1 positive of 3) | 5-6 tied (2 positives). k = 3, m = 6.
    scores = torch.tensor([3.0, 2.0, 2.0, 2.0, 1.0, 1.0])
    targets = torch.tensor([0, 1, 0, 0, 1, 1])
    cm = contestable_mass(scores, targets, budget=0.5)
    # T(3) = 2/3: FA = 3 - 2/3 = 7/3; NM = 3 - 2/3 = 7/3; FM = 0.
    assert cm.false_alerts.item() == pytest.approx(7 / 3)
    assert cm.near_misses.item() == pytest.approx(7 / 3)
    assert cm.far_misses.item() == 0.0
    assert cm.headroom.item() == pytest.approx(7 / 9)
    assert cm.coverage.item() == pytest.approx(2 / 9)
    assert cm.coverage.item() == pytest.approx(coverage_at_budget(scores, targets, budget=0.5).item())
    assert cm.contestedness.item() == 1.0
    assert cm.fpr_window[0].item() == 0.0
    assert cm.fpr_window[1].item() == 1.0


def test_window_excludes_false_alerts_out_of_reach():
    # 3 false alerts on top, one near miss: only the lowest false alert can be swapped out.
    scores = torch.arange(12.0, 0.0, -1.0)
    targets = torch.tensor([0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1])  # k = 4 (budget 1/3), m = 8
    cm = contestable_mass(scores, targets, budget=1 / 3)
    assert (cm.k.item(), cm.near_k.item()) == (4, 8)
    assert (cm.false_alerts.item(), cm.near_misses.item(), cm.far_misses.item()) == (3.0, 1.0, 1.0)
    assert cm.fpr_window[0].item() == pytest.approx(2 / 9)  # the 2 false alerts above the evictable one
    assert cm.fpr_window[1].item() == pytest.approx(4 / 9)  # negatives above the near miss at rank 6


def test_near_rows_exact_rounding():
    # near * k = 1.1 * 50 = 55.00000000000001 in float64: 55 rows, not 56.
    assert 1.1 * 50 > 55
    scores = torch.arange(500.0, 0.0, -1.0)
    targets = torch.zeros(500, dtype=torch.long)
    targets[55] = 1  # rank 56: a far miss with m = 55, a near miss with m = 56
    cm = contestable_mass(scores, targets, budget=0.1, near=1.1)
    assert cm.k.item() == 50
    assert cm.near_k.item() == 55
    assert (cm.near_misses.item(), cm.far_misses.item()) == (0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Brute force on small pools


@pytest.mark.parametrize("seed", range(6))
def test_tie_break_enumeration(seed):
    g = torch.Generator().manual_seed(seed)
    n = 7
    scores = torch.randint(0, 3, (n,), generator=g).double()
    targets = (torch.rand(n, generator=g) < 0.5).long()
    targets[0] = 1
    for budget, near in [(0.3, 2.0), (0.15, 3.0), (0.5, 1.5)]:
        cm = contestable_mass(scores, targets, budget=budget, near=near)
        fa, nm, fm = enumerate_orders(scores.tolist(), targets.tolist(), int(cm.k), int(cm.near_k))
        assert cm.false_alerts.item() == pytest.approx(fa, abs=1e-12)
        assert cm.near_misses.item() == pytest.approx(nm, abs=1e-12)
        assert cm.far_misses.item() == pytest.approx(fm, abs=1e-12)
        check_against_reference(cm, scores, targets, budget, near)


@pytest.mark.parametrize(
    ("mode", "ignore"),
    [("binary", False), ("binary", True), ("multiclass", False), ("multiclass", True), ("multilabel", True)],
)
@pytest.mark.parametrize("seed", range(3))
def test_against_reference(mode, ignore, seed):
    n, c = 40, (1 if mode == "binary" else 3)
    g = torch.Generator().manual_seed(100 + seed)
    scores = tied_scores(n, c, seed, levels=5)
    if mode == "binary":
        targets = (torch.rand(n, generator=g) < 0.3).long()
        scores = scores[:, 0]
    elif mode == "multiclass":
        targets = torch.randint(0, c, (n,), generator=g)
    else:
        targets = (torch.rand(n, c, generator=g) < 0.3).long()
    if ignore:
        targets = targets.masked_fill(torch.rand(targets.shape, generator=g) < 0.2, IGNORE)
    for budget, near in [(0.1, 2.0), (0.25, 1.5), (0.05, 4.0)]:
        cm = contestable_mass(scores, targets, budget=budget, near=near)
        check_against_reference(cm, scores, targets, budget, near)
        cov = coverage_at_budget(scores, targets, budget=budget)
        torch.testing.assert_close(cm.coverage, cov.double(), equal_nan=True)


def test_continuous_scores_match_reference():
    g = torch.Generator().manual_seed(7)
    scores = torch.randn(300, 2, generator=g, dtype=torch.float64)
    targets = (torch.rand(300, 2, generator=g) < 0.1).long()
    scores[targets.bool()] += 1.0
    cm = contestable_mass(scores, targets, budget=0.03)
    check_against_reference(cm, scores, targets, 0.03, 2.0)
    assert cm.headroom.shape == (2,)


def test_empty_class_and_class_without_negatives():
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.8, 0.2, 0.1], [0.1, 0.7, 0.2], [0.4, 0.3, 0.2]])
    targets = torch.tensor([0, 1, 1, 0])  # class 2 has no positive
    cm = contestable_mass(scores, targets, budget=0.5)
    assert cm.positives.tolist() == [2, 2, 0]
    for f in ("headroom", "contestedness", "coverage"):
        assert math.isnan(getattr(cm, f)[2].item())
    assert math.isnan(cm.fpr_window[0][2].item())
    assert math.isnan(cm.fpr_window[1][2].item())
    check_against_reference(cm, scores, targets, 0.5, 2.0)

    all_pos = torch.ones(10, dtype=torch.long)  # no negatives: nothing to evict
    cm = contestable_mass(torch.linspace(1, 0, 10), all_pos, budget=0.2)
    assert cm.false_alerts.item() == 0.0
    assert cm.headroom.item() == 0.0
    assert cm.contestedness.item() == pytest.approx(2 / 8)  # 2 near misses, 6 far
    assert math.isnan(cm.fpr_window[0].item())


def test_fully_ignored_column_and_empty_input():
    targets = torch.tensor([[1, IGNORE], [0, IGNORE], [1, IGNORE]])
    cm = contestable_mass(torch.rand(3, 2, dtype=torch.float64), targets, budget=0.5, n_boot=20)
    assert cm.k.tolist() == [2, 0]
    assert cm.positives.tolist() == [2, 0]
    assert math.isnan(cm.headroom[1].item())
    assert math.isnan(cm.headroom_interval[0][1].item())

    cm = contestable_mass(torch.empty(0), torch.empty(0, dtype=torch.long), budget=0.1, n_boot=5)
    assert cm.k.item() == 0
    assert math.isnan(cm.headroom.item())


def test_repr_is_a_table():
    scores = tied_scores(50, 3, 1)
    targets = torch.randint(0, 3, (50,))
    text = repr(contestable_mass(scores, targets, budget=0.1, n_boot=10, generator=torch.Generator().manual_seed(0)))
    lines = text.splitlines()
    assert lines[0] == "ContestableMass(budget=0.1, near=2)"
    assert lines[1].split()[:4] == ["class", "k", "near_k", "P"]
    assert "h_2.5%" in lines[1]
    assert len(lines) == 5  # title, header, 3 classes


# ----------------------------------------------------------------------------------------------
# Bootstrap


def test_replicate_weights_equal_duplicated_rows():
    # A replicate reweights the data's ranking; it must equal the statistics of the resampled rows.
    g = torch.Generator().manual_seed(3)
    scores = tied_scores(30, 2, 5, levels=6)
    targets = (torch.rand(30, 2, generator=g) < 0.3).long()
    targets[0, 1] = IGNORE
    pos, neg = targets == 1, targets == 0
    ranked = _rank(scores, pos, neg)
    for _ in range(5):
        counts = torch.randint(0, 3, (30,), generator=g)
        w = counts.double()[ranked.order] * ranked.member
        got = _stats(_Curve(ranked, w.unsqueeze(0)), 0.2, 2.0)
        want = contestable_mass(scores.repeat_interleave(counts, 0), targets.repeat_interleave(counts, 0), budget=0.2)
        torch.testing.assert_close(got.headroom[0], want.headroom, equal_nan=True)
        torch.testing.assert_close(got.false_alerts[0], want.false_alerts)
        torch.testing.assert_close(got.k[0], want.k)


def bootstrap_data(n: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    targets = (torch.rand(n, generator=g) < 0.05).long()
    scores = (torch.randn(n, generator=g, dtype=torch.float64) + 2 * targets).mul(4).round()  # ties
    targets[::5] = IGNORE
    return scores, targets


def test_bootstrap_resamples_the_kept_rows():
    # Pins the resampling scheme: each replicate draws len(kept) rows, with replacement, from the
    # rows taking part in some class (ignored rows never drawn), in one generator call.
    scores, targets = bootstrap_data()
    kept = (targets != IGNORE).nonzero().squeeze(1)
    ranked = _rank(scores.unsqueeze(1), (targets == 1).unsqueeze(1), (targets == 0).unsqueeze(1))
    assert _prefix(ranked, torch.tensor([40])) is not None  # the replicates read only the top of the ranking
    cm = contestable_mass(scores, targets, budget=0.01, n_boot=30, generator=torch.Generator().manual_seed(8))
    draws = torch.randint(len(kept), (30, len(kept)), generator=torch.Generator().manual_seed(8))
    reps = torch.stack([contestable_mass(scores[kept[d]], targets[kept[d]], budget=0.01).headroom for d in draws])
    want = torch.nanquantile(reps, torch.tensor([0.025, 0.975], dtype=torch.float64))
    torch.testing.assert_close(torch.stack(cm.headroom_interval), want)


def test_bootstrap_prefix_shortfall_falls_back_to_whole_ranking(monkeypatch):
    g = torch.Generator().manual_seed(6)
    targets = (torch.rand(2000, generator=g) < 0.05).long()
    scores = torch.randn(2000, generator=g, dtype=torch.float64) + targets  # no ties; near misses bind (NM < FA)

    def run() -> torch.Tensor:
        gen = torch.Generator().manual_seed(3)
        return torch.stack(contestable_mass(scores, targets, budget=0.01, n_boot=40, generator=gen).headroom_interval)

    base = run()
    monkeypatch.setattr(mass_module, "_prefix_rows", lambda m: m)  # prefixes too short: most chunks fall back
    torch.testing.assert_close(run(), base, rtol=0, atol=0)
    monkeypatch.setattr(mass_module, "_prefix", lambda ranked, m: None)  # always the whole ranking
    torch.testing.assert_close(run(), base, rtol=0, atol=0)


def test_bootstrap_interval_contains_point_and_is_reproducible():
    g = torch.Generator().manual_seed(11)
    scores = torch.randn(2000, dtype=torch.float64, generator=g)
    targets = (torch.rand(2000, generator=g) < 0.05).long()
    scores[targets.bool()] += 2.0
    one = contestable_mass(scores, targets, budget=0.03, n_boot=300, generator=torch.Generator().manual_seed(1))
    two = contestable_mass(scores, targets, budget=0.03, n_boot=300, generator=torch.Generator().manual_seed(1))
    three = contestable_mass(scores, targets, budget=0.03, n_boot=300, generator=torch.Generator().manual_seed(2))
    lo, hi = one.headroom_interval
    assert lo.item() <= one.headroom.item() <= hi.item()
    assert 0 < lo.item() < hi.item()
    assert torch.equal(lo, two.headroom_interval[0])
    assert torch.equal(hi, two.headroom_interval[1])
    assert not torch.equal(lo, three.headroom_interval[0]) or not torch.equal(hi, three.headroom_interval[1])


# ----------------------------------------------------------------------------------------------
# Bad inputs


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"budget": 0.0}, ValueError, r"`budget` must be a finite number in \(0, 1\), got 0.0"),
        ({"budget": 1.0}, ValueError, r"`budget` must be a finite number in \(0, 1\), got 1.0"),
        ({"budget": float("nan")}, ValueError, r"`budget`"),
        ({"budget": "0.1"}, TypeError, r"`budget` must be a real number, got '0.1'"),
        ({"budget": 0.1, "near": 0.5}, ValueError, r"`near` must be a finite number in \[1, inf\), got 0.5"),
        ({"budget": 0.1, "n_boot": -1}, ValueError, r"`n_boot` must be an int >= 0, got -1"),
        ({"budget": 0.1, "n_boot": 2.0}, TypeError, r"`n_boot` must be an int"),
        ({"budget": 0.1, "generator": 3}, TypeError, r"`generator` must be a torch.Generator or None, got int"),
        ({"budget": 0.1, "ignore_index": 1.5}, TypeError, r"`ignore_index` must be an int"),
    ],
)
def test_bad_options(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        contestable_mass(torch.rand(10), torch.randint(0, 2, (10,)), **kwargs)


@pytest.mark.parametrize(
    ("scores", "targets", "exc", "match"),
    [
        (torch.rand(10), torch.zeros(9, dtype=torch.long), ValueError, r"`targets` must have shape \[10\].*got \(9,\)"),
        (torch.rand(2, 3, 4), torch.zeros(2, dtype=torch.long), ValueError, r"`scores` must have shape"),
        (torch.tensor([0.1, float("nan")]), torch.tensor([0, 1]), ValueError, r"`scores` must be finite"),
        (torch.tensor([1, 2]), torch.tensor([0, 1]), TypeError, r"`scores` must be a floating-point tensor"),
        ([0.1, 0.2], torch.tensor([0, 1]), TypeError, r"`scores` must be a torch.Tensor, got list"),
        (torch.rand(3), [0, 1, 0], TypeError, r"`targets` must be a torch.Tensor, got list"),
        (torch.rand(3), torch.tensor([0, 2, 1]), ValueError, r"`targets` of binary scores must hold 0, 1.*\[2\]"),
        (torch.rand(3), torch.tensor([0.0, 0.5, 1.0]), ValueError, r"`targets` of binary scores.*\[0.5\]"),
        (torch.rand(3, 2), torch.tensor([0, 2, 1]), ValueError, r"`targets` must be class ids in \[0, 2\)"),
        (torch.rand(3, 2), torch.tensor([[0, 3], [1, 0], [1, 1]]), ValueError, r"Multi-label `targets`"),
    ],
)
def test_bad_inputs(scores, targets, exc, match):
    with pytest.raises(exc, match=match):
        contestable_mass(scores, targets, budget=0.5)


# ----------------------------------------------------------------------------------------------
# advise


def interleaved(n: int, k: int, far: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores already ranked; ``k`` positives alternating with negatives over the top ``2k``, ``far`` at the end."""
    scores = torch.linspace(1.0, 0.0, n, dtype=torch.float64)
    targets = torch.zeros(n, dtype=torch.long)
    targets[0 : 2 * k : 2] = 1
    if far:
        targets[-far:] = 1
    return scores, targets


def test_advise_pauc_when_budget_below_prevalence():
    scores, targets = interleaved(10_000, 100, 50)  # k = 100 < P = 150
    advice = advise(scores, targets, budget=0.01, n_boot=200, generator=torch.Generator().manual_seed(0))
    assert advice.loss == "PAUCAtBudgetLoss"
    kw = advice.kwargs
    assert kw["surrogate"] == "pairwise"
    assert kw["num_classes"] == 1
    # FA = NM = 50: lo = 0; the lowest near miss is rank 199 with 99 negatives above; N- = 9850.
    assert kw["alpha"] == 0.0
    assert kw["beta"] == 0.0101 >= 99 / 9850
    assert advice.numbers["headroom"] == pytest.approx(1 / 3)
    assert advice.numbers["contestedness"] == pytest.approx(0.5)
    assert advice.numbers["headroom_low"] <= advice.numbers["headroom"] <= advice.numbers["headroom_high"]
    assert "provisional" in advice.reasoning
    assert "PAUCAtBudgetLoss" in advice.reasoning
    loss = PAUCAtBudgetLoss(**kw)
    out = loss(scores[:500].float().unsqueeze(1), targets[:500])
    assert torch.isfinite(out)
    assert str(advice).startswith("Recommendation: PAUCAtBudgetLoss(num_classes=1, alpha=0.0, beta=0.0101")


def test_advise_recall_when_budget_covers_prevalence():
    scores, targets = interleaved(10_000, 100, 0)  # k = 100 = P
    advice = advise(scores, targets, budget=0.01, n_boot=0)
    assert advice.loss == "RecallAtQuantileLoss"
    assert advice.kwargs["quantile"] == 0.01
    assert advice.kwargs["num_classes"] == 1
    assert math.isnan(advice.numbers["headroom_low"])
    RecallAtQuantileLoss(**advice.kwargs)


def test_advise_keeps_cross_entropy():
    # Perfect ranking: no headroom.
    scores, targets = interleaved(1000, 0, 10)
    advice = advise(-scores, targets, budget=0.01, n_boot=0)
    assert advice.loss == KEEP_CROSS_ENTROPY
    assert advice.kwargs == {}
    assert advice.numbers["headroom"] == 0.0 < HEADROOM_MIN
    # Headroom 0.05 but 900 far misses: contestedness 50 / 950 < CONTESTEDNESS_MIN.
    scores, targets = interleaved(10_000, 100, 900)
    advice = advise(scores, targets, budget=0.01, n_boot=0)
    assert advice.numbers["headroom"] == pytest.approx(0.05)
    assert advice.numbers["contestedness"] < CONTESTEDNESS_MIN
    assert advice.loss == KEEP_CROSS_ENTROPY
    assert "far below the cut" in advice.reasoning
    # No positive at all.
    advice = advise(torch.rand(100), torch.zeros(100, dtype=torch.long), budget=0.1, n_boot=10)
    assert advice.loss == KEEP_CROSS_ENTROPY
    assert "nothing to assess" in advice.reasoning


def test_advise_small_sample_below_mde():
    scores, targets = interleaved(1000, 2, 0)  # k = 2: headroom 1 / 2, but P = 2: MDE = 2 sqrt(1/8)
    advice = advise(scores, targets, budget=0.002, n_boot=0)
    assert advice.numbers["headroom"] > HEADROOM_MIN
    assert advice.numbers["mde"] > advice.numbers["headroom"]
    assert advice.loss == KEEP_CROSS_ENTROPY


def test_advise_temperature_from_near_zone_spread():
    g = torch.Generator().manual_seed(5)
    n = 4000
    targets = (torch.rand(n, generator=g) < 0.04).long()
    scores = torch.randn(n, generator=g, dtype=torch.float64) + 2.5 * targets
    advice = advise(scores, targets, budget=0.02, n_boot=0)
    k = budget_rows(0.02, n)
    ranked = scores.sort(descending=True).values
    spread = (ranked[k - 1] - ranked[2 * k - 1]).item()
    neg = scores[targets == 0]
    iqr = (torch.quantile(neg, 0.75, interpolation="higher") - torch.quantile(neg, 0.25, interpolation="higher")).item()
    assert advice.numbers["spread_over_iqr_negatives"] == pytest.approx(spread / iqr)
    assert advice.loss == "PAUCAtBudgetLoss", advice.reasoning
    assert advice.kwargs["temperature"] == float(f"{TEMPERATURE_SPREAD_FACTOR * spread / iqr:.2g}")


def test_advise_multiclass():
    g = torch.Generator().manual_seed(9)
    n, c = 6000, 3
    targets = torch.randint(0, c, (n,), generator=g)
    targets[torch.rand(n, generator=g) < 0.9] = 0  # classes 1 and 2 rare
    scores = torch.randn(n, c, generator=g, dtype=torch.float64)
    scores[torch.arange(n), targets] += 1.5
    advice = advise(scores, targets, budget=0.02, n_boot=50, generator=torch.Generator().manual_seed(0))
    mass = advice.mass
    assert mass.headroom.shape == (3,)
    assert advice.numbers["headroom"] == pytest.approx(mass.headroom.mean().item())
    assert advice.numbers["k"] == mass.k.sum().item()
    if advice.loss == "PAUCAtBudgetLoss":
        assert advice.kwargs["num_classes"] == 3
        assert advice.kwargs["alpha"] <= mass.fpr_window[0].min().item()
        assert advice.kwargs["beta"] >= mass.fpr_window[1].max().item()


# ----------------------------------------------------------------------------------------------
# Command line


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return interleaved(5000, 50, 25)  # k = 50 at budget 0.01, P = 75


def write_csv(path: Path, scores: torch.Tensor, labels: torch.Tensor, header: str = "score,label") -> Path:
    lines = [header] + [f"{s!r},{y}" for s, y in zip(scores.tolist(), labels.tolist(), strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_csv(tmp_path, data, capsys):
    f = write_csv(tmp_path / "s.csv", *data)
    assert main([str(f), "--budget", "0.01", "--n-boot", "50"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Recommendation: PAUCAtBudgetLoss(")
    assert "ContestableMass(budget=0.01, near=2)" in out
    assert "h_2.5%" in out


def test_cli_csv_custom_columns_and_errors(tmp_path, data, capsys):
    f = write_csv(tmp_path / "p.csv", *data, header="p,y")
    assert main([str(f), "--budget", "0.01", "--n-boot", "0", "--score-col", "p", "--label-col", "y"]) == 0
    capsys.readouterr()
    assert main([str(f), "--budget", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "p.csv: no column 'score' (--score-col); the header has ['p', 'y']" in err
    bad = tmp_path / "bad.csv"
    bad.write_text("score,label\n0.5,1\nabc,0\n")
    assert main([str(bad), "--budget", "0.1"]) == 2
    assert "bad.csv, line 3, column 'score': expected a number, got 'abc'" in capsys.readouterr().err
    lab = tmp_path / "lab.csv"
    lab.write_text("score,label\n0.5,1\n0.4,2\n")
    assert main([str(lab), "--budget", "0.1", "--n-boot", "0"]) == 2
    assert "lab.csv: `targets` of binary scores must hold 0, 1" in capsys.readouterr().err


def test_cli_npz_and_pt(tmp_path, data, capsys):
    np = pytest.importorskip("numpy")
    scores, labels = data
    f = tmp_path / "s.npz"
    np.savez(f, scores=scores.numpy(), targets=labels.numpy())
    assert main([str(f), "--budget", "0.01", "--n-boot", "0"]) == 0
    first = capsys.readouterr().out
    g = tmp_path / "bad.npz"
    np.savez(g, s=scores.numpy())
    assert main([str(g), "--budget", "0.01"]) == 2
    assert "bad.npz: no scores array named 'scores'; it holds ['s']" in capsys.readouterr().err

    p = tmp_path / "d.pt"
    torch.save({"scores": scores, "labels": labels}, p)
    assert main([str(p), "--budget", "0.01", "--n-boot", "0"]) == 0
    assert capsys.readouterr().out == first
    q = tmp_path / "t.pt"
    torch.save((scores.float(), labels.double()), q)  # float labels 0.0 / 1.0 are read as ids
    assert main([str(q), "--budget", "0.01", "--n-boot", "0"]) == 0
    assert capsys.readouterr().out.startswith("Recommendation: PAUCAtBudgetLoss(")
    r = tmp_path / "x.pt"
    torch.save([scores], r)
    assert main([str(r), "--budget", "0.01"]) == 2
    assert "x.pt: expected a dict with 'scores'" in capsys.readouterr().err


def test_cli_bad_file_and_options(tmp_path, data, capsys):
    assert main([str(tmp_path / "missing.csv"), "--budget", "0.01"]) == 2
    assert "missing.csv: no such file" in capsys.readouterr().err
    txt = tmp_path / "s.txt"
    txt.write_text("x")
    assert main([str(txt), "--budget", "0.01"]) == 2
    assert "unsupported file type '.txt'" in capsys.readouterr().err
    f = write_csv(tmp_path / "s.csv", *data)
    assert main([str(f), "--budget", "2"]) == 2
    assert "`budget` must be a finite number in (0, 1), got 2.0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([str(f)])  # --budget is required
    assert exc.value.code == 2


def test_cli_plot(tmp_path, data, capsys):
    pytest.importorskip("matplotlib")
    f = write_csv(tmp_path / "s.csv", *data)
    png = tmp_path / "curve.png"
    assert main([str(f), "--budget", "0.01", "--n-boot", "0", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Capture curve written to" in capsys.readouterr().out


def test_cli_plot_without_matplotlib(tmp_path, data, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    f = write_csv(tmp_path / "s.csv", *data)
    assert main([str(f), "--budget", "0.01", "--plot", str(tmp_path / "c.png")]) == 2
    assert 'pip install "imbalanced-losses[examples]"' in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


def test_cli_module_entry_point_and_lazy_import(tmp_path, data):
    f = write_csv(tmp_path / "s.csv", *data)
    code = (
        "import sys, runpy, imbalanced_losses\n"
        "assert 'imbalanced_losses.advisor' not in sys.modules\n"
        "sys.argv = ['x', *sys.argv[1:]]\n"
        "runpy.run_module('imbalanced_losses.advisor', run_name='__main__', alter_sys=True)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(f), "--budget", "0.01", "--n-boot", "20"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("Recommendation: PAUCAtBudgetLoss(")
    res = subprocess.run(
        [sys.executable, "-m", "imbalanced_losses.advisor", str(f), "--budget", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert "`budget` must be" in res.stderr


def test_candidates_give_both_losses_whatever_the_decision():
    # Perfect ranking: cross-entropy is advised, yet both candidates are ready to pass; with no
    # contested window the pAUC band falls back to [0, budget].
    scores, targets = interleaved(1000, 0, 10)
    advice = advise(-scores, targets, budget=0.01, n_boot=0)
    assert advice.loss == KEEP_CROSS_ENTROPY
    assert advice.kwargs == {}
    pauc = advice.candidates["PAUCAtBudgetLoss"]
    assert (pauc["alpha"], pauc["beta"], pauc["surrogate"]) == (0.0, 0.01, "pairwise")
    assert advice.candidates["RecallAtQuantileLoss"]["quantile"] == 0.01
    PAUCAtBudgetLoss(**pauc)
    RecallAtQuantileLoss(**advice.candidates["RecallAtQuantileLoss"])
    # Where a loss is advised, its candidate is exactly ``kwargs``; the other is still offered.
    scores, targets = interleaved(10_000, 100, 50)
    advice = advise(scores, targets, budget=0.01, n_boot=0)
    assert advice.loss == "PAUCAtBudgetLoss"
    assert advice.candidates["PAUCAtBudgetLoss"] == advice.kwargs
    assert (advice.candidates["PAUCAtBudgetLoss"]["alpha"], advice.candidates["PAUCAtBudgetLoss"]["beta"]) == (
        0.0,
        0.0101,
    )
    assert advice.candidates["RecallAtQuantileLoss"]["num_classes"] == 1
