"""Recall at quantile: library (functional and module) against the brute-force loop reference.

Spec: incumbent-behaviour.md §2.4-§2.6 and §4; SPEC.md D5 (threshold == torch.quantile's value for
every interpolation mode), D6 (empty pool) and A2 (tolerances). Float64 values and gradients.
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

from imbalanced_losses.functional import recall_at_quantile_loss

pytestmark = pytest.mark.usefixtures("on_device")  # also on CUDA when available (tests/conftest.py)

REDUCTIONS = ("mean", "sum", "none")

# (id, make_case kwargs, loss kwargs); every case runs under each interpolation mode.
CASES = [
    ("binary-q0.137-tau0.1", dict(seed=1, n=30, num_classes=1), dict(quantile=0.137, temperature=0.1)),
    ("binary-q0.005-default", dict(seed=2, n=31, num_classes=1), dict()),
    ("binary-q0.41-tau1.0", dict(seed=3, n=25, num_classes=1, pos_rate=0.5), dict(quantile=0.41, temperature=1.0)),
    ("binary-ties", dict(seed=4, n=30, num_classes=1, ties=True), dict(quantile=0.23, temperature=0.05)),
    (
        "binary-ignore-weighted",
        dict(seed=5, n=30, num_classes=1, n_ignore=6, weights="some_zero"),
        dict(quantile=0.19, temperature=0.1),
    ),
    (
        "binary-allposzero-weight",
        dict(seed=6, n=20, num_classes=1, weights="class1_zero"),
        dict(quantile=0.19, temperature=0.1),
    ),
    ("mc3-q0.29-tau0.1", dict(seed=7, n=30, num_classes=3), dict(quantile=0.29, temperature=0.1)),
    ("mc3-q0.07-tau0.01", dict(seed=8, n=30, num_classes=3), dict(quantile=0.07, temperature=0.01)),
    (
        "mc4-ties-ignore-weighted",
        dict(seed=9, n=34, num_classes=4, ties=True, n_ignore=5, weights="rand"),
        dict(quantile=0.173, temperature=0.2),
    ),
    ("mc4-absent-class", dict(seed=10, n=30, num_classes=4, absent=(1,)), dict(quantile=0.21, temperature=0.1)),
    (
        "mc3-class1-zero-weight",
        dict(seed=11, n=30, num_classes=3, weights="class1_zero"),
        dict(quantile=0.21, temperature=0.1),
    ),
    (
        "mc3-ignore_index-7",
        dict(seed=12, n=30, num_classes=3, n_ignore=4, ignore_index=7),
        dict(quantile=0.31, temperature=0.1, ignore_index=7),
    ),
    # 0.6's formula (logit temperature, detached threshold) and the two halves of the change alone.
    (
        "mc4-0.6-formula",
        dict(seed=13, n=34, num_classes=4, ties=True, n_ignore=3, weights="rand"),
        dict(quantile=0.173, temperature=0.2, tau_scale="logit", detach_thresholds=True),
    ),
    (
        "binary-logit-attached",
        dict(seed=14, n=30, num_classes=1),
        dict(quantile=0.137, temperature=0.3, tau_scale="logit"),
    ),
    (
        "mc3-iqr-detached",
        dict(seed=15, n=30, num_classes=3, weights="rand"),
        dict(quantile=0.29, temperature=0.1, detach_thresholds=True),
    ),
    ("binary-constant-logits", dict(seed=16, n=30, num_classes=1, scale=0.0), dict(quantile=0.29, temperature=0.1)),
]


def _fns(data: dict, loss_kw: dict, interpolation: str, reduction: str):
    t, w = data["targets"], data["sample_weight"]
    kw = dict(quantile=0.005, temperature=0.1, ignore_index=-100)
    kw.update(loss_kw)

    def ref(x):
        pc, valid = refs.ref_recall_at_quantile(
            x,
            t,
            quantile=kw["quantile"],
            temperature=kw["temperature"],
            interpolation=interpolation,
            ignore_index=kw["ignore_index"],
            sample_weight=w,
            tau_scale=kw.get("tau_scale", "iqr"),
            detach_thresholds=kw.get("detach_thresholds", False),
        )
        return refs.ref_reduce(pc, valid, reduction, x), pc, valid

    def lib(x):
        return recall_at_quantile_loss(
            x,
            t,
            quantile_interpolation=interpolation,
            reduction=reduction,
            sample_weight=w,
            return_per_class=True,
            **loss_kw,
        )

    return ref, lib


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("interpolation", refs.INTERPOLATIONS)
@pytest.mark.parametrize(("case_id", "data_kw", "loss_kw"), CASES, ids=[c[0] for c in CASES])
def test_functional_matches_reference(case_id, data_kw, loss_kw, interpolation, reduction):
    data = refs.make_case(**data_kw)
    x = data["logits"]
    ref, lib = _fns(data, loss_kw, interpolation, reduction)
    _, _, (_, ref_pc, ref_valid) = refs.value_and_grad(ref, x)
    exp, g_exp, _ = refs.value_and_grad(ref, x, ref_valid)
    got, g_got, res = refs.value_and_grad(lib, x, ref_valid)
    assert isinstance(res, tuple)
    assert len(res) == 3
    _, pc, valid = res
    assert valid.dtype == torch.bool
    assert valid.tolist() == ref_valid.tolist()
    refs.assert_loss_close(pc, ref_pc, "per_class")
    refs.assert_loss_close(got, exp, f"loss ({reduction})")
    refs.assert_grad_close(g_got, g_exp)
    if reduction == "mean":
        plain = recall_at_quantile_loss(
            x, data["targets"], quantile_interpolation=interpolation, sample_weight=data["sample_weight"], **loss_kw
        )
        assert isinstance(plain, torch.Tensor)
        refs.assert_loss_close(plain, exp, "plain-form loss")


def test_detached_threshold_gives_negatives_exactly_zero_gradient():
    """0.6's gradient (``detach_thresholds=True``): only positives receive gradient."""
    data = refs.make_case(3, n=30, num_classes=3)
    x = data["logits"].clone().requires_grad_(True)
    t = data["targets"]
    loss = recall_at_quantile_loss(x, t, quantile=0.3, temperature=0.2, detach_thresholds=True)
    (g,) = torch.autograd.grad(loss, x)
    onehot = torch.nn.functional.one_hot(t, 3).bool()
    assert torch.equal(g[~onehot], torch.zeros_like(g[~onehot]))
    assert bool((g[onehot] <= 0).all())
    assert bool((g[onehot] < 0).any())


