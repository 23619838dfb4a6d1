"""A temperature schedule under ``torch.compile`` recompiles at the phase changes only (issue 17, item 3).

A compiled :class:`~imbalanced_losses.LossWarmupWrapper` is driven, like the Lightning
``WarmupCallback`` does, by ``on_train_batch_start(global_step)`` before every batch: 10 steps of
warm-up (cross-entropy), 10 of blend (the main weight changes every step), then Smooth-AP alone
with its temperature decaying geometrically at every step until step 40, and constant after.

Dynamo specialises on Python numbers read in the compiled code: a step counter, a blend weight
or a temperature kept as a module's ``int``/``float`` attribute recompiles the frame at every
change (until the recompile limit, after which the calls silently run eagerly). Here the
recompile limit is raised well above the number of steps, so such recompiles would show, and
the test asserts that new frames are compiled at three steps only: the first call and the two
phase changes. With the schedule state in Python numbers (``imbalanced-losses`` before this
change) frames were compiled at all 60 steps.

Every step, the compiled loss and its gradient must equal an eager twin's: ``aot_eager`` runs the
same ATen kernels on the same values, so the bounds are those of ``tests/test_compile.py``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.utils import counters

from imbalanced_losses import LossWarmupWrapper, SmoothAPLoss

WARMUP, BLEND, DECAY, STEPS = 10, 10, 20, 60
T_START, T_END = 0.5, 0.05
C, N = 3, 48


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    """A clean Dynamo cache; a recompile limit far above the step count, and an error if it is hit."""
    torch._dynamo.reset()
    with torch._dynamo.config.patch(
        recompile_limit=4 * STEPS, accumulated_recompile_limit=40 * STEPS, fail_on_recompile_limit_hit=True
    ):
        yield
    torch._dynamo.reset()


def _make() -> LossWarmupWrapper:
    return LossWarmupWrapper(
        nn.CrossEntropyLoss(),
        SmoothAPLoss(C, queue_size=0, validate_args=False),
        warmup_steps=WARMUP,
        blend_steps=BLEND,
        temp_start=T_START,
        temp_end=T_END,
        temp_decay_steps=DECAY,
    )


def _frames_compiled() -> int:
    return int(counters["frames"]["total"])


def test_schedule_compiles_at_phase_changes_only() -> None:
    wrapper, eager = _make(), _make()
    compiled = torch.compile(wrapper, backend="aot_eager")
    g = torch.Generator().manual_seed(17)
    targets = torch.arange(N) % C  # a fixed class composition: no data-dependent recompiles
    compiled_at: list[int] = []
    weights, temperatures = [], []
    for step in range(STEPS):
        for w in (wrapper, eager):  # what WarmupCallback.on_train_batch_start does
            w.on_train_batch_start(step)
        weights.append(wrapper.main_weight)
        temperatures.append(wrapper.current_temperature)
        logits = torch.randn(N, C, generator=g)
        x_c, x_e = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        before = _frames_compiled()
        loss_c = compiled(x_c, targets)
        if _frames_compiled() > before:
            compiled_at.append(step)
        loss_e = eager(x_e, targets)
        loss_c.backward()
        loss_e.backward()
        torch.testing.assert_close(loss_c, loss_e, atol=1e-6, rtol=1e-5, msg=f"loss at step {step}")
        assert x_c.grad is not None
        assert x_e.grad is not None
        torch.testing.assert_close(x_c.grad, x_e.grad, atol=1e-5 * float(x_e.grad.abs().max()), rtol=0.0)

    # The schedule really changed at every step of the blend and of the decay ...
    assert weights[:WARMUP] == [0.0] * WARMUP
    assert weights[WARMUP : WARMUP + BLEND] == [(i + 1) / (BLEND + 1) for i in range(BLEND)]
    assert weights[WARMUP + BLEND :] == [1.0] * (STEPS - WARMUP - BLEND)
    decay = temperatures[WARMUP : WARMUP + DECAY + 1]
    assert len(set(decay)) == DECAY + 1  # a new temperature at every step after the latch
    assert decay[0] == T_START
    assert decay[-1] == pytest.approx(T_END, rel=1e-12)
    # ... and new frames were compiled at the first call and at the two phase changes only.
    assert compiled_at == [0, WARMUP, WARMUP + BLEND]


def test_temperature_reaches_the_kernel_as_a_tensor() -> None:
    """Assigning the temperature makes a new 0-d float64 tensor (autograd may hold the old one)."""
    loss_fn = SmoothAPLoss(C, queue_size=0, temperature=0.2)
    first = loss_fn._temperature_tensor
    loss_fn.temperature = 0.1
    second = loss_fn._temperature_tensor
    assert isinstance(loss_fn.temperature, float)
    assert loss_fn.temperature == 0.1
    assert first is not None
    assert second is not None
    assert first is not second
    assert (first.item(), second.item(), second.dtype, second.shape) == (0.2, 0.1, torch.float64, ())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["smooth_ap", "recall", "pauc_trapezoid", "pauc_pairwise"])
def test_tensor_temperature_is_bitwise_the_float_one(
    monkeypatch: pytest.MonkeyPatch, name: str, dtype: torch.dtype
) -> None:
    """The kernels give the same bits with the 0-d tensor temperature as with the float (the former path)."""
    from imbalanced_losses import PAUCAtBudgetLoss, RecallAtQuantileLoss
    from imbalanced_losses._base import RankingLoss

    makers = {
        "smooth_ap": lambda: SmoothAPLoss(C, queue_size=0, temperature=0.07),
        "recall": lambda: RecallAtQuantileLoss(C, quantile=0.2, queue_size=0, temperature=0.3),
        "pauc_trapezoid": lambda: PAUCAtBudgetLoss(C, beta=0.2, n_knots=3, queue_size=0, temperature=0.3),
        "pauc_pairwise": lambda: PAUCAtBudgetLoss(C, beta=0.2, surrogate="pairwise", queue_size=0, temperature=0.3),
    }
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(N, C, generator=g, dtype=dtype)
    targets = torch.arange(N) % C

    def run() -> tuple[torch.Tensor, ...]:
        x = logits.clone().requires_grad_()
        loss, per_class, _, stats = makers[name]()(x, targets, return_per_class=True, return_diagnostics=True)
        loss.backward()
        assert x.grad is not None
        return loss, per_class, x.grad, *(v for v in stats.values() if v.is_floating_point())

    with_tensor = run()
    monkeypatch.setattr(RankingLoss, "_temperature_arg", lambda self: float(self.temperature))
    with_float = run()
    for a, b in zip(with_tensor, with_float, strict=True):
        assert a.dtype == b.dtype
        assert torch.equal(a.nan_to_num(-1.0), b.nan_to_num(-1.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blend_equals_the_weighted_sum_of_the_two_losses(dtype: torch.dtype) -> None:
    """In the blend, the 0-d weight tensors give exactly ``(1 - w) * warmup + w * main`` with Python floats."""
    wrapper = _make()
    wrapper.on_train_batch_start(WARMUP + 3)  # blend, w = 4 / 11
    w = 4 / (BLEND + 1)
    assert wrapper.main_weight == w
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(N, C, generator=g, dtype=dtype)
    targets = torch.arange(N) % C
    main = SmoothAPLoss(C, queue_size=0, temperature=wrapper.current_temperature)
    expected = (1.0 - w) * nn.CrossEntropyLoss()(logits, targets) + w * main(logits, targets)
    out = wrapper(logits, targets)
    assert out.dtype == expected.dtype == dtype
    assert torch.equal(out, expected)


def test_modules_pickled_before_the_tensor_state_still_work() -> None:
    """A whole module saved by an older version (float ``temperature``, no derived state) loads and runs."""
    wrapper = _make()
    wrapper.on_train_batch_start(WARMUP + BLEND + 5)
    copy_ = copy.deepcopy(wrapper)
    main_state = dict(copy_.main_loss.__dict__)  # as an older version pickled it
    main_state["temperature"] = main_state.pop("_temperature")
    del main_state["_temperature_tensor"]
    main = SmoothAPLoss.__new__(SmoothAPLoss)
    main.__setstate__(main_state)
    state = dict(copy_.__dict__)
    del state["_runs"], state["_blend_weights"]
    state["_modules"] = {**state["_modules"], "main_loss": main}
    old = LossWarmupWrapper.__new__(LossWarmupWrapper)
    old.__setstate__(state)
    assert isinstance(main.temperature, float)
    assert main.temperature == wrapper.current_temperature
    assert old._runs == (False, True)
    logits, targets = torch.randn(N, C), torch.arange(N) % C
    assert torch.equal(old(logits, targets), wrapper(logits, targets))
