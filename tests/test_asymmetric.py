"""Asymmetric loss (Ridnik et al., 2021): identities, references, numerics, validation, module.

References are independent of our code: ``torch.nn.functional.binary_cross_entropy_with_logits``
for gamma_neg = gamma_pos = clip = 0, a per-cell Python loop of the paper formula in float64
(``p_m = max(p - m, 0)``, the textbook ``1 - p`` form), the reference code's float16 form, and
the closed-form limits of the loss and its derivative at saturated logits.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
from torch.nn.functional import binary_cross_entropy_with_logits

from imbalanced_losses import AsymmetricLoss
from imbalanced_losses.functional import asymmetric_loss

REDUCTIONS = ["none", "mean", "sum"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(seed: int, n: int = 7, c: int = 5, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    x = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, 2, (n, c), generator=g).double()
    return x, y


def _with_ignored(y: torch.Tensor, seed: int, ignore: float = -1.0) -> torch.Tensor:
    mask = torch.rand(y.shape, generator=_gen(seed)) < 0.25
    mask[0, 0] = True
    return y.masked_fill(mask, ignore)


def ref_asl(x, y, *, gamma_neg, gamma_pos, clip, reduction, w=None, ignore=None) -> torch.Tensor:
    """The paper formula, cell by cell, in Python floats."""
    ws = (torch.ones_like(x) if w is None else w.reshape(*w.shape, *[1] * (x.ndim - w.ndim)).expand_as(x)).double()
    values, den = [], 0.0
    for xi, yi, wi in zip(
        x.double().flatten().tolist(), y.double().flatten().tolist(), ws.flatten().tolist(), strict=True
    ):
        if ignore is not None and yi == ignore:
            values.append(0.0)
            continue
        p = 1.0 / (1.0 + math.exp(-xi))
        l_pos = -((1.0 - p) ** gamma_pos) * math.log(p)
        p_m = max(p - clip, 0.0)
        l_neg = -(p_m**gamma_neg) * math.log(1.0 - p_m)
        values.append((yi * l_pos + (1.0 - yi) * l_neg) * wi)
        den += wi
    if reduction == "none":
        return torch.tensor(values, dtype=torch.float64).reshape(x.shape)
    total = math.fsum(values)
    return torch.tensor(total if reduction == "sum" else total / (den if den > 0 else 1.0), dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# Identity: gamma_neg = gamma_pos = clip = 0 is BCE with logits
# --------------------------------------------------------------------------------------------

PLAIN = {"gamma_neg": 0.0, "gamma_pos": 0.0, "clip": 0.0}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_plain_equals_bce(reduction: str, dtype: torch.dtype) -> None:
    x, y = _batch(1, scale=5.0)
    x, y = x.to(dtype), y.to(dtype)
    soft = torch.rand(y.shape, generator=_gen(2), dtype=dtype)
    for targets in (y, soft):
        torch.testing.assert_close(
            asymmetric_loss(x, targets, reduction=reduction, **PLAIN),
            binary_cross_entropy_with_logits(x, targets, reduction=reduction),
        )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("w_shape", [None, (7,), (7, 1), (7, 5)], ids=["unweighted", "row", "row-col", "cell"])
def test_plain_with_ignore_and_weight_equals_bce(reduction: str, w_shape: tuple[int, ...] | None) -> None:
    x, y = _batch(3)
    y = _with_ignored(y, 4)
    valid = y != -1
    w = None if w_shape is None else torch.rand(w_shape, generator=_gen(5), dtype=torch.float64) + 0.1
    w_full = torch.ones_like(x) if w is None else w.reshape(7, -1).expand_as(x)
    bce = binary_cross_entropy_with_logits(x, y.clamp_min(0), reduction="none") * w_full * valid
    expected = {"none": bce, "sum": bce.sum(), "mean": bce.sum() / (w_full * valid).sum()}[reduction]
    got = asymmetric_loss(x, y, reduction=reduction, sample_weight=w, ignore_index=-1, **PLAIN)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_row_weight_counts_once_per_valid_cell_in_mean() -> None:
    x = torch.zeros(2, 3, dtype=torch.float64)  # every cell: BCE = log 2
    y = torch.tensor([[1.0, -1.0, -1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    w = torch.tensor([3.0, 1.0], dtype=torch.float64)
    got = asymmetric_loss(x, y, sample_weight=w, ignore_index=-1, **PLAIN)
    # numerator 3·log2 + 3·1·log2, denominator 3·1 + 1·3 (row 0 has one valid cell)
    torch.testing.assert_close(got, torch.tensor(math.log(2.0), dtype=torch.float64))
    torch.testing.assert_close(
        got, asymmetric_loss(x, y, sample_weight=w[:, None].expand(2, 3), ignore_index=-1, **PLAIN)
    )


# --------------------------------------------------------------------------------------------
# Paper formula (loop reference)
# --------------------------------------------------------------------------------------------

ASL_CONFIGS = [
    {"gamma_neg": 4.0, "gamma_pos": 0.0, "clip": 0.05},  # paper defaults
    {"gamma_neg": 4.0, "gamma_pos": 1.0, "clip": 0.05},  # reference-code class default
    {"gamma_neg": 2.0, "gamma_pos": 0.5, "clip": 0.2},
    {"gamma_neg": 0.5, "gamma_pos": 2.0, "clip": 0.0},
    {"gamma_neg": 0.3, "gamma_pos": 0.0, "clip": 0.1},
    {"gamma_neg": 0.0, "gamma_pos": 0.0, "clip": 0.3},
]


@pytest.mark.parametrize("config", ASL_CONFIGS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_loop_reference(config: dict[str, float], reduction: str) -> None:
    x, y = _batch(6)
    torch.testing.assert_close(
        asymmetric_loss(x, y, reduction=reduction, **config),
        ref_asl(x, y, reduction=reduction, **config),
        rtol=1e-10,
        atol=1e-12,
    )


@pytest.mark.parametrize("config", ASL_CONFIGS[:3])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("w_shape", [(7,), (7, 5)])
def test_loop_reference_with_ignore_and_weight(config: dict[str, float], reduction: str, w_shape: tuple[int]) -> None:
    x, y = _batch(7)
    y = _with_ignored(y, 8, ignore=2.0)
    w = torch.rand(w_shape, generator=_gen(9), dtype=torch.float64)
    got = asymmetric_loss(x, y, reduction=reduction, sample_weight=w, ignore_index=2, **config)
    expected = ref_asl(x, y, reduction=reduction, w=w, ignore=2.0, **config)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_float32_matches_float64_reference() -> None:
    x, y = _batch(10, n=32, c=8)
    got = asymmetric_loss(x.float(), y.float())
    torch.testing.assert_close(
        got, ref_asl(x.float().double(), y, gamma_neg=4, gamma_pos=0, clip=0.05, reduction="mean").float()
    )


def test_easy_negatives_below_clip_are_discarded() -> None:
    clip = 0.1
    x = torch.tensor([-5.0, -3.0, math.log(clip / (1 - clip)) - 1e-3], requires_grad=True)  # p < clip
    loss = asymmetric_loss(x, torch.zeros(3), clip=clip, reduction="none")
    loss.sum().backward()
    assert torch.equal(loss.detach(), torch.zeros(3))
    assert torch.equal(x.grad, torch.zeros(3))
    # ...while without the clip they are not
    assert (asymmetric_loss(x.detach(), torch.zeros(3), clip=0.0, reduction="none") > 0).all()


def test_loss_is_non_negative_and_decreasing_in_the_right_direction() -> None:
    x = torch.linspace(-30, 30, 601, dtype=torch.float64)
    for config in ASL_CONFIGS:
        pos = asymmetric_loss(x, torch.ones_like(x), reduction="none", **config)
        neg = asymmetric_loss(x, torch.zeros_like(x), reduction="none", **config)
        assert (pos >= 0).all()
        assert (neg >= 0).all()
        assert (pos.diff() <= 0).all()  # a positive never gains from a lower logit
        assert (neg.diff() >= 0).all()


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.grad
@pytest.mark.parametrize("config", ASL_CONFIGS)
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_gradcheck_away_from_the_clip_kink(config: dict[str, float], reduction: str) -> None:
    g = _gen(11)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64) * 3
    kink = math.log(config["clip"] / (1 - config["clip"])) if config["clip"] > 0 else -math.inf
    near = (x - kink).abs() < 0.3
    x = torch.where(near, x + 0.6, x).requires_grad_()
    y = torch.randint(0, 2, (5, 4), generator=g).double()
    y[0, 0] = -1.0
    w = torch.rand(5, generator=g, dtype=torch.float64)

    def fn(inp: torch.Tensor) -> torch.Tensor:
        return asymmetric_loss(inp, y, reduction=reduction, sample_weight=w, ignore_index=-1, **config)

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 4.0])
@pytest.mark.parametrize("clip", [0.0, 0.05])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_saturated_logits_finite_and_equal_analytic_limit(gamma: float, clip: float, dtype: torch.dtype) -> None:
    big = 1e4
    x = torch.tensor([big, -big, big, -big], dtype=dtype, requires_grad=True)
    y = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=dtype)
    loss = asymmetric_loss(x, y, gamma_neg=gamma, gamma_pos=gamma, clip=clip, reduction="none")
    loss.sum().backward()
    assert torch.isfinite(loss).all()
    assert torch.isfinite(x.grad).all()
    neg_wrong = big if clip == 0 else -((1 - clip) ** gamma) * math.log(clip)
    torch.testing.assert_close(loss.detach(), torch.tensor([0.0, big, neg_wrong, 0.0], dtype=dtype))
    # d/dx at the saturated wrong side: -1 for a positive; +1 for a negative without the clip, and
    # 0 with it (p_m = 1 - m is flat there).
    torch.testing.assert_close(x.grad, torch.tensor([0.0, -1.0, 1.0 if clip == 0 else 0.0, 0.0], dtype=dtype))


# --------------------------------------------------------------------------------------------
# Mixed precision
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale", [3.0, 30.0])
def test_half_precision_inputs_match_float32(dtype: torch.dtype, scale: float) -> None:
    g = _gen(12)
    x32 = torch.randn(16, 6, generator=g) * scale
    x32[0, :2] = torch.tensor([60000.0, -60000.0])  # near the float16 limit
    y = torch.randint(0, 2, (16, 6), generator=g).float()
    x = x32.to(dtype).requires_grad_()
    ref = x.detach().float().requires_grad_()
    for config in ASL_CONFIGS:
        loss = AsymmetricLoss(**config)(x, y)
        assert loss.dtype == torch.float32
        expected = asymmetric_loss(ref, y, **config)
        torch.testing.assert_close(loss, expected)
        (grad,) = torch.autograd.grad(loss, x)
        (grad_ref,) = torch.autograd.grad(expected, ref)
        assert grad.dtype == dtype
        assert torch.isfinite(grad.float()).all()
        torch.testing.assert_close(grad.float(), grad_ref, rtol=1e-2, atol=1e-5)


def test_reference_code_form_is_not_finite_in_float16_where_ours_is() -> None:
    """The reference code's ``log(p.clamp(min=1e-8))`` in float16 (ASL issue #53)."""
    x = torch.tensor([-20.0], dtype=torch.float16)
    p = torch.sigmoid(x)
    assert not torch.isfinite(torch.log(p.clamp(min=1e-8))).all()
    assert torch.isfinite(asymmetric_loss(x, torch.ones(1), gamma_pos=1.0))