@pytest.mark.parametrize("tau_scale", ["iqr", "logit"])
def test_default_gradient_is_shift_invariant_and_lowers_negatives(tau_scale):
    """Default: a common shift of a column changes nothing, so its gradient sums to zero, and the
    threshold's gradient pushes the negatives around it down (they get a positive gradient)."""
    data = refs.make_case(3, n=30, num_classes=3)
    x = data["logits"].clone().requires_grad_(True)
    t = data["targets"]
    loss = recall_at_quantile_loss(x, t, quantile=0.3, temperature=0.2, tau_scale=tau_scale)
    (g,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(g.sum(0), torch.zeros(3, dtype=g.dtype), atol=1e-15, rtol=0)
    onehot = torch.nn.functional.one_hot(t, 3).bool()
    assert bool((g[~onehot] >= 0).all())
    assert bool((g[~onehot] > 0).any())


@pytest.mark.parametrize("interpolation", refs.INTERPOLATIONS)
def test_all_positive_binary_pool_is_valid(interpolation):
    """§2.5: negatives are not required; theta then lies among the positives."""
    x = torch.randn(9, 1, dtype=torch.float64)
    t = torch.ones(9, dtype=torch.long)
    loss, pc, valid = recall_at_quantile_loss(
        x, t, quantile=0.3, temperature=0.1, quantile_interpolation=interpolation, return_per_class=True
    )
    ref_pc, ref_valid = refs.ref_recall_at_quantile(x, t, quantile=0.3, temperature=0.1, interpolation=interpolation)
    assert valid.tolist() == ref_valid.tolist() == [True]
    refs.assert_loss_close(pc, ref_pc)
    refs.assert_loss_close(loss, ref_pc[0])


@pytest.mark.parametrize("num_classes", [1, 3])
def test_empty_pool_is_nan_per_class(num_classes):
    """SPEC D6."""
    x = torch.randn(5, num_classes, dtype=torch.float64, requires_grad=True)
    t = torch.full((5,), -100, dtype=torch.long)
    none, pc, valid = recall_at_quantile_loss(x, t, quantile=0.2, reduction="none", return_per_class=True)
    assert none.shape == (num_classes,)
    assert torch.isnan(none).all()
    assert torch.isnan(pc).all()
    assert valid.tolist() == [False] * num_classes
    for reduction in ("mean", "sum"):
        loss = recall_at_quantile_loss(x, t, quantile=0.2, reduction=reduction)
        assert loss.ndim == 0
        assert loss.item() == 0.0
        (g,) = torch.autograd.grad(loss, x)
        assert torch.equal(g, torch.zeros_like(x))


def test_reference_self_check_threshold_is_order_statistic():
    """The reference itself: 'higher' picks sorted[ceil((n-1)(1-q))] (hand-computed)."""
    x = torch.arange(10, dtype=torch.float64).reshape(10, 1)  # 0..9
    t = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1, 0, 1])
    _, _, th = refs.ref_recall_at_quantile(x, t, quantile=0.27, temperature=1.0, return_thresholds=True)
    assert th == [7.0]  # position 9 * 0.73 = 6.57 -> ceil 7
    _, _, th = refs.ref_recall_at_quantile(
        x, t, quantile=0.27, temperature=1.0, interpolation="linear", return_thresholds=True
    )
    assert abs(th[0] - 6.57) < 1e-12


