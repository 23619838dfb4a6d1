"""Logit-adjusted loss, Balanced Softmax, post-hoc adjustment and class-balanced weights.

References are independent of our code: ``torch.nn.functional.cross_entropy`` (tau = 0, and
Balanced Softmax on ``logits + log prior``), per-position Python loops of Menon et al.'s formula
in float64 (with sample weights and ``ignore_index``), and hand computations of Cui et al.'s
effective-number weights.
"""

from __future__ import annotations

import copy
import io
import math
import warnings
from typing import Any

import pytest
import torch
from torch.nn.functional import cross_entropy

import imbalanced_losses
from imbalanced_losses import (
    BalancedSoftmaxLoss,
    LogitAdjustedLoss,
    SmoothAPLoss,
    adjust_logits,
    class_balanced_weights,
)
from imbalanced_losses.functional import logit_adjusted_loss

F64 = {"rtol": 1e-10, "atol": 1e-12}
F32 = {"rtol": 1e-5, "atol": 1e-6}
REDUCTIONS = ["none", "mean", "sum"]
COUNTS = [500.0, 120.0, 30.0, 4.0]
SHAPES = [(9,), (3, 2, 3)]  # targets shape: (N,) and (N, d1, d2)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(
    tshape: tuple[int, ...], *, c: int = 4, dtype: torch.dtype = torch.float64, ignore: bool = True, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits ``[N, C, *]``, targets ``[N, *]`` (some ``-100`` when ``ignore``), weights ``[N, *]``."""
    g = _gen(seed)
    n, rest = tshape[0], tshape[1:]
    logits = (3 * torch.randn(n, c, *rest, generator=g, dtype=torch.float64)).to(dtype)
    targets = torch.randint(0, c, tshape, generator=g)
    if ignore:
        targets.view(-1)[::4] = -100
    weight = torch.rand(tshape, generator=g, dtype=torch.float64) + 0.1
    return logits, targets, weight


def _priors(counts: list[float]) -> list[float]:
    total = sum(counts)
    return [n / total for n in counts]


def _loop_reference(
    logits: torch.Tensor,
    targets: torch.Tensor,
    priors: list[float],
    tau: float,
    reduction: str,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Menon et al.'s formula, one position at a time, in float64 Python arithmetic."""
    c = logits.shape[1]
    x = logits.detach().double().movedim(1, -1).reshape(-1, c).tolist()
    t = targets.reshape(-1).tolist()
    w = [1.0] * len(t) if weight is None else weight.double().reshape(-1).tolist()
    losses, num, den = [], 0.0, 0.0
    for row, target, wi in zip(x, t, w, strict=True):
        if target == ignore_index:
            losses.append(0.0)
            continue
        adjusted = [row[k] + tau * math.log(priors[k]) for k in range(c)]
        top = max(adjusted)
        lse = top + math.log(sum(math.exp(a - top) for a in adjusted))
        loss = lse - adjusted[target]
        losses.append(loss * wi)
        num += loss * wi
        den += wi
    if reduction == "none":
        return torch.tensor(losses, dtype=torch.float64).reshape(targets.shape)
    if reduction == "sum":
        return torch.tensor(num, dtype=torch.float64)
    return torch.tensor(num / (den if den != 0 else 1.0), dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# Identities and the loop reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tshape", SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_tau_zero_is_cross_entropy(tshape: tuple[int, ...], reduction: str) -> None:
    logits, targets, _ = _batch(tshape)
    got = logit_adjusted_loss(logits, targets, class_counts=COUNTS, tau=0.0, reduction=reduction)
    want = cross_entropy(logits, targets, reduction=reduction, ignore_index=-100)
    torch.testing.assert_close(got, want, **F64)
    mod = LogitAdjustedLoss(class_counts=COUNTS, tau=0.0, reduction=reduction)(logits, targets)
    torch.testing.assert_close(mod, want, **F64)


@pytest.mark.parametrize("tshape", SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("source", ["priors", "counts"])
def test_balanced_softmax_is_cross_entropy_on_shifted_logits(
    tshape: tuple[int, ...], reduction: str, source: str
) -> None:
    logits, targets, _ = _batch(tshape, seed=1)
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    shape = (1, -1, *([1] * (logits.ndim - 2)))
    # Ren et al. add log n_c; the softmax makes it equal to adding log pi_c.
    want = cross_entropy(logits + counts.log().reshape(shape), targets, reduction=reduction)
    kwargs: dict[str, Any] = {"class_priors": counts / counts.sum()} if source == "priors" else {"class_counts": counts}
    got = logit_adjusted_loss(logits, targets, tau=1.0, reduction=reduction, **kwargs)
    torch.testing.assert_close(got, want, **F64)
    mod = BalancedSoftmaxLoss(reduction=reduction, **kwargs).double()
    torch.testing.assert_close(mod(logits, targets), want, rtol=1e-6, atol=1e-6)  # float32 log prior buffer


@pytest.mark.parametrize("tshape", SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_loop_reference(tshape: tuple[int, ...], reduction: str, tau: float, weighted: bool) -> None:
    logits, targets, weight = _batch(tshape, seed=2)
    w = weight if weighted else None
    want = _loop_reference(logits, targets, _priors(COUNTS), tau, reduction, w)
    got = logit_adjusted_loss(logits, targets, class_counts=COUNTS, tau=tau, reduction=reduction, sample_weight=w)
    torch.testing.assert_close(got, want, **F64)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_balanced_softmax_with_sample_weight_matches_loop(reduction: str) -> None:
    logits, targets, weight = _batch((3, 2, 3), seed=3)
    want = _loop_reference(logits, targets, _priors(COUNTS), 1.0, reduction, weight)
    got = BalancedSoftmaxLoss(class_counts=COUNTS, reduction=reduction)(logits, targets, sample_weight=weight)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_custom_ignore_index_and_all_ignored() -> None:
    logits, targets, _ = _batch((8,), ignore=False, seed=4)
    targets[:3] = 3
    got = logit_adjusted_loss(logits, targets, class_counts=COUNTS, tau=0.0, ignore_index=3)
    torch.testing.assert_close(got, cross_entropy(logits, targets, ignore_index=3), **F64)
    x = logits.clone().requires_grad_()
    loss = logit_adjusted_loss(x, torch.full((8,), -100), class_counts=COUNTS)
    loss.backward()
    assert loss.item() == 0.0
    assert x.grad is not None
    assert bool((x.grad == 0).all())


def test_adjustment_favours_rare_classes() -> None:
    """With equal logits, the loss of a rare-class target is larger than plain CE, a frequent one smaller."""
    logits = torch.zeros(2, 4, dtype=torch.float64)
    targets = torch.tensor([0, 3])  # the most and the least frequent class
    loss = logit_adjusted_loss(logits, targets, class_counts=COUNTS, reduction="none")
    assert loss[0] < math.log(4) < loss[1]


# --------------------------------------------------------------------------------------------
# Gradients, saturation and mixed precision
# --------------------------------------------------------------------------------------------


@pytest.mark.grad
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("tau", [0.0, 1.0, 1.7])
def test_gradcheck_float64(reduction: str, tau: float) -> None:
    logits, targets, weight = _batch((3, 2, 2), seed=5)
    x = logits.clone().requires_grad_()

    def fn(inp: torch.Tensor) -> torch.Tensor:
        return logit_adjusted_loss(
            inp, targets, class_counts=COUNTS, tau=tau, reduction=reduction, sample_weight=weight
        )

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_saturated_logits_are_finite_and_exact(dtype: torch.dtype) -> None:
    logits = torch.tensor(
        [[1e4, -1e4, 0.0, 5.0], [-1e4, 1e4, -1e4, 1e4], [1e4, 1e4, 1e4, 1e4], [-1e4, -1e4, -1e4, 1e4]], dtype=dtype
    )
    targets = torch.tensor([0, 0, 2, 1])
    x = logits.clone().requires_grad_()
    loss = logit_adjusted_loss(x, targets, class_counts=COUNTS, reduction="none")
    loss.sum().backward()
    assert bool(torch.isfinite(loss).all())
    assert x.grad is not None
    assert bool(torch.isfinite(x.grad).all())
    want = _loop_reference(logits, targets, _priors(COUNTS), 1.0, "none")
    torch.testing.assert_close(loss.double(), want, rtol=1e-6, atol=1e-6)
    assert loss[0].item() >= 0.0  # a correct, saturated prediction: loss ~ 0, never negative


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_half_precision_matches_float32(dtype: torch.dtype, reduction: str) -> None:
    logits, targets, weight = _batch((16,), dtype=dtype, seed=6)
    x = logits.clone().requires_grad_()
    loss = logit_adjusted_loss(x, targets, class_counts=COUNTS, reduction=reduction, sample_weight=weight.to(dtype))
    assert loss.dtype == torch.float32
    loss.sum().backward()
    assert x.grad is not None
    assert x.grad.dtype == dtype
    assert bool(torch.isfinite(x.grad).all())
    x32 = logits.float().requires_grad_()  # the same (rounded) values, in float32
    ref = logit_adjusted_loss(
        x32, targets, class_counts=COUNTS, reduction=reduction, sample_weight=weight.to(dtype).float()
    )
    ref.sum().backward()
    torch.testing.assert_close(loss, ref, **F32)
    assert x32.grad is not None
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-3
    torch.testing.assert_close(x.grad.float(), x32.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_large_logits_finite(dtype: torch.dtype) -> None:
    big = 6e4 if dtype == torch.float16 else 1e4
    x = torch.tensor([[big, -big, 0.0, 1.0], [-big, big, 0.0, 0.0]], dtype=dtype, requires_grad=True)
    loss = LogitAdjustedLoss(class_counts=COUNTS)(x, torch.tensor([1, 1]))
    loss.backward()
    assert math.isfinite(loss.item())
    assert x.grad is not None
    assert bool(torch.isfinite(x.grad).all())


# --------------------------------------------------------------------------------------------
# Priors and counts: empty classes, one class, invalid values
# --------------------------------------------------------------------------------------------


def test_empty_class_module_warns_once_and_stays_finite() -> None:
    counts = [10.0, 0.0, 5.0, 0.0]
    with pytest.warns(UserWarning, match=r"`class_counts` has empty classes \[1, 3\]") as rec:
        loss_fn = LogitAdjustedLoss(class_counts=counts)
    assert len([w for w in rec if "empty classes" in str(w.message)]) == 1
    torch.testing.assert_close(loss_fn.log_prior, torch.tensor([10.0, 1.0, 5.0, 1.0]).div(17.0).log())
    logits, targets, _ = _batch((8,), dtype=torch.float32, ignore=False, seed=7)
    targets[0] = 1  # a target in an empty class
    x = logits.requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no further warning on forward
        for _ in range(2):
            loss = loss_fn(x, targets)
    loss.backward()
    assert math.isfinite(loss.item())
    assert x.grad is not None
    assert bool(torch.isfinite(x.grad).all())


def test_empty_class_functional_warns_each_call() -> None:
    logits, targets, _ = _batch((5,), seed=8)
    for _ in range(2):
        with pytest.warns(UserWarning, match="empty classes"):
            loss = logit_adjusted_loss(logits, targets, class_counts=[3, 0, 2, 1])
        assert math.isfinite(loss.item())
    with pytest.warns(UserWarning, match="empty classes"):
        w = class_balanced_weights([3, 0, 2])
    assert bool(torch.isfinite(w).all())


def test_one_class() -> None:
    x = torch.randn(5, 1, dtype=torch.float64, requires_grad=True)
    targets = torch.zeros(5, dtype=torch.long)
    loss = logit_adjusted_loss(x, targets, class_counts=[7])
    loss.backward()
    assert loss.item() == 0.0
    assert x.grad is not None
    assert bool((x.grad == 0).all())
    assert LogitAdjustedLoss(class_priors=[1.0])(x, targets).item() == 0.0
    torch.testing.assert_close(class_balanced_weights([7]), torch.ones(1))


BAD_COUNTS: list[tuple[Any, type[Exception], str]] = [
    ([5.0, -1.0, 2.0, 1.0], ValueError, r"`class_counts` must be non-negative"),
    ([5.0, 1.0, 2.0], ValueError, r"`class_counts` must have one entry per class \(C=4\)"),
    ([0, 0, 0, 0], ValueError, r"`class_counts` must have at least one class with a count > 0"),
    ([5.0, float("nan"), 2.0, 1.0], ValueError, r"`class_counts` must be finite"),
    ([5.0, float("inf"), 2.0, 1.0], ValueError, r"`class_counts` must be finite"),
    (torch.tensor([True, False, True, True]), TypeError, r"`class_counts` must be a real-valued"),
    ([True, False, True, True], TypeError, r"`class_counts` must be a \[C\] tensor or a sequence"),
    (torch.ones(2, 2), ValueError, r"`class_counts` must have shape \[C\]"),
    ("1234", TypeError, r"`class_counts` must be a \[C\] tensor or a sequence"),
]

BAD_PRIORS: list[tuple[Any, type[Exception], str]] = [
    ([0.5, -0.1, 0.3, 0.3], ValueError, r"`class_priors` must be > 0"),
    ([0.5, 0.0, 0.25, 0.25], ValueError, r"`class_priors` must be > 0"),
    ([0.5, 0.5], ValueError, r"`class_priors` must have one entry per class \(C=4\)"),
    ([0.4, 0.3, 0.2, 0.05], ValueError, r"`class_priors` must sum to 1"),
    ([0.5, float("nan"), 0.25, 0.25], ValueError, r"`class_priors` must be finite"),
    (torch.tensor([True, True, False, True]), TypeError, r"`class_priors` must be a real-valued"),
    (torch.zeros(0), ValueError, r"`class_priors` must have shape \[C\]"),
]


@pytest.mark.parametrize(("counts", "exc", "match"), BAD_COUNTS)
def test_bad_counts(counts: Any, exc: type[Exception], match: str) -> None:
    logits, targets, _ = _batch((4,), seed=9)
    with pytest.raises(exc, match=match):
        logit_adjusted_loss(logits, targets, class_counts=counts)
    with pytest.raises(exc, match=match):
        adjust_logits(logits, class_counts=counts)
    if "one entry per class" not in match:  # the module learns C from the counts
        with pytest.raises(exc, match=match):
            LogitAdjustedLoss(class_counts=counts)
        with pytest.raises(exc, match=match):
            class_balanced_weights(counts)


@pytest.mark.parametrize(("priors", "exc", "match"), BAD_PRIORS)
def test_bad_priors(priors: Any, exc: type[Exception], match: str) -> None:
    logits, targets, _ = _batch((4,), seed=10)
    with pytest.raises(exc, match=match):
        logit_adjusted_loss(logits, targets, class_priors=priors)
    with pytest.raises(exc, match=match.replace("`class_priors`", "`priors`")):  # its argument's name
        adjust_logits(logits, priors)
    if "one entry per class" not in match:
        with pytest.raises(exc, match=match):
            BalancedSoftmaxLoss(class_priors=priors)


def test_both_or_neither_source() -> None:
    logits, targets, _ = _batch((4,), seed=11)
    p = _priors(COUNTS)
    for kwargs, word in [({}, "neither"), ({"class_priors": p, "class_counts": COUNTS}, "both")]:
        match = rf"exactly one of `class_priors`.*`class_counts`.*{word}"
        with pytest.raises(ValueError, match=match):
            logit_adjusted_loss(logits, targets, **kwargs)
        with pytest.raises(ValueError, match=match):
            LogitAdjustedLoss(**kwargs)
        with pytest.raises(ValueError, match=match):
            BalancedSoftmaxLoss(**kwargs)
    with pytest.raises(ValueError, match="neither"):
        adjust_logits(logits)
    with pytest.raises(ValueError, match="both"):
        adjust_logits(logits, p, class_counts=COUNTS)


def test_module_rejects_wrong_number_of_classes() -> None:
    loss_fn = LogitAdjustedLoss(class_counts=COUNTS)
    with pytest.raises(ValueError, match=r"`logits` must have C=4 classes"):
        loss_fn(torch.randn(3, 5), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"tau": -0.5}, ValueError, r"`tau` must be a finite number in \[0, inf\)"),
        ({"tau": float("nan")}, ValueError, r"`tau`"),
        ({"tau": "1"}, TypeError, r"`tau` must be a real number"),
        ({"reduction": "batchmean"}, ValueError, r"`reduction` must be one of"),
        ({"ignore_index": 1.5}, TypeError, r"`ignore_index` must be an int"),
        ({"validate_args": 1}, TypeError, r"`validate_args` must be a bool"),
    ],
)
def test_bad_hyperparameters(kwargs: dict[str, Any], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        LogitAdjustedLoss(class_counts=COUNTS, **kwargs)
    if "validate_args" not in kwargs:
        logits, targets, _ = _batch((4,), seed=12)
        with pytest.raises(exc, match=match):
            logit_adjusted_loss(logits, targets, class_counts=COUNTS, **kwargs)


def test_keyword_only_and_balanced_has_no_tau() -> None:
    with pytest.raises(TypeError):
        LogitAdjustedLoss(COUNTS)  # type: ignore[misc]
    with pytest.raises(TypeError):
        BalancedSoftmaxLoss(class_counts=COUNTS, tau=2.0)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        logit_adjusted_loss(torch.randn(2, 4), torch.zeros(2, dtype=torch.long), COUNTS)  # type: ignore[misc]
    assert BalancedSoftmaxLoss(class_counts=COUNTS).tau == 1.0
    assert isinstance(BalancedSoftmaxLoss(class_counts=COUNTS), LogitAdjustedLoss)


def test_batch_validation_is_reused() -> None:
    loss_fn = LogitAdjustedLoss(class_counts=COUNTS)
    logits, targets, weight = _batch((6,), seed=13)
    with pytest.raises(ValueError, match="`sample_weight` must have a shape"):
        loss_fn(logits, targets, sample_weight=weight[:, None].expand(6, 4))
    with pytest.raises(ValueError, match="`targets` must be class ids in"):
        loss_fn(logits, torch.full((6,), 4))
    with pytest.raises(ValueError, match="finite"):
        loss_fn(torch.full((6, 4), float("nan")), targets)
    loss_fn.validate_args = False
    loss_fn(torch.full((6, 4), float("nan")), targets)  # the host-sync checks are skipped


# --------------------------------------------------------------------------------------------
# Module == function, state dict, repr
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("cls", [LogitAdjustedLoss, BalancedSoftmaxLoss])
def test_module_equals_function(reduction: str, cls: type[LogitAdjustedLoss]) -> None:
    logits, targets, weight = _batch((3, 2, 3), dtype=torch.float32, seed=14)
    kwargs: dict[str, Any] = {} if cls is BalancedSoftmaxLoss else {"tau": 0.7}
    tau = kwargs.get("tau", 1.0)
    mod = cls(class_counts=COUNTS, reduction=reduction, **kwargs)(logits, targets, sample_weight=weight.float())
    fun = logit_adjusted_loss(
        logits, targets, class_counts=COUNTS, tau=tau, reduction=reduction, sample_weight=weight.float()
    )
    torch.testing.assert_close(mod, fun, rtol=0, atol=0)


def test_state_dict_round_trip_carries_log_prior() -> None:
    src = LogitAdjustedLoss(class_counts=COUNTS, tau=1.0)
    sd = src.state_dict()
    assert list(sd) == ["log_prior"]
    assert sd["log_prior"].dtype == torch.float32
    torch.testing.assert_close(sd["log_prior"], torch.tensor(_priors(COUNTS)).log())
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    for dst in (LogitAdjustedLoss(class_counts=[1.0, 1.0, 1.0, 1.0]), BalancedSoftmaxLoss(class_priors=[0.25] * 4)):
        dst.load_state_dict(loaded)
        torch.testing.assert_close(dst.log_prior, src.log_prior, rtol=0, atol=0)
        logits, targets, _ = _batch((6,), dtype=torch.float32, seed=15)
        torch.testing.assert_close(dst(logits, targets), src(logits, targets), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="size mismatch"):
        LogitAdjustedLoss(class_counts=[1.0, 2.0]).load_state_dict(loaded)


def test_buffer_follows_to_and_deepcopy() -> None:
    loss_fn = LogitAdjustedLoss(class_counts=COUNTS)
    assert "log_prior" in dict(loss_fn.named_buffers())
    assert loss_fn.double().log_prior.dtype == torch.float64
    clone = copy.deepcopy(loss_fn)
    torch.testing.assert_close(clone.log_prior, loss_fn.log_prior)
    assert clone.log_prior.data_ptr() != loss_fn.log_prior.data_ptr()


def test_repr() -> None:
    assert repr(LogitAdjustedLoss(class_counts=COUNTS, tau=0.5)) == (
        "LogitAdjustedLoss(num_classes=4, tau=0.5, reduction='mean', ignore_index=-100)"
    )
    assert repr(BalancedSoftmaxLoss(class_counts=COUNTS, reduction="sum")) == (
        "BalancedSoftmaxLoss(num_classes=4, reduction='sum', ignore_index=-100)"
    )


def test_exports() -> None:
    for name in ("LogitAdjustedLoss", "BalancedSoftmaxLoss", "adjust_logits", "class_balanced_weights"):
        assert name in imbalanced_losses.__all__
    for name in ("logit_adjusted_loss", "adjust_logits", "class_balanced_weights"):
        assert name in imbalanced_losses.functional.__all__
    assert imbalanced_losses.functional.adjust_logits is adjust_logits


# --------------------------------------------------------------------------------------------
# Post-hoc adjustment
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 2.0])
def test_adjust_logits_identity_and_argmax(tau: float) -> None:
    logits = torch.randn(200, 4, generator=_gen(16), dtype=torch.float64)
    p = torch.tensor(_priors(COUNTS), dtype=torch.float64)
    want = logits - tau * p.log()  # Menon et al. eq. (6): subtract the log prior
    got = adjust_logits(logits, p, tau=tau)
    torch.testing.assert_close(got, want, **F64)
    assert torch.equal(got.argmax(1), want.argmax(1))
    torch.testing.assert_close(adjust_logits(logits, class_counts=COUNTS, tau=tau), want, **F64)
    if tau > 0:  # the adjustment moves predictions towards the rare classes
        assert (got.argmax(1) == 3).sum() > (logits.argmax(1) == 3).sum()


