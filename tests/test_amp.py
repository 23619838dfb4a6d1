"""Mixed precision (SPEC D9) for the ranking losses, the warm-up wrapper and the functional API.

D9: under :func:`torch.autocast` or with float16/bfloat16 logits, every loss computes in
float32 internally, returns a float32 loss, and its gradient reaches the logits in their dtype.
The focal losses' own half-precision and autocast checks live in ``test_focal.py``; this file
covers ``SmoothAPLoss``, ``RecallAtQuantileLoss``, ``PAUCAtBudgetLoss`` (trapezoid and pairwise),
``LossWarmupWrapper`` around a ranking loss, and :mod:`imbalanced_losses.functional`.

Each case is run three ways: logits produced by an ``nn.Linear`` under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (the loss is called inside the autocast
region, as in a training step), and bfloat16 / float16 logits passed directly. The reference is
the same loss (a fresh instance, fed the same sequence of batches) on ``logits.float()``
outside any autocast region. Pair-kernel losses run through both the dense small-pool path and
the windowed large-pool path (forced through ``_pairs.DENSE_MAX``, as ``test_kernels.py`` does).

Tolerances. Upcasting a half-precision value to float32 is exact, so "computes in float32"
means the library runs the very float32 computation of the reference: the loss is compared to
``atol=1e-6, rtol=1e-5`` (a few float32 ulps at 1.0 and ten times tighter than the kernel's own
accuracy budget of 1e-5, SPEC A2; a computation carried out in bfloat16, whose ulp at 1.0 is
7.8e-3, misses it by orders of magnitude). The gradient reaching half-precision logits is the
float32 gradient rounded once to their dtype, so it is compared to the reference gradient
rounded the same way, to ``rtol = eps(dtype)`` (one ulp) plus ``1e-4`` of the largest entry
(A2's gradient budget) for entries near zero. The queue is compared exactly: it stores the
upcast (exact) float32 logits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import pytest
import torch
from torch import nn

from imbalanced_losses import (
    LossWarmupWrapper,
    PAUCAtBudgetLoss,
    RecallAtQuantileLoss,
    SmoothAPLoss,
    SoftmaxFocalLoss,
)
from imbalanced_losses.functional import (
    _pairs,
    pauc_at_budget_loss,
    recall_at_quantile_loss,
    sigmoid_focal_loss,
    smooth_ap_loss,
)

pytestmark = pytest.mark.usefixtures("on_device")  # also on CUDA when available (tests/conftest.py)

LOSS_TOL = {"atol": 1e-6, "rtol": 1e-5}
GRAD_REL = 1e-4  # of the largest reference entry, for entries near zero (SPEC A2)
QUEUE = 64
FEATURES = 8
CALLS = 3

#: name -> (module factory taking C, functional loss taking (logits, targets), uses the pair kernel)
RANKING: dict[str, tuple[Callable[[int], nn.Module], Callable[..., Any], bool]] = {
    "smooth_ap": (
        lambda c: SmoothAPLoss(c, queue_size=QUEUE, temperature=0.1),
        functools.partial(smooth_ap_loss, temperature=0.1),
        True,
    ),
    "recall": (
        lambda c: RecallAtQuantileLoss(c, quantile=0.1, queue_size=QUEUE, temperature=0.1),
        functools.partial(recall_at_quantile_loss, quantile=0.1, temperature=0.1),
        False,
    ),
    "pauc_trapezoid": (
        lambda c: PAUCAtBudgetLoss(c, beta=0.2, n_knots=3, queue_size=QUEUE),
        functools.partial(pauc_at_budget_loss, beta=0.2, n_knots=3),
        False,
    ),
    "pauc_pairwise": (
        lambda c: PAUCAtBudgetLoss(c, beta=0.2, surrogate="pairwise", queue_size=QUEUE),
        functools.partial(pauc_at_budget_loss, beta=0.2, surrogate="pairwise"),
        True,
    ),
}
MODES = ["autocast", "bfloat16", "float16"]
TASKS = {"binary": 1, "multiclass": 3, "multilabel": 3}


def _cases() -> Iterator[Any]:
    for name, (_, _, kernel) in RANKING.items():
        for path in ["dense", "windowed"] if kernel else ["none"]:
            for task in TASKS:
                for mode in MODES:
                    yield pytest.param(name, path, task, mode, id=f"{name}-{path}-{task}-{mode}")


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


class PathSpy:
    """Forces the pair kernel's path and counts the windowed kernel's runs (through ``_plan``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: str) -> None:
        self.windowed_runs = 0
        if path == "none":
            return
        monkeypatch.setattr(_pairs, "DENSE_MAX", -1 if path == "windowed" else 1 << 62)
        plan = _pairs._plan

        def spy(*args: Any, **kwargs: Any) -> Any:
            self.windowed_runs += 1
            return plan(*args, **kwargs)

        monkeypatch.setattr(_pairs, "_plan", spy)

    def check(self, path: str) -> None:
        if path == "windowed":
            assert self.windowed_runs > 0, "the windowed kernel was not used"
        else:
            assert self.windowed_runs == 0, "the windowed kernel ran on a path meant to be dense/none"


