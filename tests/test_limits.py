"""Zero-temperature limits: each surrogate approaches the hard metric it stands for.

All data are tie-free with every pair of scores at least ``GAP`` apart, so at temperature ``tau`` a
sigmoid term is within ``exp(-GAP / tau)`` of its 0/1 limit; at the smallest temperatures used here
that is below 1e-20 and the surrogates equal the hard metric up to float64 rounding (and the 1e-9
float64 accuracy contract of SPEC A2).  Where the limit is only approximate the tolerance is derived
in the test's docstring.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

sklearn_metrics = pytest.importorskip("sklearn.metrics")

from imbalanced_losses.functional import (  # noqa: E402
    pauc_at_budget_loss,
    recall_at_quantile_loss,
    smooth_ap_loss,
)

GAP = 0.05
EXACT_TOL = 1e-9  # SPEC A2 float64 accuracy; the exp(-GAP/tau) terms are far below it


def _distinct_scores(gen: np.random.Generator, raw: np.ndarray) -> np.ndarray:
    """Replace ``raw`` by its ranks times ``GAP`` (same order, every gap exactly GAP, no ties)."""
    ranks = np.empty(raw.size, dtype=np.int64)
    ranks[np.argsort(raw, kind="stable")] = np.arange(raw.size)
    return ranks.astype(np.float64) * GAP - raw.size * GAP / 2


def _binary_data(seed: int, n_pos: int, n_neg: int, shift: float = 1.0):
    gen = np.random.default_rng(seed)
    raw = np.concatenate([gen.normal(shift, 1.0, n_pos), gen.normal(0.0, 1.0, n_neg)])
    y = np.concatenate([np.ones(n_pos, dtype=np.int64), np.zeros(n_neg, dtype=np.int64)])
    perm = gen.permutation(raw.size)
    return _distinct_scores(gen, raw[perm]), y[perm]


def _multiclass_data(seed: int, n: int, num_classes: int):
    gen = np.random.default_rng(seed)
    y = gen.integers(0, num_classes, n)
    cols = []
    for c in range(num_classes):
        raw = gen.normal(0.0, 1.0, n) + 1.2 * (y == c)
        cols.append(_distinct_scores(gen, raw))
    return np.stack(cols, axis=1), y


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


# ----------------------------------------------------------------------------------------------
# Smooth-AP -> average precision
# ----------------------------------------------------------------------------------------------

TAUS = (0.1, 0.01, 1e-3)


def test_smooth_ap_binary_limit_is_average_precision():
    s, y = _binary_data(0, n_pos=20, n_neg=70)
    ap = sklearn_metrics.average_precision_score(y, s)
    errs = []
    for tau in TAUS:
        loss = smooth_ap_loss(_t(s).reshape(-1, 1), _t(y), temperature=tau)
        errs.append(abs((1.0 - loss.item()) - ap))
    assert errs[-1] <= EXACT_TOL, errs
    assert errs[0] > errs[-1], errs  # it does approach the metric


def test_smooth_ap_multiclass_limit_is_one_vs_rest_average_precision():
    s, y = _multiclass_data(1, n=90, num_classes=3)
    _, per_class, valid = smooth_ap_loss(_t(s), _t(y), temperature=1e-3, reduction="none", return_per_class=True)
    assert valid.all()
    for c in range(3):
        ap = sklearn_metrics.average_precision_score((y == c).astype(int), s[:, c])
        assert abs((1.0 - per_class[c].item()) - ap) <= EXACT_TOL, c


# ----------------------------------------------------------------------------------------------
# Soft recall -> hard recall above the quantile threshold
# ----------------------------------------------------------------------------------------------


def _hard_recall(scores: np.ndarray, is_pos: np.ndarray, theta: float) -> float:
    """Fraction of positives strictly above theta; a positive exactly at theta counts 1/2 (sig(0))."""
    sp = scores[is_pos]
    return (np.sum(sp > theta) + 0.5 * np.sum(sp == theta)) / sp.size


@pytest.mark.parametrize("interpolation", ["linear", "lower", "higher", "nearest", "midpoint"])
def test_recall_binary_limit_is_hard_recall(interpolation):
    """n = 203, q = 0.13: position (n-1)(1-q) = 175.74 is far from any rounding knife-edge.

    For 'higher' (the documented default) the row sitting at the threshold is forced to be a negative,
    so the limit is exactly "fraction of positives with score > threshold".  'linear'/'midpoint'
    thresholds sit between two scores, >= 0.26 * GAP = 0.013 from both, hence tau = 1e-4
    (exp(-130) per term).
    """
    s, y = _binary_data(2, n_pos=40, n_neg=163)
    q = 0.13
    theta = float(np.quantile(s, 1 - q, method=interpolation))
    at = np.flatnonzero(s == theta)
    y = y.copy()
    y[at] = 0  # the threshold row (if it is a row) is a negative
    assert (y == 1).sum() >= 30
    hard = _hard_recall(s, y == 1, theta)
    assert np.sum(s[y == 1] == theta) == 0
    loss = recall_at_quantile_loss(
        _t(s).reshape(-1, 1), _t(y), quantile=q, temperature=1e-4, quantile_interpolation=interpolation
    )
    assert abs((1.0 - loss.item()) - hard) <= EXACT_TOL


def test_recall_limit_positive_on_threshold_counts_half():
    """'higher' threshold landing on a positive: sig(0) = 1/2 for that positive in the limit."""
    s, y = _binary_data(3, n_pos=40, n_neg=163)
    q = 0.13
    theta = float(np.quantile(s, 1 - q, method="higher"))
    y = y.copy()
    y[s == theta] = 1
    hard = _hard_recall(s, y == 1, theta)
    # temperature is a multiple of the pool's inter-quartile range (about 5 here): tau_eff ~ 5e-5
    loss = recall_at_quantile_loss(_t(s).reshape(-1, 1), _t(y), quantile=q, temperature=1e-5)
    assert abs((1.0 - loss.item()) - hard) <= EXACT_TOL


def test_recall_multiclass_limit_is_hard_recall():
    s, y = _multiclass_data(4, n=203, num_classes=3)
    q = 0.21  # position 202 * 0.79 = 159.58
    _, per_class, valid = recall_at_quantile_loss(
        _t(s), _t(y), quantile=q, temperature=1e-5, reduction="none", return_per_class=True
    )
    assert valid.all()
    for c in range(3):
        theta = float(np.quantile(s[:, c], 1 - q, method="higher"))
        hard = _hard_recall(s[:, c], y == c, theta)
        assert abs((1.0 - per_class[c].item()) - hard) <= EXACT_TOL, c


# ----------------------------------------------------------------------------------------------
# pAUC -> raw ROC band area / (beta - alpha)
# ----------------------------------------------------------------------------------------------


def roc_band_area(y: np.ndarray, s: np.ndarray, alpha: float, beta: float) -> float:
    """Integral of sklearn's ROC curve (piecewise linear through its points) over FPR in [alpha, beta],
    divided by (beta - alpha)."""
    fpr, tpr, _ = sklearn_metrics.roc_curve(y, s, drop_intermediate=False)
    area = 0.0
    for f0, t0, f1, t1 in zip(fpr[:-1], tpr[:-1], fpr[1:], tpr[1:], strict=True):
        lo, hi = max(f0, alpha), min(f1, beta)
        if hi <= lo:
            continue
        ta = t0 + (t1 - t0) * (lo - f0) / (f1 - f0)
        tb = t0 + (t1 - t0) * (hi - f0) / (f1 - f0)
        area += 0.5 * (ta + tb) * (hi - lo)
    return area / (beta - alpha)


def mcclish_inverted(y: np.ndarray, s: np.ndarray, beta: float) -> float:
    """Raw normalised partial AUC on [0, beta] from sklearn's standardised roc_auc_score(max_fpr=beta)."""
    std = sklearn_metrics.roc_auc_score(y, s, max_fpr=beta)
    min_area, max_area = 0.5 * beta**2, beta
    return (min_area + (2.0 * std - 1.0) * (max_area - min_area)) / beta