def test_adjust_logits_shapes_dtypes_and_grad() -> None:
    p = torch.tensor(_priors(COUNTS))
    vec = torch.randn(4)
    torch.testing.assert_close(adjust_logits(vec, p), vec - p.log())
    dense = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    out = adjust_logits(dense, class_counts=COUNTS)
    torch.testing.assert_close(out, dense - p.double().log().reshape(1, 4, 1, 1), rtol=1e-6, atol=1e-6)
    out.sum().backward()
    assert dense.grad is not None
    assert bool((dense.grad == 1).all())
    half = torch.randn(3, 4).to(torch.bfloat16)
    out_half = adjust_logits(half, p)
    assert out_half.dtype == torch.bfloat16
    torch.testing.assert_close(out_half, (half.float() - p.log()).to(torch.bfloat16), rtol=0, atol=0)


def test_adjust_logits_errors() -> None:
    p = _priors(COUNTS)
    with pytest.raises(ValueError, match=r"`tau` must be a finite number in \[0, inf\)"):
        adjust_logits(torch.randn(2, 4), p, tau=-1.0)
    with pytest.raises(TypeError, match="`logits` must be a floating-point tensor"):
        adjust_logits(torch.zeros(2, 4, dtype=torch.long), p)
    with pytest.raises(TypeError, match=r"`logits` must be a torch\.Tensor"):
        adjust_logits([[0.0] * 4], p)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`logits` must have a class dim"):
        adjust_logits(torch.tensor(1.0), p)
    with pytest.raises(ValueError, match=r"one entry per class \(C=3\)"):
        adjust_logits(torch.randn(2, 3), p)