# ----------------------------------------------------------------------------------------------
# Module with a memory queue
# ----------------------------------------------------------------------------------------------

QUEUE_CASES = [
    ("binary-2calls-higher", 1, (10, 10), (None, None), "higher"),
    ("binary-3calls-wrap-linear", 1, (10, 9, 8), (None, "rand", None), "linear"),
    ("mc3-2calls-weighted-first-only-nearest", 3, (12, 10), ("rand", None), "nearest"),
    ("mc3-3calls-wrap-midpoint", 3, (10, 9, 11), (None, None, None), "midpoint"),
    ("mc3-3calls-wrap-lower-weighted", 3, (10, 9, 11), ("rand", "rand", "rand"), "lower"),
]


@pytest.mark.parametrize(
    ("case_id", "num_classes", "batches", "weights", "interpolation"), QUEUE_CASES, ids=[c[0] for c in QUEUE_CASES]
)
def test_module_with_queue_matches_reference(case_id, num_classes, batches, weights, interpolation):
    from imbalanced_losses import RecallAtQuantileLoss

    q_size, quantile, temperature = 16, 0.217, 0.1
    assert q_size > max(batches)
    loss_fn = RecallAtQuantileLoss(
        num_classes=num_classes,
        quantile=quantile,
        queue_size=q_size,
        temperature=temperature,
        quantile_interpolation=interpolation,
    ).double()
    loss_fn.train()
    ref_q = refs.RefQueue(q_size, num_classes, -100)
    for call, (n, wmode) in enumerate(zip(batches, weights, strict=True)):
        data = refs.make_case(200 + call, n=n, num_classes=num_classes, n_ignore=2, weights=wmode, float32_exact=True)
        x, t, w = data["logits"], data["targets"], data["sample_weight"]
        pool = ref_q.pool(x, t, weight=w)

        def ref(leaf, pool=pool, n=n):
            logits = torch.cat([leaf, pool["logits"][n:]])
            pc, valid = refs.ref_recall_at_quantile(
                logits,
                pool["targets"],
                quantile=quantile,
                temperature=temperature,
                interpolation=interpolation,
                sample_weight=pool["sample_weight"],
            )
            return refs.ref_reduce(pc, valid, "mean", leaf), pc, valid

        def lib(leaf, t=t, w=w):
            return loss_fn(leaf, t, None, True, sample_weight=w)

        exp, g_exp, (_, ref_pc, ref_valid) = refs.value_and_grad(ref, x)
        got, g_got, (_, pc, valid) = refs.value_and_grad(lib, x)
        assert valid.tolist() == ref_valid.tolist(), f"call {call}"
        refs.assert_loss_close(pc, ref_pc, f"call {call} per_class")
        refs.assert_loss_close(got, exp, f"call {call} loss")
        refs.assert_grad_close(g_got, g_exp, f"call {call} grad")
        if call > 0:  # the queue must matter, or this test would prove nothing
            alone = refs.ref_recall_at_quantile(
                x, t, quantile=quantile, temperature=temperature, interpolation=interpolation, sample_weight=w
            )[0]
            assert not torch.allclose(alone, ref_pc, equal_nan=True), "test data error: queue has no effect"
        ref_q.enqueue(x, t, weight=w)


