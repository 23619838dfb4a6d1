"""Contracts of the focal weights, the coverage budget, and the warm-up wrapper's inputs and outputs.

* ``SigmoidFocalLoss`` / ``sigmoid_focal_loss``: a ``[N]`` ``sample_weight`` is one weight per
  row, whatever ``C`` is (0.6 broadcast it along the class axis when ``N == C`` and rejected it
  otherwise; docs/migrating-from-0.6.md, D11); weight dims match the inputs' from the left.
* ``metrics.budget_rows``: ``k = ceil(budget * n)`` without the row that float rounding of the
  product can add (0.07 * 100 is 7.000000000000001 in float64); the coverage metric and the
  examples use it.
* ``LossWarmupWrapper``: element-wise warm-up losses (``nn.BCEWithLogitsLoss``,
  ``SigmoidFocalLoss``) get the ranking losses' class-id targets in their own layout; the two
  return forms (scalar in the warm-up, the main loss's tuple after it); ``temp_decay_steps``
  counts global steps in epoch mode too.
* The error for ``[N]`` logits on a ranking loss says ``logits.unsqueeze(1)``.

References are independent of our code: ``torch.nn.functional.binary_cross_entropy_with_logits``
with its ``weight=`` / ``pos_weight=`` arguments, per-cell Python loops of the focal formula in
float64, exact rational arithmetic (``fractions.Fraction``) for ``ceil(budget * n)`` and a
brute-force top-k count for the coverage.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from fractions import Fraction
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn
from torch.nn.functional import binary_cross_entropy_with_logits

from imbalanced_losses import (
    LossWarmupWrapper,
    PAUCAtBudgetLoss,
    SigmoidFocalLoss,
    SmoothAPLoss,
)
from imbalanced_losses.functional import sigmoid_focal_loss
from imbalanced_losses.metrics import budget_rows, coverage_at_budget

ROOT = Path(__file__).resolve().parents[1]
F64 = {"rtol": 1e-10, "atol": 1e-12}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ref_focal_cells(x: torch.Tensor, y: torch.Tensor, *, alpha: float, gamma: float) -> list[list[float]]:
    """Per-cell focal loss of ``[N, C]`` logits, textbook formula in Python floats."""
    out = []
    for row_x, row_y in zip(x.double().tolist(), y.double().tolist(), strict=True):
        row = []
        for xi, yi in zip(row_x, row_y, strict=True):
            p = 1.0 / (1.0 + math.exp(-xi))
            ce = -(yi * math.log(p) + (1.0 - yi) * math.log(1.0 - p))
            p_t = p * yi + (1.0 - p) * (1.0 - yi)
            a_t = 1.0 if alpha < 0 else alpha * yi + (1.0 - alpha) * (1.0 - yi)
            row.append(a_t * (1.0 - p_t) ** gamma * ce)
        out.append(row)
    return out


def ref_row_weighted_focal(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, *, alpha: float, gamma: float, reduction: str
) -> torch.Tensor:
    """``sum_i w_i sum_c l_ic``, divided by ``C sum_i w_i`` for ``'mean'``, or the ``[N, C]`` ``w_i l_ic``."""
    cells = ref_focal_cells(x, y, alpha=alpha, gamma=gamma)
    weights = w.double().tolist()
    weighted = [[wi * v for v in row] for wi, row in zip(weights, cells, strict=True)]
    if reduction == "none":
        return torch.tensor(weighted, dtype=torch.float64)
    total = math.fsum(v for row in weighted for v in row)
    if reduction == "sum":
        return torch.tensor(total, dtype=torch.float64)
    return torch.tensor(total / (x.shape[1] * math.fsum(weights)), dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# B1. A [N] sample_weight on the sigmoid focal loss is one weight per row
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "c"), [(4, 4), (6, 3), (5, 1)], ids=["N==C", "N!=C", "C=1"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("api", ["module", "function"])
def test_sigmoid_focal_row_weight_is_per_row(n: int, c: int, reduction: str, api: str) -> None:
    x = torch.randn(n, c, dtype=torch.float64, generator=_gen(1)) * 2
    y = (torch.rand(n, c, generator=_gen(2)) < 0.4).double()
    w = torch.rand(n, dtype=torch.float64, generator=_gen(3)) + 0.1
    if api == "module":
        got = SigmoidFocalLoss(alpha=0.25, gamma=2.0, reduction=reduction)(x, y, sample_weight=w)
    else:
        got = sigmoid_focal_loss(x, y, alpha=0.25, gamma=2.0, reduction=reduction, sample_weight=w)
    expected = ref_row_weighted_focal(x, y, w, alpha=0.25, gamma=2.0, reduction=reduction)
    torch.testing.assert_close(got, expected, **F64)


@pytest.mark.parametrize(("n", "c"), [(4, 4), (6, 3)], ids=["N==C", "N!=C"])
def test_sigmoid_focal_row_weight_equals_bce_with_row_weight(n: int, c: int) -> None:
    """gamma=0, alpha=-1: the weighted BCE of torch with ``weight=w[:, None]``."""
    x = torch.randn(n, c, dtype=torch.float64, generator=_gen(4))
    y = (torch.rand(n, c, generator=_gen(5)) < 0.5).double()
    w = torch.rand(n, dtype=torch.float64, generator=_gen(6))
    w_cells = w[:, None].expand(n, c)
    got = sigmoid_focal_loss(x, y, alpha=-1, gamma=0.0, reduction="sum", sample_weight=w)
    torch.testing.assert_close(got, binary_cross_entropy_with_logits(x, y, weight=w_cells, reduction="sum"), **F64)
    got = sigmoid_focal_loss(x, y, alpha=-1, gamma=0.0, reduction="mean", sample_weight=w)
    expected = binary_cross_entropy_with_logits(x, y, weight=w_cells, reduction="sum") / w_cells.sum()
    torch.testing.assert_close(got, expected, **F64)


@pytest.mark.parametrize(("n", "c"), [(4, 4), (6, 3)], ids=["N==C", "N!=C"])
def test_sigmoid_focal_full_and_column_weights_still_work(n: int, c: int) -> None:
    x = torch.randn(n, c, dtype=torch.float64, generator=_gen(7))
    y = (torch.rand(n, c, generator=_gen(8)) < 0.5).double()
    full = torch.rand(n, c, dtype=torch.float64, generator=_gen(9))
    got = sigmoid_focal_loss(x, y, alpha=-1, gamma=0.0, reduction="none", sample_weight=full)
    torch.testing.assert_close(got, binary_cross_entropy_with_logits(x, y, weight=full, reduction="none"), **F64)
    row = full[:, :1]
    got = sigmoid_focal_loss(x, y, alpha=-1, gamma=0.0, reduction="none", sample_weight=row)
    torch.testing.assert_close(got, sigmoid_focal_loss(x, y, alpha=-1, gamma=0.0, reduction="none") * row, **F64)


def test_sigmoid_focal_weight_dims_align_from_the_left() -> None:
    """``[N]`` and ``[N, C]`` weights on ``[N, C, L]`` inputs weigh rows and (row, class) cells."""
    n, c, length = 3, 4, 3  # L == N: trailing alignment would have matched [N] with L
    x = torch.randn(n, c, length, dtype=torch.float64, generator=_gen(10))
    y = (torch.rand(n, c, length, generator=_gen(11)) < 0.5).double()
    plain = binary_cross_entropy_with_logits(x, y, reduction="none")
    w_row = torch.rand(n, dtype=torch.float64, generator=_gen(12))
    got = sigmoid_focal_loss(x, y, alpha=-1, gamma=0.0, reduction="none", sample_weight=w_row)
    torch.testing.assert_close(got, plain * w_row[:, None, None], **F64)
    w_cell = torch.rand(n, c, dtype=torch.float64, generator=_gen(13))
    got = sigmoid_focal_loss(x, y, alpha=-1, gamma=0.0, reduction="none", sample_weight=w_cell)
    torch.testing.assert_close(got, plain * w_cell[:, :, None], **F64)


@pytest.mark.parametrize(
    "shape", [(5,), (4, 2), (4, 3, 1), (1, 3)], ids=["wrong-N", "wrong-C", "too-many-dims", "N=1-not-rows"]
)
def test_sigmoid_focal_rejects_weights_that_do_not_align(shape: tuple[int, ...]) -> None:
    x, y = torch.randn(4, 3), torch.ones(4, 3)
    with pytest.raises(ValueError, match=r"`sample_weight` must .*got (shape )?\(" + ", ".join(map(str, shape))):
        SigmoidFocalLoss()(x, y, sample_weight=torch.ones(shape))


@pytest.mark.parametrize(("n", "c"), [(3, 3), (6, 3)], ids=["N==C", "N!=C"])
@pytest.mark.parametrize("phase", ["warmup", "blend"])
def test_wrapper_forwards_row_weights_to_a_focal_warmup(n: int, c: int, phase: str) -> None:
    """A ranking main loss takes ``[N]`` weights; the focal warm-up weighs each row by them."""
    wrapper = LossWarmupWrapper(
        SigmoidFocalLoss(alpha=0.25, gamma=2.0),
        SmoothAPLoss(num_classes=c, queue_size=0),
        warmup_epochs=1,
        blend_epochs=1,
        temp_start=0.5,
        temp_end=0.05,
    )
    x = torch.randn(n, c, dtype=torch.float64, generator=_gen(14)) * 2
    y = (torch.rand(n, c, generator=_gen(15)) < 0.5).long()  # multi-hot: the layout of both losses
    y[0] = 1  # every class has a positive
    w = torch.rand(n, dtype=torch.float64, generator=_gen(16)) + 0.1
    focal = ref_row_weighted_focal(x, y, w, alpha=0.25, gamma=2.0, reduction="mean")
    if phase == "warmup":
        wrapper.on_train_epoch_start(0)
        wrapper.on_train_batch_start(0)
        torch.testing.assert_close(wrapper(x, y, sample_weight=w), focal, **F64)
        return
    wrapper.on_train_epoch_start(1)
    wrapper.on_train_batch_start(0)
    wrapper.on_train_batch_start(1)
    main = SmoothAPLoss(num_classes=c, queue_size=0, temperature=wrapper.current_temperature)
    expected = 0.5 * focal + 0.5 * main(x, y, sample_weight=w)
    torch.testing.assert_close(wrapper(x, y, sample_weight=w), expected, **F64)


# --------------------------------------------------------------------------------------------
# B5. k = ceil(budget * n) without the row added by float rounding
# --------------------------------------------------------------------------------------------


def exact_rows(budget: float, n: int) -> int:
    """``min(n, max(1, ceil(b n)))`` with ``b`` the decimal that ``budget`` prints as."""
    return min(n, max(1, math.ceil(Fraction(str(budget)) * n)))


@pytest.mark.parametrize(("budget", "n", "k"), [(0.07, 100, 7), (0.29, 100, 29), (0.57, 100, 57), (0.14, 50, 7)])
def test_budget_rows_examples(budget: float, n: int, k: int) -> None:
    assert budget_rows(budget, n) == k
    assert budget_rows(budget, torch.tensor([n])).tolist() == [k]


def test_budget_rows_sweep_matches_exact_arithmetic() -> None:
    """Budgets j/100 and n = 100..1000: Python ints and an int64 tensor of n, against Fractions."""
    ns = list(range(100, 1001))
    n_tensor = torch.tensor(ns)
    for j in range(1, 101):
        budget = j / 100
        expected = [exact_rows(budget, n) for n in ns]
        assert [budget_rows(budget, n) for n in ns] == expected, budget
        got = budget_rows(budget, n_tensor)
        assert got.dtype == torch.int64
        assert got.tolist() == expected, budget


def test_budget_rows_small_budgets_and_bounds() -> None:
    for bps in (1, 5, 10, 20, 50, 100, 500, 1000):
        budget = bps / 1e4
        for n in (1, 7, 199, 1000, 9_999, 10_000, 50_000, 284_807, 1_000_000):
            assert budget_rows(budget, n) == exact_rows(budget, n), (bps, n)
    assert budget_rows(1e-9, 10) == 1  # at least one row
    assert budget_rows(1.0, 10) == 10
    assert budget_rows(0.5, 0) == 0  # nothing to flag
    assert budget_rows(0.5, torch.tensor([0, 1, 3])).tolist() == [0, 1, 2]
    assert budget_rows(0.07 + 1e-12, 100) == 8  # a real excess is kept


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"budget": 0.0, "n": 10}, ValueError, "`budget`"),
        ({"budget": 1.5, "n": 10}, ValueError, "`budget`"),
        ({"budget": 0.1, "n": -1}, ValueError, "`n`"),
        ({"budget": 0.1, "n": 10.0}, TypeError, "`n`"),
        ({"budget": 0.1, "n": torch.tensor([10.0])}, TypeError, "`n`"),
    ],
)
def test_budget_rows_errors(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        budget_rows(**kwargs)


def test_coverage_at_budget_flags_seven_rows_at_seven_percent_of_100() -> None:
    scores = -torch.arange(100.0)
    targets = torch.zeros(100, dtype=torch.long)
    targets[:8] = 1  # the 8 best rows
    assert coverage_at_budget(scores, targets, budget=0.07).item() == pytest.approx(7 / 8)
    assert coverage_at_budget(scores, targets, budget=0.29).item() == 1.0


def test_coverage_at_budget_per_column_rows_match_brute_force() -> None:
    """Columns of different sizes (ignored cells): each takes its own exact k."""
    n = 300
    scores = torch.randn(n, 3, dtype=torch.float64, generator=_gen(17))
    targets = (torch.rand(n, 3, generator=_gen(18)) < 0.3).long()
    targets[100:, 0] = -100  # column 0 has 100 rows, column 2 has 200, column 1 all 300
    targets[200:, 2] = -100
    for budget in (0.07, 0.14, 0.29, 0.57, 0.01):
        got = coverage_at_budget(scores, targets, budget=budget).tolist()
        for col in range(3):
            keep = targets[:, col] != -100
            s, y = scores[keep, col].tolist(), targets[keep, col].tolist()
            k = exact_rows(budget, len(s))
            top = sorted(range(len(s)), key=lambda i: -s[i])[:k]
            assert got[col] == pytest.approx(sum(y[i] for i in top) / sum(y), abs=1e-12), (budget, col)


def _load_example(name: str) -> ModuleType:
    path = ROOT / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_example_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_quickstart_example_coverage_uses_the_library_rule() -> None:
    demo = _load_example("quickstart_demo")
    scores = -torch.arange(100.0)
    labels = torch.zeros(100, dtype=torch.long)
    labels[7] = 1  # the 8th best row: outside a 7-row budget
    assert demo.coverage_at_budget(scores, labels, 0.07) == 0.0


def test_coverage_demo_coverage_uses_the_library_rule() -> None:
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    pytest.importorskip("tqdm")
    np = pytest.importorskip("numpy")
    demo = _load_example("coverage_at_budget_demo")
    scores = -np.arange(100.0)
    labels = np.zeros(100)
    labels[7] = 1
    assert demo.coverage_at_budget(scores, labels, 0.07) == 0.0


def test_no_example_or_benchmark_rounds_its_own_budget() -> None:
    for path in [*sorted((ROOT / "examples").glob("*.py")), *sorted((ROOT / "benchmarks").glob("*.py"))]:
        text = path.read_text()
        for pattern in ("math.ceil(budget", "math.ceil(args.budget", "math.ceil(b / 1e4", "np.ceil(grid / 1e4"):
            assert pattern not in text, (path.name, pattern)


# --------------------------------------------------------------------------------------------
# C. Element-wise warm-up losses take the ranking losses' targets
# --------------------------------------------------------------------------------------------


def _warmup_only(warmup: nn.Module, main: nn.Module) -> LossWarmupWrapper:
    wrapper = LossWarmupWrapper(warmup, main, warmup_epochs=1, temp_start=0.5, temp_end=0.05)
    wrapper.on_train_epoch_start(0)
    wrapper.on_train_batch_start(0)
    return wrapper


def ref_bce(x: list[float], y: list[float], pos_weight: float = 1.0) -> float:
    """Mean binary cross-entropy with logits, ``pos_weight`` on the positive term, in Python floats."""
    terms = [
        -(pos_weight * yi * math.log(1 / (1 + math.exp(-xi))) + (1 - yi) * math.log(1 / (1 + math.exp(xi))))
        for xi, yi in zip(x, y, strict=True)
    ]
    return math.fsum(terms) / len(terms)


@pytest.mark.parametrize("target_shape", ["[N]", "[N, 1]"])
def test_bce_warmup_binary_long_targets(target_shape: str) -> None:
    x = torch.randn(12, 1, dtype=torch.float64, generator=_gen(20), requires_grad=True)
    y = (torch.rand(12, generator=_gen(21)) < 0.3).long()
    y[0] = 1
    wrapper = _warmup_only(
        nn.BCEWithLogitsLoss(pos_weight=torch.tensor([4.0], dtype=torch.float64)),
        PAUCAtBudgetLoss(num_classes=1, alpha=0.0, beta=0.1, queue_size=0),
    )
    loss = wrapper(x, y if target_shape == "[N]" else y[:, None])
    expected = ref_bce(x[:, 0].tolist(), y.double().tolist(), pos_weight=4.0)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    assert x.grad is not None
    assert x.grad.shape == (12, 1)


def test_bce_warmup_multiclass_ids_are_one_hot() -> None:
    n, c = 10, 3
    x = torch.randn(n, c, dtype=torch.float64, generator=_gen(22))
    y = torch.randint(0, c, (n,), generator=_gen(23))
    pos_weight = torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64)
    wrapper = _warmup_only(nn.BCEWithLogitsLoss(pos_weight=pos_weight), SmoothAPLoss(num_classes=c, queue_size=0))
    terms = [
        ref_bce([x[i, k].item()], [float(y[i].item() == k)], pos_weight=pos_weight[k].item())
        for i in range(n)
        for k in range(c)
    ]
    assert wrapper(x, y).item() == pytest.approx(math.fsum(terms) / len(terms), rel=1e-12)


def test_bce_warmup_multihot_long_targets_are_cast() -> None:
    x = torch.randn(8, 2, dtype=torch.float64, generator=_gen(24))
    y = (torch.rand(8, 2, generator=_gen(25)) < 0.5).long()
    wrapper = _warmup_only(nn.BCEWithLogitsLoss(), SmoothAPLoss(num_classes=2, queue_size=0))
    expected = ref_bce(x.flatten().tolist(), y.double().flatten().tolist())
    assert wrapper(x, y).item() == pytest.approx(expected, rel=1e-12)


def test_focal_warmup_takes_class_ids_and_row_weights() -> None:
    n, c = 9, 3
    x = torch.randn(n, c, dtype=torch.float64, generator=_gen(26))
    y = torch.randint(0, c, (n,), generator=_gen(27))
    w = torch.rand(n, dtype=torch.float64, generator=_gen(28)) + 0.1
    wrapper = _warmup_only(SigmoidFocalLoss(alpha=0.25, gamma=2.0), SmoothAPLoss(num_classes=c, queue_size=0))
    one_hot = torch.tensor([[float(y[i].item() == k) for k in range(c)] for i in range(n)], dtype=torch.float64)
    expected = ref_row_weighted_focal(x, one_hot, w, alpha=0.25, gamma=2.0, reduction="mean")
    torch.testing.assert_close(wrapper(x, y, sample_weight=w), expected, **F64)


def test_bce_warmup_blend_phase() -> None:
    x = torch.randn(16, 1, dtype=torch.float64, generator=_gen(29))
    y = (torch.rand(16, generator=_gen(30)) < 0.3).long()
    y[:2] = 1
    wrapper = LossWarmupWrapper(
        nn.BCEWithLogitsLoss(),
        SmoothAPLoss(num_classes=1, queue_size=0),
        warmup_epochs=1,
        blend_epochs=1,
        temp_start=0.5,
        temp_end=0.05,
    )
    wrapper.on_train_epoch_start(1)
    wrapper.on_train_batch_start(0)
    main = SmoothAPLoss(num_classes=1, queue_size=0, temperature=0.5)(x, y)
    expected = 0.5 * ref_bce(x[:, 0].tolist(), y.double().tolist()) + 0.5 * main.item()
    assert wrapper(x, y).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("c", "targets"),
    [(1, torch.tensor([0, 1, -100, 1])), (1, torch.tensor([0, 2, 1, 1])), (3, torch.tensor([0, 1, 3, 2]))],
    ids=["binary-ignore", "binary-2", "multiclass-out-of-range"],
)
def test_elementwise_warmup_rejects_unmappable_targets(c: int, targets: torch.Tensor) -> None:
    wrapper = _warmup_only(nn.BCEWithLogitsLoss(), SmoothAPLoss(num_classes=c, queue_size=0))
    with pytest.raises(ValueError, match=r"`targets`.*BCEWithLogitsLoss"):
        wrapper(torch.randn(4, c), targets)


def test_other_warmup_losses_get_targets_unchanged() -> None:
    seen = []

    class Recorder(nn.Module):
        def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            seen.append(targets)
            return logits.sum() * 0

    wrapper = _warmup_only(Recorder(), SmoothAPLoss(num_classes=3, queue_size=0))
    y = torch.tensor([0, 2, 1])
    wrapper(torch.randn(3, 3), y)
    assert seen[0] is y


# --------------------------------------------------------------------------------------------
# C. Return forms and the temperature decay in epoch mode
# --------------------------------------------------------------------------------------------


def test_return_form_scalar_in_warmup_tuple_after() -> None:
    """0.6's forms, kept: the warm-up loss's scalar, then the main loss's tuple (first element blended)."""
    wrapper = LossWarmupWrapper(
        nn.CrossEntropyLoss(),
        SmoothAPLoss(num_classes=3, queue_size=0),
        warmup_epochs=1,
        blend_epochs=1,
        temp_start=0.5,
        temp_end=0.05,
    )
    x = torch.randn(12, 3, dtype=torch.float64, generator=_gen(31))
    y = torch.randint(0, 3, (12,), generator=_gen(32))
    y[:3] = torch.tensor([0, 1, 2])
    wrapper.on_train_epoch_start(0)
    wrapper.on_train_batch_start(0)
    out = wrapper(x, y, return_diagnostics=True)
    assert isinstance(out, torch.Tensor)
    assert out.shape == ()
    torch.testing.assert_close(out, nn.functional.cross_entropy(x, y), **F64)
    wrapper.on_train_epoch_start(1)
    wrapper.on_train_batch_start(1)
    out = wrapper(x, y, return_diagnostics=True)
    main_loss, main_stats = SmoothAPLoss(num_classes=3, queue_size=0, temperature=0.5)(x, y, return_diagnostics=True)
    assert isinstance(out, tuple)
    assert len(out) == 2
    torch.testing.assert_close(out[0], 0.5 * nn.functional.cross_entropy(x, y) + 0.5 * main_loss, **F64)
    assert out[1].keys() == main_stats.keys()


