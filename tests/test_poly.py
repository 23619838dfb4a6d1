"""Poly-1 loss (Leng et al., 2022): identities, references, numerics, validation, module.

References are independent of our code: ``torch.nn.functional.cross_entropy`` for
epsilon = 0, a per-position Python loop of the paper's listing in float64
(``pt = sum(labels * softmax(logits))``, ``CE + epsilon * (1 - pt)``, labels optionally
smoothed), and the closed-form limits of the loss and its derivative at saturated logits.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
from torch.nn.functional import cross_entropy

from imbalanced_losses import PolyLoss
from imbalanced_losses.functional import poly_loss

REDUCTIONS = ["none", "mean", "sum"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(seed: int, shape: tuple[int, ...] = (7, 4), scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    t = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    t.view(-1)[::3] = -100
    return x, t


def ref_poly(x, t, *, epsilon, reduction, label_smoothing=0.0, ignore_index=-100, w=None) -> torch.Tensor:
    """The paper's listing, position by position, in Python floats."""
    c = x.shape[1]
    rows = x.double().movedim(1, -1).reshape(-1, c).tolist()
    ws = (torch.ones(t.shape) if w is None else w).double().flatten().tolist()
    values, den = [], 0.0
    for row, ti, wi in zip(rows, t.flatten().tolist(), ws, strict=True):
        if ti == ignore_index:
            values.append(0.0)
            continue
        m = max(row)
        exps = [math.exp(v - m) for v in row]
        probs = [e / math.fsum(exps) for e in exps]
        labels = [(1 - label_smoothing) * (k == ti) + label_smoothing / c for k in range(c)]
        ce = -math.fsum(q * math.log(p) for q, p in zip(labels, probs, strict=True))
        pt = math.fsum(q * p for q, p in zip(labels, probs, strict=True))
        values.append((ce + epsilon * (1 - pt)) * wi)
        den += wi
    if reduction == "none":
        return torch.tensor(values, dtype=torch.float64).reshape(t.shape)
    total = math.fsum(values)
    return torch.tensor(total if reduction == "sum" else total / (den if den > 0 else 1.0), dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# Identity: epsilon = 0 is cross-entropy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("shape", [(7, 4), (3, 5, 2, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_epsilon0_equals_cross_entropy(
    reduction: str, label_smoothing: float, shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    x, t = _batch(1, shape)
    x = x.to(dtype)
    torch.testing.assert_close(
        poly_loss(x, t, epsilon=0.0, reduction=reduction, label_smoothing=label_smoothing),
        cross_entropy(x, t, reduction=reduction, label_smoothing=label_smoothing),
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_epsilon0_with_weight_and_custom_ignore_equals_cross_entropy(reduction: str, label_smoothing: float) -> None:
    x, t = _batch(2, (4, 3, 5))
    t = t.masked_fill(t == -100, 7)
    w = torch.rand(4, 5, generator=_gen(3), dtype=torch.float64) + 0.1
    valid = t != 7
    ce = cross_entropy(x, t, reduction="none", ignore_index=7, label_smoothing=label_smoothing) * w
    expected = {"none": ce, "sum": ce.sum(), "mean": ce.sum() / (w * valid).sum()}[reduction]
    got = poly_loss(
        x, t, epsilon=0.0, reduction=reduction, ignore_index=7, sample_weight=w, label_smoothing=label_smoothing
    )
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Paper formula (loop reference)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("epsilon", [-1.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_loop_reference(epsilon: float, reduction: str, label_smoothing: float, weighted: bool) -> None:
    x, t = _batch(4, (6, 5, 3))
    w = torch.rand(6, 3, generator=_gen(5), dtype=torch.float64) if weighted else None
    got = poly_loss(x, t, epsilon=epsilon, reduction=reduction, label_smoothing=label_smoothing, sample_weight=w)
    expected = ref_poly(x, t, epsilon=epsilon, reduction=reduction, label_smoothing=label_smoothing, w=w)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_poly_term_is_epsilon_times_one_minus_pt() -> None:
    x, t = _batch(6)
    valid = t != -100
    p_t = torch.softmax(x, 1).gather(1, t.clamp_min(0)[:, None]).squeeze(1)
    diff = poly_loss(x, t, epsilon=2.5, reduction="none") - poly_loss(x, t, epsilon=0.0, reduction="none")
    torch.testing.assert_close(diff, 2.5 * (1 - p_t) * valid)


# --------------------------------------------------------------------------------------------
# Gradients and saturation
# --------------------------------------------------------------------------------------------


@pytest.mark.grad
@pytest.mark.parametrize("epsilon", [-1.0, 1.0, 2.0])
@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_gradcheck(epsilon: float, reduction: str, label_smoothing: float) -> None:
    x, t = _batch(7, (4, 3, 2))
    x.requires_grad_()
    w = torch.rand(4, 2, generator=_gen(8), dtype=torch.float64)

    def fn(inp: torch.Tensor) -> torch.Tensor:
        return poly_loss(inp, t, epsilon=epsilon, reduction=reduction, label_smoothing=label_smoothing, sample_weight=w)

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("epsilon", [-1.0, 0.0, 1.0, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_saturated_logits_finite_and_equal_analytic_limit(epsilon: float, dtype: torch.dtype) -> None:
    big = 1e4
    x = torch.tensor([[big, -big, -big], [-big, big, -big]], dtype=dtype, requires_grad=True)
    t = torch.tensor([0, 0])  # row 0 right, row 1 wrong
    loss = poly_loss(x, t, epsilon=epsilon, reduction="none")
    loss.sum().backward()
    assert torch.isfinite(loss).all()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(loss.detach(), torch.tensor([0.0, 2 * big + epsilon], dtype=dtype))
    # wrong row: d CE = p - onehot = (-1, +1, 0); d(1 - p_t) = -p_t (onehot - p) = 0 at p_t = 0.
    expected = torch.tensor([[0.0, 0.0, 0.0], [-1.0, 1.0, 0.0]], dtype=dtype)
    torch.testing.assert_close(x.grad, expected)


def test_confident_rows_keep_relative_accuracy_in_float32() -> None:
    """1 - p_t = sigmoid(z), not 1 - p_t: at a margin of 30 it is e^-30, which 1 - p rounds to 0."""
    x = torch.tensor([[30.0, 0.0, -5.0]])
    t = torch.tensor([0])
    z = math.log(1.0 + math.exp(-5.0)) - 30.0
    expected = math.log1p(math.exp(z)) + 2.0 / (1.0 + math.exp(-z))
    torch.testing.assert_close(poly_loss(x, t, epsilon=2.0), torch.tensor(expected), rtol=1e-5, atol=0.0)


def test_single_class_is_zero_with_finite_gradient() -> None:
    x = torch.randn(5, 1, requires_grad=True)
    loss = poly_loss(x, torch.zeros(5, dtype=torch.long), epsilon=2.0, label_smoothing=0.1)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------------------------
# Mixed precision
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale", [3.0, 30.0])
def test_half_precision_inputs_match_float32(dtype: torch.dtype, scale: float) -> None:
    g = _gen(9)
    x32 = torch.randn(16, 5, generator=g) * scale
    x32[0] = torch.tensor([60000.0, -60000.0, 0.0, 1.0, -1.0])  # near the float16 limit
    t = torch.randint(0, 5, (16,), generator=g)
    t[0] = 1
    x = x32.to(dtype).requires_grad_()
    ref = x.detach().float().requires_grad_()
    for kwargs in ({}, {"epsilon": 2.0, "label_smoothing": 0.1}):
        loss = PolyLoss(**kwargs)(x, t)
        assert loss.dtype == torch.float32
        expected = poly_loss(ref, t, **kwargs)
        torch.testing.assert_close(loss, expected)
        (grad,) = torch.autograd.grad(loss, x)
        (grad_ref,) = torch.autograd.grad(expected, ref)
        assert grad.dtype == dtype
        assert torch.isfinite(grad.float()).all()
        torch.testing.assert_close(grad.float(), grad_ref, rtol=1e-2, atol=1e-5)


def test_autocast_bfloat16() -> None:
    g = _gen(10)
    model = torch.nn.Linear(8, 4)
    feats = torch.randn(32, 8, generator=g)
    targets = torch.randint(0, 4, (32,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(feats)
        loss = PolyLoss()(logits, targets)
    assert logits.dtype == torch.bfloat16
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, poly_loss(logits.detach().float(), targets))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Degenerate inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_ignored_and_empty_are_graph_connected_zero(reduction: str) -> None:
    for x, t, w in (
        (torch.randn(4, 3, 2, requires_grad=True), torch.full((4, 2), -100), None),
        (torch.randn(4, 3, 2, requires_grad=True), torch.full((4, 2), -100), torch.rand(4, 2)),
        (torch.randn(0, 3).requires_grad_(), torch.zeros(0, dtype=torch.long), None),
        (torch.randn(0, 3).requires_grad_(), torch.zeros(0, dtype=torch.long), torch.rand(0)),
    ):
        loss = poly_loss(x, t, reduction=reduction, sample_weight=w, label_smoothing=0.1)
        assert loss.requires_grad
        assert torch.equal(loss.detach(), torch.zeros_like(loss))
        loss.sum().backward()
        assert torch.equal(x.grad, torch.zeros_like(x))


# --------------------------------------------------------------------------------------------
# Module == function, attributes, repr
# --------------------------------------------------------------------------------------------

MODULE_CONFIGS = [
    {},
    {"epsilon": 2.0, "reduction": "sum", "label_smoothing": 0.1},
    {"epsilon": -1.0, "reduction": "none", "ignore_index": 2},
]


@pytest.mark.parametrize("config", MODULE_CONFIGS)
@pytest.mark.parametrize("weighted", [False, True])
def test_module_equals_functional(config: dict[str, Any], weighted: bool) -> None:
    g = _gen(11)
    x = torch.randn(6, 3, 4, generator=g, requires_grad=True)
    t = torch.randint(0, 3, (6, 4), generator=g)
    t[0, 0] = config.get("ignore_index", -100)
    w = torch.rand(6, 4, generator=g) if weighted else None
    out_m = PolyLoss(**config)(x, t, sample_weight=w)
    (grad_m,) = torch.autograd.grad(out_m.sum(), x)
    out_f = poly_loss(x, t, sample_weight=w, **config)
    (grad_f,) = torch.autograd.grad(out_f.sum(), x)
    assert torch.equal(out_m, out_f)
    assert torch.equal(grad_m, grad_f)


def test_defaults_attributes_and_repr() -> None:
    loss = PolyLoss()
    assert (loss.epsilon, loss.reduction, loss.label_smoothing, loss.ignore_index) == (1.0, "mean", 0.0, -100)
    assert loss.state_dict() == {}
    assert repr(PolyLoss(epsilon=2, reduction="sum", label_smoothing=0.1, ignore_index=3)) == (
        "PolyLoss(epsilon=2.0, reduction='sum', label_smoothing=0.1, ignore_index=3)"
    )


# --------------------------------------------------------------------------------------------
# Errors and warnings
# --------------------------------------------------------------------------------------------

OPTION_ERRORS = [
    ({"epsilon": math.nan}, ValueError, "epsilon"),
    ({"epsilon": math.inf}, ValueError, "epsilon"),
    ({"epsilon": -math.inf}, ValueError, "epsilon"),
    ({"epsilon": -1.5}, ValueError, "epsilon"),
    ({"epsilon": "1"}, TypeError, "epsilon"),
    ({"reduction": "mean_positive"}, ValueError, "reduction"),
    ({"label_smoothing": 1.5}, ValueError, "label_smoothing"),
    ({"label_smoothing": -0.1}, ValueError, "label_smoothing"),
    ({"ignore_index": 1.5}, TypeError, "ignore_index"),
]


@pytest.mark.parametrize(("kwargs", "exc", "name"), OPTION_ERRORS)
def test_option_errors_name_the_argument(kwargs: dict[str, Any], exc: type, name: str) -> None:
    with pytest.raises(exc, match=f"`{name}`"):
        PolyLoss(**kwargs)
    with pytest.raises(exc, match=f"`{name}`"):
        poly_loss(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), **kwargs)


def test_module_only_option_errors() -> None:
    with pytest.raises(TypeError, match="`gather_distributed`"):
        PolyLoss(gather_distributed=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`validate_args`"):
        PolyLoss(validate_args="no")  # type: ignore[arg-type]


X, T = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])

FORWARD_ERRORS = [
    (torch.tensor([[0.0, math.inf, 1.0]] * 4), T, {}, ValueError, "inputs"),
    (X[0], T[0], {}, ValueError, "inputs"),
    (X, T[:3], {}, ValueError, "targets"),
    (X, torch.tensor([0, 1, 3, 1]), {}, ValueError, "targets"),
    (X, T.bool(), {}, TypeError, "targets"),
    (X, T, {"sample_weight": torch.ones(4, 1)}, ValueError, "sample_weight"),
    (X, T, {"sample_weight": torch.tensor([1.0, -1.0, 1.0, 1.0])}, ValueError, "sample_weight"),
]


@pytest.mark.parametrize(("x", "t", "kwargs", "exc", "name"), FORWARD_ERRORS)
def test_forward_errors(x: Any, t: Any, kwargs: dict[str, Any], exc: type, name: str) -> None:
    with pytest.raises(exc, match=f"`{name}`"):
        poly_loss(x, t, **kwargs)
    with pytest.raises(exc, match=f"`{name}`"):
        PolyLoss()(x, t, **kwargs)


def test_zero_weight_warns_once_per_instance() -> None:
    loss = PolyLoss()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss(X, T, sample_weight=torch.zeros(4))
        loss(X, T, sample_weight=torch.zeros(4))
    assert sum("entirely zero" in str(c.message) for c in caught) == 1
    assert caught[0].filename == __file__


def test_gather_true_without_process_group_raises() -> None:
    with pytest.raises(RuntimeError, match="not initialized"):
        PolyLoss(gather_distributed=True)(X, T)
