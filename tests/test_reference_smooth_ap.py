"""Smooth-AP: library (functional and module) against the brute-force loop reference.

Spec: incumbent-behaviour.md §2.4-§2.6 and §3; SPEC.md D6 (empty pool) and A2 (tolerances).
Values and gradients w.r.t. the logits are compared in float64.
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

from imbalanced_losses.functional import smooth_ap_loss

pytestmark = pytest.mark.usefixtures("on_device")  # also on CUDA when available (tests/conftest.py)

REDUCTIONS = ("mean", "sum", "none")

# (id, make_case kwargs, loss kwargs)
CASES = [
    ("binary-tau0.05", dict(seed=1, n=24, num_classes=1), dict(temperature=0.05)),
    ("binary-tau0.01-default", dict(seed=2, n=24, num_classes=1), dict()),
    ("binary-tau1.0", dict(seed=3, n=20, num_classes=1, pos_rate=0.5), dict(temperature=1.0)),
    ("binary-ties", dict(seed=4, n=24, num_classes=1, ties=True, pos_rate=0.5), dict(temperature=0.1)),
    ("binary-ties-tau0.01", dict(seed=5, n=24, num_classes=1, ties=True, pos_rate=0.5), dict(temperature=0.01)),
    ("binary-ignore", dict(seed=6, n=26, num_classes=1, n_ignore=6), dict(temperature=0.1)),
    ("binary-weighted", dict(seed=7, n=24, num_classes=1, weights="rand"), dict(temperature=0.1)),
    (
        "binary-weighted-somezero",
        dict(seed=8, n=24, num_classes=1, weights="some_zero", ties=True),
        dict(temperature=0.2),
    ),
    ("binary-weighted-allposzero", dict(seed=9, n=16, num_classes=1, weights="class1_zero"), dict(temperature=0.1)),
    ("binary-single-positive", dict(seed=10, n=12, num_classes=1, pos_rate=0.0), dict(temperature=0.1)),
    ("mc3-tau0.1", dict(seed=11, n=24, num_classes=3), dict(temperature=0.1)),
    ("mc3-tau0.01", dict(seed=12, n=24, num_classes=3), dict(temperature=0.01)),
    ("mc4-ties-ignore", dict(seed=13, n=28, num_classes=4, ties=True, n_ignore=5), dict(temperature=0.1)),
    (
        "mc4-ties-ignore-weighted",
        dict(seed=14, n=28, num_classes=4, ties=True, n_ignore=4, weights="rand"),
        dict(temperature=0.05),
    ),
    ("mc4-absent-class", dict(seed=15, n=24, num_classes=4, absent=(2,)), dict(temperature=0.1)),
    ("mc3-class1-zero-weight", dict(seed=16, n=24, num_classes=3, weights="class1_zero"), dict(temperature=0.1)),
    (
        "mc3-ignore_index-minus1",
        dict(seed=17, n=24, num_classes=3, n_ignore=5, ignore_index=-1),
        dict(temperature=0.1, ignore_index=-1),
    ),
    ("mc3-large-logits", dict(seed=18, n=20, num_classes=3, scale=20.0), dict(temperature=0.5)),
]


def _fix_single_positive(case_id: str, data: dict) -> None:
    if case_id == "binary-single-positive":
        data["targets"].zero_()
        data["targets"][5] = 1


def _run(data: dict, loss_kw: dict, reduction: str):
    t = data["targets"]
    w = data["sample_weight"]
    ignore_index = loss_kw.get("ignore_index", -100)
    temperature = loss_kw.get("temperature", 0.01)

    def ref(x):
        per_class, valid = refs.ref_smooth_ap(x, t, temperature=temperature, ignore_index=ignore_index, sample_weight=w)
        return refs.ref_reduce(per_class, valid, reduction, x), per_class, valid

    def lib(x):
        return smooth_ap_loss(x, t, reduction=reduction, sample_weight=w, return_per_class=True, **loss_kw)

    return ref, lib


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("case_id", "data_kw", "loss_kw"), CASES, ids=[c[0] for c in CASES])
def test_functional_matches_reference(case_id, data_kw, loss_kw, reduction):
    data = refs.make_case(**data_kw)
    _fix_single_positive(case_id, data)
    ref, lib = _run(data, loss_kw, reduction)
    x = data["logits"]

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

    # The plain return form gives the same value.
    plain = smooth_ap_loss(x, data["targets"], reduction=reduction, sample_weight=data["sample_weight"], **loss_kw)
    assert isinstance(plain, torch.Tensor)
    refs.assert_loss_close(plain, exp, "plain-form loss")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_positive_binary_pool_is_invalid(reduction):
    """Every pooled row positive -> no negatives -> invalid (§2.5); no valid class -> zero scalar."""
    x = torch.randn(8, 1, dtype=torch.float64, requires_grad=True)
    t = torch.ones(8, dtype=torch.long)
    loss, pc, valid = smooth_ap_loss(x, t, temperature=0.1, reduction=reduction, return_per_class=True)
    assert valid.tolist() == [False]
    assert torch.isnan(pc).all()
    if reduction == "none":
        assert torch.isnan(loss).all()
    else:
        assert loss.item() == 0.0
        (g,) = torch.autograd.grad(loss, x)
        assert torch.equal(g, torch.zeros_like(x))


@pytest.mark.parametrize("num_classes", [1, 3])
def test_empty_pool_is_nan_per_class(num_classes):
    """SPEC D6: every row ignored -> nan per class under 'none'; scalar reductions a connected zero."""
    x = torch.randn(6, num_classes, dtype=torch.float64, requires_grad=True)
    t = torch.full((6,), -100, dtype=torch.long)
    none, pc, valid = smooth_ap_loss(x, t, temperature=0.1, reduction="none", return_per_class=True)
    assert none.shape == (num_classes,)
    assert torch.isnan(none).all()
    assert torch.isnan(pc).all()
    assert valid.tolist() == [False] * num_classes
    for reduction in ("mean", "sum"):
        loss = smooth_ap_loss(x, t, temperature=0.1, reduction=reduction)
        assert loss.ndim == 0
        assert loss.item() == 0.0
        (g,) = torch.autograd.grad(loss, x)
        assert torch.equal(g, torch.zeros_like(x))


def test_reference_self_check_against_sklearn():
    """The reference itself: at tau -> 0 on tie-free data, 1 - loss is sklearn's AP."""
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    x = (torch.randperm(30, generator=g).double() * 0.1).reshape(30, 1)
    t = (torch.rand(30, generator=g) < 0.3).long()
    pc, valid = refs.ref_smooth_ap(x, t, temperature=1e-3)
    ap = sklearn_metrics.average_precision_score(t.numpy(), x[:, 0].numpy())
    assert bool(valid[0])
    assert abs((1.0 - pc[0].item()) - ap) < 1e-12


