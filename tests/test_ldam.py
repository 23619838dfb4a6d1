"""LDAM loss (Cao et al. 2019) and the deferred re-weighting (DRW) schedule.

References (none derived from the code under test):

* :func:`torch.nn.functional.cross_entropy` for ``max_margin=0, scale=1`` (every reduction,
  ``ignore_index``, ``weight=`` as ``class_weight``), and a hand reduction of its ``'none'``
  output for ``sample_weight``;
* a per-position Python loop of the paper's formula, margins from the counts by hand:
  :math:`m_c = m_{max} n_c^{-1/4} / \\max_j n_j^{-1/4}` and
  :math:`\\ell = -\\log \\mathrm{softmax}(s (x - m_y e_y))_y`;
* class-balanced ("effective number") weights computed here by hand for the DRW schedule.
"""

from __future__ import annotations

import io
import math
import warnings
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.functional import cross_entropy

from imbalanced_losses import DeferredReweighting, LDAMLoss
from imbalanced_losses.functional import ldam_loss
from imbalanced_losses.functional.ldam import ldam_margins

COUNTS = [400, 120, 30, 5]
C = len(COUNTS)
IGNORE = -100
REDUCTIONS = ["none", "mean", "sum"]


def _batch(
    n: int = 12, dtype: torch.dtype = torch.float64, *, ignore: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(n, C, dtype=dtype)
    targets = torch.randint(0, C, (n,))
    if ignore:
        targets[1] = IGNORE
        targets[5] = IGNORE
    return logits, targets


def _cb_weights(counts: list[int], beta: float = 0.9999) -> torch.Tensor:
    """Effective-number weights (Cui et al. 2019), normalised to sum to C."""
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    return torch.tensor([w * len(counts) / sum(raw) for w in raw])


def _hand_margins(counts: list[int], max_margin: float) -> list[float]:
    quarter = [n**-0.25 for n in counts]
    return [max_margin * q / max(quarter) for q in quarter]


def _loop_reference(
    logits: torch.Tensor,
    targets: torch.Tensor,
    counts: list[int],
    *,
    max_margin: float,
    scale: float,
    reduction: str,
    class_weight: list[float] | None = None,
    sample_weight: list[float] | None = None,
) -> torch.Tensor:
    margins = _hand_margins([max(n, 1) for n in counts], max_margin)
    per, den = [], 0.0
    for i in range(logits.shape[0]):
        y = int(targets[i])
        if y == IGNORE:
            per.append(0.0)
            continue
        z = [scale * (float(logits[i, c]) - (margins[y] if c == y else 0.0)) for c in range(logits.shape[1])]
        top = max(z)
        nll = top + math.log(sum(math.exp(v - top) for v in z)) - z[y]
        w = (1.0 if class_weight is None else class_weight[y]) * (1.0 if sample_weight is None else sample_weight[i])
        per.append(w * nll)
        den += w
    out = torch.tensor(per, dtype=torch.float64)
    if reduction == "none":
        return out
    return out.sum() if reduction == "sum" else out.sum() / den


# --------------------------------------------------------------------------------------------
# Identity with cross-entropy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("form", ["functional", "module"])
def test_zero_margin_unit_scale_is_cross_entropy(reduction: str, weighted: bool, form: str) -> None:
    logits, targets = _batch()
    cw = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64) if weighted else None
    if form == "functional":
        got = ldam_loss(
            logits, targets, class_counts=COUNTS, max_margin=0.0, scale=1.0, class_weight=cw, reduction=reduction
        )
    else:
        got = LDAMLoss(COUNTS, max_margin=0.0, scale=1.0, class_weight=cw, reduction=reduction).double()(
            logits, targets
        )
    want = cross_entropy(logits, targets, weight=cw, reduction=reduction, ignore_index=IGNORE)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_zero_margin_unit_scale_is_cross_entropy_spatial(reduction: str) -> None:
    logits = torch.randn(3, C, 4, 5, dtype=torch.float64)
    targets = torch.randint(0, C, (3, 4, 5))
    targets[0, 0, :2] = IGNORE
    cw = torch.tensor([2.0, 1.0, 0.5, 4.0], dtype=torch.float64)
    got = ldam_loss(
        logits, targets, class_counts=COUNTS, max_margin=0.0, scale=1.0, class_weight=cw, reduction=reduction
    )
    want = cross_entropy(logits, targets, weight=cw, reduction=reduction, ignore_index=IGNORE)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_zero_margin_unit_scale_with_sample_weight(reduction: str, weighted: bool) -> None:
    logits, targets = _batch()
    sw = torch.rand(targets.shape[0], dtype=torch.float64) + 0.1
    cw = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64) if weighted else None
    got = ldam_loss(
        logits,
        targets,
        class_counts=COUNTS,
        max_margin=0.0,
        scale=1.0,
        class_weight=cw,
        reduction=reduction,
        sample_weight=sw,
    )
    ce = cross_entropy(logits, targets, weight=cw, reduction="none", ignore_index=IGNORE)  # w_y * nll, 0 ignored
    valid = targets != IGNORE
    wy = torch.ones_like(sw) if cw is None else cw[targets.clamp_min(0)]
    want = {"none": ce * sw, "sum": (ce * sw).sum(), "mean": (ce * sw).sum() / (wy * sw)[valid].sum()}[reduction]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# The paper's formula
