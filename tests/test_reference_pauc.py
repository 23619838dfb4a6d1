"""pAUC at budget: library (functional and module) against the brute-force loop reference.

Spec: incumbent-behaviour.md §2.4-§2.6 and §5 (sets, validity gates, thresholds, trapezoid and
pairwise surrogates, diagnostics); SPEC.md D5 (thresholds == torch.quantile's value), D6 (empty pool)
and A2 (tolerances). Float64 values, per-class vectors, diagnostics and gradients w.r.t. the logits.
"""

from __future__ import annotations

import itertools
import math
import sys
import warnings
from pathlib import Path

import pytest
import torch

try:
    import _references as refs
except ImportError:  # pragma: no cover - depends on pytest's import mode
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _references as refs

from imbalanced_losses.functional import pauc_at_budget_loss

pytestmark = pytest.mark.usefixtures("on_device")  # also on CUDA when available (tests/conftest.py)

FLOAT_STATS = ("t_alpha", "t_beta", "tau_eff", "pauc_var")
HPARAMS = (
    "alpha",
    "beta",
    "surrogate",
    "n_knots",
    "tau_scale",
    "pos_numerator",
    "budget_basis",
    "temperature",
)


def _ref_kwargs(loss_kw: dict) -> dict:
    kw = dict(
        alpha=0.0,
        beta=0.005,
        surrogate="trapezoid",
        n_knots=2,
        tau_scale="iqr",
        pos_numerator="pool",
        budget_basis="fpr",
        temperature=0.1,
        interpolation="higher",
        ignore_index=-100,
    )
    for k, v in loss_kw.items():
        kw["interpolation" if k == "quantile_interpolation" else k] = v
    return kw


def _expected_grad_pos_count(data: dict, num_classes: int, ignore_index: int = -100) -> list[int]:
    t = data["targets"]
    live = data["live_mask"] if data["live_mask"] is not None else torch.ones_like(t, dtype=torch.bool)
    keep = (t != ignore_index) & live
    if num_classes == 1:
        return [int((keep & (t != 0)).sum())]
    return [int((keep & (t == c)).sum()) for c in range(num_classes)]


def _compare(data: dict, loss_kw: dict, reduction: str = "mean", *, check_grad_pos_count: bool = True) -> None:
    """Library functional vs reference: loss, per_class, valid, diagnostics and gradient."""
    t = data["targets"]
    masks = dict(iid_mask=data["iid_mask"], live_mask=data["live_mask"], sample_weight=data["sample_weight"])

    def ref(x):
        pc, valid, stats = refs.ref_pauc(x, t, **_ref_kwargs(loss_kw), **masks)
        return refs.ref_reduce(pc, valid, reduction, x), pc, valid, stats

    def lib(x):
        return pauc_at_budget_loss(
            x, t, reduction=reduction, return_per_class=True, return_diagnostics=True, **masks, **loss_kw
        )

    x = data["logits"]
    _, _, (_, ref_pc, ref_valid, ref_stats) = refs.value_and_grad(ref, x)
    exp, g_exp, _ = refs.value_and_grad(ref, x, ref_valid)
    got, g_got, res = refs.value_and_grad(lib, x, ref_valid)
    assert isinstance(res, tuple)
    assert len(res) == 4
    _, pc, valid, stats = res
    assert valid.dtype == torch.bool
    assert valid.tolist() == ref_valid.tolist(), f"valid: got {valid.tolist()} expected {ref_valid.tolist()}"
    refs.assert_loss_close(pc, ref_pc, "per_class")
    refs.assert_loss_close(got, exp, f"loss ({reduction})")
    refs.assert_grad_close(g_got, g_exp)

    # Diagnostics (§5.5).  Band edges must be exactly torch.quantile's values (D5).
    for key in ("t_alpha", "t_beta"):
        pairs = zip(stats[key].tolist(), ref_stats[key].tolist(), strict=True)
        same = [(a == b) or (math.isnan(a) and math.isnan(b)) for a, b in pairs]
        assert all(same), f"{key}: got {stats[key].tolist()} expected (torch.quantile) {ref_stats[key].tolist()}"
    for key in FLOAT_STATS:
        assert stats[key].dtype == x.dtype, key
        refs.assert_loss_close(stats[key], ref_stats[key], f"stats[{key!r}]")
    assert stats["band_neg_count"].dtype == torch.int64
    assert stats["band_neg_count"].tolist() == ref_stats["band_neg_count"].tolist(), "band_neg_count"
    assert stats["grad_pos_count"].dtype == torch.int64
    if check_grad_pos_count:
        assert stats["grad_pos_count"].tolist() == _expected_grad_pos_count(data, x.shape[1]), "grad_pos_count"