# --------------------------------------------------------------------------------------------
# Class-balanced weights
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 0.9, 0.99, 0.999, 0.9999])
def test_class_balanced_weights_by_hand(beta: float) -> None:
    counts = [1000, 100, 10, 1]
    raw = [(1 - beta) / (1 - beta**n) for n in counts]  # Cui et al., eq. (7) with the (1 - beta) factor
    want = torch.tensor([len(counts) * r / sum(raw) for r in raw], dtype=torch.float32)
    got = class_balanced_weights(counts, beta=beta)
    assert got.dtype == torch.float32
    assert got.shape == (4,)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert math.isclose(float(got.double().sum()), 4.0, rel_tol=1e-6)
    assert bool((got[:-1] <= got[1:]).all())  # rarer class, larger weight


def test_class_balanced_weights_limits() -> None:
    counts = torch.tensor([800, 200, 50])
    torch.testing.assert_close(class_balanced_weights(counts, beta=0.0), torch.ones(3))
    inverse = 1.0 / counts.double()
    inverse = 3 * inverse / inverse.sum()
    torch.testing.assert_close(class_balanced_weights(counts, beta=1 - 1e-12), inverse.float(), rtol=1e-5, atol=1e-6)
    big = class_balanced_weights([1e9, 1e9], beta=0.9999)  # 1 - beta^n saturates at 1, no overflow
    torch.testing.assert_close(big, torch.ones(2))


@pytest.mark.parametrize(
    ("beta", "exc"), [(1.0, ValueError), (-0.1, ValueError), (float("nan"), ValueError), ("0.9", TypeError)]
)
def test_class_balanced_weights_bad_beta(beta: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc, match=r"`beta`"):
        class_balanced_weights([10, 5], beta=beta)


def test_class_balanced_weights_as_cross_entropy_weight_and_class_weight() -> None:
    counts = [300, 60, 6]
    w = class_balanced_weights(counts, beta=0.999)
    logits = torch.randn(12, 3, generator=_gen(17))
    targets = torch.randint(0, 3, (12,), generator=_gen(18))
    per = cross_entropy(logits, targets, reduction="none")
    want = (per * w[targets]).sum() / w[targets].sum()
    torch.testing.assert_close(torch.nn.CrossEntropyLoss(weight=w)(logits, targets), want, **F32)
    ranking = SmoothAPLoss(num_classes=3, queue_size=0, class_weight=w)
    assert math.isfinite(ranking(logits, targets).item())