def test_autocast_bfloat16() -> None:
    g = _gen(13)
    model = torch.nn.Linear(8, 4)
    feats = torch.randn(32, 8, generator=g)
    targets = torch.randint(0, 2, (32, 4), generator=g).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(feats)
        loss = AsymmetricLoss()(logits, targets)
    assert logits.dtype == torch.bfloat16
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, asymmetric_loss(logits.detach().float(), targets))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Degenerate inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_ignored_and_empty_are_graph_connected_zero(reduction: str) -> None:
    for x, y, w in (
        (torch.randn(3, 2, requires_grad=True), torch.full((3, 2), -1.0), None),
        (torch.randn(3, 2, requires_grad=True), torch.full((3, 2), -1.0), torch.rand(3)),
        (torch.randn(0, 2).requires_grad_(), torch.zeros(0, 2), None),
        (torch.randn(0, 2).requires_grad_(), torch.zeros(0, 2), torch.rand(0, 2)),
    ):
        loss = asymmetric_loss(x, y, reduction=reduction, ignore_index=-1, sample_weight=w)
        assert loss.requires_grad
        assert torch.equal(loss.detach(), torch.zeros_like(loss))
        loss.sum().backward()
        assert torch.equal(x.grad, torch.zeros_like(x))


# --------------------------------------------------------------------------------------------
# Module == function, attributes, repr
# --------------------------------------------------------------------------------------------