def _targets(task: str, n: int, g: torch.Generator) -> torch.Tensor:
    c = TASKS[task]
    if task == "binary":
        return (torch.rand(n, generator=g) < 0.3).long()
    if task == "multiclass":
        return torch.randint(0, c, (n,), generator=g)
    return (torch.rand(n, c, generator=g) < 0.3).long()


@functools.cache
def _multilabel_unsupported(name: str) -> str | None:
    """Why ``name`` cannot take multi-hot ``[N, C]`` targets in float32 yet (``None`` if it can)."""
    g = torch.Generator().manual_seed(99)
    module = RANKING[name][0](3)
    try:
        for _ in range(2):  # the second call merges with a queue holding [Q, C] targets
            module(torch.randn(24, 3, generator=g), _targets("multilabel", 24, g))
        RANKING[name][1](torch.randn(24, 3, generator=g), _targets("multilabel", 24, g))
    except (TypeError, ValueError, RuntimeError) as err:
        return f"multi-label [N, C] targets not supported yet (SPEC A3): {type(err).__name__}: {err}"
    return None


def _skip_unsupported(task: str, name: str) -> None:
    if task == "multilabel":
        reason = _multilabel_unsupported(name)
        if reason is not None:
            pytest.skip(reason)


class HalfLogits:
    """Produces half-precision logits for one mode and the region the loss is called in."""

    def __init__(self, mode: str, c: int, g: torch.Generator) -> None:
        self.mode, self.c, self.g = mode, c, g
        self.dtype = torch.bfloat16 if mode in ("autocast", "bfloat16") else torch.float16
        self.model = nn.Linear(FEATURES, c) if mode == "autocast" else None
        if self.model is not None:
            with torch.no_grad():
                self.model.weight.copy_(torch.randn(c, FEATURES, generator=g))

    def region(self) -> AbstractContextManager[Any]:
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.mode == "autocast" else nullcontext()

    def make(self, n: int) -> torch.Tensor:
        """Logits ``[n, C]`` in the half dtype; call inside :meth:`region`."""
        if self.model is None:
            return (torch.randn(n, self.c, generator=self.g) * 2).to(self.dtype).requires_grad_()
        logits = self.model(torch.randn(n, FEATURES, generator=self.g))
        assert logits.dtype == torch.bfloat16, "autocast did not produce bfloat16 logits"
        logits.retain_grad()
        return logits