N_POS, N_NEG = 60, 400


@pytest.mark.parametrize("tau_scale", ["iqr", "band"])
def test_pauc_pairwise_limit_alpha0(tau_scale):
    """Pairwise, alpha = 0, beta = m / n_neg, 'higher', all negatives iid.

    t_alpha = max negative; t_beta reads position (n-1)(1 - m/n) = n-1-m + m/n -> ceil = n-m, i.e. the
    m-th largest negative.  The band is therefore exactly the top m negatives, and as tau -> 0 the
    pairwise pAUC is the fraction of (positive, top-m negative) pairs ranked correctly, which is the
    ROC area over FPR [0, m/n] divided by m/n (each top-m negative owns an FPR segment of width 1/n at
    height "fraction of positives above it").
    """
    s, y = _binary_data(5, N_POS, N_NEG)
    m = 40
    beta = m / N_NEG
    expected = roc_band_area(y, s, 0.0, beta)
    assert abs(expected - mcclish_inverted(y, s, beta)) < 1e-12  # two routes through sklearn agree
    assert 0.05 < expected < 0.95  # a non-trivial band
    errs = []
    for temperature in (0.1, 1e-2, 1e-5):
        loss = pauc_at_budget_loss(
            _t(s).reshape(-1, 1),
            _t(y),
            alpha=0.0,
            beta=beta,
            surrogate="pairwise",
            tau_scale=tau_scale,
            temperature=temperature,
        )
        errs.append(abs((1.0 - loss.item()) - expected))
    assert errs[-1] <= EXACT_TOL, errs
    assert errs[0] > errs[-1], errs