MODULE_CONFIGS = [
    {},
    {"gamma_neg": 2.0, "gamma_pos": 1.0, "clip": 0.0, "reduction": "sum"},
    {"gamma_neg": 0.5, "clip": 0.2, "reduction": "none", "ignore_index": -1},
]


@pytest.mark.parametrize("config", MODULE_CONFIGS)
@pytest.mark.parametrize("weighted", [False, True])
def test_module_equals_functional(config: dict[str, Any], weighted: bool) -> None:
    g = _gen(15)
    x = torch.randn(6, 5, generator=g, requires_grad=True)
    y = torch.randint(-1 if "ignore_index" in config else 0, 2, (6, 5), generator=g).float()
    w = torch.rand(6, generator=g) if weighted else None
    out_m = AsymmetricLoss(**config)(x, y, sample_weight=w)
    (grad_m,) = torch.autograd.grad(out_m.sum(), x)
    out_f = asymmetric_loss(x, y, sample_weight=w, **config)
    (grad_f,) = torch.autograd.grad(out_f.sum(), x)
    assert torch.equal(out_m, out_f)
    assert torch.equal(grad_m, grad_f)


def test_defaults_attributes_and_repr() -> None:
    loss = AsymmetricLoss()
    assert (loss.gamma_neg, loss.gamma_pos, loss.clip, loss.reduction) == (4.0, 0.0, 0.05, "mean")
    assert loss.ignore_index is None
    assert loss.state_dict() == {}
    assert repr(AsymmetricLoss(gamma_neg=2, gamma_pos=1, clip=0.1, reduction="sum", ignore_index=-1)) == (
        "AsymmetricLoss(gamma_neg=2.0, gamma_pos=1.0, clip=0.1, reduction='sum', ignore_index=-1.0)"
    )


