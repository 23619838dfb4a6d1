"""``torch.autograd.gradcheck`` (float64) of the functional losses on tiny inputs.

The quantile thresholds of Recall and pAUC (and pAUC's tau_eff) are detached by design (§4, §5.2):
a finite difference through a cell that *defines* a threshold would move the threshold, while
autograd deliberately ignores that path.  Those cells are therefore held constant (their indices come
from :func:`_references.quantile_cells`); every other cell is a gradcheck input.  Scores are spaced
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

pytestmark = pytest.mark.grad

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
    frozen = _frozen_cells(logits, [list(range(M))] * num_classes, [1.0 - quantile])
    _gradcheck(
        lambda x: recall_at_quantile_loss(
            x,
            targets,
            quantile=quantile,
            temperature=0.5,
            quantile_interpolation=interpolation,
            reduction="none",
            sample_weight=w,
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
    kw = dict(alpha=alpha, beta=beta, surrogate=surrogate, n_knots=n_knots, tau_scale=tau_scale, temperature=0.5)
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
    )
    _, valid, _ = refs.ref_pauc(logits, targets, live_mask=live, **kw)
    assert valid.all()
    _gradcheck(
        lambda x: pauc_at_budget_loss(x, targets, reduction="none", sample_weight=w, live_mask=live, **kw),
        logits,
        frozen,
    )
