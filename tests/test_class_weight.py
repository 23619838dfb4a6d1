"""``class_weight`` on the three ranking losses (SPEC A4).

References (none derived from the weighting code itself):

* the weighted ``'mean'``/``'sum'`` against a hand reduction of the per-class ``'none'`` output
  of the *unweighted* loss: :math:`\\sum_{c \\in V} w_c L_c / \\sum_{c \\in V} w_c` and
  :math:`\\sum_{c \\in V} w_c L_c` over the valid classes :math:`V`;
* the gradient against the same weighted combination of the per-class gradients of the
  unweighted loss;
* a zero-weight class against the unweighted loss on the logits with that column dropped
  (multi-hot targets without that column; for a class without rows, the class ids remapped),
  bitwise; "not computed" by recording the columns the cores and the pair kernel receive;
* the module buffer against ``state_dict`` / ``load_state_dict`` / ``.to`` behaviour.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import pytest
import torch

import imbalanced_losses.ap_loss
import imbalanced_losses.functional.pauc_at_budget
import imbalanced_losses.functional.recall_at_quantile
import imbalanced_losses.functional.smooth_ap
import imbalanced_losses.pauc_loss
import imbalanced_losses.recall_loss
from imbalanced_losses import PAUCAtBudgetLoss, RecallAtQuantileLoss, SmoothAPLoss
from imbalanced_losses.functional import pauc_at_budget_loss, recall_at_quantile_loss, smooth_ap_loss

pytestmark = [
    pytest.mark.filterwarnings("ignore:PAUCAtBudgetLoss. degenerate dispersion:UserWarning"),
    pytest.mark.usefixtures("on_device"),
]  # also on CUDA when available (tests/conftest.py)

IGNORE = -100

LOSSES: dict[str, tuple[Any, Any, dict[str, Any]]] = {
    "ap": (SmoothAPLoss, smooth_ap_loss, {"temperature": 0.1}),
    "recall": (RecallAtQuantileLoss, recall_at_quantile_loss, {"quantile": 0.25, "temperature": 0.1}),
    "pauc-trap": (PAUCAtBudgetLoss, pauc_at_budget_loss, {"beta": 0.3, "n_knots": 3, "temperature": 0.2}),
    "pauc-pair": (PAUCAtBudgetLoss, pauc_at_budget_loss, {"beta": 0.4, "surrogate": "pairwise", "temperature": 0.2}),
}
ALL = pytest.mark.parametrize("name", list(LOSSES))
FORMS = pytest.mark.parametrize("form", ["functional", "module"])

# (module attribute holding the core, core name) patched to record the columns each core receives
CORE_SITES = {
    "ap": [(imbalanced_losses.functional.smooth_ap, "smooth_ap_core"), (imbalanced_losses.ap_loss, "smooth_ap_core")],
    "recall": [
        (imbalanced_losses.functional.recall_at_quantile, "recall_at_quantile_core"),
        (imbalanced_losses.recall_loss, "recall_at_quantile_core"),
    ],
    "pauc-trap": [
        (imbalanced_losses.functional.pauc_at_budget, "pauc_at_budget_core"),
        (imbalanced_losses.pauc_loss, "pauc_at_budget_core"),
    ],
}
CORE_SITES["pauc-pair"] = CORE_SITES["pauc-trap"]


def make_batch(
    seed: int, n: int = 48, c: int = 4, *, absent: tuple[int, ...] = (), n_ignore: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 logits and class ids; every class not in ``absent`` gets at least 4 rows."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64)
    present = [k for k in range(c) if k not in absent]
    targets = torch.tensor(present)[torch.randint(0, len(present), (n,), generator=g)]
    for i, k in enumerate(present):
        targets[4 * i : 4 * i + 4] = k
    targets[n - n_ignore :] = IGNORE
    return logits, targets


def run(name: str, form: str, logits: torch.Tensor, targets: torch.Tensor, **kwargs: Any) -> Any:
    """One call of the loss, functional or module (no queue), with the shared options."""
    cls, fn, options = LOSSES[name]
    if form == "functional":
        return fn(logits, targets, **options, **kwargs)
    reduction = kwargs.pop("reduction", "mean")
    class_weight = kwargs.pop("class_weight", None)
    module = cls(logits.shape[1], queue_size=0, reduction=reduction, class_weight=class_weight, **options)
    return module(logits, targets, **kwargs)


def unweighted_per_class(name: str, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _, fn, options = LOSSES[name]
    _, per_class, valid = fn(logits, targets, reduction="none", return_per_class=True, **options)
    return per_class, valid


def hand_reduce(per_class: torch.Tensor, valid: torch.Tensor, weights: list[float], reduction: str) -> torch.Tensor:
    """Python-loop weighted reduction over the valid classes."""
    num = torch.zeros((), dtype=per_class.dtype)
    den = 0.0
    for c, w in enumerate(weights):
        if bool(valid[c]) and w > 0:
            num = num + w * per_class[c]
            den += w
    return num if reduction == "sum" else num / den


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

BAD_VALUES = [
    ("short", [1.0, 1.0, 1.0], ValueError),
    ("long", [1.0] * 5, ValueError),
    ("2d", torch.ones(1, 4), ValueError),
    ("scalar-tensor", torch.tensor(1.0), ValueError),
    ("negative", [1.0, -0.5, 1.0, 1.0], ValueError),
    ("nan", [1.0, math.nan, 1.0, 1.0], ValueError),
    ("inf", [1.0, math.inf, 1.0, 1.0], ValueError),
    ("all-zero", [0.0, 0.0, 0.0, 0.0], ValueError),
    ("all-zero-tensor", torch.zeros(4), ValueError),
    ("string", "abcd", TypeError),
    ("number", 1.0, TypeError),
    ("bools", [True, False, True, True], TypeError),
    ("bool-tensor", torch.ones(4, dtype=torch.bool), TypeError),
    ("complex-tensor", torch.ones(4, dtype=torch.complex64), TypeError),
    ("mixed", [1.0, "a", 1.0, 1.0], TypeError),
]


@pytest.mark.parametrize(("case", "value", "error"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
@ALL
def test_module_rejects_bad_class_weight(name: str, case: str, value: Any, error: type) -> None:
    cls, _, options = LOSSES[name]
    with pytest.raises(error, match="`class_weight`"):
        cls(4, class_weight=value, **options)


@pytest.mark.parametrize(("case", "value", "error"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
@ALL
def test_functional_rejects_bad_class_weight(name: str, case: str, value: Any, error: type) -> None:
    _, fn, options = LOSSES[name]
    logits, targets = make_batch(0)
    with pytest.raises(error, match="`class_weight`"):
        fn(logits, targets, class_weight=value, **options)


@ALL
def test_class_weight_is_keyword_only(name: str) -> None:
    cls, fn, _ = LOSSES[name]
    for params in (inspect.signature(cls.__init__).parameters, inspect.signature(fn).parameters):
        assert params["class_weight"].kind is inspect.Parameter.KEYWORD_ONLY
        assert params["class_weight"].default is None


@ALL
@pytest.mark.parametrize(
    "value",
    [[1, 2, 3, 4], (1.0, 2.0, 3.0, 4.0), torch.tensor([1, 2, 3, 4]), torch.tensor([1.0, 2.0, 3.0, 4.0])],
    ids=["int-list", "tuple", "int-tensor", "float-tensor"],
)
def test_accepted_forms_agree(name: str, value: Any) -> None:
    logits, targets = make_batch(1)
    reference = run(name, "functional", logits, targets, class_weight=[1.0, 2.0, 3.0, 4.0])
    assert torch.equal(run(name, "functional", logits, targets, class_weight=value), reference)
    assert torch.equal(run(name, "module", logits, targets, class_weight=value), reference)


# --------------------------------------------------------------------------------------------
# Weighted reduction and gradient
# --------------------------------------------------------------------------------------------

WEIGHTS = [0.5, 2.0, 1.0, 3.5]


@ALL
@FORMS
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_weighted_reduction_equals_hand_reduction(name: str, form: str, reduction: str) -> None:
    """Class 2 has no row: invalid, so its weight 1.0 is left out of the denominator too."""
    logits, targets = make_batch(2, absent=(2,))
    per_class, valid = unweighted_per_class(name, logits, targets)
    assert valid.tolist() == [True, True, False, True]
    got = run(name, form, logits, targets, reduction=reduction, class_weight=WEIGHTS)
    expected = hand_reduce(per_class, valid, WEIGHTS, reduction)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    plain_mean = per_class[valid].mean()
    assert not torch.allclose(got, plain_mean)  # the weights do change the value


@ALL
@FORMS
def test_none_and_per_class_are_unweighted(name: str, form: str) -> None:
    logits, targets = make_batch(3)
    per_class, valid = unweighted_per_class(name, logits, targets)
    got = run(name, form, logits, targets, reduction="none", class_weight=WEIGHTS)
    assert torch.equal(got, per_class)
    loss, got_pc, got_valid = run(
        name, form, logits, targets, reduction="mean", class_weight=WEIGHTS, return_per_class=True
    )
    assert torch.equal(got_pc, per_class)
    assert torch.equal(got_valid, valid)
    torch.testing.assert_close(loss, hand_reduce(per_class, valid, WEIGHTS, "mean"), rtol=1e-12, atol=1e-12)


@ALL
@FORMS
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradient_is_the_weighted_combination_of_per_class_gradients(name: str, form: str, reduction: str) -> None:
    logits, targets = make_batch(4, absent=(1,))
    weights = [1.5, 4.0, 0.0, 0.25]  # class 1 invalid, class 2 skipped
    x = logits.clone().requires_grad_()
    run(name, form, x, targets, reduction=reduction, class_weight=weights).backward()

    _, fn, options = LOSSES[name]
    grads = []
    valid = None
    for c in range(4):
        y = logits.clone().requires_grad_()
        _, per_class, valid = fn(y, targets, reduction="none", return_per_class=True, **options)
        if bool(valid[c]):
            per_class[c].backward()
            assert y.grad is not None
            grads.append(y.grad)
        else:
            grads.append(torch.zeros_like(logits))
    assert valid is not None
    used = [c for c in range(4) if bool(valid[c]) and weights[c] > 0]
    assert used == [0, 3]
    expected = sum(weights[c] * grads[c] for c in used)
    if reduction == "mean":
        expected = expected / sum(weights[c] for c in used)
    assert x.grad is not None
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=1e-12 * float(expected.abs().max()))
    assert torch.equal(x.grad[:, 2], torch.zeros(logits.shape[0], dtype=logits.dtype))


@ALL
def test_single_positive_weight_gives_that_class_loss(name: str) -> None:
    logits, targets = make_batch(5)
    per_class, _ = unweighted_per_class(name, logits, targets)
    got = run(name, "functional", logits, targets, class_weight=[0.0, 0.0, 7.0, 0.0])
    torch.testing.assert_close(got, per_class[2], rtol=1e-15, atol=0)
    summed = run(name, "functional", logits, targets, class_weight=[0, 0, 7, 0], reduction="sum")
    torch.testing.assert_close(summed, 7 * per_class[2], rtol=1e-15, atol=0)


@ALL
def test_no_valid_weighted_class_gives_graph_connected_zero(name: str) -> None:
    """Only absent classes carry weight: the scalar is a zero that still backpropagates."""
    logits, targets = make_batch(6, absent=(3,))
    x = logits.clone().requires_grad_()
    loss = run(name, "functional", x, targets, class_weight=[0.0, 0.0, 0.0, 1.0])
    assert loss.item() == 0.0
    loss.backward()
    assert x.grad is not None
    assert torch.equal(x.grad, torch.zeros_like(x))


# --------------------------------------------------------------------------------------------
# Weight 0: the class is not computed
# --------------------------------------------------------------------------------------------


def one_hot_without(targets: torch.Tensor, c: int, drop: int) -> torch.Tensor:
    """Multi-hot targets of the other classes (a row of class ``drop`` becomes all-negative)."""
    out = torch.zeros(targets.shape[0], c, dtype=torch.long)
    for r, t in enumerate(targets.tolist()):
        if t == IGNORE:
            out[r] = IGNORE
        else:
            out[r, t] = 1
    keep = [k for k in range(c) if k != drop]
    return out[:, keep]


@ALL
@FORMS
@pytest.mark.parametrize("drop", [0, 2])
def test_zero_weight_class_equals_dropped_column_multiclass(name: str, form: str, drop: int) -> None:
    logits, targets = make_batch(7)
    weights = [1.0, 2.0, 0.5, 1.5]
    weights[drop] = 0.0
    keep = [k for k in range(4) if k != drop]
    got, per_class, valid = run(
        name, form, logits, targets, reduction="none", class_weight=weights, return_per_class=True
    )
    _, fn, options = LOSSES[name]
    ref = fn(logits[:, keep], one_hot_without(targets, 4, drop), reduction="none", **options)
    assert torch.equal(got[keep], ref)
    assert torch.equal(per_class[keep], ref)
    assert torch.isnan(got[drop])
    assert torch.isnan(per_class[drop])
    assert valid.tolist() == [k != drop for k in range(4)]


@ALL
@FORMS
def test_zero_weight_absent_class_equals_remapped_class_ids(name: str, form: str) -> None:
    logits, targets = make_batch(8, absent=(1,))
    got = run(name, form, logits, targets, reduction="none", class_weight=[1.0, 0.0, 1.0, 1.0])
    remapped = torch.where((targets > 1) & (targets != IGNORE), targets - 1, targets)
    _, fn, options = LOSSES[name]
    ref = fn(logits[:, [0, 2, 3]], remapped, reduction="none", **options)
    assert torch.equal(got[[0, 2, 3]], ref)
    assert torch.isnan(got[1])


@ALL
@FORMS
def test_zero_weight_class_equals_dropped_column_multilabel(name: str, form: str) -> None:
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(40, 4, generator=g, dtype=torch.float64)
    targets = (torch.rand(40, 4, generator=g) < 0.35).long()
    targets[torch.rand(40, 4, generator=g) < 0.1] = IGNORE
    targets[:3] = 1
    targets[3:6] = 0
    got = run(name, form, logits, targets, reduction="none", class_weight=[1.0, 1.0, 0.0, 2.0])
    _, fn, options = LOSSES[name]
    ref = fn(logits[:, [0, 1, 3]], targets[:, [0, 1, 3]], reduction="none", **options)
    assert torch.equal(got[[0, 1, 3]], ref)
    assert torch.isnan(got[2])


@ALL
def test_zero_weight_class_with_queue_equals_dropped_column_module(name: str) -> None:
    """In lockstep over several calls, a C-class module with weight 0 on class 1 and a (C-1)-class
    multi-hot module give bitwise equal per-class values; the weighted module still enqueues all C columns."""
    cls, _, options = LOSSES[name]
    weighted = cls(4, queue_size=24, reduction="none", class_weight=[1.0, 0.0, 1.0, 1.0], **options).double()
    dropped = cls(3, queue_size=24, reduction="none", **options).double()
    for step in range(3):
        logits, targets = make_batch(20 + step, n=16, n_ignore=2)
        got = weighted(logits, targets)
        ref = dropped(logits[:, [0, 2, 3]], one_hot_without(targets, 4, 1))
        assert torch.equal(got[[0, 2, 3]], ref)
        assert torch.isnan(got[1])
    assert weighted._queue._q_logits.shape == (24, 4)
    assert torch.equal(weighted._queue._q_logits[:, [0, 2, 3]], dropped._queue._q_logits)


@ALL
@FORMS
def test_zero_weight_column_receives_no_gradient_and_has_no_influence(name: str, form: str) -> None:
    logits, targets = make_batch(10)
    weights = [1.0, 0.0, 1.0, 1.0]
    x = logits.clone().requires_grad_()
    loss = run(name, form, x, targets, class_weight=weights)
    loss.backward()
    assert x.grad is not None
    assert torch.equal(x.grad[:, 1], torch.zeros(logits.shape[0], dtype=logits.dtype))
    assert bool((x.grad[:, [0, 2, 3]] != 0).any())
    moved = logits.clone()
    moved[:, 1] = torch.linspace(-50, 50, logits.shape[0], dtype=logits.dtype)
    assert torch.equal(run(name, form, moved, targets, class_weight=weights), loss.detach())


class Recorder:
    """Wraps a function and records the column count of its first (pool or scores) argument."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.columns: list[int] = []
        self.scores: list[torch.Tensor] = []

    def __call__(self, first: Any, *args: Any, **kwargs: Any) -> Any:
        scores = first if isinstance(first, torch.Tensor) else first.scores
        self.columns.append(scores.shape[1])
        self.scores.append(scores.detach().clone())
        return self.fn(first, *args, **kwargs)