# --------------------------------------------------------------------------------------------
# Errors and warnings
# --------------------------------------------------------------------------------------------

OPTION_ERRORS = [
    ({"gamma_neg": -1.0}, ValueError, "gamma_neg"),
    ({"gamma_neg": math.nan}, ValueError, "gamma_neg"),
    ({"gamma_neg": "4"}, TypeError, "gamma_neg"),
    ({"gamma_pos": -0.5}, ValueError, "gamma_pos"),
    ({"gamma_pos": math.inf}, ValueError, "gamma_pos"),
    ({"clip": -0.01}, ValueError, "clip"),
    ({"clip": 1.0}, ValueError, "clip"),
    ({"clip": 1.5}, ValueError, "clip"),
    ({"clip": math.nan}, ValueError, "clip"),
    ({"clip": None}, TypeError, "clip"),
    ({"reduction": "batchmean"}, ValueError, "reduction"),
    ({"ignore_index": math.inf}, ValueError, "ignore_index"),
]


@pytest.mark.parametrize(("kwargs", "exc", "name"), OPTION_ERRORS)
def test_option_errors_name_the_argument(kwargs: dict[str, Any], exc: type, name: str) -> None:
    with pytest.raises(exc, match=f"`{name}`"):
        AsymmetricLoss(**kwargs)
    with pytest.raises(exc, match=f"`{name}`"):
        asymmetric_loss(torch.zeros(2, 2), torch.zeros(2, 2), **kwargs)


def test_module_only_option_errors() -> None:
    with pytest.raises(TypeError, match="`gather_distributed`"):
        AsymmetricLoss(gather_distributed="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`validate_args`"):
        AsymmetricLoss(validate_args=1)  # type: ignore[arg-type]


X, Y = torch.randn(4, 3), torch.randint(0, 2, (4, 3)).float()

FORWARD_ERRORS = [
    (torch.tensor([[0.0, math.nan, 1.0]] * 4), Y, {}, ValueError, "inputs"),
    (X.long(), Y, {}, TypeError, "inputs"),
    (X, Y[:, :2], {}, ValueError, "targets"),
    (X, Y * 2, {}, ValueError, "targets"),
    (X, Y, {"sample_weight": torch.ones(3)}, ValueError, "sample_weight"),
    (X, Y, {"sample_weight": torch.ones(4, 2)}, ValueError, "sample_weight"),
    (X, Y, {"sample_weight": -torch.ones(4)}, ValueError, "sample_weight"),
]


@pytest.mark.parametrize(("x", "y", "kwargs", "exc", "name"), FORWARD_ERRORS)
def test_forward_errors(x: Any, y: Any, kwargs: dict[str, Any], exc: type, name: str) -> None:
    with pytest.raises(exc, match=f"`{name}`"):
        asymmetric_loss(x, y, **kwargs)
    with pytest.raises(exc, match=f"`{name}`"):
        AsymmetricLoss()(x, y, **kwargs)


def test_zero_weight_warns_once_per_instance() -> None:
    loss = AsymmetricLoss()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss(X, Y, sample_weight=torch.zeros(4))
        loss(X, Y, sample_weight=torch.zeros(4))
    assert sum("entirely zero" in str(c.message) for c in caught) == 1
    assert caught[0].filename == __file__


def test_gather_true_without_process_group_raises() -> None:
    with pytest.raises(RuntimeError, match="not initialized"):
        AsymmetricLoss(gather_distributed=True)(X, Y)