def test_reference_self_check_ties_exclude_self():
    """Hand-computed values with exact ties (tau = 1).

    1. Positives a, b at 0 and a negative at -1000: for a, R_all = 1 + sig(0) [b] + sig(-1000) = 1.5 and
       R_pos = 1 + sig(0) [b] = 1.5, so prec = 1 and the loss is 0.
    2. Where self-exclusion matters: a positive at 0 tied with a negative at 0.  Self excluded:
       R_all = 1 + 1/2, R_pos = 1 -> prec = 2/3.  (Counting the self pair as sig(0) would give
       R_all = 2, R_pos = 3/2 -> prec = 3/4.)
    """
    x = torch.tensor([[0.0], [0.0], [-1000.0]], dtype=torch.float64)
    pc, _ = refs.ref_smooth_ap(x, torch.tensor([1, 1, 0]), temperature=1.0)
    assert abs(pc[0].item()) < 1e-15
    x = torch.tensor([[0.0], [0.0]], dtype=torch.float64)
    pc, _ = refs.ref_smooth_ap(x, torch.tensor([1, 0]), temperature=1.0)
    assert abs(pc[0].item() - (1.0 - 2.0 / 3.0)) < 1e-15
    lib = smooth_ap_loss(x, torch.tensor([1, 0]), temperature=1.0, reduction="none")
    assert abs(lib[0].item() - (1.0 - 2.0 / 3.0)) < 1e-12


# ----------------------------------------------------------------------------------------------
# Module with a memory queue
# ----------------------------------------------------------------------------------------------

QUEUE_CASES = [
    # (id, num_classes, batch sizes, weight pattern per call)
    ("binary-2calls", 1, (10, 10), (None, None)),
    ("binary-3calls-wrap", 1, (10, 9, 8), (None, None, None)),
    ("mc3-2calls-weighted-first-only", 3, (12, 10), ("rand", None)),
    ("mc3-3calls-wrap-weighted", 3, (10, 9, 11), ("rand", "rand", "rand")),
]