# ----------------------------------------------------------------------------------------------
# Large pools (selection-based thresholds, SPEC D5) against the dense form of the same formula
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("interpolation", refs.INTERPOLATIONS)
@pytest.mark.parametrize(("case_id", "data_kw", "loss_kw"), CASES[:4], ids=[c[0] for c in CASES[:4]])
def test_dense_reference_equals_loop_reference(case_id, data_kw, loss_kw, interpolation):
    data = refs.make_case(**data_kw)
    kw = dict(quantile=0.005, temperature=0.01)
    kw.update(loss_kw)
    x, t = data["logits"], data["targets"]
    a, va = refs.ref_recall_at_quantile(x, t, interpolation=interpolation, sample_weight=data["sample_weight"], **kw)
    b, vb = refs.dense_recall_at_quantile(x, t, interpolation=interpolation, sample_weight=data["sample_weight"], **kw)
    assert va.tolist() == vb.tolist()
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("interpolation", refs.INTERPOLATIONS)
@pytest.mark.parametrize(
    ("data_kw", "loss_kw"),
    [
        pytest.param(
            dict(seed=71, n=5000, num_classes=1, pos_rate=0.01, n_ignore=37), dict(quantile=0.0137), id="binary-M5000"
        ),
        pytest.param(
            dict(seed=72, n=4000, num_classes=3, weights="rand", ties=True),
            dict(quantile=0.0731),
            id="mc3-M4000-ties-weighted",
        ),
    ],
)
def test_large_pool_matches_dense_reference(data_kw, loss_kw, interpolation):
    data = refs.make_case(**data_kw)
    x, t, w = data["logits"], data["targets"], data["sample_weight"]
    kw = dict(temperature=0.05, **loss_kw)

    def ref(leaf):
        pc, valid = refs.dense_recall_at_quantile(leaf, t, interpolation=interpolation, sample_weight=w, **kw)
        return refs.ref_reduce(pc, valid, "mean", leaf), pc, valid

    def lib(leaf):
        return recall_at_quantile_loss(
            leaf, t, quantile_interpolation=interpolation, sample_weight=w, return_per_class=True, **kw
        )

    exp, g_exp, (_, ref_pc, ref_valid) = refs.value_and_grad(ref, x)
    got, g_got, (_, pc, valid) = refs.value_and_grad(lib, x)
    assert valid.tolist() == ref_valid.tolist()
    refs.assert_loss_close(pc, ref_pc, "per_class")
    refs.assert_loss_close(got, exp)
    refs.assert_grad_close(g_got, g_exp)