def _check_grad(half: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    """``half`` (the gradient in the logits' dtype) is ``ref`` (float32) rounded once to ``dtype``."""
    assert half.dtype == dtype
    assert torch.isfinite(half.float()).all()
    expected = ref.to(dtype).float()
    atol = GRAD_REL * float(ref.abs().max()) if ref.numel() else 0.0
    torch.testing.assert_close(half.float(), expected, rtol=torch.finfo(dtype).eps, atol=atol)


def _check_state(module: nn.Module, ref: nn.Module) -> None:
    """Same buffers (the queue), the stored logits in float32."""
    state, ref_state = module.state_dict(), ref.state_dict()
    assert state.keys() == ref_state.keys()
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            if value.is_floating_point():
                assert value.dtype == torch.float32, (key, value.dtype)
            assert torch.equal(value, ref_state[key]), key
        else:
            assert value == ref_state[key], key


# ----------------------------------------------------------------------------------------------
# Modules: binary, multi-class, multi-label; both kernel paths; autocast and half logits
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "path", "task", "mode"), list(_cases()))
def test_module_half_precision_matches_float32(
    monkeypatch: pytest.MonkeyPatch, name: str, path: str, task: str, mode: str
) -> None:
    _skip_unsupported(task, name)
    spy = PathSpy(monkeypatch, path)
    c = TASKS[task]
    g = torch.Generator().manual_seed(7)
    source = HalfLogits(mode, c, g)
    module, ref = RANKING[name][0](c), RANKING[name][0](c)
    extra = {"return_diagnostics": True} if name.startswith("pauc") else {}
    for step in range(CALLS):
        n = 48 if step != 1 else 40  # a batch smaller than the queue: the ring buffer wraps
        targets = _targets(task, n, g)
        with source.region():
            logits = source.make(n)
            out = module(logits, targets, return_per_class=True, **extra)
        loss, per_class = out[0], out[1]
        ref_logits = logits.detach().float().requires_grad_()
        ref_out = ref(ref_logits, targets, return_per_class=True, **extra)

        assert loss.dtype == torch.float32
        assert per_class.dtype == torch.float32
        assert torch.isfinite(loss)
        torch.testing.assert_close(loss, ref_out[0], **LOSS_TOL)
        torch.testing.assert_close(per_class, ref_out[1], equal_nan=True, **LOSS_TOL)
        assert torch.equal(out[2], ref_out[2])
        if extra:
            for key, value in out[3].items():
                if value.is_floating_point():
                    assert value.dtype == torch.float32, key
                torch.testing.assert_close(value, ref_out[3][key], equal_nan=True, **LOSS_TOL)

        loss.backward()
        ref_out[0].backward()
        _check_grad(logits.grad, ref_logits.grad, source.dtype)
        _check_state(module, ref)
    if source.model is not None:
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in source.model.parameters())
        assert all(torch.isfinite(p.grad).all() for p in source.model.parameters())
    spy.check(path)


# ----------------------------------------------------------------------------------------------
# Large pools under autocast: the kernel's batched products must stay in float32 too
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["dense", "windowed"])
@pytest.mark.parametrize("name", ["smooth_ap", "pauc_pairwise"])
def test_autocast_large_pool_matches_float32(monkeypatch: pytest.MonkeyPatch, name: str, path: str) -> None:
    """A pool whose (query, key) blocks exceed 2**15 terms, so that the kernel calls ``torch.bmm``.

    Regression test: autocast demoted that ``bmm`` to bfloat16 (dense path: loss off by ~1e-4;
    windowed path: ``RuntimeError: Index put requires the source and destination dtypes match``)
    until the cores ran with autocast disabled (``functional/_classes.py::run_on_classes``).
    """
    spy = PathSpy(monkeypatch, path)
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(1024, 2, generator=g).to(torch.bfloat16)
    targets = torch.randint(0, 2, (1024,), generator=g)
    make = {
        "smooth_ap": lambda: SmoothAPLoss(2, queue_size=0, temperature=0.1),
        "pauc_pairwise": lambda: PAUCAtBudgetLoss(2, beta=0.5, surrogate="pairwise", queue_size=0),
    }[name]
    ref_logits = logits.float().requires_grad_()
    ref = make()(ref_logits, targets)
    ref.backward()
    x = logits.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = make()(x, targets)
    assert loss.dtype == torch.float32
    loss.backward()
    spy.check(path)
    torch.testing.assert_close(loss, ref, **LOSS_TOL)
    _check_grad(x.grad, ref_logits.grad, torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("path", ["dense", "windowed"])
@pytest.mark.parametrize("name", ["smooth_ap", "pauc_pairwise"])
def test_half_logits_large_pool_matches_float32(
    monkeypatch: pytest.MonkeyPatch, name: str, path: str, dtype: torch.dtype
) -> None:
    """The same large pools with half logits passed directly (no autocast): float32 throughout."""
    spy = PathSpy(monkeypatch, path)
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(1024, 2, generator=g).to(dtype)
    targets = torch.randint(0, 2, (1024,), generator=g)
    fn = RANKING[name][1]
    fn = functools.partial(fn, beta=0.5) if name == "pauc_pairwise" else fn
    ref_logits = logits.float().requires_grad_()
    ref = fn(ref_logits, targets)
    ref.backward()
    x = logits.clone().requires_grad_()
    loss = fn(x, targets)
    assert loss.dtype == torch.float32
    loss.backward()
    spy.check(path)
    torch.testing.assert_close(loss, ref, **LOSS_TOL)
    _check_grad(x.grad, ref_logits.grad, dtype)


# ----------------------------------------------------------------------------------------------
# Functional API
# ----------------------------------------------------------------------------------------------


FUNCTIONAL_CASES = [
    (name, task, mode)
    for name in [*RANKING, "sigmoid_focal"]
    for task in TASKS
    for mode in MODES
    if name != "sigmoid_focal" or task == "multilabel"  # targets shaped like the logits
]


@pytest.mark.parametrize(("name", "task", "mode"), FUNCTIONAL_CASES)
def test_functional_half_precision_matches_float32(name: str, task: str, mode: str) -> None:
    if name == "sigmoid_focal":
        fn: Callable[..., Any] = functools.partial(sigmoid_focal_loss, gamma=0.5)
    else:
        _skip_unsupported(task, name)
        fn = RANKING[name][1]
    c = TASKS[task]
    g = torch.Generator().manual_seed(3)
    source = HalfLogits(mode, c, g)
    targets = _targets(task, 64, g)
    if name == "sigmoid_focal":
        targets = targets.float()
    with source.region():
        logits = source.make(64)
        loss = fn(logits, targets)
    ref_logits = logits.detach().float().requires_grad_()
    ref = fn(ref_logits, targets)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, ref, **LOSS_TOL)
    loss.backward()
    ref.backward()
    _check_grad(logits.grad, ref_logits.grad, source.dtype)


