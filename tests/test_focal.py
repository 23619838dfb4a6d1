"""Focal losses: references, numerics, mixed precision, validation, state and DDP.

Spec: incumbent-behaviour.md §1.2/§1.3 (signatures, attributes, the ``alpha`` buffer), §2.6
(sample weights), §8 (gather), §10 (formulas and reductions), §11 (errors and warnings);
SPEC.md D1 (``gather_distributed``), D2 (DDP gradient scale), D4 (warn once, at the user's line),
D7 (finite gradients for 0 < gamma < 1, constructor validation, short ``alpha``), D9 (mixed
precision), D10 (finite inputs, ``validate_args``), A1 (module == function), §14.6 (sigmoid
``ignore_index``).

References are independent of our code: ``torch.nn.BCEWithLogitsLoss`` /
``torch.nn.CrossEntropyLoss`` for gamma = 0, per-element Python loops of the §10 formulas in
float64, and the closed-form loss and derivative of the margin for saturated logits.
"""

from __future__ import annotations

import copy
import inspect
import io
import math
import pickle
import warnings
from typing import Any

import pytest
import torch

from imbalanced_losses import SigmoidFocalLoss, SoftmaxFocalLoss
from imbalanced_losses.functional import sigmoid_focal_loss, softmax_focal_loss

pytestmark = pytest.mark.usefixtures("on_device")  # also on CUDA when available (tests/conftest.py)

F64 = {"rtol": 1e-10, "atol": 1e-12}
F32 = {"rtol": 1e-5, "atol": 1e-6}
GAMMAS = [0.5, 1.0, 2.0, 3.0]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Independent references (Python floats, textbook formulas of §10)
# --------------------------------------------------------------------------------------------


def _reduce_ref(values: list[float], den: float, reduction: str, shape: torch.Size) -> torch.Tensor:
    if reduction == "none":
        return torch.tensor(values, dtype=torch.float64).reshape(shape)
    total = math.fsum(values)
    return torch.tensor(total if reduction == "sum" else total / (den if den > 0 else 1.0), dtype=torch.float64)


def ref_sigmoid(x, y, *, alpha, gamma, reduction, w=None, ignore=None) -> torch.Tensor:
    ws = (torch.ones_like(x) if w is None else w.expand_as(x)).double().flatten().tolist()
    values, den = [], 0.0
    for xi, yi, wi in zip(x.double().flatten().tolist(), y.double().flatten().tolist(), ws, strict=True):
        if ignore is not None and yi == ignore:
            values.append(0.0)
            continue
        p = 1.0 / (1.0 + math.exp(-xi))
        ce = -(yi * math.log(p) + (1.0 - yi) * math.log(1.0 - p))
        p_t = p * yi + (1.0 - p) * (1.0 - yi)
        loss = ce * (1.0 - p_t) ** gamma
        if alpha >= 0:
            loss *= alpha * yi + (1.0 - alpha) * (1.0 - yi)
        values.append(loss * wi)
        den += wi
    return _reduce_ref(values, den, reduction, x.shape)


def ref_softmax(
    x, t, *, alpha=None, gamma, reduction, label_smoothing=0.0, ignore_index=-100, background_class=0, w=None
) -> torch.Tensor:
    c = x.shape[1]
    rows = x.double().movedim(1, -1).reshape(-1, c).tolist()
    ws = (torch.ones(t.shape) if w is None else w).double().flatten().tolist()
    values, den_valid, den_pos = [], 0.0, 0.0
    for row, ti, wi in zip(rows, t.flatten().tolist(), ws, strict=True):
        if ti == ignore_index:
            values.append(0.0)
            continue
        m = max(row)
        e = [math.exp(v - m) for v in row]
        logp = [math.log(v / math.fsum(e)) for v in e]
        ce = -(1.0 - label_smoothing) * logp[ti] - label_smoothing * math.fsum(logp) / c
        loss = (1.0 - math.exp(logp[ti])) ** gamma * ce
        if alpha is not None:
            loss *= float(alpha[ti])
        values.append(loss * wi)
        den_valid += wi
        den_pos += wi if ti != background_class else 0.0
    return _reduce_ref(values, den_pos if reduction == "mean_positive" else den_valid, reduction, t.shape)


def _softplus(u: float) -> float:
    return max(u, 0.0) + math.log1p(math.exp(-abs(u)))


def margin_limit(d: float, gamma: float) -> tuple[float, float]:
    """Loss and derivative of ``softplus(-d) * sigmoid(-d)**gamma`` (true class with margin ``d``), float64."""
    s_neg, s_pos = math.exp(-_softplus(d)), math.exp(-_softplus(-d))
    loss = _softplus(-d) * s_neg**gamma
    return loss, -(s_neg ** (1.0 + gamma)) - _softplus(-d) * gamma * s_neg**gamma * s_pos


