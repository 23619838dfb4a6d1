"""Argument and input validation, degenerate batches and warnings of the three ranking losses.

Spec: incumbent-behaviour.md §2.1 (constructor checks), §2.3 (shape checks), §2.4 (binary
targets), §2.5 (degenerate classes), §2.6 (sample weights), §11 (errors and warnings);
SPEC.md D3 (out-of-range class ids raise for every loss), D4 (warnings once per instance, at the
user's line), D6 (empty pool: ``nan`` per class, graph-connected zero scalar), D10 (validation;
``validate_args=False``). Error style: the message names the argument in backticks; a wrong
Python type raises ``ArgumentTypeError`` (a ``TypeError`` and a ``ValueError``).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from imbalanced_losses import PAUCAtBudgetLoss, RecallAtQuantileLoss, SmoothAPLoss

LOSSES = {
    "SmoothAP": SmoothAPLoss,
    "Recall": RecallAtQuantileLoss,
    "PAUC": PAUCAtBudgetLoss,
}
ALL = pytest.mark.parametrize("name", list(LOSSES))

# Tiny pools can make the pAUC reference dispersion degenerate; that warning is not under test here.
pytestmark = pytest.mark.filterwarnings("ignore:PAUCAtBudgetLoss. degenerate dispersion:UserWarning")


def make(name: str, num_classes: int = 3, **kwargs):
    extra = {"quantile": 0.3} if name == "Recall" else {"beta": 0.3} if name == "PAUC" else {}
    extra.update(kwargs)
    return LOSSES[name](num_classes, **extra)


def assert_type_error(excinfo: pytest.ExceptionInfo) -> None:
    """Wrong-type hyperparameters raise ArgumentTypeError: both a TypeError and a ValueError."""
    assert isinstance(excinfo.value, TypeError)
    assert isinstance(excinfo.value, ValueError)
    assert type(excinfo.value).__name__ == "ArgumentTypeError"


# --------------------------------------------------------------------------------------------
# Constructor
# --------------------------------------------------------------------------------------------

COMMON_BAD_VALUES = [
    ("num_classes", 0),
    ("num_classes", -1),
    ("queue_size", -1),
    ("temperature", 0),
    ("temperature", 0.0),
    ("temperature", -1.0),
    ("temperature", math.nan),
    ("temperature", math.inf),
    ("temperature", -math.inf),
    ("reduction", "avg"),
    ("reduction", "MEAN"),
    ("max_pool_size", 0),
    ("max_pool_size", -4),
]
COMMON_BAD_TYPES = [
    ("num_classes", 2.5),
    ("num_classes", True),
    ("num_classes", "4"),
    ("num_classes", None),
    ("queue_size", 8.0),
    ("queue_size", True),
    ("temperature", "0.1"),
    ("temperature", True),
    ("max_pool_size", 100.0),
    ("ignore_index", 1.5),
    ("update_queue_in_eval", "yes"),
    ("gather_distributed", "auto"),
    ("validate_args", 1),
]


def _ctor_kwargs(name: str, arg: str, value) -> dict:
    kwargs = {"num_classes": 3}
    if name == "Recall":
        kwargs["quantile"] = 0.3
    if name == "PAUC":
        kwargs["beta"] = 0.3
    kwargs[arg] = value
    return kwargs


@ALL
@pytest.mark.parametrize(("arg", "value"), COMMON_BAD_VALUES, ids=[f"{a}={v!r}" for a, v in COMMON_BAD_VALUES])
def test_ctor_rejects_bad_value(name: str, arg: str, value) -> None:
    with pytest.raises(ValueError, match=f"`{arg}`"):
        LOSSES[name](**_ctor_kwargs(name, arg, value))


@ALL
@pytest.mark.parametrize(("arg", "value"), COMMON_BAD_TYPES, ids=[f"{a}={v!r}" for a, v in COMMON_BAD_TYPES])
def test_ctor_rejects_bad_type(name: str, arg: str, value) -> None:
    with pytest.raises(TypeError, match=f"`{arg}`") as excinfo:
        LOSSES[name](**_ctor_kwargs(name, arg, value))
    assert_type_error(excinfo)


def test_temperature_message_follows_the_error_template() -> None:
    with pytest.raises(ValueError, match=r"^`temperature` must be positive \(a finite number >= 1e-20\), got -1.0.$"):
        SmoothAPLoss(num_classes=4, temperature=-1.0)


@ALL
def test_ctor_rejects_bad_generator(name: str) -> None:
    with pytest.raises(TypeError, match="`generator`"):
        make(name, generator=0)


@ALL
def test_ctor_accepts_valid_edge_values(name: str) -> None:
    loss_fn = make(name, num_classes=1, queue_size=0, temperature=1e-6, max_pool_size=1, reduction="none")
    assert loss_fn.num_classes == 1
    assert loss_fn.max_pool_size == 1
    assert isinstance(make(name, temperature=1).temperature, float)


@pytest.mark.parametrize("quantile", [0, 0.0, 1, 1.0, 1.5, -0.1, math.nan, math.inf])
def test_recall_rejects_bad_quantile(quantile: float) -> None:
    with pytest.raises(ValueError, match="`quantile`"):
        RecallAtQuantileLoss(num_classes=3, quantile=quantile)


def test_recall_rejects_quantile_of_wrong_type() -> None:
    with pytest.raises(TypeError, match="`quantile`") as excinfo:
        RecallAtQuantileLoss(num_classes=3, quantile="0.1")
    assert_type_error(excinfo)


@pytest.mark.parametrize("cls", [RecallAtQuantileLoss, PAUCAtBudgetLoss])
@pytest.mark.parametrize("interp", ["cubic", "Linear", ""])
def test_rejects_bad_quantile_interpolation(cls, interp: str) -> None:
    with pytest.raises(ValueError, match="`quantile_interpolation`"):
        cls(num_classes=3, quantile_interpolation=interp)


@pytest.mark.parametrize("interp", ["linear", "lower", "higher", "nearest", "midpoint"])
def test_accepts_every_torch_quantile_interpolation(interp: str) -> None:
    RecallAtQuantileLoss(num_classes=3, quantile_interpolation=interp)
    PAUCAtBudgetLoss(num_classes=3, quantile_interpolation=interp)


PAUC_BAD_BANDS = [
    # (alpha, beta, argument the message must name)
    (0.5, 0.1, "alpha"),  # order
    (0.1, 0.1, "alpha"),  # alpha == beta
    (-0.1, 0.5, "alpha"),  # alpha < 0
    (1.0, 1.0, "alpha"),  # alpha must be < 1
    (0.0, 0.0, "beta"),  # beta must be > 0
    (0.0, 1.5, "beta"),  # beta > 1
    (0.0, -0.2, "beta"),
    (math.nan, 0.5, "alpha"),
    (0.0, math.nan, "beta"),
]


@pytest.mark.parametrize(("alpha", "beta", "arg"), PAUC_BAD_BANDS)
def test_pauc_rejects_bad_band(alpha: float, beta: float, arg: str) -> None:
    with pytest.raises(ValueError, match=f"`{arg}`"):
        PAUCAtBudgetLoss(num_classes=3, alpha=alpha, beta=beta)


@pytest.mark.parametrize(("alpha", "beta"), [(0.0, 1.0), (0.0, 0.005), (0.99, 1.0), (0.1, 0.2)])
def test_pauc_accepts_valid_band(alpha: float, beta: float) -> None:
    loss_fn = PAUCAtBudgetLoss(num_classes=3, alpha=alpha, beta=beta)
    assert (loss_fn.alpha, loss_fn.beta) == (alpha, beta)


def test_pauc_rejects_n_knots_below_two() -> None:
    for n_knots in (1, 0, -3):
        with pytest.raises(ValueError, match="`n_knots`"):
            PAUCAtBudgetLoss(num_classes=3, n_knots=n_knots)


@pytest.mark.parametrize("n_knots", [2.0, True, np.int64(3), "3"], ids=["float", "bool", "numpy-int", "str"])
def test_pauc_rejects_n_knots_of_wrong_type(n_knots) -> None:
    with pytest.raises(ValueError, match="`n_knots`") as excinfo:  # a ValueError, as in the incumbent
        PAUCAtBudgetLoss(num_classes=3, n_knots=n_knots)
    assert_type_error(excinfo)


@pytest.mark.parametrize(
    ("arg", "value"),
    [
        ("surrogate", "pairwize"),
        ("surrogate", "Trapezoid"),
        ("tau_scale", "std"),
        ("pos_numerator", "all"),
        ("budget_basis", "tpr"),
        ("budget_basis", None),
    ],
)
def test_pauc_rejects_bad_choice(arg: str, value) -> None:
    with pytest.raises(ValueError, match=f"`{arg}`"):
        PAUCAtBudgetLoss(num_classes=3, **{arg: value})


# --------------------------------------------------------------------------------------------
# Forward: shapes and dtypes
# --------------------------------------------------------------------------------------------


def good_batch(n: int = 12, num_classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(n, num_classes)
    targets = torch.arange(n) % max(num_classes, 2)
    return logits, targets


@ALL
def test_logits_1d_rejected_even_in_binary_mode(name: str) -> None:
    with pytest.raises(ValueError, match="`logits`"):
        make(name, num_classes=1)(torch.randn(12), torch.arange(12) % 2)


@ALL
def test_logits_with_wrong_number_of_columns(name: str) -> None:
    with pytest.raises(ValueError, match="`logits`"):
        make(name)(torch.randn(12, 4), torch.arange(12) % 3)


@ALL
def test_logits_3d_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="`logits`"):
        make(name)(torch.randn(2, 6, 3), torch.arange(12) % 3)


@ALL
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_logits_of_non_float_dtype(name: str, dtype: torch.dtype) -> None:
    with pytest.raises(TypeError, match="`logits`"):
        make(name)(torch.zeros(12, 3, dtype=dtype), torch.arange(12) % 3)


@ALL
def test_logits_not_a_tensor(name: str) -> None:
    with pytest.raises(TypeError, match="`logits`"):
        make(name)([[0.0, 1.0, 2.0]], torch.tensor([0]))


@ALL
def test_targets_two_columns(name: str) -> None:
    logits, targets = good_batch()
    with pytest.raises(ValueError, match="`targets`"):
        make(name)(logits, torch.stack([targets, targets], 1))


@ALL
def test_targets_wrong_length(name: str) -> None:
    logits, targets = good_batch()
    with pytest.raises(ValueError, match="`targets`"):
        make(name)(logits, targets[:-1])


@ALL
def test_targets_column_vector_is_squeezed(name: str) -> None:
    logits, targets = good_batch()
    assert torch.equal(make(name, queue_size=0)(logits, targets[:, None]), make(name, queue_size=0)(logits, targets))


@ALL
def test_iid_mask_wrong_length(name: str) -> None:
    logits, targets = good_batch()
    with pytest.raises(ValueError, match="`iid_mask`"):
        make(name)(logits, targets, torch.ones(11, dtype=torch.bool))
    with pytest.raises(ValueError, match="`iid_mask`"):
        make(name)(logits, targets, torch.ones(12, 1, dtype=torch.bool))


@ALL
@pytest.mark.parametrize("flag", [True, False])
def test_bool_as_third_positional_argument(name: str, flag: bool) -> None:
    """``loss(logits, targets, True)`` meant return_per_class: a clear TypeError naming iid_mask."""
    logits, targets = good_batch()
    with pytest.raises(TypeError, match="`iid_mask`"):
        make(name)(logits, targets, flag)


# --------------------------------------------------------------------------------------------
# Forward: values
# --------------------------------------------------------------------------------------------


@ALL
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("num_classes", [1, 3])
def test_non_finite_logits_raise(name: str, bad: float, num_classes: int) -> None:
    logits, targets = good_batch(num_classes=num_classes)
    logits[3, 0] = bad
    with pytest.raises(ValueError, match="`logits`"):
        make(name, num_classes=num_classes)(logits, targets)


@ALL
def test_non_finite_logits_raise_also_for_ignored_rows(name: str) -> None:
    logits, targets = good_batch()
    logits[3, 0] = math.nan
    targets[3] = -100
    with pytest.raises(ValueError, match="`logits`"):
        make(name)(logits, targets)


@ALL
@pytest.mark.parametrize("bad_id", [-1, 3, 100])
def test_multiclass_target_out_of_range(name: str, bad_id: int) -> None:
    logits, targets = good_batch()
    targets[5] = bad_id
    with pytest.raises(ValueError, match="`targets`"):
        make(name)(logits, targets)


@ALL
def test_out_of_range_respects_custom_ignore_index(name: str) -> None:
    logits, targets = good_batch()
    targets[5] = -1
    make(name, ignore_index=-1)(logits, targets)  # -1 is the ignore_index here: fine
    targets[6] = -100
    with pytest.raises(ValueError, match="`targets`"):
        make(name, ignore_index=-1)(logits, targets)


@ALL
def test_fractional_float_targets_raise(name: str) -> None:
    logits, targets = good_batch()
    targets = targets.float()
    targets[2] = 1.5
    with pytest.raises(ValueError, match="`targets`"):
        make(name)(logits, targets)


@ALL
def test_integral_float_targets_are_class_ids(name: str) -> None:
    logits, targets = good_batch()
    got = make(name, queue_size=0)(logits, targets.float())
    assert torch.equal(got, make(name, queue_size=0)(logits, targets))


@ALL
@pytest.mark.parametrize(
    ("weight", "pattern"),
    [
        (torch.tensor([1.0] * 11 + [-0.5]), "non-negative"),
        (torch.tensor([1.0] * 11 + [math.nan]), "finite"),
        (torch.tensor([1.0] * 11 + [math.inf]), "finite"),
        (torch.ones(11), "shape"),
        (torch.ones(12, 1), "shape"),
        (torch.tensor(1.0), "shape"),
    ],
    ids=["negative", "nan", "inf", "short", "column", "0-d"],
)
def test_bad_sample_weight(name: str, weight: torch.Tensor, pattern: str) -> None:
    logits, targets = good_batch()
    with pytest.raises(ValueError, match=f"`sample_weight`.*{pattern}"):
        make(name)(logits, targets, sample_weight=weight)


@ALL
def test_validate_args_false_skips_the_finiteness_check(name: str) -> None:
    logits, targets = good_batch()
    logits[3, 0] = math.nan
    out = make(name, validate_args=False)(logits, targets)  # no exception (a nan loss is the user's choice)
    assert out.shape == ()


@ALL
def test_validate_args_false_skips_the_target_range_check(name: str) -> None:
    logits, targets = good_batch()
    targets[5] = 7
    out = make(name, validate_args=False)(logits, targets)
    assert out.shape == ()


@ALL
def test_validate_args_false_still_checks_shapes(name: str) -> None:
    with pytest.raises(ValueError, match="`logits`"):
        make(name, validate_args=False)(torch.randn(12, 4), torch.arange(12) % 3)


@ALL
def test_temperature_changed_after_construction_is_checked(name: str) -> None:
    loss_fn = make(name)
    loss_fn.temperature = 0.0
    with pytest.raises(ValueError, match="`temperature`"):
        loss_fn(*good_batch())


# --------------------------------------------------------------------------------------------
# Degenerate batches (incumbent §2.5, SPEC D6)
# --------------------------------------------------------------------------------------------

# (case id, num_classes, targets builder, number of rows)
DEGENERATE = {
    "empty": (3, lambda n: torch.zeros(0, dtype=torch.long), 0),
    "all-ignored": (3, lambda n: torch.full((n,), -100), 10),
    "binary-all-negative": (1, lambda n: torch.zeros(n, dtype=torch.long), 10),
    "binary-all-positive": (1, lambda n: torch.ones(n, dtype=torch.long), 10),
    "multiclass-single-class": (3, lambda n: torch.zeros(n, dtype=torch.long), 10),
}


def expected_valid(name: str, case: str, num_classes: int) -> list[bool]:
    """An all-positive class is valid for Recall only (incumbent §2.5); everything else is degenerate."""
    if name == "Recall" and case == "binary-all-positive":
        return [True]
    if name == "Recall" and case == "multiclass-single-class":
        return [True] + [False] * (num_classes - 1)
    return [False] * num_classes


def assert_graph_connected_finite_grad(loss: torch.Tensor, logits: torch.Tensor) -> None:
    assert loss.requires_grad
    assert loss.grad_fn is not None
    loss.backward()
    assert logits.grad is not None
    assert logits.grad.shape == logits.shape
    assert torch.isfinite(logits.grad).all()


@ALL
@pytest.mark.parametrize("case", list(DEGENERATE))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("queue_size", [0, 16])
def test_degenerate_batch_scalar(name: str, case: str, reduction: str, queue_size: int) -> None:
    num_classes, build, n = DEGENERATE[case]
    loss_fn = make(name, num_classes=num_classes, reduction=reduction, queue_size=queue_size)
    logits = torch.randn(n, num_classes, requires_grad=True)
    loss = loss_fn(logits, build(n))
    assert loss.shape == ()
    assert torch.isfinite(loss)
    if expected_valid(name, case, num_classes) == [False] * num_classes:
        assert float(loss.detach()) == 0.0
        assert_graph_connected_finite_grad(loss, logits)
        assert (logits.grad == 0).all()
    else:
        assert_graph_connected_finite_grad(loss, logits)


@ALL
@pytest.mark.parametrize("case", list(DEGENERATE))
def test_degenerate_batch_none_and_per_class(name: str, case: str) -> None:
    num_classes, build, n = DEGENERATE[case]
    valid_expected = expected_valid(name, case, num_classes)
    logits = torch.randn(n, num_classes, requires_grad=True)
    targets = build(n)

    out = make(name, num_classes=num_classes, reduction="none", queue_size=0)(logits, targets)
    assert out.shape == (num_classes,)
    assert torch.isnan(out).tolist() == [not v for v in valid_expected]

    loss, per_class, valid = make(name, num_classes=num_classes, queue_size=0)(logits, targets, return_per_class=True)
    assert valid.dtype == torch.bool
    assert valid.tolist() == valid_expected
    assert per_class.shape == (num_classes,)
    assert torch.isnan(per_class).tolist() == [not v for v in valid_expected]
    assert torch.isfinite(loss)


@pytest.mark.parametrize("surrogate", ["trapezoid", "pairwise"])
def test_pauc_diagnostics_on_an_empty_pool(surrogate: str) -> None:
    loss_fn = PAUCAtBudgetLoss(num_classes=3, queue_size=0, surrogate=surrogate)
    logits = torch.randn(0, 3, requires_grad=True)
    loss, per_class, valid, stats = loss_fn(
        logits, torch.zeros(0, dtype=torch.long), return_per_class=True, return_diagnostics=True
    )
    assert float(loss.detach()) == 0.0
    assert torch.isnan(per_class).all()
    assert not valid.any()
    for key in ("t_alpha", "t_beta", "tau_eff", "pauc_var"):
        assert torch.isnan(stats[key]).all(), key
    assert stats["band_neg_count"].tolist() == [0, 0, 0]
    assert stats["grad_pos_count"].tolist() == [0, 0, 0]


@ALL
def test_empty_batch_against_a_filled_queue(name: str) -> None:
    loss_fn = make(name, queue_size=32)
    loss_fn(*good_batch(24))
    logits = torch.randn(0, 3, requires_grad=True)
    loss = loss_fn(logits, torch.zeros(0, dtype=torch.long))
    assert loss.shape == ()
    assert torch.isfinite(loss)
    assert_graph_connected_finite_grad(loss, logits)


# --------------------------------------------------------------------------------------------
# Warnings (SPEC D4: once per instance, pointing at the user's line)
# --------------------------------------------------------------------------------------------


def _binary_warnings(caught: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    return [w for w in caught if issubclass(w.category, UserWarning) and "Binary mode" in str(w.message)]


@ALL
@pytest.mark.parametrize("odd", [2, -1, 0.5])
def test_binary_targets_outside_01_warn_once_per_instance(name: str, odd: float) -> None:
    logits = torch.randn(12, 1)
    targets = (torch.arange(12) % 2).float()
    targets[4] = odd
    loss_fn = make(name, num_classes=1, queue_size=64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss_fn(logits, targets)
    first = _binary_warnings(caught)
    assert len(first) == 1
    assert first[0].filename == __file__
    assert str(odd) in str(first[0].message) or str(int(odd)) in str(first[0].message)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss_fn(logits, targets)  # same instance: silent (the bad row is also in the queue now)
        loss_fn(torch.randn(12, 1), torch.arange(12) % 2)
    assert _binary_warnings(caught) == []

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make(name, num_classes=1)(logits, targets)  # a new instance warns again
    assert len(_binary_warnings(caught)) == 1


@ALL
def test_binary_non_zero_targets_count_as_positive(name: str) -> None:
    logits = torch.randn(12, 1)
    targets = torch.arange(12) % 2
    odd = targets.clone()
    odd[odd == 1] = 5
    with pytest.warns(UserWarning, match="Binary mode"):
        got = make(name, num_classes=1, queue_size=0)(logits, odd)
    assert torch.equal(got, make(name, num_classes=1, queue_size=0)(logits, targets))


@ALL
def test_binary_targets_in_01_do_not_warn(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(name, num_classes=1)(torch.randn(12, 1), torch.arange(12) % 2)
        make(name, num_classes=1)(torch.randn(12, 1), (torch.arange(12) % 2).bool())
        targets = torch.arange(12) % 2
        targets[0] = -100  # ignore_index is not an offender
        make(name, num_classes=1)(torch.randn(12, 1), targets)


@ALL
def test_all_zero_sample_weight_warns_once_at_the_users_line(name: str) -> None:
    loss_fn = make(name)
    logits, targets = good_batch()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = loss_fn(logits, targets, sample_weight=torch.zeros(12))
        loss_fn(logits, targets, sample_weight=torch.zeros(12))
    zero = [w for w in caught if "sample_weight" in str(w.message)]
    assert len(zero) == 1
    assert zero[0].filename == __file__
    assert float(loss.detach()) == 0.0


@pytest.mark.parametrize("fn_name", ["smooth_ap_loss", "recall_at_quantile_loss", "pauc_at_budget_loss"])
@pytest.mark.parametrize("rows", [0, 4], ids=["no-rows", "all-ignored"])
def test_functional_degenerate_input(fn_name: str, rows: int) -> None:
    from imbalanced_losses import functional

    fn = getattr(functional, fn_name)
    logits = torch.randn(rows, 3, requires_grad=True)
    targets = torch.full((rows,), -100)
    out = fn(logits, targets, reduction="none")
    assert out.shape == (3,)
    assert torch.isnan(out).all()
    loss = fn(logits, targets)
    assert float(loss.detach()) == 0.0
    assert_graph_connected_finite_grad(loss, logits)
