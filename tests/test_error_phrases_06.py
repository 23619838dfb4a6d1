"""Drop-in error texts: every error or warning phrase of imbalanced-losses 0.6 is kept.

Code and tests written against 0.6 match on its messages (``pytest.raises(match=...)``,
``re.search``, case-sensitive). Each entry below triggers one condition that 0.6 raises or
warns about (as specified in ``incumbent-behaviour.md`` §2.1, §2.3, §2.4, §2.6, §5.6, §7,
§8.1, §9.1, §10 and §11) on our modules and, where they exist, our functional forms, and
checks that our (clearer) message still contains 0.6's phrase. An argument name may be
wrapped in backticks in our messages, hence the optional backtick in some patterns. The table
in ``docs/migrating-from-0.6.md`` ("Error and warning messages") lists the same phrases.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch

import imbalanced_losses as il
from imbalanced_losses import functional as fn
from imbalanced_losses.distributed import all_gather_no_grad, all_gather_with_grad


def _x(c: int = 2) -> torch.Tensor:
    return torch.randn(8, c)


def _t(c: int = 2) -> torch.Tensor:
    return torch.arange(8) % c


RANKING = [il.SmoothAPLoss, il.RecallAtQuantileLoss, il.PAUCAtBudgetLoss]
RANKING_FN = [fn.smooth_ap_loss, fn.recall_at_quantile_loss, fn.pauc_at_budget_loss]


def _wrapper(**kw: Any) -> il.LossWarmupWrapper:
    return il.LossWarmupWrapper(il.SoftmaxFocalLoss(), il.SmoothAPLoss(num_classes=2), **kw)


# (id, callable, exception type, 0.6 phrase as a regular expression)
ERRORS: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    # ranking constructors (§2.1)
    *[
        (f"{c.__name__}-num_classes=0", lambda c=c: c(num_classes=0), ValueError, "num_classes`? must be positive")
        for c in RANKING
    ],
    *[
        (f"{c.__name__}-queue_size=-1", lambda c=c: c(num_classes=2, queue_size=-1), ValueError, "queue_size.*>= 0")
        for c in RANKING
    ],
    *[
        (
            f"{c.__name__}-temperature={v}",
            lambda c=c, v=v: c(num_classes=2, temperature=v),
            ValueError,
            "temperature`? must be positive",
        )
        for c in RANKING
        for v in (0.0, -1.0)
    ],
    *[
        (
            f"{f.__name__}-temperature=0",
            lambda f=f: f(_x(), _t(), temperature=0.0),
            ValueError,
            "temperature`? must be positive",
        )
        for f in RANKING_FN
    ],
    *[
        (
            f"{c.__name__}-reduction",
            lambda c=c: c(num_classes=2, reduction="avg"),
            ValueError,
            "invalid reduction 'avg'",
        )
        for c in RANKING
    ],
    *[
        (f"{f.__name__}-reduction", lambda f=f: f(_x(), _t(), reduction="avg"), ValueError, "invalid reduction 'avg'")
        for f in RANKING_FN
    ],
    *[
        (
            f"{c.__name__}-max_pool_size=0",
            lambda c=c: c(num_classes=2, max_pool_size=0),
            ValueError,
            "max_pool_size`? must be positive",
        )
        for c in RANKING
    ],
    ("recall-quantile=1", lambda: il.RecallAtQuantileLoss(num_classes=2, quantile=1.0), ValueError, "quantile"),
    ("recall-quantile=0", lambda: il.RecallAtQuantileLoss(num_classes=2, quantile=0.0), ValueError, "quantile"),
    (
        "recall-interpolation",
        lambda: il.RecallAtQuantileLoss(num_classes=2, quantile_interpolation="cubic"),
        ValueError,
        "quantile_interpolation",
    ),
    # pAUC constructor (§2.1): not 0 <= alpha < beta <= 1 is one condition in 0.6
    ("pauc-alpha>=beta", lambda: il.PAUCAtBudgetLoss(num_classes=2, alpha=0.5, beta=0.1), ValueError, "alpha.*beta"),
    ("pauc-alpha<0", lambda: il.PAUCAtBudgetLoss(num_classes=2, alpha=-0.1, beta=0.5), ValueError, "alpha.*beta"),
    ("pauc-beta>1", lambda: il.PAUCAtBudgetLoss(num_classes=2, alpha=0.0, beta=1.5), ValueError, "alpha.*beta"),
    ("pauc-beta=0", lambda: il.PAUCAtBudgetLoss(num_classes=2, alpha=0.0, beta=0.0), ValueError, "alpha.*beta"),
    ("pauc_fn-beta>1", lambda: fn.pauc_at_budget_loss(_x(), _t(), beta=1.5), ValueError, "alpha.*beta"),
    ("pauc-n_knots=1", lambda: il.PAUCAtBudgetLoss(num_classes=2, n_knots=1), ValueError, "n_knots"),
    ("pauc-n_knots=2.0", lambda: il.PAUCAtBudgetLoss(num_classes=2, n_knots=2.0), ValueError, "n_knots"),
    ("pauc-surrogate", lambda: il.PAUCAtBudgetLoss(num_classes=2, surrogate="x"), ValueError, "surrogate"),
    ("pauc-tau_scale", lambda: il.PAUCAtBudgetLoss(num_classes=2, tau_scale="x"), ValueError, "tau_scale"),
    ("pauc-pos_numerator", lambda: il.PAUCAtBudgetLoss(num_classes=2, pos_numerator="x"), ValueError, "pos_numerator"),
    ("pauc-budget_basis", lambda: il.PAUCAtBudgetLoss(num_classes=2, budget_basis="x"), ValueError, "budget_basis"),
    (
        "pauc-interpolation",
        lambda: il.PAUCAtBudgetLoss(num_classes=2, quantile_interpolation="x"),
        ValueError,
        "quantile_interpolation",
    ),
    # ranking forward (§2.3, §2.6)
    *[
        (f"{c.__name__}-logits-columns", lambda c=c: c(num_classes=2)(_x(3), _t()), ValueError, "Expected logits")
        for c in RANKING
    ],
    (
        "smooth_ap-logits-1d",
        lambda: il.SmoothAPLoss(num_classes=1)(torch.randn(8), _t()),
        ValueError,
        "Expected logits",
    ),
    ("smooth_ap_fn-logits-1d", lambda: fn.smooth_ap_loss(torch.randn(8), _t()), ValueError, "Expected logits"),
    ("smooth_ap-targets-shape", lambda: il.SmoothAPLoss(num_classes=2)(_x(), torch.zeros(8, 3)), ValueError, "targets"),
    (
        "pauc-iid_mask-shape",
        lambda: il.PAUCAtBudgetLoss(num_classes=2)(_x(), _t(), torch.ones(7, dtype=torch.bool)),
        ValueError,
        "iid_mask",
    ),
    *[
        (
            f"{c.__name__}-sample_weight-nan",
            lambda c=c: c(num_classes=2)(_x(), _t(), sample_weight=torch.full((8,), torch.nan)),
            ValueError,
            "must be finite, got NaN or inf",
        )
        for c in RANKING
    ],
    *[
        (
            f"{c.__name__}-sample_weight-negative",
            lambda c=c: c(num_classes=2)(_x(), _t(), sample_weight=-torch.ones(8)),
            ValueError,
            "must be non-negative, got min",
        )
        for c in RANKING
    ],
    # recall forward (§2.3 step 11); the other ranking losses raise too (D3)
    *[
        (
            f"{c.__name__}-class-ids",
            lambda c=c: c(num_classes=2)(_x(), torch.tensor([0, 1, 2, 0, 1, 0, 1, 0])),
            ValueError,
            r"targets contain class ids outside \[0, 2\)",
        )
        for c in RANKING
    ],
    (
        "recall_fn-class-ids",
        lambda: fn.recall_at_quantile_loss(_x(), torch.tensor([0, 1, 2, 0, 1, 0, 1, 0])),
        ValueError,
        r"targets contain class ids outside \[0, 2\)",
    ),
    # focal losses (§10); an unsupported reduction raises at construction here (D7)
    ("sigmoid-alpha", lambda: il.SigmoidFocalLoss(alpha=1.5), ValueError, "alpha"),
    (
        "softmax-alpha-2d",
        lambda: il.SoftmaxFocalLoss(alpha=[[0.1, 0.2]]),
        ValueError,
        r"alpha`? must be a 1-D tensor of shape \(C,\)",
    ),
    (
        "sigmoid-reduction",
        lambda: il.SigmoidFocalLoss(reduction="avg"),
        ValueError,
        r"Invalid reduction: 'avg'\. Supported modes: 'none', 'mean', 'sum'",
    ),
    (
        "softmax-reduction",
        lambda: il.SoftmaxFocalLoss(reduction="avg"),
        ValueError,
        r"Invalid reduction: 'avg'\. Supported modes: 'none', 'mean', 'mean_positive', 'sum'",
    ),
    (
        "sigmoid_fn-reduction",
        lambda: fn.sigmoid_focal_loss(_x(), torch.rand(8, 2), reduction="avg"),
        ValueError,
        r"Invalid reduction: 'avg'\. Supported modes: 'none', 'mean', 'sum'",
    ),
    (
        "softmax_fn-reduction",
        lambda: fn.softmax_focal_loss(_x(), _t(), reduction="avg"),
        ValueError,
        r"Invalid reduction: 'avg'\. Supported modes: 'none', 'mean', 'mean_positive', 'sum'",
    ),
    (
        "sigmoid-sample_weight",
        lambda: il.SigmoidFocalLoss()(_x(), torch.rand(8, 2), sample_weight=-torch.ones(8)),
        ValueError,
        "must be non-negative, got min",
    ),
    (
        "softmax-sample_weight",
        lambda: il.SoftmaxFocalLoss()(_x(), _t(), sample_weight=torch.full((8,), torch.inf)),
        ValueError,
        "must be finite, got NaN or inf",
    ),
    # warm-up wrapper constructor (§9.1)
    (
        "wrapper-both-warmups",
        lambda: _wrapper(warmup_epochs=1, warmup_steps=5),
        ValueError,
        r"Cannot specify both warmup_epochs \(non-zero\) and warmup_steps",
    ),
    (
        "wrapper-both-blends",
        lambda: _wrapper(warmup_steps=5, blend_epochs=1, blend_steps=2),
        ValueError,
        r"Cannot specify both blend_epochs \(non-zero\) and blend_steps",
    ),
    ("wrapper-blend-without-warmup", lambda: _wrapper(blend_steps=2), ValueError, "blend_steps requires warmup_steps"),
    # gather helpers (§8.1)
    ("all_gather_with_grad", lambda: all_gather_with_grad(torch.ones(3)), RuntimeError, "not initialized"),
    ("all_gather_no_grad", lambda: all_gather_no_grad(torch.ones(3)), RuntimeError, "not initialized"),
]


def _pauc_constant_negatives() -> None:
    scores = torch.cat([torch.zeros(6, 1), torch.ones(2, 1)])
    il.PAUCAtBudgetLoss(num_classes=1, queue_size=0)(scores, torch.tensor([0, 0, 0, 0, 0, 0, 1, 1]))


def _no_reset_queue() -> None:
    main = il.SoftmaxFocalLoss()
    main.temperature = 0.1  # a temperature but no reset_queue(): only the reset warning fires
    il.LossWarmupWrapper(il.SoftmaxFocalLoss(), main, reset_queue_each_epoch=True)


def _hook_never_called() -> None:
    _wrapper(warmup_epochs=0)(_x(), _t())


# (id, callable, 0.6 phrase); all are UserWarning
WARNINGS: list[tuple[str, Callable[[], Any], str]] = [
    *[
        (
            f"{c.__name__}-binary-targets",
            lambda c=c: c(num_classes=1)(_x(1), torch.tensor([0, 1, 2, 0, 1, 0, 0, 1])),
            r"expects targets in \{0, 1\}",
        )
        for c in RANKING
    ],
    (
        "smooth_ap_fn-binary-targets",
        lambda: fn.smooth_ap_loss(_x(1), torch.tensor([0, 1, 2, 0, 1, 0, 0, 1])),
        r"expects targets in \{0, 1\}",
    ),
    (
        "binary-non-zero-positive",
        lambda: il.SmoothAPLoss(num_classes=1)(_x(1), torch.tensor([0, 1, 2, 0, 1, 0, 0, 1])),
        "non-zero",
    ),
    (
        "max_pool_size",
        lambda: il.SmoothAPLoss(num_classes=2, max_pool_size=4)(_x(), _t()),
        "minimum-quota subsampling.*stochastic",
    ),
    ("pauc-dispersion", _pauc_constant_negatives, "dispersion"),
    (
        "sample_weight-zero",
        lambda: il.SmoothAPLoss(num_classes=2)(_x(), _t(), sample_weight=torch.zeros(8)),
        "entirely zero",
    ),
    (
        "wrapper-no-temperature",
        lambda: il.LossWarmupWrapper(il.SoftmaxFocalLoss(), il.SoftmaxFocalLoss()),
        "temperature scheduling will be skipped",
    ),
    ("wrapper-no-reset_queue", _no_reset_queue, "reset_queue"),
    ("wrapper-batch-hook", _hook_never_called, "on_train_batch_start"),
]


@pytest.mark.parametrize(("call", "exc", "phrase"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_error_keeps_the_06_phrase(call: Callable[[], Any], exc: type[Exception], phrase: str) -> None:
    with pytest.raises(exc, match=phrase):
        call()


@pytest.mark.parametrize(("call", "phrase"), [w[1:] for w in WARNINGS], ids=[w[0] for w in WARNINGS])
def test_warning_keeps_the_06_phrase(call: Callable[[], Any], phrase: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with pytest.warns(UserWarning, match=phrase):
            call()