# --------------------------------------------------------------------------------------------
# gamma = 0, no alpha: torch's cross-entropy losses
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("shape", [(7,), (6, 3), (2, 3, 4, 5)], ids=str)
def test_sigmoid_gamma0_equals_bce(reduction: str, shape: tuple[int, ...]) -> None:
    g = _gen(1)
    x = torch.randn(shape, generator=g) * 4
    y = torch.rand(shape, generator=g)  # soft labels
    y[..., ::2] = (y[..., ::2] > 0.5).float()
    ours = sigmoid_focal_loss(x, y, alpha=-1, gamma=0.0, reduction=reduction)
    torch.testing.assert_close(ours, torch.nn.BCEWithLogitsLoss(reduction=reduction)(x, y), **F32)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_sigmoid_gamma0_weighted_and_ignored_equal_bce_hand_loop(reduction: str) -> None:
    g = _gen(2)
    x, y = torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (8, 3), generator=g).double()
    y[1, 2] = y[5, 0] = -1.0
    w = torch.rand(8, 1, generator=g, dtype=torch.float64)
    bce = torch.nn.BCEWithLogitsLoss(reduction="none")
    terms, den = torch.zeros_like(x), 0.0
    for i in range(8):
        for j in range(3):
            if y[i, j] != -1:
                terms[i, j] = bce(x[i, j], y[i, j]) * w[i, 0]
                den += float(w[i, 0])
    expected = {"none": terms, "sum": terms.sum(), "mean": terms.sum() / den}[reduction]
    ours = sigmoid_focal_loss(x, y, alpha=-1, gamma=0.0, reduction=reduction, sample_weight=w, ignore_index=-1)
    torch.testing.assert_close(ours, expected, **F64)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("shape", [(9, 4), (2, 4, 3, 5)], ids=str)
def test_softmax_gamma0_equals_cross_entropy(reduction: str, label_smoothing: float, shape: tuple[int, ...]) -> None:
    g = _gen(3)
    x = torch.randn(shape, generator=g) * 3
    t = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    t.view(-1)[::4] = 7  # ignore_index
    kwargs = {"reduction": reduction, "label_smoothing": label_smoothing, "ignore_index": 7}
    ours = softmax_focal_loss(x, t, gamma=0.0, **kwargs)
    torch.testing.assert_close(ours, torch.nn.CrossEntropyLoss(**kwargs)(x, t), **F32)
    assert torch.equal(softmax_focal_loss(x, t, gamma=0.0, **kwargs), SoftmaxFocalLoss(gamma=0.0, **kwargs)(x, t))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum", "mean_positive"])
def test_softmax_gamma0_weighted_equals_cross_entropy_hand_loop(reduction: str) -> None:
    g = _gen(4)
    x, t = torch.randn(6, 3, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (6, 4), generator=g)
    t[0, 0] = t[3, 2] = -100
    w = torch.rand(6, 4, generator=g, dtype=torch.float64)
    ce = torch.nn.CrossEntropyLoss(reduction="none", label_smoothing=0.2)
    terms, den = torch.zeros(6, 4, dtype=torch.float64), 0.0
    for i in range(6):
        for k in range(4):
            if t[i, k] != -100:
                terms[i, k] = ce(x[i, :, k], t[i, k]) * w[i, k]
                den += float(w[i, k]) if (reduction != "mean_positive" or t[i, k] != 0) else 0.0
    expected = {"none": terms, "sum": terms.sum()}.get(reduction, terms.sum() / den)
    ours = softmax_focal_loss(x, t, gamma=0.0, reduction=reduction, label_smoothing=0.2, sample_weight=w)
    torch.testing.assert_close(ours, expected, **F64)