# ----------------------------------------------------------------------------------------------
# Full grid over the discrete options
# ----------------------------------------------------------------------------------------------

GRID = list(
    itertools.product(
        ("trapezoid", "pairwise"), ("iqr", "band"), ("fpr", "population"), ("pool", "live"), refs.INTERPOLATIONS
    )
)
BANDS = ((0.0, 0.3713), (0.0871, 0.4519))
TEMPERATURES = (0.05, 0.1, 0.5)
WEIGHTS = (None, "rand", "some_zero")


def _grid_case(i: int, surrogate, tau_scale, basis, numerator, interpolation):
    num_classes = 1 if i % 2 == 0 else 3
    alpha, beta = BANDS[(i // 2) % 2]
    data_kw = dict(
        seed=1000 + i,
        n=30 if num_classes == 1 else 40,
        num_classes=num_classes,
        n_ignore=3,
        weights=WEIGHTS[(i // 4) % 3],
        iid_frac=0.8,
        live_frac=0.6,
        ties=(i % 7 == 3),
    )
    loss_kw = dict(
        alpha=alpha,
        beta=beta,
        surrogate=surrogate,
        n_knots=(2, 5)[(i // 3) % 2],
        tau_scale=tau_scale,
        pos_numerator=numerator,
        budget_basis=basis,
        temperature=TEMPERATURES[i % 3],
        quantile_interpolation=interpolation,
    )
    cid = (
        f"{surrogate[:4]}-{tau_scale}-{basis[:3]}-{numerator}-{interpolation}-C{num_classes}"
        f"-K{loss_kw['n_knots']}-a{alpha}-T{loss_kw['temperature']}-w{data_kw['weights']}"
    )
    return pytest.param(data_kw, loss_kw, id=cid)


GRID_CASES = [_grid_case(i, *combo) for i, combo in enumerate(GRID)]


@pytest.mark.parametrize(("data_kw", "loss_kw"), GRID_CASES)
def test_functional_grid_matches_reference(data_kw, loss_kw):
    _compare(refs.make_case(**data_kw), loss_kw)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("surrogate", ["trapezoid", "pairwise"])
def test_functional_reductions(surrogate, reduction):
    data = refs.make_case(7, n=40, num_classes=4, n_ignore=4, iid_frac=0.7, absent=(2,))
    _compare(data, dict(alpha=0.0, beta=0.3317, surrogate=surrogate, n_knots=3, temperature=0.2), reduction)


# ----------------------------------------------------------------------------------------------
# Targeted cases: ties at the band edges, degenerate classes, worked example
# ----------------------------------------------------------------------------------------------

TARGETED = [
    pytest.param(
        dict(seed=21, n=40, num_classes=1, ties=True, pos_rate=0.3),
        dict(alpha=0.0, beta=0.3713, surrogate="pairwise", quantile_interpolation="higher"),
        id="ties-band-edges-pairwise-higher",
    ),
    pytest.param(
        dict(seed=22, n=40, num_classes=3, ties=True),
        dict(alpha=0.1307, beta=0.5519, surrogate="pairwise", quantile_interpolation="lower", tau_scale="band"),
        id="ties-band-edges-pairwise-lower-mc3",
    ),
    pytest.param(
        dict(seed=23, n=40, num_classes=3, ties=True, iid_frac=0.6),
        dict(alpha=0.0, beta=0.4519, surrogate="trapezoid", n_knots=9, quantile_interpolation="nearest"),
        id="ties-trapezoid-K9-nearest",
    ),
    pytest.param(
        dict(seed=24, n=36, num_classes=3, n_ignore=4, iid_frac=0.7, live_frac=0.5, weights="rand"),
        dict(
            alpha=0.0,
            beta=0.4519,
            surrogate="trapezoid",
            n_knots=5,
            pos_numerator="live",
            budget_basis="population",
            quantile_interpolation="midpoint",
            temperature=0.3,
        ),
        id="trapezoid-live-population-midpoint-weighted",
    ),
    pytest.param(
        dict(seed=25, n=36, num_classes=1, n_ignore=3, iid_frac=0.7, live_frac=0.5),
        dict(
            alpha=0.0,
            beta=0.6119,
            surrogate="pairwise",
            pos_numerator="live",
            quantile_interpolation="linear",
            temperature=0.05,
        ),
        id="pairwise-live-linear-wide-band",
    ),
    pytest.param(
        dict(seed=26, n=36, num_classes=3, scale=50.0),
        dict(alpha=0.0, beta=0.3713, surrogate="pairwise", temperature=0.1),
        id="pairwise-large-logits-scale-aware-tau",
    ),
    pytest.param(
        dict(seed=27, n=36, num_classes=3),
        dict(alpha=0.0, beta=0.005, surrogate="trapezoid"),
        id="defaults-beta0.005-trapezoid",
    ),
    pytest.param(
        dict(seed=28, n=36, num_classes=3),
        dict(alpha=0.0, beta=0.005, surrogate="pairwise"),
        id="defaults-beta0.005-pairwise",
    ),
    pytest.param(
        dict(seed=29, n=36, num_classes=3, weights="rand"),
        dict(alpha=0.05, beta=0.4137, n_knots=4, temperature=0.2, detach_thresholds=True),
        id="trapezoid-0.6-detached-thresholds",
    ),
    pytest.param(
        dict(seed=30, n=36, num_classes=1, iid_frac=0.7),
        dict(alpha=0.02, beta=0.37, n_knots=3, tau_scale="band", temperature=0.3),
        id="trapezoid-band-scale-attached",
    ),
    pytest.param(
        dict(seed=31, n=36, num_classes=3, iid_frac=0.8),
        dict(alpha=0.0, beta=0.29, budget_basis="population", temperature=0.15),
        id="trapezoid-population-attached",
    ),
]


@pytest.mark.parametrize(("data_kw", "loss_kw"), TARGETED)
def test_functional_targeted_matches_reference(data_kw, loss_kw):
    _compare(refs.make_case(**data_kw), loss_kw)


def _binary(scores, labels, **extra):
    return {
        "logits": torch.tensor(scores, dtype=torch.float64).reshape(-1, 1),
        "targets": torch.tensor(labels, dtype=torch.long),
        "sample_weight": extra.get("sample_weight"),
        "iid_mask": extra.get("iid_mask"),
        "live_mask": extra.get("live_mask"),
    }


@pytest.mark.parametrize("surrogate", ["trapezoid", "pairwise"])
@pytest.mark.parametrize("tau_scale", ["iqr", "band"])
def test_constant_reference_is_invalid(surrogate, tau_scale):
    """§5.2: dispersion <= 1e-12 (constant iid negatives) -> class invalid (with a UserWarning)."""
    data = _binary([1.0] * 8 + [0.3, 2.0, 3.0], [0] * 8 + [1, 1, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _compare(data, dict(alpha=0.0, beta=0.3, surrogate=surrogate, tau_scale=tau_scale))


@pytest.mark.parametrize("surrogate", ["trapezoid", "pairwise"])
def test_population_basis_band_without_negatives(surrogate):
    """§5.4: population basis, both edges on positives, no negative in the band -> pairwise invalid.

    Negatives 0..9, positives 10, 11, 12, all iid: Ref has 13 values; 'higher' at level 0.9 reads
    position 12 * 0.9 = 10.8 -> 11 -> t_beta = 11, t_alpha = 12.  The trapezoid stays valid.
    """
    data = _binary([*list(range(10)), 10, 11, 12], [0] * 10 + [1, 1, 1])
    _compare(data, dict(alpha=0.0, beta=0.1, surrogate=surrogate, budget_basis="population"))
    _pc, valid, _stats = refs.ref_pauc(
        data["logits"], data["targets"], alpha=0.0, beta=0.1, surrogate=surrogate, budget_basis="population"
    )
    assert valid.tolist() == [surrogate == "trapezoid"]


@pytest.mark.parametrize("surrogate", ["trapezoid", "pairwise"])
@pytest.mark.parametrize("basis", ["fpr", "population"])
def test_no_iid_negatives_is_invalid(surrogate, basis):
    """§5.1: |N ∧ I| = 0 -> invalid, in both bases (a positives-only reference is rejected)."""
    data = refs.make_case(31, n=30, num_classes=3)
    iid = torch.ones(30, dtype=torch.bool)
    iid[data["targets"] != 1] = False  # class 1 has no iid negatives; classes 0, 2 have (class-1 rows)
    data["iid_mask"] = iid
    _compare(data, dict(alpha=0.0, beta=0.4519, surrogate=surrogate, budget_basis=basis))
    _, valid, _ = refs.ref_pauc(
        data["logits"], data["targets"], alpha=0.0, beta=0.4519, surrogate=surrogate, budget_basis=basis, iid_mask=iid
    )
    assert not bool(valid[1])


@pytest.mark.parametrize("surrogate", ["trapezoid", "pairwise"])
def test_live_without_live_positives_is_invalid(surrogate):
    """§5.1: pos_numerator='live' and no live positive -> invalid; 'pool' stays valid."""
    data = refs.make_case(32, n=30, num_classes=3)
    live = torch.ones(30, dtype=torch.bool)
    live[data["targets"] == 2] = False
    data["live_mask"] = live
    for numerator in ("live", "pool"):
        _compare(data, dict(alpha=0.0, beta=0.4519, surrogate=surrogate, pos_numerator=numerator))
    _, valid, _ = refs.ref_pauc(
        data["logits"],
        data["targets"],
        alpha=0.0,
        beta=0.4519,
        surrogate=surrogate,
        pos_numerator="live",
        live_mask=live,
    )
    assert valid.tolist() == [True, True, False]


@pytest.mark.parametrize("surrogate", ["trapezoid", "pairwise"])
def test_zero_weight_on_numerator_positives_is_invalid(surrogate):
    """§2.6/§5.1: weighted with zero numerator mass -> invalid ('live' numerator only here)."""
    data = refs.make_case(33, n=30, num_classes=3)
    live = torch.zeros(30, dtype=torch.bool)
    live[:15] = True
    w = torch.full((30,), 0.5, dtype=torch.float64)
    w[live & (data["targets"] == 0)] = 0.0  # class 0: live positives weigh nothing, queue ones do
    data["live_mask"], data["sample_weight"] = live, w
    for numerator in ("live", "pool"):
        _compare(data, dict(alpha=0.0, beta=0.4519, surrogate=surrogate, pos_numerator=numerator))
    _, valid, _ = refs.ref_pauc(
        data["logits"],
        data["targets"],
        alpha=0.0,
        beta=0.4519,
        surrogate=surrogate,
        pos_numerator="live",
        live_mask=live,
        sample_weight=w,
    )
    assert not bool(valid[0])


@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("surrogate", ["trapezoid", "pairwise"])
def test_empty_pool(num_classes, surrogate):
    """SPEC D6 + §5.5: nan per class, float stats nan, band_neg_count 0; scalar loss a connected zero."""
    x = torch.randn(6, num_classes, dtype=torch.float64, requires_grad=True)
    t = torch.full((6,), -100, dtype=torch.long)
    none, pc, valid, stats = pauc_at_budget_loss(
        x, t, beta=0.3, surrogate=surrogate, reduction="none", return_per_class=True, return_diagnostics=True
    )
    assert none.shape == (num_classes,)
    assert torch.isnan(none).all()
    assert torch.isnan(pc).all()
    assert valid.tolist() == [False] * num_classes
    for key in FLOAT_STATS:
        assert torch.isnan(stats[key]).all(), key
    assert stats["band_neg_count"].tolist() == [0] * num_classes
    assert stats["grad_pos_count"].tolist() == [0] * num_classes
    for reduction in ("mean", "sum"):
        loss = pauc_at_budget_loss(x, t, beta=0.3, surrogate=surrogate, reduction=reduction)
        assert loss.ndim == 0
        assert loss.item() == 0.0
        (g,) = torch.autograd.grad(loss, x)
        assert torch.equal(g, torch.zeros_like(x))


@pytest.mark.parametrize("basis", ["fpr", "population"])
def test_worked_example_from_spec(basis):
    """§5.5: negatives 0..9, alpha=0.1, beta=0.5, 'higher': fpr basis with positives 12, 13 ->
    t_alpha=9, t_beta=5, band_neg_count=5; population basis with positives 20, 21, 22 -> t_alpha=21,
    t_beta=6."""
    pos = [12.0, 13.0] if basis == "fpr" else [20.0, 21.0, 22.0]
    data = _binary(list(range(10)) + pos, [0] * 10 + [1] * len(pos))
    kw = dict(alpha=0.1, beta=0.5, budget_basis=basis)
    _, _, stats = refs.ref_pauc(data["logits"], data["targets"], **kw)
    expected = (9.0, 5.0, 5) if basis == "fpr" else (21.0, 6.0, 4)
    assert (stats["t_alpha"].item(), stats["t_beta"].item(), stats["band_neg_count"].item()) == expected
    _compare(data, kw)


def test_trapezoid_invariant_to_appended_non_iid_negatives():
    """§5.4: the trapezoid loss is exactly invariant to appended non-iid negatives; pairwise is not
    when they land in the band (both checked against the reference)."""
    base = refs.make_case(41, n=30, num_classes=1)
    extra = torch.tensor([[float(base["logits"].max()) - 1e-3]] * 3, dtype=torch.float64)
    data = {
        "logits": torch.cat([base["logits"], extra]),
        "targets": torch.cat([base["targets"], torch.zeros(3, dtype=torch.long)]),
        "iid_mask": torch.cat([torch.ones(30, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)]),
        "live_mask": None,
        "sample_weight": None,
    }
    kw = dict(alpha=0.0, beta=0.3713, temperature=0.2)
    for surrogate in ("trapezoid", "pairwise"):
        _compare(data, dict(kw, surrogate=surrogate))
    a = pauc_at_budget_loss(base["logits"], base["targets"], surrogate="trapezoid", **kw)
    b = pauc_at_budget_loss(data["logits"], data["targets"], iid_mask=data["iid_mask"], surrogate="trapezoid", **kw)
    assert torch.equal(a, b)


@pytest.mark.parametrize("surrogate", ["trapezoid", "pairwise"])
def test_return_forms(surrogate):
    """§2.2: loss | (loss, stats) | (loss, per_class, valid) | (loss, per_class, valid, stats)."""
    data = refs.make_case(51, n=30, num_classes=3)
    x, t = data["logits"], data["targets"]
    kw = dict(beta=0.3713, surrogate=surrogate)
    loss = pauc_at_budget_loss(x, t, **kw)
    assert isinstance(loss, torch.Tensor)
    assert loss.ndim == 0
    l2, stats = pauc_at_budget_loss(x, t, return_diagnostics=True, **kw)
    l3, pc3, v3 = pauc_at_budget_loss(x, t, return_per_class=True, **kw)
    l4, pc4, v4, _stats4 = pauc_at_budget_loss(x, t, return_per_class=True, return_diagnostics=True, **kw)
    assert isinstance(stats, dict)
    assert set(stats) >= {"t_alpha", "t_beta", "tau_eff", "band_neg_count", "pauc_var", "grad_pos_count"}
    for key in stats:
        assert stats[key].shape == (3,), key
    for other in (l2, l3, l4):
        assert torch.equal(other, loss)  # diagnostics change nothing (bitwise)
    assert torch.equal(pc3, pc4)
    assert torch.equal(v3, v4)


# ----------------------------------------------------------------------------------------------
# Module with a memory queue
# ----------------------------------------------------------------------------------------------

QUEUE_CASES = [
    pytest.param(1, (10, 10), (None, None), dict(surrogate="trapezoid", pos_numerator="pool"), id="binary-trap-pool"),
    pytest.param(
        1,
        (10, 9, 8),
        (None, "rand", None),
        dict(surrogate="pairwise", pos_numerator="pool", tau_scale="band", beta=0.7119),
        id="binary-pair-pool-band-3calls",
    ),
    pytest.param(
        3,
        (12, 10),
        ("rand", None),
        dict(surrogate="trapezoid", pos_numerator="live", n_knots=5, budget_basis="population"),
        id="mc3-trap-live-population",
    ),
    pytest.param(
        3,
        (10, 9, 11),
        (None, None, None),
        dict(surrogate="pairwise", pos_numerator="live", quantile_interpolation="linear"),
        id="mc3-pair-live-3calls-linear",
    ),
    pytest.param(
        3,
        (10, 9, 11),
        ("rand", "rand", "rand"),
        dict(surrogate="pairwise", pos_numerator="pool", budget_basis="population", quantile_interpolation="nearest"),
        id="mc3-pair-pool-population-3calls-weighted",
    ),
]


@pytest.mark.parametrize(("num_classes", "batches", "weights", "loss_kw"), QUEUE_CASES)
def test_module_with_queue_matches_reference(num_classes, batches, weights, loss_kw):
    from imbalanced_losses import PAUCAtBudgetLoss

    q_size = 16
    assert q_size > max(batches)
    kw = dict(alpha=0.0, beta=0.4519, temperature=0.2)
    kw.update(loss_kw)
    loss_fn = PAUCAtBudgetLoss(num_classes=num_classes, queue_size=q_size, **kw).double()
    loss_fn.train()
    ref_kw = _ref_kwargs(kw)
    ref_q = refs.RefQueue(q_size, num_classes, -100)
    for call, (n, wmode) in enumerate(zip(batches, weights, strict=True)):
        data = refs.make_case(
            300 + call, n=n, num_classes=num_classes, n_ignore=2, weights=wmode, iid_frac=0.8, float32_exact=True
        )
        x, t, w, iid = data["logits"], data["targets"], data["sample_weight"], data["iid_mask"]
        pool = ref_q.pool(x, t, iid=iid, weight=w)

        def ref(leaf, pool=pool, n=n):
            logits = torch.cat([leaf, pool["logits"][n:]])
            pc, valid, stats = refs.ref_pauc(
                logits,
                pool["targets"],
                iid_mask=pool["iid_mask"],
                live_mask=pool["live_mask"],
                sample_weight=pool["sample_weight"],
                **ref_kw,
            )
            return refs.ref_reduce(pc, valid, "mean", leaf), pc, valid, stats

        def lib(leaf, t=t, w=w, iid=iid):
            return loss_fn(leaf, t, iid, True, True, sample_weight=w)

        exp, g_exp, (_, ref_pc, ref_valid, ref_stats) = refs.value_and_grad(ref, x)
        got, g_got, (_, pc, valid, stats) = refs.value_and_grad(lib, x)
        assert ref_valid.any(), "test data error: no valid class"
        assert valid.tolist() == ref_valid.tolist(), f"call {call}"
        refs.assert_loss_close(pc, ref_pc, f"call {call} per_class")
        refs.assert_loss_close(got, exp, f"call {call} loss")
        refs.assert_grad_close(g_got, g_exp, f"call {call} grad")
        for key in FLOAT_STATS:
            refs.assert_loss_close(stats[key], ref_stats[key], f"call {call} stats[{key!r}]")
        assert stats["band_neg_count"].tolist() == ref_stats["band_neg_count"].tolist()
        live_only = dict(data, live_mask=None)
        assert stats["grad_pos_count"].tolist() == _expected_grad_pos_count(live_only, num_classes)
        if call > 0:  # the queue must matter, or this test would prove nothing
            alone = refs.ref_pauc(x, t, iid_mask=iid, sample_weight=w, **ref_kw)[0]
            assert not torch.allclose(alone, ref_pc, equal_nan=True), "test data error: queue has no effect"
        ref_q.enqueue(x, t, iid=iid, weight=w)


# ----------------------------------------------------------------------------------------------
# Large pools (chunked pairwise kernel, selection-based thresholds) against the dense formula
# ----------------------------------------------------------------------------------------------


def _dense_kw(loss_kw: dict) -> dict:
    return _ref_kwargs(loss_kw)


@pytest.mark.parametrize(("data_kw", "loss_kw"), GRID_CASES[::7] + TARGETED)
def test_dense_reference_equals_loop_reference(data_kw, loss_kw):
    data = refs.make_case(**data_kw)
    masks = dict(iid_mask=data["iid_mask"], live_mask=data["live_mask"], sample_weight=data["sample_weight"])
    a, va, _ = refs.ref_pauc(data["logits"], data["targets"], **_ref_kwargs(loss_kw), **masks)
    b, vb = refs.dense_pauc(data["logits"], data["targets"], **_dense_kw(loss_kw), **masks)
    assert va.tolist() == vb.tolist()
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, equal_nan=True)


def _large(
    i, surrogate, scale, basis, numer, interp, alpha, temp, wmode, knots, ties, n=3000, num_classes=3, beta=0.0537
):
    data_kw = dict(
        seed=81 + i, n=n, num_classes=num_classes, n_ignore=31, iid_frac=0.9, live_frac=0.5, weights=wmode, ties=ties
    )
    loss_kw = dict(
        alpha=alpha,
        beta=beta,
        surrogate=surrogate,
        tau_scale=scale,
        budget_basis=basis,
        pos_numerator=numer,
        n_knots=knots,
        quantile_interpolation=interp,
        temperature=temp,
    )
    cid = (
        f"{surrogate[:4]}-{scale}-{basis[:3]}-{numer}-{interp}-a{alpha}-b{beta}-T{temp}-w{wmode}-ties{ties}"
        f"-M{n}-C{num_classes}"
    )
    return pytest.param(data_kw, loss_kw, id=cid)


LARGE_GRID = [
    _large(0, "pairwise", "iqr", "fpr", "pool", "higher", 0.0, 0.1, None, 2, False),
    _large(1, "pairwise", "band", "population", "live", "linear", 0.0113, 0.05, "rand", 2, False),
    _large(2, "pairwise", "iqr", "fpr", "pool", "nearest", 0.0, 0.01, "some_zero", 2, True),
    _large(3, "pairwise", "band", "fpr", "live", "lower", 0.0113, 0.5, None, 2, True),
    _large(4, "trapezoid", "iqr", "fpr", "pool", "midpoint", 0.0, 0.1, "rand", 7, False),
    _large(5, "trapezoid", "band", "population", "live", "higher", 0.0113, 0.02, None, 3, True),
    _large(6, "pairwise", "iqr", "fpr", "pool", "higher", 0.0, 0.1, None, 2, False, n=6000, num_classes=1, beta=0.3107),
]


@pytest.mark.parametrize(("data_kw", "loss_kw"), LARGE_GRID)
def test_large_pool_matches_dense_reference(data_kw, loss_kw):
    data = refs.make_case(**data_kw)
    x, t = data["logits"], data["targets"]
    masks = dict(iid_mask=data["iid_mask"], live_mask=data["live_mask"], sample_weight=data["sample_weight"])

    def ref(leaf):
        pc, valid = refs.dense_pauc(leaf, t, **_dense_kw(loss_kw), **masks)
        return refs.ref_reduce(pc, valid, "mean", leaf), pc, valid

    def lib(leaf):
        return pauc_at_budget_loss(leaf, t, return_per_class=True, **masks, **loss_kw)

    exp, g_exp, (_, ref_pc, ref_valid) = refs.value_and_grad(ref, x)
    got, g_got, (_, pc, valid) = refs.value_and_grad(lib, x)
    assert ref_valid.all()
    assert valid.tolist() == ref_valid.tolist()
    refs.assert_loss_close(pc, ref_pc, "per_class")
    refs.assert_loss_close(got, exp)
    refs.assert_grad_close(g_got, g_exp)


@pytest.mark.parametrize("interpolation", refs.INTERPOLATIONS)
@pytest.mark.parametrize("basis", ["fpr", "population"])
def test_float32_band_edges_are_torch_quantile(interpolation, basis):
    """SPEC D5 on float32 input: t_alpha / t_beta equal torch.quantile's float32 value exactly; the
    float32 loss is within SPEC A2's 1e-5 of the float64 reference on the same (float32) values."""
    data = refs.make_case(91, n=500, num_classes=3, iid_frac=0.8, float32_exact=True)
    x64, t, iid = data["logits"], data["targets"], data["iid_mask"]
    x32 = x64.float()
    kw = dict(alpha=0.0113, beta=0.1337, budget_basis=basis, quantile_interpolation=interpolation)
    loss, pc, valid, stats = pauc_at_budget_loss(
        x32, t, iid_mask=iid, reduction="none", return_per_class=True, return_diagnostics=True, **kw
    )
    assert loss.dtype == torch.float32
    for c in range(3):
        pos = t == c
        ref_rows = (~pos & iid) if basis == "fpr" else iid
        col = x32[ref_rows, c]
        assert stats["t_alpha"][c].item() == torch.quantile(col, 1.0 - 0.0113, interpolation=interpolation).item()
        assert stats["t_beta"][c].item() == torch.quantile(col, 1.0 - 0.1337, interpolation=interpolation).item()
    ref_pc, ref_valid, _ = refs.ref_pauc(x64, t, iid_mask=iid, **_ref_kwargs(kw))
    assert valid.tolist() == ref_valid.tolist()
    torch.testing.assert_close(pc.double(), ref_pc, rtol=0, atol=1e-5)