# --------------------------------------------------------------------------------------------


def test_margins_from_counts_by_hand() -> None:
    want = _hand_margins(COUNTS, 0.5)
    torch.testing.assert_close(ldam_margins(COUNTS, max_margin=0.5), torch.tensor(want, dtype=torch.float64))
    assert max(want) == 0.5
    loss = LDAMLoss(COUNTS, max_margin=0.3)
    torch.testing.assert_close(loss.margins, torch.tensor(_hand_margins(COUNTS, 0.3), dtype=torch.float32))
    assert loss.margins.dtype == torch.float32


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("max_margin", "scale"), [(0.5, 30.0), (0.3, 7.5), (1.2, 1.0)])
def test_loop_reference(reduction: str, max_margin: float, scale: float) -> None:
    logits = torch.empty(10, C, dtype=torch.float64).uniform_(-1, 1)  # cosine logits
    targets = torch.randint(0, C, (10,))
    targets[3] = IGNORE
    cw = [0.3, 1.0, 1.5, 2.5]
    sw = [0.5 + 0.1 * i for i in range(10)]
    got = ldam_loss(
        logits,
        targets,
        class_counts=COUNTS,
        max_margin=max_margin,
        scale=scale,
        class_weight=cw,
        sample_weight=torch.tensor(sw, dtype=torch.float64),
        reduction=reduction,
    )
    want = _loop_reference(
        logits,
        targets,
        COUNTS,
        max_margin=max_margin,
        scale=scale,
        reduction=reduction,
        class_weight=cw,
        sample_weight=sw,
    )
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    plain = ldam_loss(logits, targets, class_counts=COUNTS, max_margin=max_margin, scale=scale, reduction=reduction)
    want_plain = _loop_reference(logits, targets, COUNTS, max_margin=max_margin, scale=scale, reduction=reduction)
    torch.testing.assert_close(plain, want_plain, rtol=1e-10, atol=1e-10)


def test_margin_raises_loss_of_rare_classes_most() -> None:
    # Same logits for every class: the margin is the only difference, so the rarest class loses most.
    logits = torch.zeros(C, C, dtype=torch.float64)
    targets = torch.arange(C)
    per = ldam_loss(logits, targets, class_counts=COUNTS, scale=30.0, reduction="none")
    assert bool((per[1:] > per[:-1]).all())


@pytest.mark.grad
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_float64(reduction: str) -> None:
    logits = torch.empty(6, C, dtype=torch.float64).uniform_(-1, 1).requires_grad_()
    targets = torch.tensor([0, 1, 2, 3, IGNORE, 3])
    sw = torch.rand(6, dtype=torch.float64) + 0.1
    cw = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return ldam_loss(
            x, targets, class_counts=COUNTS, scale=5.0, class_weight=cw, sample_weight=sw, reduction=reduction
        )

    assert torch.autograd.gradcheck(fn, (logits,))
    assert torch.autograd.gradgradcheck(fn, (logits,))