# --------------------------------------------------------------------------------------------
# Brute-force §10 formulas, float64
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("alpha", [-1.0, 0.0, 0.25, 0.75, 1.0])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
def test_sigmoid_brute_force(gamma: float, alpha: float, reduction: str, weighted: bool) -> None:
    g = _gen(5)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64) * 3
    y = torch.rand(5, 4, generator=g, dtype=torch.float64)
    y[:, :2] = (y[:, :2] > 0.5).double()
    w = torch.rand(5, 4, generator=g, dtype=torch.float64) if weighted else None
    expected = ref_sigmoid(x, y, alpha=alpha, gamma=gamma, reduction=reduction, w=w)
    ours = sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma, reduction=reduction, sample_weight=w)
    torch.testing.assert_close(ours, expected, **F64)


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("w_shape", [None, (6, 1, 1), (6, 3, 1), (6, 3, 2)], ids=str)
def test_sigmoid_brute_force_ignore_and_broadcast_weight(gamma: float, reduction: str, w_shape: Any) -> None:
    g = _gen(6)
    x = torch.randn(6, 3, 2, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 2, (6, 3, 2), generator=g).double()
    y.view(-1)[::3] = -100.0
    w = None if w_shape is None else torch.rand(w_shape, generator=g, dtype=torch.float64)
    expected = ref_sigmoid(x, y, alpha=0.25, gamma=gamma, reduction=reduction, w=w, ignore=-100.0)
    ours = sigmoid_focal_loss(x, y, gamma=gamma, reduction=reduction, sample_weight=w, ignore_index=-100)
    torch.testing.assert_close(ours, expected, **F64)


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("alpha", [None, [0.25, 0.5, 0.75, 2.0], "tensor-long"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum", "mean_positive"])
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_brute_force(gamma: float, alpha: Any, reduction: str, weighted: bool) -> None:
    g = _gen(7)
    if alpha == "tensor-long":  # longer than C: the extra entries are unused
        alpha = torch.tensor([0.5, 1.5, 0.125, 1.0, 9.0], dtype=torch.float64)
    x = torch.randn(5, 4, 3, generator=g, dtype=torch.float64) * 2
    t = torch.randint(0, 4, (5, 3), generator=g)
    t[0, 1] = t[4, 0] = 11
    t[1] = 2  # background class, so 'mean_positive' differs from 'mean'
    w = torch.rand(5, 3, generator=g, dtype=torch.float64) if weighted else None
    kwargs = {"alpha": alpha, "gamma": gamma, "reduction": reduction, "label_smoothing": 0.15}
    kwargs |= {"ignore_index": 11, "background_class": 2}
    expected = ref_softmax(x, t, w=w, **kwargs)
    torch.testing.assert_close(softmax_focal_loss(x, t, sample_weight=w, **kwargs), expected, **F64)


def test_all_positive_alpha_scales_by_alpha() -> None:
    x = torch.randn(10, 3, generator=_gen(8)) * 3
    y = torch.ones(10, 3)
    plain = sigmoid_focal_loss(x, y, alpha=-1, reduction="none")
    assert torch.equal(sigmoid_focal_loss(x, y, alpha=0.75, reduction="none"), 0.75 * plain)
    torch.testing.assert_close(sigmoid_focal_loss(x, y, alpha=0.75), 0.75 * plain.mean(), rtol=1e-6, atol=0)


def test_gamma_monotone_on_hard_labels() -> None:
    x, y = torch.randn(50, generator=_gen(9)) * 3, torch.randint(0, 2, (50,), generator=_gen(9)).float()
    values = [sigmoid_focal_loss(x, y, gamma=gm, reduction="none") for gm in (0.0, 0.5, 1.0, 2.0, 3.0)]
    for lo, hi in zip(values[1:], values[:-1], strict=True):
        assert bool((lo <= hi).all())


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.grad
@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_gradcheck_sigmoid(gamma: float) -> None:
    g = _gen(10)
    x = (torch.randn(4, 3, generator=g, dtype=torch.float64) * 2).requires_grad_()
    y = (0.1 + 0.8 * torch.rand(4, 3, generator=g, dtype=torch.float64)).requires_grad_()
    w = torch.rand(4, 1, generator=g, dtype=torch.float64)

    def f(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sigmoid_focal_loss(x, y, gamma=gamma, sample_weight=w)

    assert torch.autograd.gradcheck(f, (x, y), fast_mode=True)
    assert torch.autograd.gradcheck(lambda x: sigmoid_focal_loss(x, y.detach().round(), gamma=gamma), (x,))


@pytest.mark.grad
@pytest.mark.parametrize("gamma", [0.5, 2.0])
@pytest.mark.parametrize("reduction", ["mean", "mean_positive", "none"])
def test_gradcheck_softmax(gamma: float, reduction: str) -> None:
    g = _gen(11)
    x = (torch.randn(5, 3, 2, generator=g, dtype=torch.float64) * 2).requires_grad_()
    t = torch.tensor([[0, 1], [2, -100], [1, 1], [0, 2], [2, 0]])
    w = torch.rand(5, 2, generator=g, dtype=torch.float64)
    kwargs = {"alpha": [0.25, 0.5, 1.0], "gamma": gamma, "reduction": reduction, "label_smoothing": 0.1}
    assert torch.autograd.gradcheck(lambda x: softmax_focal_loss(x, t, sample_weight=w, **kwargs), (x,))


def test_hard_label_target_gradient_matches_textbook_formula() -> None:
    """Soft-label distillation differentiates w.r.t. targets; exact 0/1 labels included."""
    g = _gen(12)
    x = torch.randn(12, generator=g, dtype=torch.float64) * 3
    y = torch.tensor([0.0, 1.0] * 6, dtype=torch.float64, requires_grad=True)
    sigmoid_focal_loss(x, y, gamma=0.5, reduction="sum").backward()
    y_ref = y.detach().clone().requires_grad_()
    p = torch.sigmoid(x)
    p_t = p * y_ref + (1 - p) * (1 - y_ref)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x, y_ref, reduction="none")
    ((0.25 * y_ref + 0.75 * (1 - y_ref)) * (1 - p_t) ** 0.5 * bce).sum().backward()
    torch.testing.assert_close(y.grad, y_ref.grad, **F64)


SATURATED = [50.0, -50.0, 1e4, -1e4, 15.0, -15.0, 88.0, 100.0]


@pytest.mark.parametrize("gamma", [0.25, 0.5, 1.0, 2.0])
def test_saturated_logits_finite_and_equal_analytic_limit(gamma: float) -> None:
    """D7: with 1 - p_t == 0 in float32, gradients stay finite and match the float64 closed form."""
    logits = torch.tensor(SATURATED)
    limits = [margin_limit(d, gamma) for d in SATURATED]
    loss_ref = torch.tensor([v for v, _ in limits], dtype=torch.float64)
    grad_ref = torch.tensor([dv for _, dv in limits], dtype=torch.float64)
    tol = {"rtol": 1e-4, "atol": 1e-37}

    for y_value, sign in ((1.0, 1.0), (0.0, -1.0)):  # y = 0 sees margin -x
        x = (sign * logits).requires_grad_()
        loss = sigmoid_focal_loss(x, torch.full_like(x, y_value), alpha=-1, gamma=gamma, reduction="none")
        loss.sum().backward()
        assert torch.isfinite(loss).all()
        assert torch.isfinite(x.grad).all()
        torch.testing.assert_close(loss.double(), loss_ref, **tol)
        torch.testing.assert_close(x.grad.double(), sign * grad_ref, **tol)

    # Softmax, C = 3: classes 1 and 2 share the margin d (logsumexp of the rest = -d + log 2).
    x = torch.stack([logits, torch.zeros_like(logits), torch.zeros_like(logits)], 1).requires_grad_()
    loss = softmax_focal_loss(x, torch.zeros(len(SATURATED), dtype=torch.long), gamma=gamma, reduction="none")
    loss.sum().backward()
    assert torch.isfinite(loss).all()
    assert torch.isfinite(x.grad).all()
    limits3 = [margin_limit(d - math.log(2.0), gamma) for d in SATURATED]
    torch.testing.assert_close(loss.double(), torch.tensor([v for v, _ in limits3], dtype=torch.float64), **tol)
    d_ref = torch.tensor([dv for _, dv in limits3], dtype=torch.float64)
    torch.testing.assert_close(x.grad[:, 0].double(), d_ref, **tol)
    torch.testing.assert_close(x.grad[:, 1].double(), -d_ref / 2, **tol)


def test_textbook_formula_is_nan_where_ours_is_finite() -> None:
    """The cases above do hit the incumbent's failure mode (NaN for 0 < gamma < 1)."""
    x = torch.tensor([50.0], requires_grad=True)
    p_t = torch.sigmoid(x)
    ((1 - p_t) ** 0.5 * torch.nn.functional.softplus(-x)).sum().backward()
    assert torch.isnan(x.grad).all()


# --------------------------------------------------------------------------------------------
# Degenerate inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "mean", "sum", "mean_positive"])
def test_softmax_all_ignored_is_graph_connected_zero(reduction: str) -> None:
    x = torch.randn(4, 3, 2, requires_grad=True)
    w = torch.rand(4, 2)
    for weight in (None, w):
        loss = softmax_focal_loss(x, torch.full((4, 2), -100), reduction=reduction, sample_weight=weight)
        assert loss.requires_grad
        assert not torch.isnan(loss).any()
        assert torch.equal(loss.detach(), torch.zeros_like(loss))
        loss.sum().backward()
        assert torch.equal(x.grad, torch.zeros_like(x))
        x.grad = None


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_sigmoid_all_ignored_and_empty_are_graph_connected_zero(reduction: str) -> None:
    for x, y in (
        (torch.randn(3, 2, requires_grad=True), torch.full((3, 2), -1.0)),
        (torch.randn(0, 2).requires_grad_(), torch.zeros(0, 2)),
    ):
        loss = sigmoid_focal_loss(x, y, reduction=reduction, ignore_index=-1)
        assert loss.requires_grad
        assert torch.equal(loss.detach(), torch.zeros_like(loss))
        loss.sum().backward()
        assert torch.equal(x.grad, torch.zeros_like(x))


def test_single_class_softmax_is_zero_with_finite_gradient() -> None:
    x = torch.randn(5, 1, requires_grad=True)
    loss = softmax_focal_loss(x, torch.zeros(5, dtype=torch.long), gamma=0.5)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(x.grad).all()


def test_zero_dim_sigmoid_input() -> None:
    x, y = torch.tensor(0.3), torch.tensor(1.0)
    torch.testing.assert_close(
        sigmoid_focal_loss(x, y, gamma=1.0), ref_sigmoid(x, y, alpha=0.25, gamma=1.0, reduction="mean").float()
    )


# --------------------------------------------------------------------------------------------
# Mixed precision (D9)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype: torch.dtype) -> None:
    g = _gen(13)
    xs = (torch.randn(16, 3, generator=g) * 20).to(dtype).requires_grad_()
    xm = (torch.randn(16, 4, generator=g) * 20).to(dtype).requires_grad_()
    ys, tm = torch.randint(0, 2, (16, 3), generator=g).to(dtype), torch.randint(0, 4, (16,), generator=g)
    cases = [
        (SigmoidFocalLoss(gamma=0.5), xs, ys, sigmoid_focal_loss, {"gamma": 0.5}),
        (
            SoftmaxFocalLoss(alpha=[0.25, 1, 1, 1], gamma=0.5),
            xm,
            tm,
            softmax_focal_loss,
            {"alpha": [0.25, 1, 1, 1], "gamma": 0.5},
        ),
    ]
    for module, x, y, fn, kwargs in cases:
        loss = module(x, y)
        assert loss.dtype == torch.float32
        assert torch.isfinite(loss)
        torch.testing.assert_close(loss, fn(x.detach().float(), y, **kwargs))
        loss.backward()
        assert x.grad.dtype == dtype
        assert torch.isfinite(x.grad.float()).all()


def test_autocast_bfloat16() -> None:
    g = _gen(14)
    model = torch.nn.Linear(8, 4)
    feats = torch.randn(32, 8, generator=g)
    targets = torch.randint(0, 4, (32,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(feats)
        assert logits.dtype == torch.bfloat16
        losses = [
            SoftmaxFocalLoss(gamma=0.5)(logits, targets),
            SigmoidFocalLoss()(logits, (targets == 1).float()[:, None].expand(-1, 4)),
        ]
        fp32_inputs = softmax_focal_loss(logits.detach().float(), targets, gamma=0.5)  # unaffected by autocast
    for loss in losses:
        assert loss.dtype == torch.float32
        assert torch.isfinite(loss)
    assert torch.equal(fp32_inputs, softmax_focal_loss(logits.detach().float(), targets, gamma=0.5))
    torch.testing.assert_close(losses[0], fp32_inputs)
    sum(losses).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Modules: == functional, attributes, state, repr, signatures
# --------------------------------------------------------------------------------------------

SIGMOID_CONFIGS = [
    {},
    {"alpha": -1, "gamma": 0.5, "reduction": "sum"},
    {"gamma": 3.0, "reduction": "none", "ignore_index": -1},
]
SOFTMAX_CONFIGS = [
    {},
    {"alpha": [0.25, 0.5, 0.75], "gamma": 0.5, "reduction": "mean_positive", "background_class": 1},
    {"alpha": torch.tensor([1.0, 2.0, 0.5]), "label_smoothing": 0.3, "ignore_index": 2, "reduction": "none"},
]


@pytest.mark.parametrize("config", SIGMOID_CONFIGS)
@pytest.mark.parametrize("weighted", [False, True])
def test_sigmoid_module_equals_functional(config: dict[str, Any], weighted: bool) -> None:
    g = _gen(15)
    x = torch.randn(6, 5, generator=g, requires_grad=True)
    y = torch.randint(-1, 2, (6, 5), generator=g).float() if "ignore_index" in config else torch.rand(6, 5, generator=g)
    w = torch.rand(6, 1, generator=g) if weighted else None
    out_m = SigmoidFocalLoss(**config)(x, y, sample_weight=w)
    (grad_m,) = torch.autograd.grad(out_m.sum(), x)
    out_f = sigmoid_focal_loss(x, y, sample_weight=w, **config)
    (grad_f,) = torch.autograd.grad(out_f.sum(), x)
    assert torch.equal(out_m, out_f)
    assert torch.equal(grad_m, grad_f)


@pytest.mark.parametrize("config", SOFTMAX_CONFIGS, ids=["default", "alpha-mean_positive", "smoothing-none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_module_equals_functional(config: dict[str, Any], weighted: bool) -> None:
    g = _gen(16)
    x = torch.randn(6, 3, 4, generator=g, requires_grad=True)
    t = torch.randint(0, 3, (6, 4), generator=g)
    t[0, 0] = -100 if config.get("ignore_index", -100) == -100 else t[0, 0]
    w = torch.rand(6, 4, generator=g) if weighted else None
    out_m = SoftmaxFocalLoss(**config)(x, t, sample_weight=w)
    (grad_m,) = torch.autograd.grad(out_m.sum(), x)
    out_f = softmax_focal_loss(x, t, sample_weight=w, **config)
    (grad_f,) = torch.autograd.grad(out_f.sum(), x)
    assert torch.equal(out_m, out_f)
    assert torch.equal(grad_m, grad_f)


def test_attributes() -> None:
    s = SigmoidFocalLoss(0.5, 1, "sum", False, ignore_index=-1)
    assert (s.alpha, s.gamma, s.reduction, s.gather_distributed, s.ignore_index) == (0.5, 1.0, "sum", False, -1.0)
    assert s.validate_args is True
    m = SoftmaxFocalLoss([0.25, 0.75], 0.5, "mean_positive", 0.1, 3, 1, None, validate_args=False)
    assert (m.gamma, m.reduction, m.label_smoothing, m.ignore_index, m.background_class) == (
        0.5,
        "mean_positive",
        0.1,
        3,
        1,
    )
    assert m.gather_distributed is None
    assert m.validate_args is False
    assert m.alpha.dtype == torch.float32
    assert "alpha" in dict(m.named_buffers())
    assert SoftmaxFocalLoss().alpha is None


def test_signatures_match_incumbent() -> None:
    def params(obj: Any) -> list[tuple[str, Any, Any]]:
        return [(p.name, p.kind, p.default) for p in inspect.signature(obj).parameters.values()]

    pos, kw = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
    assert params(SigmoidFocalLoss) == [
        ("alpha", pos, 0.25), ("gamma", pos, 2.0), ("reduction", pos, "mean"), ("gather_distributed", pos, None),
        ("ignore_index", kw, None), ("validate_args", kw, True),
    ]  # fmt: skip
    assert params(SoftmaxFocalLoss) == [
        ("alpha", pos, None), ("gamma", pos, 2.0), ("reduction", pos, "mean"), ("label_smoothing", pos, 0.0),
        ("ignore_index", pos, -100), ("background_class", pos, 0), ("gather_distributed", pos, None),
        ("validate_args", kw, True),
    ]  # fmt: skip
    for cls in (SigmoidFocalLoss, SoftmaxFocalLoss):
        assert [(n, k) for n, k, _ in params(cls.forward)] == [
            ("self", pos),
            ("inputs", pos),
            ("targets", pos),
            ("sample_weight", kw),
        ]
    for fn in (sigmoid_focal_loss, softmax_focal_loss):
        assert all(k == kw for _, k, _ in params(fn)[2:])


def test_state_dict_round_trip() -> None:
    src = SoftmaxFocalLoss(alpha=[0.1, 0.2, 0.7], gamma=1.0)
    state = src.state_dict()
    assert list(state) == ["alpha"]
    assert state["alpha"].dtype == torch.float32
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    dst = SoftmaxFocalLoss(alpha=[0.0, 0.0, 0.0], gamma=1.0)
    dst.load_state_dict(torch.load(buf))
    assert torch.equal(dst.alpha, src.alpha)
    x, t = torch.randn(5, 3), torch.randint(0, 3, (5,))
    assert torch.equal(dst(x, t), src(x, t))
    for clone in (copy.deepcopy(src), pickle.loads(pickle.dumps(src))):
        assert torch.equal(clone(x, t), src(x, t))
    assert SoftmaxFocalLoss().state_dict() == {}
    assert SigmoidFocalLoss().state_dict() == {}
    assert src.double().alpha.dtype == torch.float64
    assert src(x.double(), t).dtype == torch.float64


def test_repr() -> None:
    assert repr(SigmoidFocalLoss()) == "SigmoidFocalLoss(alpha=0.25, gamma=2.0, reduction='mean', ignore_index=None)"
    assert repr(SoftmaxFocalLoss(alpha=[0.25, 0.75], gamma=1)) == (
        "SoftmaxFocalLoss(alpha=[0.25, 0.75], gamma=1.0, reduction='mean', label_smoothing=0.0, "
        "ignore_index=-100, background_class=0)"
    )


# --------------------------------------------------------------------------------------------
# Errors (type, and the argument named in the message)
# --------------------------------------------------------------------------------------------

CTOR_ERRORS = [
    (SigmoidFocalLoss, {"gamma": -0.5}, ValueError, "gamma"),
    (SigmoidFocalLoss, {"gamma": math.nan}, ValueError, "gamma"),
    (SigmoidFocalLoss, {"gamma": "2"}, TypeError, "gamma"),
    (SigmoidFocalLoss, {"reduction": "avg"}, ValueError, "reduction"),
    (SigmoidFocalLoss, {"reduction": "mean_positive"}, ValueError, "reduction"),
    (SigmoidFocalLoss, {"alpha": 1.5}, ValueError, "alpha"),
    (SigmoidFocalLoss, {"alpha": -0.5}, ValueError, "alpha"),
    (SigmoidFocalLoss, {"alpha": True}, TypeError, "alpha"),
    (SigmoidFocalLoss, {"ignore_index": math.inf}, ValueError, "ignore_index"),
    (SigmoidFocalLoss, {"gather_distributed": "yes"}, TypeError, "gather_distributed"),
    (SigmoidFocalLoss, {"validate_args": 1}, TypeError, "validate_args"),
    (SoftmaxFocalLoss, {"gamma": -1}, ValueError, "gamma"),
    (SoftmaxFocalLoss, {"reduction": "mean_pos"}, ValueError, "reduction"),
    (SoftmaxFocalLoss, {"alpha": [[0.5, 0.5]]}, ValueError, "alpha"),
    (SoftmaxFocalLoss, {"alpha": 0.25}, ValueError, "alpha"),
    (SoftmaxFocalLoss, {"alpha": []}, ValueError, "alpha"),
    (SoftmaxFocalLoss, {"alpha": ["a", "b"]}, TypeError, "alpha"),
    (SoftmaxFocalLoss, {"alpha": [0.5, -0.1]}, ValueError, "alpha"),
    (SoftmaxFocalLoss, {"alpha": [0.5, math.nan]}, ValueError, "alpha"),
    (SoftmaxFocalLoss, {"label_smoothing": 1.5}, ValueError, "label_smoothing"),
    (SoftmaxFocalLoss, {"label_smoothing": -0.1}, ValueError, "label_smoothing"),
    (SoftmaxFocalLoss, {"ignore_index": 1.5}, TypeError, "ignore_index"),
    (SoftmaxFocalLoss, {"background_class": None}, TypeError, "background_class"),
    (SoftmaxFocalLoss, {"gather_distributed": 0}, TypeError, "gather_distributed"),
]


@pytest.mark.parametrize(("cls", "kwargs", "exc", "name"), CTOR_ERRORS)
def test_constructor_and_functional_option_errors(cls: Any, kwargs: dict[str, Any], exc: type, name: str) -> None:
    with pytest.raises(exc, match=f"`{name}`"):
        cls(**kwargs)
    if name in ("gather_distributed", "validate_args"):
        return
    fn, x, y = (
        (sigmoid_focal_loss, torch.zeros(2, 2), torch.zeros(2, 2))
        if cls is SigmoidFocalLoss
        else (softmax_focal_loss, torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))
    )
    with pytest.raises(exc, match=f"`{name}`"):
        fn(x, y, **kwargs)


X2, Y2 = torch.randn(4, 3), torch.randint(0, 2, (4, 3)).float()
XS, TS = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
NAN_X = torch.tensor([[0.0, math.nan, 1.0]] * 4)
INF_X = torch.tensor([[0.0, math.inf, 1.0]] * 4)

FORWARD_ERRORS = [
    # (loss kind, inputs, targets, extra kwargs, exception, argument named)
    ("sigmoid", NAN_X, Y2, {}, ValueError, "inputs"),
    ("sigmoid", INF_X, Y2, {}, ValueError, "inputs"),
    ("sigmoid", X2, Y2[:, :2], {}, ValueError, "targets"),
    ("sigmoid", X2, Y2 * 2, {}, ValueError, "targets"),
    ("sigmoid", X2, torch.full((4, 3), math.nan), {}, ValueError, "targets"),
    ("sigmoid", X2, Y2 - 1, {"ignore_index": 0.5}, ValueError, "targets"),
    ("sigmoid", X2.long(), Y2, {}, TypeError, "inputs"),
    ("sigmoid", X2.tolist(), Y2, {}, TypeError, "inputs"),
    ("sigmoid", X2, Y2, {"sample_weight": torch.ones(3, 1)}, ValueError, "sample_weight"),
    ("sigmoid", X2, Y2, {"sample_weight": torch.ones(4, 3, 1)}, ValueError, "sample_weight"),  # more dims than inputs
    ("sigmoid", X2, Y2, {"sample_weight": torch.ones(4, 2)}, ValueError, "sample_weight"),
    ("sigmoid", X2, Y2, {"sample_weight": torch.tensor(1.0)}, ValueError, "sample_weight"),
    ("sigmoid", X2, Y2, {"sample_weight": -torch.ones(4, 1)}, ValueError, "sample_weight"),
    ("sigmoid", X2, Y2, {"sample_weight": torch.full((4, 1), math.nan)}, ValueError, "sample_weight"),
    ("sigmoid", X2, Y2, {"sample_weight": torch.ones(4, 1, dtype=torch.complex64)}, TypeError, "sample_weight"),
    ("softmax", NAN_X, TS, {}, ValueError, "inputs"),
    ("softmax", INF_X, TS, {}, ValueError, "inputs"),
    ("softmax", XS, TS[:3], {}, ValueError, "targets"),
    ("softmax", XS, TS[:, None], {}, ValueError, "targets"),
    ("softmax", XS[0], TS[0], {}, ValueError, "inputs"),
    ("softmax", XS, torch.tensor([0, 1, 3, 1]), {}, ValueError, "targets"),
    ("softmax", XS, torch.tensor([0, -1, 2, 1]), {}, ValueError, "targets"),
    ("softmax", XS, torch.tensor([0.0, 0.5, 2.0, 1.0]), {}, ValueError, "targets"),
    ("softmax", XS, TS.bool(), {}, TypeError, "targets"),
    ("softmax", XS, TS, {"alpha": [0.25, 0.75]}, ValueError, "alpha"),
    ("softmax", XS, TS, {"sample_weight": torch.ones(4, 1)}, ValueError, "sample_weight"),
    ("softmax", XS, TS, {"sample_weight": torch.ones(5)}, ValueError, "sample_weight"),
    ("softmax", XS, TS, {"sample_weight": torch.tensor([1.0, -1.0, 1.0, 1.0])}, ValueError, "sample_weight"),
    ("softmax", XS, TS, {"sample_weight": torch.tensor([1.0, math.inf, 1.0, 1.0])}, ValueError, "sample_weight"),
]


@pytest.mark.parametrize(("kind", "x", "y", "kwargs", "exc", "name"), FORWARD_ERRORS)
def test_forward_errors(kind: str, x: Any, y: Any, kwargs: dict[str, Any], exc: type, name: str) -> None:
    kwargs = dict(kwargs)
    weight = kwargs.pop("sample_weight", None)
    if kind == "sigmoid":
        calls = [
            lambda: sigmoid_focal_loss(x, y, sample_weight=weight, **kwargs),
            lambda: SigmoidFocalLoss(**kwargs)(x, y, sample_weight=weight),
        ]
    else:
        calls = [
            lambda: softmax_focal_loss(x, y, sample_weight=weight, **kwargs),
            lambda: SoftmaxFocalLoss(**kwargs)(x, y, sample_weight=weight),
        ]
    for call in calls:
        with pytest.raises(exc, match=f"`{name}`"):
            call()


def test_validate_args_false_skips_host_sync_checks() -> None:
    out = sigmoid_focal_loss(NAN_X, Y2, validate_args=False)
    assert torch.isnan(out)
    assert torch.isnan(SoftmaxFocalLoss(validate_args=False)(NAN_X, TS))
    w = -torch.ones(4)  # value checks are skipped; shape checks still run
    assert torch.isfinite(softmax_focal_loss(XS, TS, sample_weight=w, validate_args=False))
    with pytest.raises(ValueError, match="`sample_weight`"):
        softmax_focal_loss(XS, TS, sample_weight=torch.ones(4, 1), validate_args=False)


def test_gather_true_without_process_group_raises() -> None:
    for loss in (SigmoidFocalLoss(gather_distributed=True), SoftmaxFocalLoss(gather_distributed=True)):
        y = Y2 if isinstance(loss, SigmoidFocalLoss) else TS
        with pytest.raises(RuntimeError, match="not initialized"):
            loss(X2, y)


# --------------------------------------------------------------------------------------------
# Warnings (D4)
# --------------------------------------------------------------------------------------------


def test_zero_weight_warns_once_per_instance_at_user_line() -> None:
    for loss, y, w in ((SigmoidFocalLoss(), Y2, torch.zeros(4, 1)), (SoftmaxFocalLoss(), TS, torch.zeros(4))):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = loss(X2, y, sample_weight=w)
            loss(X2, y, sample_weight=w)
        zero = [c for c in caught if "entirely zero" in str(c.message)]
        assert len(zero) == 1
        assert zero[0].category is UserWarning
        assert zero[0].filename == __file__
        assert first.item() == 0.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            softmax_focal_loss(XS, TS, sample_weight=torch.zeros(4))
    assert len([c for c in caught if "entirely zero" in str(c.message)]) == 2


# --------------------------------------------------------------------------------------------
# DDP: 2 gloo processes, uneven batches (§8.3, SPEC D2)
# --------------------------------------------------------------------------------------------

DDP_SIZES = (5, 7)


def _ddp_batch() -> tuple[torch.Tensor, ...]:
    g = _gen(17)
    n = sum(DDP_SIZES)
    return (
        torch.randn(n, 3, generator=g, dtype=torch.float64),
        torch.randint(0, 3, (n,), generator=g),
        torch.randint(0, 2, (n, 3), generator=g).double(),
        torch.rand(n, generator=g, dtype=torch.float64),
    )


def _ddp_worker(rank: int, world: int) -> dict[str, Any]:
    x, t, y, w = _ddp_batch()
    rows = slice(sum(DDP_SIZES[:rank]), sum(DDP_SIZES[: rank + 1]))
    out: dict[str, Any] = {}
    for name, loss_fn, target, weight in (
        ("softmax", SoftmaxFocalLoss(alpha=[0.25, 0.5, 1.0], gamma=0.5), t, w),
        ("sigmoid", SigmoidFocalLoss(gamma=0.5), y, w[:, None]),
    ):
        local = x[rows].clone().requires_grad_()
        loss = loss_fn(local, target[rows], sample_weight=weight[rows])
        loss.backward()
        out[name] = (loss.detach(), local.grad)
    return out


@pytest.mark.ddp
def test_ddp_gathered_loss_and_local_gradient() -> None:
    from _ddp import run_ranks

    results = run_ranks(_ddp_worker)
    x, t, y, w = _ddp_batch()
    world = len(DDP_SIZES)
    for name, fn in (
        ("softmax", lambda x: softmax_focal_loss(x, t, alpha=[0.25, 0.5, 1.0], gamma=0.5, sample_weight=w)),
        ("sigmoid", lambda x: sigmoid_focal_loss(x, y, gamma=0.5, sample_weight=w[:, None])),
    ):
        full = x.clone().requires_grad_()
        loss = fn(full)
        loss.backward()
        for rank, res in enumerate(results):
            rows = slice(sum(DDP_SIZES[:rank]), sum(DDP_SIZES[: rank + 1]))
            torch.testing.assert_close(res[name][0], loss.detach(), **F64)
            # D2: the local slice carries W x the single-process gradient; DDP's average undoes it.
            torch.testing.assert_close(res[name][1], world * full.grad[rows], **F64)