@pytest.mark.parametrize("api", ["module", "functional"])
@pytest.mark.parametrize("name", list(RANKING))
def test_float16_logits_whose_sum_overflows_float16(name: str, api: str) -> None:
    # Every logit is finite (about 100), but 1,024 x 3 of them sum far past float16's 65504: the
    # loss must still be the float32 loss, not a NaN from the zero-weight graph anchor. The
    # module runs the unweighted reduction, the function the class-weighted one.
    factory, fn, _ = RANKING[name]
    g = torch.Generator().manual_seed(5)
    logits = (torch.randn(1024, 3, generator=g) * 5 + 100).half().requires_grad_()
    targets = torch.randint(0, 3, (1024,), generator=g)
    assert torch.isinf(logits.detach().sum())

    def loss_of(x: torch.Tensor) -> torch.Tensor:
        if api == "module":
            return factory(3)(x, targets)  # a fresh instance: an empty queue for both inputs
        return fn(x, targets, class_weight=[1.0, 2.0, 0.5])

    ref_logits = logits.detach().float().requires_grad_()
    loss, ref = loss_of(logits), loss_of(ref_logits)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, ref, **LOSS_TOL)
    loss.backward()
    ref.backward()
    _check_grad(logits.grad, ref_logits.grad, torch.float16)


# ----------------------------------------------------------------------------------------------
# LossWarmupWrapper around a ranking loss: warm-up, blend and main phases
# ----------------------------------------------------------------------------------------------


def _wrapper(main: nn.Module) -> LossWarmupWrapper:
    return LossWarmupWrapper(
        SoftmaxFocalLoss(gamma=2.0),
        main,
        warmup_steps=1,
        blend_steps=1,
        temp_start=0.2,
        temp_end=0.05,
        temp_decay_steps=2,
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["smooth_ap", "pauc_pairwise", "recall"])
def test_warmup_wrapper_half_precision_matches_float32(name: str, mode: str) -> None:
    c = 3
    g = torch.Generator().manual_seed(5)
    source = HalfLogits(mode, c, g)
    wrapper, ref = _wrapper(RANKING[name][0](c)), _wrapper(RANKING[name][0](c))
    phases = []
    for step in range(4):  # warm-up, blend (w = 1/2), main, main
        for w in (wrapper, ref):
            w.on_train_batch_start(step)
        phases.append((wrapper.in_warmup, wrapper.main_weight))
        targets = torch.randint(0, c, (48,), generator=g)
        with source.region():
            logits = source.make(48)
            loss = wrapper(logits, targets)
        ref_logits = logits.detach().float().requires_grad_()
        ref_loss = ref(ref_logits, targets)
        assert loss.dtype == torch.float32
        assert torch.isfinite(loss)
        torch.testing.assert_close(loss, ref_loss, **LOSS_TOL)
        loss.backward()
        ref_loss.backward()
        _check_grad(logits.grad, ref_logits.grad, source.dtype)
        _check_state(wrapper, ref)
    assert phases == [(True, 0.0), (False, 0.5), (False, 1.0), (False, 1.0)]