def test_temp_decay_steps_counts_global_steps_in_epoch_mode() -> None:
    """Sized as steps_per_epoch * (epochs - warmup_epochs), the decay ends on the last batch."""
    steps_per_epoch, epochs, warmup_epochs = 7, 5, 2
    wrapper = LossWarmupWrapper(
        nn.CrossEntropyLoss(),
        SmoothAPLoss(num_classes=3, queue_size=0),
        warmup_epochs=warmup_epochs,
        temp_start=0.5,
        temp_end=0.05,
        temp_decay_steps=steps_per_epoch * (epochs - warmup_epochs) - 1,
    )
    temperatures = []
    for epoch in range(epochs):
        wrapper.on_train_epoch_start(epoch)
        for batch in range(steps_per_epoch):
            wrapper.on_train_batch_start(epoch * steps_per_epoch + batch)
            temperatures.append(wrapper.current_temperature)
    latch = warmup_epochs * steps_per_epoch
    assert temperatures[latch] == 0.5
    assert temperatures[-1] == pytest.approx(0.05, rel=1e-12)
    assert temperatures[-2] > 0.05
    s = wrapper.temp_decay_steps
    for step in range(latch, len(temperatures)):
        assert temperatures[step] == pytest.approx(0.5 * 0.1 ** ((step - latch) / s), rel=1e-12)