def test_pauc_pairwise_limit_alpha_positive_nearest():
    """Pairwise, alpha = a/n, beta = m/n with a/n < 0.5 < m/n, 'nearest' interpolation.

    The band must hold negatives ranked a+1 .. m (1-based from the top): their FPR segments tile
    [a/n, m/n].  'nearest' gives exactly that: t_alpha reads position n-1-a + a/n, rounded down
    (a/n < 1/2) to n-1-a -> rank a+1; t_beta reads n-1-m + m/n, rounded up (m/n > 1/2) to n-m -> rank m.
    ('higher' would include rank a, 'lower' rank m+1 - both off by one negative.)
    """
    s, y = _binary_data(6, n_pos=40, n_neg=100)
    a, m = 20, 70
    alpha, beta = a / 100, m / 100
    expected = roc_band_area(y, s, alpha, beta)
    loss = pauc_at_budget_loss(
        _t(s).reshape(-1, 1),
        _t(y),
        alpha=alpha,
        beta=beta,
        surrogate="pairwise",
        temperature=1e-5,
        quantile_interpolation="nearest",
    )
    assert abs((1.0 - loss.item()) - expected) <= EXACT_TOL


def _step_integral(y: np.ndarray, s: np.ndarray, beta: float) -> tuple[float, float]:
    """Exact limit of the K -> inf trapezoid with 'higher' thresholds, alpha = 0.

    At FPR level f the knot threshold is the r-th largest negative with r = 1 + floor((n-1) f)
    (position ceil((n-1)(1-f)) in ascending order), so the tau -> 0 TPR is the step function
    g(f) = v_r, v_r = fraction of positives above the r-th largest negative, constant on
    [(r-1)/(n-1), r/(n-1)).  Returns (integral of g over [0, beta] / beta, g(beta) - g(0)).
    """
    neg = np.sort(s[y == 0])[::-1]
    pos = s[y == 1]
    n = neg.size
    v = np.array([np.mean(pos > t) for t in neg])  # v[r-1]
    total = 0.0
    for r in range(1, n + 1):
        lo, hi = (r - 1) / (n - 1), min(r / (n - 1), beta)
        if hi <= lo:
            break
        total += v[r - 1] * (hi - lo)
    g = lambda f: v[math.floor((n - 1) * f)]  # noqa: E731
    return total / beta, g(beta) - g(0.0)


def test_pauc_trapezoid_many_knots_limit():
    """Trapezoid, alpha = 0, beta = 0.1, 'higher', tau -> 0, K knots.

    Two statements, both with derived tolerances:

    1. Against the exact integral of its own step function g (see ``_step_integral``): for a monotone
       g the composite trapezoid rule on K uniform knots is off by at most h |g(beta) - g(0)| / 2, i.e.
       |Delta g| / (2 (K - 1)) after dividing by the band width.
    2. Against the ROC band area: g(f) differs from the ROC height only on the intervals
       ((r-1)/n, (r-1)/(n-1)) (width <= beta/(n-1) each) where it reads negative r-1 instead of r;
       summing the jumps (total variation <= 1) bounds that bias by 1/(n-1) after normalising.  So
       |pAUC - ROC band area| <= 1/(2(K-1)) + 1/(n_neg-1).
    """
    s, y = _binary_data(7, N_POS, N_NEG)
    beta = 0.1
    exact_g, delta_g = _step_integral(y, s, beta)
    roc = roc_band_area(y, s, 0.0, beta)
    for k in (11, 101, 2001):
        loss = pauc_at_budget_loss(
            _t(s).reshape(-1, 1), _t(y), alpha=0.0, beta=beta, surrogate="trapezoid", n_knots=k, temperature=1e-5
        )
        pauc = 1.0 - loss.item()
        assert abs(pauc - exact_g) <= abs(delta_g) / (2 * (k - 1)) + EXACT_TOL, k
        assert abs(pauc - roc) <= 1 / (2 * (k - 1)) + 1 / (N_NEG - 1), k