@pytest.mark.parametrize(("case_id", "num_classes", "batches", "weights"), QUEUE_CASES, ids=[c[0] for c in QUEUE_CASES])
def test_module_with_queue_matches_reference(case_id, num_classes, batches, weights):
    from imbalanced_losses import SmoothAPLoss

    q_size, temperature = 16, 0.1
    assert q_size > max(batches)
    loss_fn = SmoothAPLoss(num_classes=num_classes, queue_size=q_size, temperature=temperature).double()
    loss_fn.train()
    ref_q = refs.RefQueue(q_size, num_classes, -100)
    for call, (n, wmode) in enumerate(zip(batches, weights, strict=True)):
        data = refs.make_case(
            100 + call, n=n, num_classes=num_classes, ties=True, n_ignore=2, weights=wmode, float32_exact=True
        )
        x, t, w = data["logits"], data["targets"], data["sample_weight"]
        pool = ref_q.pool(x, t, weight=w)

        def ref(leaf, pool=pool, n=n):
            logits = torch.cat([leaf, pool["logits"][n:]])
            pc, valid = refs.ref_smooth_ap(
                logits, pool["targets"], temperature=temperature, sample_weight=pool["sample_weight"]
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
            alone = refs.ref_smooth_ap(x, t, temperature=temperature, sample_weight=w)[0]
            assert not torch.allclose(alone, ref_pc, equal_nan=True), "test data error: queue has no effect"
        ref_q.enqueue(x, t, weight=w)


# ----------------------------------------------------------------------------------------------
# Large pools (chunked / sorted kernels, SPEC A2) against the dense form of the same formula
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case_id", "data_kw", "loss_kw"), CASES[:6] + CASES[10:14], ids=[c[0] for c in CASES[:6] + CASES[10:14]]
)
def test_dense_reference_equals_loop_reference(case_id, data_kw, loss_kw):
    data = refs.make_case(**data_kw)
    kw = dict(temperature=loss_kw.get("temperature", 0.01), sample_weight=data["sample_weight"])
    x, t = data["logits"], data["targets"]
    a, va = refs.ref_smooth_ap(x, t, **kw)
    b, vb = refs.dense_smooth_ap(x, t, **kw)
    assert va.tolist() == vb.tolist()
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, equal_nan=True)


LARGE = [
    pytest.param(dict(seed=61, n=3000, num_classes=1), dict(temperature=0.01), id="binary-M3000-tau0.01"),
    pytest.param(
        dict(seed=62, n=3000, num_classes=1, n_ignore=50), dict(temperature=0.001), id="binary-M3000-tau0.001"
    ),
    pytest.param(dict(seed=63, n=2500, num_classes=1, pos_rate=0.02), dict(temperature=0.05), id="binary-M2500-rare"),
    pytest.param(
        dict(seed=64, n=2000, num_classes=4, n_ignore=40, weights="some_zero"),
        dict(temperature=0.05),
        id="mc4-M2000-weighted-ignore",
    ),
    pytest.param(dict(seed=65, n=2000, num_classes=3, scale=0.02), dict(temperature=0.01), id="mc3-M2000-near-ties"),
    pytest.param(
        dict(seed=66, n=2000, num_classes=3, scale=1.0, ties=True), dict(temperature=0.01), id="mc3-M2000-exact-ties"
    ),
    pytest.param(dict(seed=67, n=1500, num_classes=3), dict(temperature=2.0), id="mc3-M1500-tau2"),
    pytest.param(dict(seed=68, n=8000, num_classes=1, pos_rate=0.05), dict(temperature=0.01), id="binary-M8000"),
]


@pytest.mark.parametrize(("data_kw", "loss_kw"), LARGE)
def test_large_pool_matches_dense_reference(data_kw, loss_kw):
    data = refs.make_case(**data_kw)
    x, t, w = data["logits"], data["targets"], data["sample_weight"]

    def ref(leaf):
        pc, valid = refs.dense_smooth_ap(leaf, t, sample_weight=w, **loss_kw)
        return refs.ref_reduce(pc, valid, "mean", leaf), pc, valid

    def lib(leaf):
        return smooth_ap_loss(leaf, t, sample_weight=w, return_per_class=True, **loss_kw)

    exp, g_exp, (_, ref_pc, ref_valid) = refs.value_and_grad(ref, x)
    got, g_got, (_, pc, valid) = refs.value_and_grad(lib, x)
    assert valid.tolist() == ref_valid.tolist()
    refs.assert_loss_close(pc, ref_pc, "per_class")
    refs.assert_loss_close(got, exp)
    refs.assert_grad_close(g_got, g_exp)