# --------------------------------------------------------------------------------------------
# C. The error for [N] logits
# --------------------------------------------------------------------------------------------


def test_one_dimensional_logits_error_says_unsqueeze() -> None:
    with pytest.raises(ValueError, match=r"`logits` must have shape \[N, 1\].*logits\.unsqueeze\(1\)") as info:
        SmoothAPLoss(num_classes=1)(torch.randn(8), torch.randint(0, 2, (8,)))
    assert "flatten" not in str(info.value)
    assert "got shape (8,)" in str(info.value)


def test_sequence_logits_error_keeps_the_flatten_hint() -> None:
    with pytest.raises(ValueError, match=r"flatten sequence dimensions first.*got shape \(8, 1, 2\)") as info:
        SmoothAPLoss(num_classes=1)(torch.randn(8, 1, 2), torch.randint(0, 2, (8,)))
    assert "unsqueeze" not in str(info.value)


def test_multiclass_one_dimensional_logits_error_has_no_unsqueeze_hint() -> None:
    with pytest.raises(ValueError, match=r"`logits` must have shape \[N, 3\]") as info:
        SmoothAPLoss(num_classes=3)(torch.randn(8), torch.randint(0, 3, (8,)))
    assert "unsqueeze" not in str(info.value)


@pytest.mark.parametrize("c", [1, 3])
def test_focal_warmup_keeps_its_ignore_index_rows_ignored(c: int) -> None:
    n = 8
    x = torch.randn(n, c, dtype=torch.float64, generator=_gen(33))
    y = torch.randint(0, max(c, 2), (n,), generator=_gen(34))
    y[[1, 5]] = -100
    wrapper = _warmup_only(
        SigmoidFocalLoss(alpha=0.25, gamma=2.0, ignore_index=-100), SmoothAPLoss(num_classes=c, queue_size=0)
    )
    keep = [i for i in range(n) if y[i].item() != -100]
    if c == 1:
        kept_targets = y[keep].double()[:, None]
    else:
        kept_targets = torch.tensor([[float(y[i].item() == k) for k in range(c)] for i in keep], dtype=torch.float64)
    expected = ref_row_weighted_focal(
        x[keep], kept_targets, torch.ones(len(keep), dtype=torch.float64), alpha=0.25, gamma=2.0, reduction="mean"
    )
    torch.testing.assert_close(wrapper(x, y), expected, **F64)