# --------------------------------------------------------------------------------------------
# Numerics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("magnitude", [1e4, -1e4])
def test_finite_at_huge_logits(magnitude: float) -> None:
    logits = torch.randn(8, C) * magnitude
    logits[:, 0] = magnitude
    logits = logits.requires_grad_()
    targets = torch.randint(0, C, (8,))
    loss = ldam_loss(logits, targets, class_counts=COUNTS)
    loss.backward()
    assert logits.grad is not None
    assert bool(torch.isfinite(loss))
    assert bool(torch.isfinite(logits.grad).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computed_in_float32(dtype: torch.dtype) -> None:
    logits = (torch.randn(16, C) * 3).to(dtype).requires_grad_()
    targets = torch.randint(0, C, (16,))
    loss = ldam_loss(logits, targets, class_counts=COUNTS)
    assert loss.dtype == torch.float32
    want = ldam_loss(logits.detach().float(), targets, class_counts=COUNTS)
    torch.testing.assert_close(loss, want, rtol=0, atol=0)
    loss.backward()
    assert logits.grad is not None
    assert logits.grad.dtype == dtype
    assert bool(torch.isfinite(logits.grad).all())
    big = torch.full((4, C), 6e4 if dtype == torch.float16 else 1e30, dtype=dtype)  # scale*x overflows in fp16
    assert bool(torch.isfinite(LDAMLoss(COUNTS)(big, torch.arange(C))))


def test_empty_class_warns_and_stays_finite() -> None:
    counts = [100, 0, 10, 3]
    with pytest.warns(UserWarning, match=r"`class_counts` has empty classes \[1\]"):
        loss_fn = LDAMLoss(counts)
    # The empty class is counted as 1: the rarest, with the largest margin.
    torch.testing.assert_close(loss_fn.margins, torch.tensor(_hand_margins([100, 1, 10, 3], 0.5), dtype=torch.float32))
    logits, targets = _batch(dtype=torch.float32)
    targets[0] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no further warning from the module
        loss = loss_fn(logits.requires_grad_(), targets)
    loss.backward()
    assert logits.grad is not None
    assert bool(torch.isfinite(loss))
    assert bool(torch.isfinite(logits.grad).all())
    with pytest.warns(UserWarning, match="empty classes"):
        value = ldam_loss(logits, targets, class_counts=counts)
    torch.testing.assert_close(value, loss)


def test_one_class() -> None:
    logits = torch.randn(5, 1, requires_grad=True)
    targets = torch.zeros(5, dtype=torch.long)
    loss_fn = LDAMLoss([7])
    assert loss_fn.margins.tolist() == [0.5]
    loss = loss_fn(logits, targets)
    loss.backward()
    assert logits.grad is not None
    assert loss.item() == 0.0
    assert bool((logits.grad == 0).all())


def test_empty_and_all_ignored_batch_give_zero() -> None:
    for logits, targets in [
        (torch.randn(0, C, requires_grad=True), torch.zeros(0, dtype=torch.long)),
        (torch.randn(3, C, requires_grad=True), torch.full((3,), IGNORE)),
    ]:
        loss = ldam_loss(logits, targets, class_counts=COUNTS)
        loss.backward()
        assert loss.item() == 0.0


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"class_counts": [1, -2, 3, 4]}, ValueError, "`class_counts` must be non-negative"),
        ({"class_counts": [0, 0, 0, 0]}, ValueError, "`class_counts` must have at least one class"),
        ({"class_counts": [1, float("nan"), 3, 4]}, ValueError, "`class_counts` must be finite"),
        ({"class_counts": [1, 2, 3]}, ValueError, r"`class_counts` must have one entry per class \(C=4\)"),
        ({"class_counts": "abcd"}, TypeError, "`class_counts` must be a"),
        ({"max_margin": -0.1}, ValueError, "`max_margin` must be a finite number"),
        ({"max_margin": float("inf")}, ValueError, "`max_margin` must be a finite number"),
        ({"scale": 0.0}, ValueError, "`scale` must be a finite number"),
        ({"scale": -30.0}, ValueError, "`scale` must be a finite number"),
        ({"scale": float("nan")}, ValueError, "`scale` must be a finite number"),
        ({"scale": "30"}, TypeError, "`scale` must be a real number"),
        ({"reduction": "batchmean"}, ValueError, "`reduction` must be one of"),
        ({"class_weight": [1.0, -1.0, 1.0, 1.0]}, ValueError, "`class_weight` must hold finite, non-negative"),
        ({"class_weight": [1.0, 1.0]}, ValueError, r"`class_weight` must have shape \[C\]"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    logits, targets = _batch(dtype=torch.float32)
    args: dict[str, Any] = {"class_counts": COUNTS, **kwargs}
    with pytest.raises(error, match=match):
        ldam_loss(logits, targets, **args)
    counts = args.pop("class_counts")
    if "must have one entry per class" in match:  # the module learns C from the counts: checked at the call
        loss_fn = LDAMLoss(counts, **args)
        with pytest.raises(ValueError, match=r"`logits` must have C=3 classes"):
            loss_fn(logits, targets)
        return
    if "class_weight` must have shape" in match:
        match = r"`class_weight` must have shape \[C\]"
    with pytest.raises(error, match=match):
        LDAMLoss(counts, **args)


def test_bad_batch() -> None:
    loss_fn = LDAMLoss(COUNTS)
    with pytest.raises(ValueError, match="`targets` must be class ids"):
        loss_fn(torch.randn(3, C), torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match="`logits` must be finite"):
        loss_fn(torch.tensor([[0.0, float("nan"), 0.0, 0.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="`sample_weight` must have a shape"):
        loss_fn(torch.randn(3, C), torch.tensor([0, 1, 2]), sample_weight=torch.ones(3, 1))
    loss_fn.class_weight = torch.ones(C + 1)
    with pytest.raises(ValueError, match=r"`class_weight` must have shape \[C\] with C=4"):
        loss_fn(torch.randn(3, C), torch.tensor([0, 1, 2]))


# --------------------------------------------------------------------------------------------
# Module
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_module_equals_function(reduction: str) -> None:
    logits, targets = _batch(dtype=torch.float32)
    sw = torch.rand(targets.shape[0])
    cw = [0.5, 1.0, 2.0, 3.0]
    kwargs: dict[str, Any] = {"max_margin": 0.4, "scale": 16.0, "class_weight": cw, "reduction": reduction}
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    got = LDAMLoss(COUNTS, **kwargs)(x1, targets, sample_weight=sw)
    want = ldam_loss(x2, targets, class_counts=COUNTS, sample_weight=sw, **kwargs)
    assert torch.equal(got, want)
    got.sum().backward()
    want.sum().backward()
    assert x1.grad is not None
    assert x2.grad is not None
    assert torch.equal(x1.grad, x2.grad)
    # float64: the module's margins are a float32 buffer, the function's float64
    logits64 = logits.double()
    torch.testing.assert_close(
        LDAMLoss(COUNTS, **kwargs).double()(logits64, targets, sample_weight=sw.double()),
        ldam_loss(logits64, targets, class_counts=COUNTS, sample_weight=sw.double(), **kwargs),
        rtol=1e-6,
        atol=1e-6,
    )


def test_state_dict_round_trip() -> None:
    src = LDAMLoss(COUNTS, max_margin=0.3, class_weight=[1.0, 2.0, 3.0, 4.0])
    state = src.state_dict()
    assert sorted(state) == ["class_weight", "margins"]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    dst = LDAMLoss([1, 1, 1, 1])  # equal margins, no class weights
    dst.load_state_dict(torch.load(buffer))
    assert torch.equal(dst.margins, src.margins)
    assert dst.class_weight is not None
    assert torch.equal(dst.class_weight, src.class_weight)
    logits, targets = _batch(dtype=torch.float32)
    assert torch.equal(dst(logits, targets), src(logits, targets))
    plain = LDAMLoss(COUNTS)
    assert sorted(plain.state_dict()) == ["margins"]
    moved = plain.to(torch.float64)
    assert moved.margins.dtype == torch.float64


# --------------------------------------------------------------------------------------------
# Deferred re-weighting
# --------------------------------------------------------------------------------------------


def _drw(start_epoch: int = 3) -> DeferredReweighting:
    return DeferredReweighting(LDAMLoss(COUNTS), _cb_weights(COUNTS), start_epoch=start_epoch)


def test_drw_switches_at_start_epoch() -> None:
    drw = _drw(start_epoch=3)
    logits, targets = _batch(dtype=torch.float32)
    sw = torch.rand(targets.shape[0])
    unweighted = LDAMLoss(COUNTS)
    weighted = LDAMLoss(COUNTS, class_weight=_cb_weights(COUNTS))
    seen = []
    for epoch in range(6):
        drw.on_train_epoch_start(epoch)
        got = drw(logits, targets, sample_weight=sw)
        ref = weighted if epoch >= 3 else unweighted
        assert torch.equal(got, ref(logits, targets, sample_weight=sw)), epoch
        seen.append(drw.reweighting)
    assert seen == [False, False, False, True, True, True]
    assert not torch.equal(unweighted(logits, targets), weighted(logits, targets))
    drw.on_train_epoch_start(1)  # going back (e.g. a restarted loop) clears the weights again
    assert drw.loss.class_weight is None


def test_drw_effective_number_weights_match_paper_constant() -> None:
    w = _cb_weights(COUNTS)
    assert math.isclose(float(w.sum()), C)
    assert bool((w[1:] > w[:-1]).all())  # rarer classes weigh more
    drw = _drw(start_epoch=0)  # re-weights from the start
    assert drw.reweighting
    assert drw.loss.class_weight is not None
    torch.testing.assert_close(drw.loss.class_weight, w.float())


@pytest.mark.parametrize(("saved_at", "resumed_from"), [(4, 0), (1, 5), (2, 0)])
def test_drw_checkpoint_round_trip(saved_at: int, resumed_from: int) -> None:
    model = nn.ModuleDict({"head": nn.Linear(4, C), "loss": _drw(start_epoch=3)})
    model["loss"].on_train_epoch_start(saved_at)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = nn.ModuleDict({"head": nn.Linear(4, C), "loss": _drw(start_epoch=3)})
    fresh["loss"].on_train_epoch_start(resumed_from)
    fresh.load_state_dict(torch.load(buffer, weights_only=False))  # strict: no missing or unexpected key
    drw = fresh["loss"]
    assert drw.epoch == saved_at
    assert drw.reweighting == (saved_at >= 3)
    logits, targets = _batch(dtype=torch.float32)
    assert torch.equal(drw(logits, targets), model["loss"](logits, targets))
    for epoch in range(saved_at + 1, 6):  # the schedule continues where it stopped
        drw.on_train_epoch_start(epoch)
        assert drw.reweighting == (epoch >= 3)
    assert drw.loss.class_weight is not None


def test_drw_old_checkpoint_without_extra_state() -> None:
    drw = _drw(start_epoch=3)
    drw.on_train_epoch_start(4)
    state = {k: v for k, v in drw.state_dict().items() if k != "_extra_state"}
    drw.load_state_dict(state)  # no missing `_extra_state` key: the current schedule is kept
    assert drw.reweighting
    assert drw.loss.class_weight is not None


def test_drw_with_torch_cross_entropy() -> None:
    w = _cb_weights(COUNTS)
    drw = DeferredReweighting(nn.CrossEntropyLoss(ignore_index=IGNORE), w, start_epoch=1, attribute="weight")
    logits, targets = _batch(dtype=torch.float32)
    torch.testing.assert_close(drw(logits, targets), cross_entropy(logits, targets, ignore_index=IGNORE))
    drw.on_train_epoch_start(1)
    torch.testing.assert_close(
        drw(logits, targets), cross_entropy(logits, targets, weight=w.float(), ignore_index=IGNORE)
    )


def test_drw_warns_without_epoch_hook() -> None:
    drw = _drw(start_epoch=2)
    logits, targets = _batch(dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(99):
            drw(logits, targets)
    with pytest.warns(UserWarning, match=r"on_train_epoch_start\(epoch\)"):
        drw(logits, targets)


def test_drw_bad_arguments() -> None:
    w = _cb_weights(COUNTS)
    with pytest.raises(TypeError, match=r"`loss` must be a torch\.nn\.Module"):
        DeferredReweighting(ldam_loss, w, start_epoch=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="has no attribute 'class_weight'"):
        DeferredReweighting(nn.MSELoss(), w, start_epoch=1)
    with pytest.raises(ValueError, match="`start_epoch` must be an int >= 0"):
        DeferredReweighting(LDAMLoss(COUNTS), w, start_epoch=-1)
    with pytest.raises(TypeError, match="`start_epoch` must be an int"):
        DeferredReweighting(LDAMLoss(COUNTS), w, start_epoch=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"one weight per class of the loss \(C=4\)"):
        DeferredReweighting(LDAMLoss(COUNTS), w[:3], start_epoch=1)
    for bad in ([1.0, -1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, float("inf"), 1.0, 1.0]):
        with pytest.raises(ValueError, match="`class_weight` must be finite and non-negative"):
            DeferredReweighting(LDAMLoss(COUNTS), bad, start_epoch=1)
    with pytest.warns(UserWarning, match="already set"):
        DeferredReweighting(LDAMLoss(COUNTS, class_weight=w), w, start_epoch=1)
    drw = _drw()
    with pytest.raises(ValueError, match="`epoch` must be an int >= 0"):
        drw.on_train_epoch_start(-1)
    with pytest.raises(TypeError, match="`epoch` must be an int"):
        drw.on_train_epoch_start(1.0)  # type: ignore[arg-type]
    drw.on_train_epoch_start(torch.tensor(4))  # integer-like accepted
    assert drw.reweighting