@ALL
@FORMS
def test_zero_weight_class_never_reaches_the_core(name: str, form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    recorders = []
    for site, attr in CORE_SITES[name]:
        rec = Recorder(getattr(site, attr))
        monkeypatch.setattr(site, attr, rec)
        recorders.append(rec)
    logits, targets = make_batch(11, c=5, n_ignore=0)
    run(name, form, logits, targets, class_weight=[1.0, 0.0, 1.0, 0.0, 2.0], return_diagnostics=True)
    calls = [(c, s) for rec in recorders for c, s in zip(rec.columns, rec.scores, strict=True)]
    assert len(calls) == 1
    columns, scores = calls[0]
    assert columns == 3
    assert torch.equal(scores[: logits.shape[0]], logits[:, [0, 2, 4]])
    # Control: without class_weight the core sees every column.
    for rec in recorders:
        rec.columns.clear()
    run(name, form, logits, targets)
    assert [c for rec in recorders for c in rec.columns] == [5]


@pytest.mark.parametrize("name", ["ap", "pauc-pair"])
@FORMS
def test_zero_weight_class_never_reaches_the_pair_kernel(name: str, form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    site = imbalanced_losses.functional.smooth_ap if name == "ap" else imbalanced_losses.functional.pauc_at_budget
    rec = Recorder(site.pair_sums)
    monkeypatch.setattr(site, "pair_sums", rec)
    logits, targets = make_batch(12, c=5, n_ignore=0)
    run(name, form, logits, targets, class_weight=[0.0, 1.0, 1.0, 1.0, 0.0])
    assert rec.columns == [3]
    assert torch.equal(rec.scores[0][: logits.shape[0]], logits[:, 1:4])


# --------------------------------------------------------------------------------------------
# Module buffer: not persistent, moves with .to(), checkpoints interchangeable
# --------------------------------------------------------------------------------------------


@ALL
def test_class_weight_is_a_non_persistent_buffer(name: str) -> None:
    cls, _, options = LOSSES[name]
    weighted = cls(4, queue_size=8, class_weight=[1.0, 0.0, 2.0, 3.0], **options)
    plain = cls(4, queue_size=8, **options)
    assert plain.class_weight is None
    assert isinstance(weighted.class_weight, torch.Tensor)
    assert weighted.class_weight.tolist() == [1.0, 0.0, 2.0, 3.0]
    assert "class_weight" in dict(weighted.named_buffers())
    assert set(weighted.state_dict()) == set(plain.state_dict())
    assert not any("class_weight" in k or "class_keep" in k for k in weighted.state_dict())


@ALL
def test_checkpoints_load_both_ways(name: str) -> None:
    cls, _, options = LOSSES[name]
    weighted = cls(4, queue_size=16, class_weight=[1.0, 0.0, 2.0, 3.0], **options).double()
    plain = cls(4, queue_size=16, **options).double()
    weighted(*make_batch(13, n=12))
    plain(*make_batch(14, n=12))
    w_state = {k: v.clone() for k, v in weighted.state_dict().items()}
    p_state = {k: v.clone() for k, v in plain.state_dict().items()}
    plain.load_state_dict(w_state, strict=True)
    weighted.load_state_dict(p_state, strict=True)
    assert weighted.class_weight is not None
    assert weighted.class_weight.tolist() == [1.0, 0.0, 2.0, 3.0]  # not overwritten by a checkpoint
    for key in w_state:
        assert torch.equal(plain.state_dict()[key], w_state[key])
        assert torch.equal(weighted.state_dict()[key], p_state[key])


@ALL
def test_to_dtype_moves_the_weight(name: str) -> None:
    cls, _, options = LOSSES[name]
    module = cls(4, queue_size=0, class_weight=[1.0, 0.0, 2.0, 3.0], **options)
    assert module.class_weight is not None
    assert module.class_weight.dtype == torch.float32
    module = module.to(torch.float64)
    assert module.class_weight is not None
    assert module.class_weight.dtype == torch.float64
    logits, targets = make_batch(15)
    expected = run(name, "functional", logits, targets, class_weight=[1.0, 0.0, 2.0, 3.0])
    got = module(logits, targets)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@ALL
def test_module_with_queue_weighted_mean_over_calls(name: str) -> None:
    """Lockstep with an unweighted module: same queue state, weighted mean of its per-class values."""
    cls, _, options = LOSSES[name]
    weights = [0.5, 0.0, 2.0, 1.0]
    weighted = cls(4, queue_size=20, class_weight=weights, **options).double()
    plain = cls(4, queue_size=20, reduction="none", **options).double()
    for step in range(3):
        logits, targets = make_batch(30 + step, n=14, n_ignore=2)
        got = weighted(logits, targets)
        _, per_class, valid = plain(logits, targets, return_per_class=True)
        torch.testing.assert_close(got, hand_reduce(per_class, valid, weights, "mean"), rtol=1e-12, atol=1e-12)
        for key, value in plain.state_dict().items():
            assert torch.equal(weighted.state_dict()[key], value), key


def test_class_weight_with_sample_weight_and_binary_mode() -> None:
    """C == 1: any positive weight leaves the value unchanged under 'mean' and scales it under 'sum'."""
    g = torch.Generator().manual_seed(16)
    logits = torch.randn(30, 1, generator=g, dtype=torch.float64)
    targets = (torch.arange(30) % 3 == 0).long()
    sw = 0.5 + torch.rand(30, generator=g, dtype=torch.float64)
    base = smooth_ap_loss(logits, targets, sample_weight=sw)
    assert torch.equal(smooth_ap_loss(logits, targets, sample_weight=sw, class_weight=[2.5]), base)
    torch.testing.assert_close(
        smooth_ap_loss(logits, targets, sample_weight=sw, class_weight=[2.5], reduction="sum"), 2.5 * base
    )
    with pytest.raises(ValueError, match="`class_weight`"):
        smooth_ap_loss(logits, targets, class_weight=[0.0])
