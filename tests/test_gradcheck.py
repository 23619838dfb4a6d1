"""``torch.autograd.gradcheck`` (float64) of the functional losses on tiny inputs.

With ``detach_thresholds=True`` (0.6's gradient) the quantile thresholds of Recall and pAUC (and
their spread) are constants: a finite difference through a cell that *defines* a threshold would
move the threshold, while autograd deliberately ignores that path.  Those cells are therefore held
constant (their indices come from :func:`_references.quantile_cells`); every other cell is a
gradcheck input.  The default gradient (D12) is the derivative of the loss with each threshold
replaced by a kernel-smoothed quantile; it is checked by central differences of that loss, with
the smoothed quantiles solved by bisection
(:func:`test_threshold_gradient_is_the_smoothed_quantile_derivative`).  Scores are spaced
``>= 0.1`` apart so the ``1e-6`` perturbations never reorder them (order statistics and band
membership stay fixed).  Temperatures are moderate (0.5) because the sigmoid surrogates are stiff
near 0.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

try:
    import _references as refs
except ImportError:  # pragma: no cover - depends on pytest's import mode
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _references as refs

from imbalanced_losses.functional import pauc_at_budget_loss, recall_at_quantile_loss, smooth_ap_loss

pytestmark = [pytest.mark.grad, pytest.mark.usefixtures("on_device")]  # also on CUDA when available (tests/conftest.py)

M = 12


def _data(seed: int, num_classes: int, weighted: bool):
    g = torch.Generator().manual_seed(seed)
    cols = [torch.randperm(M, generator=g).double() * 0.3 - 1.5 for _ in range(num_classes)]
    logits = torch.stack(cols, dim=1)
    targets = torch.tensor([1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0]) if num_classes == 1 else torch.tensor([0, 1, 2] * 4)
    w = (0.3 + torch.rand(M, generator=g, dtype=torch.float64)) if weighted else None
    return logits, targets, w


def _is_pos(targets: torch.Tensor, c: int, num_classes: int) -> torch.Tensor:
    return targets != 0 if num_classes == 1 else targets == c


def _gradcheck(fn, logits: torch.Tensor, frozen: torch.Tensor) -> None:
    """gradcheck ``fn(logits)`` w.r.t. the cells not in ``frozen`` (bool [M, C])."""
    free = ~frozen
    base = logits.detach().clone()

    def f(x):
        full = base.masked_scatter(free, x)
        return fn(full)

    x0 = base[free].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (x0,), eps=1e-6, atol=1e-6, rtol=1e-4)


def _frozen_cells(logits, ref_rows_per_class, levels) -> torch.Tensor:
    frozen = torch.zeros_like(logits, dtype=torch.bool)
    for c, rows in enumerate(ref_rows_per_class):
        vals = [float(logits[r, c]) for r in rows]
        for k in refs.quantile_cells(vals, levels):
            frozen[rows[k], c] = True
    return frozen


CASES = [pytest.param(nc, w, id=f"C{nc}-{'weighted' if w else 'unweighted'}") for nc in (1, 3) for w in (False, True)]


@pytest.mark.parametrize(("num_classes", "weighted"), CASES)
def test_gradcheck_smooth_ap(num_classes, weighted):
    logits, targets, w = _data(1, num_classes, weighted)
    frozen = torch.zeros_like(logits, dtype=torch.bool)
    _gradcheck(lambda x: smooth_ap_loss(x, targets, temperature=0.5, reduction="none", sample_weight=w), logits, frozen)


@pytest.mark.parametrize("interpolation", ["higher", "linear"])
@pytest.mark.parametrize(("num_classes", "weighted"), CASES)
def test_gradcheck_recall(num_classes, weighted, interpolation):
    logits, targets, w = _data(2, num_classes, weighted)
    quantile = 0.3
    frozen = _frozen_cells(logits, [list(range(M))] * num_classes, [1.0 - quantile, 0.75, 0.25])
    _gradcheck(
        lambda x: recall_at_quantile_loss(
            x,
            targets,
            quantile=quantile,
            temperature=0.5,
            quantile_interpolation=interpolation,
            reduction="none",
            sample_weight=w,
            detach_thresholds=True,
        ),
        logits,
        frozen,
    )


@pytest.mark.parametrize("tau_scale", ["iqr", "band"])
@pytest.mark.parametrize("surrogate", ["trapezoid", "pairwise"])
@pytest.mark.parametrize(("num_classes", "weighted"), CASES)
def test_gradcheck_pauc(num_classes, weighted, surrogate, tau_scale):
    logits, targets, w = _data(3, num_classes, weighted)
    alpha, beta, n_knots = 0.0, 0.45, 3
    levels = [*refs.pauc_levels(alpha, beta, n_knots), 0.75, 0.25]
    ref_rows = [torch.nonzero(~_is_pos(targets, c, num_classes)).flatten().tolist() for c in range(num_classes)]
    frozen = _frozen_cells(logits, ref_rows, levels)
    kw = dict(
        alpha=alpha,
        beta=beta,
        surrogate=surrogate,
        n_knots=n_knots,
        tau_scale=tau_scale,
        temperature=0.5,
        detach_thresholds=True,
    )
    # The pairwise band must hold free (gradient-checked) negatives too, not just frozen edges.
    _, valid, stats = refs.ref_pauc(logits, targets, **kw)
    assert valid.all()
    assert (stats["band_neg_count"] >= 3).all()
    _gradcheck(lambda x: pauc_at_budget_loss(x, targets, reduction="none", sample_weight=w, **kw), logits, frozen)


@pytest.mark.parametrize("surrogate", ["trapezoid", "pairwise"])
def test_gradcheck_pauc_population_live(surrogate):
    """Population basis (reference = every iid row) with a live numerator."""
    logits, targets, w = _data(4, 3, True)
    alpha, beta, n_knots = 0.0, 0.45, 4
    levels = [*refs.pauc_levels(alpha, beta, n_knots), 0.75, 0.25]
    live = torch.tensor([True, True, True, False] * 3)
    frozen = _frozen_cells(logits, [list(range(M))] * 3, levels)
    kw = dict(
        alpha=alpha,
        beta=beta,
        surrogate=surrogate,
        n_knots=n_knots,
        budget_basis="population",
        pos_numerator="live",
        temperature=0.5,
        detach_thresholds=True,
    )
    _, valid, _ = refs.ref_pauc(logits, targets, live_mask=live, **kw)
    assert valid.all()
    _gradcheck(
        lambda x: pauc_at_budget_loss(x, targets, reduction="none", sample_weight=w, live_mask=live, **kw),
        logits,
        frozen,
    )


def _smoothed_quantile(values: torch.Tensor, count: float, width: float) -> float:
    """The ``theta`` with ``sum_j sigmoid((values_j - theta) / width) == count`` (bisection, float64)."""
    lo, hi = float(values.min()) - 60 * width, float(values.max()) + 60 * width
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if float(torch.sigmoid((values - mid) / width).sum()) > count:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _smoothed_loss(x, base, targets, w, c, levels, members, width, temperature, tau_scale, knot_weights):
    """Loss of class ``c`` with every threshold ``theta_l`` replaced by the smoothed quantile of the
    ``members`` rows that equals the exact quantile ``levels[l]`` at ``base`` (same kernel width)."""
    thetas = []
    for level in levels:
        count = float(torch.sigmoid((base[members, c] - level) / width).sum())
        thetas.append(_smoothed_quantile(x[members, c], count, width))
    knots, quartiles = thetas[: len(knot_weights)], thetas[len(knot_weights) :]
    spread = {"iqr": lambda: quartiles[0] - quartiles[1], "band": lambda: knots[0] - knots[-1], "logit": lambda: 1.0}
    tau = temperature * spread[tau_scale]()
    pos = _is_pos(targets, c, base.shape[1])
    weight = torch.ones(len(targets), dtype=x.dtype) if w is None else w
    soft = sum(k * torch.sigmoid((x[pos, c] - t) / tau) for k, t in zip(knot_weights, knots, strict=True))
    return 1.0 - float((weight[pos] * soft).sum() / weight[pos].sum())


@pytest.mark.parametrize(
    ("loss", "kw"),
    [
        pytest.param("recall", dict(tau_scale="iqr"), id="recall-iqr"),
        pytest.param("recall", dict(tau_scale="logit"), id="recall-logit"),
        pytest.param("trapezoid", dict(tau_scale="iqr"), id="trapezoid-iqr"),
        pytest.param("trapezoid", dict(tau_scale="band"), id="trapezoid-band"),
    ],
)
@pytest.mark.parametrize(("num_classes", "weighted"), CASES)
def test_threshold_gradient_is_the_smoothed_quantile_derivative(loss, kw, num_classes, weighted):
    """D12: autograd's gradient equals central differences of the smoothed-threshold loss."""
    logits, targets, w = _data(5, num_classes, weighted)
    temperature = 0.5
    x = logits.clone().requires_grad_(True)
    if loss == "recall":
        quantile = 0.3
        out = recall_at_quantile_loss(
            x, targets, quantile=quantile, temperature=temperature, reduction="none", sample_weight=w, **kw
        )
        level_values = [1.0 - quantile, 0.75, 0.25] if kw["tau_scale"] == "iqr" else [1.0 - quantile]
        knot_weights = [1.0]
    else:
        alpha, beta, n_knots = 0.0, 0.45, 3
        out = pauc_at_budget_loss(
            x,
            targets,
            alpha=alpha,
            beta=beta,
            n_knots=n_knots,
            temperature=temperature,
            reduction="none",
            sample_weight=w,
            **kw,
        )
        level_values = refs.pauc_levels(alpha, beta, n_knots) + ([0.75, 0.25] if kw["tau_scale"] == "iqr" else [])
        knot_weights = [0.25, 0.5, 0.25]
    (grad,) = torch.autograd.grad(out.sum(), x)
    per_class = out.detach()
    base = logits.detach()
    eps = 1e-6
    for c in range(num_classes):
        negatives = ~_is_pos(targets, c, num_classes)
        column = base[:, c] if loss == "recall" else base[negatives, c]
        levels = [float(torch.quantile(column, lv, interpolation="higher")) for lv in level_values]
        if loss == "recall":
            spread = levels[1] - levels[2] if kw["tau_scale"] == "iqr" else 1.0
        else:
            spread = levels[-2] - levels[-1] if kw["tau_scale"] == "iqr" else levels[0] - levels[n_knots - 1]
        width = temperature * spread
        args = (targets, w, c, levels, negatives, width, temperature, kw["tau_scale"], knot_weights)
        assert abs(_smoothed_loss(base, base, *args) - float(per_class[c])) < 1e-9  # same value at the base
        for r in range(M):
            plus, minus = base.clone(), base.clone()
            plus[r, c] += eps
            minus[r, c] -= eps
            numeric = (_smoothed_loss(plus, base, *args) - _smoothed_loss(minus, base, *args)) / (2 * eps)
            assert abs(numeric - float(grad[r, c])) < 1e-6, (r, c, numeric, float(grad[r, c]))


@pytest.mark.parametrize(
    ("loss", "kw"),
    [
        (recall_at_quantile_loss, dict(quantile=0.3, temperature=0.5)),
        (pauc_at_budget_loss, dict(beta=0.4, temperature=0.5)),
        (pauc_at_budget_loss, dict(beta=0.4, temperature=0.5, surrogate="pairwise")),
    ],
    ids=["recall", "trapezoid", "pairwise"],
)
def test_a_second_derivative_through_a_stored_gradient_raises(loss, kw):
    """The kernels store their gradient in the forward pass: ``create_graph`` gives the same first derivative,
    and differentiating it again raises (as ``once_differentiable`` does) rather than returning a silent zero.
    """
    logits, targets, _ = _data(3, 1, False)
    x = logits.clone().requires_grad_()
    (plain,) = torch.autograd.grad(loss(x, targets, **kw), x)
    seed = torch.ones((), dtype=x.dtype, requires_grad=True)  # a graph through the incoming gradient too
    (first,) = torch.autograd.grad(loss(x, targets, **kw), x, grad_outputs=seed, create_graph=True)
    assert torch.equal(first.detach(), plain)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        first.sum().backward()
