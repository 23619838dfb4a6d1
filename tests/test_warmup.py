"""`LossWarmupWrapper`: phases, hooks, forward, validation, warnings and persistence.

Spec: incumbent-behaviour.md §1.2 (signature), §9 (construction §9.1, phase predicates §9.2,
hooks §9.3, forward §9.4, persistence §9.5), §11, §14.4-§14.5; SPEC.md D4 (warnings once per
instance, at the user's line) and D10 (argument validation in the constructor). Expected
temperatures are recomputed here from the closed form with ``math.exp``/``math.log``.
"""

from __future__ import annotations

import copy
import inspect
import math
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import imbalanced_losses
from imbalanced_losses import LossWarmupWrapper, PAUCAtBudgetLoss, SmoothAPLoss
from imbalanced_losses.warmup_wrapper import LossWarmupWrapper as SubmoduleWrapper

C = 3
IGNORE = -100


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


class CountingSmoothAP(SmoothAPLoss):
    """A real SmoothAPLoss that counts `reset_queue()` calls."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.resets = 0

    def reset_queue(self) -> None:
        self.resets += 1
        super().reset_queue()


class RecordingLoss(nn.Module):
    """Records the keyword arguments of every call; returns the mean logit (graph-connected)."""

    def __init__(self, value: float = 0.0, *, temperature: float | None = 0.1) -> None:
        super().__init__()
        self.value = value
        self.calls: list[dict] = []
        if temperature is not None:
            self.temperature = temperature

    def forward(self, logits, targets, **kwargs):
        self.calls.append(kwargs)
        return logits.mean() * 0 + self.value


class WeightedCE(nn.Module):
    """Warm-up loss whose forward declares `sample_weight`."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[object] = []

    def forward(self, logits, targets, sample_weight=None):
        self.received.append(sample_weight)
        per_row = nn.functional.cross_entropy(logits, targets, reduction="none")
        if sample_weight is None:
            return per_row.mean()
        return (per_row * sample_weight).sum() / sample_weight.sum()


class PlainCE(nn.Module):
    """Warm-up loss without a `sample_weight` parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, logits, targets):
        self.calls += 1
        return nn.functional.cross_entropy(logits, targets)


class TupleWarmup(nn.Module):
    """Warm-up loss returning a tuple: only its first element is blended."""

    def forward(self, logits, targets):
        return nn.functional.cross_entropy(logits, targets), "extra"


def batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, C, generator=g, requires_grad=True)
    targets = torch.arange(n) % C  # every class present
    return logits, targets


def queue_fill(loss: SmoothAPLoss) -> int:
    return int((loss.state_dict()["_queue._q_targets"] != IGNORE).sum())


def decayed(step: int, *, switch: int, t0: float, t1: float, steps: int) -> float:
    """The geometric schedule, written independently of the implementation."""
    phi = min(1.0, (step - switch) / steps)
    return t0 * math.exp(phi * math.log(t1 / t0))


def make(**kwargs) -> LossWarmupWrapper:
    kwargs.setdefault("warmup_loss", nn.CrossEntropyLoss())
    kwargs.setdefault("main_loss", SmoothAPLoss(num_classes=C, queue_size=0))
    return LossWarmupWrapper(**kwargs)


def caught() -> warnings.catch_warnings:
    return warnings.catch_warnings(record=True)


# --------------------------------------------------------------------------------------------
# Surface
# --------------------------------------------------------------------------------------------


def test_exported_and_same_object():
    assert "LossWarmupWrapper" in imbalanced_losses.__all__
    assert imbalanced_losses.LossWarmupWrapper is SubmoduleWrapper


def test_signature_matches_incumbent():
    params = inspect.signature(LossWarmupWrapper).parameters
    pos, kw = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
    expected = [
        ("warmup_loss", inspect.Parameter.empty, pos),
        ("main_loss", inspect.Parameter.empty, pos),
        ("warmup_epochs", 0, pos),
        ("temp_start", 0.05, pos),
        ("temp_end", 0.005, pos),
        ("temp_decay_steps", 10_000, pos),
        ("blend_epochs", 0, kw),
        ("warmup_steps", None, kw),
        ("blend_steps", None, kw),
        ("final_main_weight", 1.0, kw),
        ("reset_queue_each_epoch", False, kw),
        ("gather_distributed", None, kw),
    ]
    assert [(p.name, p.default, p.kind) for p in params.values()] == expected
    forward = inspect.signature(LossWarmupWrapper.forward).parameters
    assert list(forward) == ["self", "logits", "targets", "kwargs"]


def test_blend_epochs_is_keyword_only():
    with pytest.raises(TypeError):
        LossWarmupWrapper(nn.CrossEntropyLoss(), SmoothAPLoss(C), 1, 0.05, 0.005, 100, 2)  # type: ignore[misc]


def test_submodules_attributes_and_repr():
    w = make(warmup_epochs=2, blend_epochs=1)
    assert dict(w.named_children()).keys() == {"warmup_loss", "main_loss"}
    assert (w.warmup_epochs, w.blend_epochs, w.warmup_steps, w.blend_steps) == (2, 1, 0, 0)
    assert "warmup_epochs=2" in repr(w)
    assert "blend_epochs=1" in repr(w)
    s = make(warmup_steps=10, blend_steps=3)
    assert "warmup_steps=10" in repr(s)
    assert "blend_steps=3" in repr(s)


# --------------------------------------------------------------------------------------------
# Phase predicates (§9.2)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epoch", "weight", "warm", "blend"),
    [
        (0, 0.0, True, False),
        (4, 0.0, True, False),
        (5, 1 / 3, False, True),
        (6, 2 / 3, False, True),
        (7, 1.0, False, False),
        (50, 1.0, False, False),
    ],
)
def test_epoch_mode_table(epoch, weight, warm, blend):
    w = make(warmup_epochs=5, blend_epochs=2)
    w.on_train_epoch_start(epoch)
    assert w.main_weight == pytest.approx(weight, abs=1e-12)
    assert (w.in_warmup, w.in_blend) == (warm, blend)


@pytest.mark.parametrize(
    ("step", "weight", "warm", "blend"),
    [
        (0, 0.0, True, False),
        (499, 0.0, True, False),
        (500, 0.25, False, True),
        (501, 0.50, False, True),
        (502, 0.75, False, True),
        (503, 1.0, False, False),
        (10_000, 1.0, False, False),
    ],
)
def test_step_mode_table(step, weight, warm, blend):
    w = make(warmup_steps=500, blend_steps=3)
    w.on_train_batch_start(step)
    assert w.main_weight == pytest.approx(weight, abs=1e-12)
    assert (w.in_warmup, w.in_blend) == (warm, blend)


@pytest.mark.parametrize("mode", ["epoch", "step"])
def test_final_main_weight_below_one(mode):
    if mode == "epoch":
        w = make(warmup_epochs=3, blend_epochs=2, final_main_weight=0.75)
        advance = w.on_train_epoch_start
    else:
        w = make(warmup_steps=3, blend_steps=2, final_main_weight=0.75)
        advance = w.on_train_batch_start
    weights = []
    for x in range(3, 9):
        advance(x)
        weights.append(w.main_weight)
    assert weights == pytest.approx([0.25, 0.50, 0.75, 0.75, 0.75, 0.75])


def test_no_blend_jumps_to_final_weight():
    w = make(warmup_epochs=2, final_main_weight=0.6)
    w.on_train_epoch_start(1)
    assert w.main_weight == 0.0
    w.on_train_epoch_start(2)
    assert w.main_weight == pytest.approx(0.6)
    assert not w.in_blend


def test_step_mode_ignores_epochs_for_phases():
    w = make(warmup_steps=10)
    w.on_train_epoch_start(100)
    assert w.in_warmup
    w.on_train_batch_start(10)
    assert not w.in_warmup


def test_warmup_temperature_is_main_loss_own_value():
    w = make(warmup_epochs=2, main_loss=SmoothAPLoss(C, queue_size=0, temperature=0.02), temp_start=0.5)
    assert w.current_temperature == pytest.approx(0.02)
    w.on_train_batch_start(0)
    assert w.current_temperature == pytest.approx(0.02)


def test_current_temperature_none_without_attribute():
    with pytest.warns(UserWarning, match="temperature scheduling will be skipped"):
        w = make(main_loss=RecordingLoss(temperature=None))
    assert w.current_temperature is None


# --------------------------------------------------------------------------------------------
# Hooks (§9.3): the example trace, the latch and the queue reset
# --------------------------------------------------------------------------------------------

T0, T1, DECAY = 0.5, 0.05, 10


def trace_wrapper() -> tuple[LossWarmupWrapper, CountingSmoothAP]:
    main = CountingSmoothAP(num_classes=C, queue_size=64, temperature=0.02)
    main(*batch(8, seed=99))  # stale rows from before the switch: the latch must drop them
    assert queue_fill(main) == 8
    wrapper = LossWarmupWrapper(
        nn.CrossEntropyLoss(), main, warmup_epochs=2, temp_start=T0, temp_end=T1, temp_decay_steps=DECAY, blend_epochs=2
    )
    return wrapper, main


def test_example_trace():
    wrapper, main = trace_wrapper()
    rows = []
    step = 0
    for epoch in range(7):
        wrapper.on_train_epoch_start(epoch)
        for _ in range(3):
            wrapper.on_train_batch_start(step)
            rows.append((epoch, step, wrapper.main_weight, wrapper.current_temperature, main.resets, queue_fill(main)))
            wrapper(*batch(8, seed=step)).backward()
            step += 1

    for epoch, step, weight, temperature, resets, fill in rows:
        if step < 6:  # warm-up: the main loss is never called, its queue and temperature stay
            assert (weight, resets, fill) == (0.0, 0, 8)
            assert temperature == pytest.approx(0.02)
            continue
        assert resets == 1  # exactly once, at the switch
        assert temperature == pytest.approx(decayed(step, switch=6, t0=T0, t1=T1, steps=DECAY), rel=1e-12)
        assert weight == pytest.approx({2: 1 / 3, 3: 2 / 3}.get(epoch, 1.0))
        if step == 6:
            assert fill == 0  # emptied at the latch, before the first main-loss call
        else:
            assert fill == min(64, 8 * (step - 6))

    temps = {step: temperature for _, step, _, temperature, _, _ in rows}
    assert temps[6] == T0
    # the spec's printed values (its 0.316 is 0.31548..., so compare to within 1e-3)
    assert [temps[s] for s in (7, 8, 9)] == pytest.approx([0.397, 0.316, 0.251], abs=1e-3)
    assert temps[15] > 0.05
    assert temps[16] == pytest.approx(0.05)
    assert temps[20] == pytest.approx(0.05)


def test_latch_needs_batch_hook_after_arming():
    wrapper, main = trace_wrapper()
    wrapper.on_train_epoch_start(2)  # arms
    assert main.temperature == pytest.approx(0.02)
    assert main.resets == 0
    wrapper.on_train_batch_start(6)
    assert main.temperature == T0
    assert main.resets == 1
    wrapper.on_train_epoch_start(3)  # already latched: nothing re-arms
    wrapper.on_train_batch_start(9)
    assert main.resets == 1
    assert main.temperature == pytest.approx(decayed(9, switch=6, t0=T0, t1=T1, steps=DECAY))


def test_step_mode_latches_at_first_step_past_warmup():
    main = CountingSmoothAP(num_classes=C, queue_size=8, temperature=0.02)
    w = LossWarmupWrapper(nn.CrossEntropyLoss(), main, temp_start=0.4, temp_end=0.1, temp_decay_steps=4, warmup_steps=3)
    for s in range(3):
        w.on_train_batch_start(s)
    assert (main.temperature, main.resets) == (0.02, 0)
    w.on_train_batch_start(3)
    assert (main.temperature, main.resets) == (0.4, 1)
    for s in (4, 5, 7, 30):
        w.on_train_batch_start(s)
        assert main.temperature == pytest.approx(decayed(s, switch=3, t0=0.4, t1=0.1, steps=4), rel=1e-12)
    assert main.resets == 1


def test_step_before_switch_extrapolates_and_increasing_schedule():
    main = SmoothAPLoss(C, queue_size=0)
    w = LossWarmupWrapper(nn.CrossEntropyLoss(), main, temp_start=0.1, temp_end=0.4, temp_decay_steps=10)
    w.on_train_batch_start(5)
    assert main.temperature == pytest.approx(decayed(5, switch=0, t0=0.1, t1=0.4, steps=10))
    assert main.temperature > 0.1
    wrapper, main = trace_wrapper()
    wrapper.on_train_epoch_start(2)
    wrapper.on_train_batch_start(6)
    wrapper.on_train_batch_start(3)  # before the latch step: phi < 0 is not clamped
    assert main.temperature == pytest.approx(T0 * (T1 / T0) ** (-0.3))
    assert main.temperature > T0


@pytest.mark.parametrize("mode", ["epoch", "step"])
def test_no_warmup_fast_path(mode):
    main = CountingSmoothAP(num_classes=C, queue_size=8, temperature=0.02)
    extra = {"warmup_steps": 0} if mode == "step" else {}
    w = LossWarmupWrapper(nn.CrossEntropyLoss(), main, 0, 0.3, 0.03, 6, **extra)
    assert main.temperature == 0.3  # at construction
    assert not w.in_warmup
    assert w.main_weight == 1.0
    for epoch in range(3):
        w.on_train_epoch_start(epoch)
        for s in range(epoch * 4, epoch * 4 + 4):
            w.on_train_batch_start(s)
            assert main.temperature == pytest.approx(decayed(s, switch=0, t0=0.3, t1=0.03, steps=6))
    assert main.resets == 0  # no latch, so no queue reset on this path


def test_reset_queue_each_epoch_epoch_mode():
    main = CountingSmoothAP(num_classes=C, queue_size=8)
    w = LossWarmupWrapper(nn.CrossEntropyLoss(), main, 2, reset_queue_each_epoch=True)
    resets = []
    step = 0
    for epoch in range(5):
        w.on_train_epoch_start(epoch)
        after_epoch_hook = main.resets
        for _ in range(3):
            w.on_train_batch_start(step)
            step += 1
        resets.append((after_epoch_hook, main.resets))
    # warm-up epochs: none; epoch 2: epoch start + latch; then one per epoch start
    assert resets == [(0, 0), (0, 0), (1, 2), (3, 3), (4, 4)]


def test_reset_queue_each_epoch_step_mode():
    main = CountingSmoothAP(num_classes=C, queue_size=8)
    w = LossWarmupWrapper(nn.CrossEntropyLoss(), main, warmup_steps=4, reset_queue_each_epoch=True)
    log = []
    step = 0
    for epoch in range(4):
        w.on_train_epoch_start(epoch)
        log.append(("epoch", epoch, main.resets))
        for _ in range(3):
            w.on_train_batch_start(step)
            step += 1
    # epoch 1 starts with last step 2 (warm-up): no reset; latch at step 4; epochs 2 and 3 reset
    assert log == [("epoch", 0, 0), ("epoch", 1, 0), ("epoch", 2, 2), ("epoch", 3, 3)]


def test_without_reset_queue_each_epoch_only_the_latch_resets():
    main = CountingSmoothAP(num_classes=C, queue_size=8)
    w = LossWarmupWrapper(nn.CrossEntropyLoss(), main, warmup_steps=2)
    for epoch in range(4):
        w.on_train_epoch_start(epoch)
        for s in range(epoch * 3, epoch * 3 + 3):
            w.on_train_batch_start(s)
    assert main.resets == 1


def test_hooks_accept_integer_like_and_reject_others():
    w = make(warmup_epochs=2)
    w.on_train_epoch_start(np.int64(2))
    assert not w.in_warmup
    w.on_train_batch_start(torch.tensor(7))
    assert w.get_extra_state()["switch_step"] == 7
    assert type(w.get_extra_state()["switch_step"]) is int
    for bad in (True, 2.0, "3", torch.tensor(1.5)):
        with pytest.raises(TypeError, match="`epoch` must be an int"):
            w.on_train_epoch_start(bad)
    with pytest.raises(TypeError, match="`global_step` must be an int"):
        w.on_train_batch_start(1.0)


# --------------------------------------------------------------------------------------------
# forward (§9.4)
# --------------------------------------------------------------------------------------------


def test_warmup_forward_is_exactly_the_warmup_loss():
    main = RecordingLoss()
    w = make(warmup_epochs=1, main_loss=main)
    logits, targets = batch()
    out = w(logits, targets, iid_mask=torch.ones(16, dtype=torch.bool))
    assert torch.equal(out, nn.functional.cross_entropy(logits, targets))
    assert main.calls == []


def test_warmup_tuple_passes_through_in_warmup():
    w = make(warmup_epochs=1, warmup_loss=TupleWarmup())
    logits, targets = batch()
    loss, extra = w(logits, targets)
    assert extra == "extra"
    assert torch.equal(loss, nn.functional.cross_entropy(logits, targets))


def test_blend_value_and_gradient():
    main = SmoothAPLoss(C, queue_size=0, temperature=0.1)
    w = make(warmup_epochs=1, blend_epochs=2, main_loss=main)
    w.on_train_epoch_start(1)
    w.on_train_batch_start(0)
    logits, targets = batch()
    out = w(logits, targets)
    a = nn.functional.cross_entropy(logits, targets)
    m = main(logits, targets)
    torch.testing.assert_close(out, (2 / 3) * a + (1 / 3) * m, rtol=0, atol=1e-7)
    assert not torch.allclose(out, m)  # the blend really mixes
    out.backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()


def test_blend_with_tuple_warmup_uses_first_element():
    main = SmoothAPLoss(C, queue_size=0, temperature=0.1)
    w = make(warmup_epochs=1, blend_epochs=1, warmup_loss=TupleWarmup(), main_loss=main)
    w.on_train_epoch_start(1)
    w.on_train_batch_start(0)
    logits, targets = batch()
    expected = 0.5 * nn.functional.cross_entropy(logits, targets) + 0.5 * main(logits, targets)
    torch.testing.assert_close(w(logits, targets), expected, rtol=0, atol=1e-7)


def test_main_phase_is_exactly_the_main_loss():
    main = SmoothAPLoss(C, queue_size=0, temperature=0.1)
    warm = PlainCE()
    w = make(warmup_epochs=1, warmup_loss=warm, main_loss=main)
    w.on_train_epoch_start(1)
    w.on_train_batch_start(0)
    logits, targets = batch()
    out = w(logits, targets, return_per_class=True)
    ref = main(logits, targets, return_per_class=True)
    assert isinstance(out, tuple)
    assert len(out) == 3
    for got, want in zip(out, ref, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert warm.calls == 0  # f == 1: the warm-up loss no longer runs


def test_blend_tuple_only_scalar_is_blended_smooth_ap():
    main = SmoothAPLoss(C, queue_size=0, temperature=0.1)
    w = make(warmup_epochs=1, blend_epochs=1, main_loss=main)
    w.on_train_epoch_start(1)
    w.on_train_batch_start(0)
    logits, targets = batch()
    loss, per_class, valid = w(logits, targets, return_per_class=True)
    ref_loss, ref_per_class, ref_valid = main(logits, targets, return_per_class=True)
    torch.testing.assert_close(
        loss, 0.5 * nn.functional.cross_entropy(logits, targets) + 0.5 * ref_loss, rtol=0, atol=1e-7
    )
    torch.testing.assert_close(per_class, ref_per_class, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(valid, ref_valid)


@pytest.mark.filterwarnings("ignore:PAUCAtBudgetLoss. degenerate dispersion:UserWarning")
def test_blend_tuple_diagnostics_pass_through_pauc():
    main = PAUCAtBudgetLoss(C, beta=0.3, queue_size=0, surrogate="pairwise")
    w = make(warmup_steps=2, blend_steps=3, main_loss=main, temp_start=0.1, temp_end=0.01)
    w.on_train_batch_start(3)  # weight 2/4
    logits, targets = batch(48)
    loss, stats = w(logits, targets, return_diagnostics=True)
    ref_loss, ref_stats = main(logits, targets, return_diagnostics=True)
    assert set(stats) >= {"t_alpha", "t_beta", "tau_eff", "band_neg_count", "pauc_var", "grad_pos_count"}
    for key, value in ref_stats.items():
        torch.testing.assert_close(stats[key], value, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(
        loss, 0.5 * nn.functional.cross_entropy(logits, targets) + 0.5 * ref_loss, rtol=0, atol=1e-7
    )


def test_final_weight_below_one_runs_both_forever():
    warm, main = PlainCE(), RecordingLoss(1.0)
    w = make(warmup_epochs=1, warmup_loss=warm, main_loss=main, final_main_weight=0.25)
    w.on_train_batch_start(0)
    logits, targets = batch()
    for epoch in (1, 10, 1000):
        w.on_train_epoch_start(epoch)
        expected = 0.75 * nn.functional.cross_entropy(logits, targets) + 0.25
        torch.testing.assert_close(w(logits, targets), expected, rtol=0, atol=1e-7)
    assert (warm.calls, len(main.calls)) == (3, 3)


def test_kwargs_reach_main_loss_only():
    warm, main = PlainCE(), RecordingLoss()
    w = make(warmup_epochs=1, blend_epochs=1, warmup_loss=warm, main_loss=main)
    w.on_train_batch_start(0)
    logits, targets = batch()
    iid = torch.ones(16, dtype=torch.bool)
    w(logits, targets, iid_mask=iid, return_per_class=False, foo=3)  # warm-up: main not called
    assert main.calls == []
    w.on_train_epoch_start(1)  # blend
    w(logits, targets, iid_mask=iid, return_per_class=False, foo=3)
    w.on_train_epoch_start(2)  # main only
    w(logits, targets, iid_mask=iid, foo=4)
    assert [sorted(c) for c in main.calls] == [["foo", "iid_mask", "return_per_class"], ["foo", "iid_mask"]]
    assert main.calls[0]["iid_mask"] is iid
    assert main.calls[1]["foo"] == 4
    assert warm.calls == 2  # warm-up and blend, called positionally with no kwargs (else TypeError)


def test_sample_weight_forwarded_when_accepted():
    warm, main = WeightedCE(), SmoothAPLoss(C, queue_size=0, temperature=0.1)
    w = make(warmup_epochs=1, blend_epochs=1, warmup_loss=warm, main_loss=main)
    w.on_train_batch_start(0)
    logits, targets = batch()
    sw = torch.linspace(0.5, 2.0, 16)
    per_row = nn.functional.cross_entropy(logits, targets, reduction="none")
    weighted = (per_row * sw).sum() / sw.sum()
    torch.testing.assert_close(w(logits, targets, sample_weight=sw), weighted, rtol=0, atol=1e-7)
    assert warm.received[-1] is sw
    w(logits, targets)  # not passed: not forwarded
    assert warm.received[-1] is None
    w.on_train_epoch_start(1)  # blend: both get it
    out = w(logits, targets, sample_weight=sw)
    assert warm.received[-1] is sw
    expected = 0.5 * weighted + 0.5 * main(logits, targets, sample_weight=sw)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-7)


def test_sample_weight_dropped_when_not_accepted():
    warm = PlainCE()
    w = make(warmup_epochs=1, warmup_loss=warm)
    logits, targets = batch()
    out = w(logits, targets, sample_weight=torch.ones(16))
    assert torch.equal(out, nn.functional.cross_entropy(logits, targets))


def test_var_keyword_warmup_gets_sample_weight_only():
    main = RecordingLoss()
    w = make(warmup_epochs=1, warmup_loss=RecordingLoss(), main_loss=main)
    warm = w.warmup_loss
    logits, targets = batch()
    sw = torch.ones(16)
    w(logits, targets, sample_weight=sw, iid_mask=torch.ones(16, dtype=torch.bool))
    w(logits, targets, iid_mask=torch.ones(16, dtype=torch.bool))
    assert warm.calls == [{"sample_weight": sw}, {}]


# --------------------------------------------------------------------------------------------
# Construction: validation (§9.1, D10)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"warmup_epochs": 2, "warmup_steps": 10}, "Cannot specify both warmup_epochs (non-zero) and warmup_steps"),
        ({"warmup_steps": 10, "blend_epochs": 1, "blend_steps": 2}, "Cannot specify both blend_epochs (non-zero)"),
        ({"blend_steps": 2}, "blend_steps requires warmup_steps"),
        ({"warmup_epochs": -1}, "`warmup_epochs` must be an int >= 0, got -1"),
        ({"warmup_steps": -1}, "`warmup_steps` must be an int >= 0, got -1"),
        ({"blend_epochs": -2}, "`blend_epochs` must be an int >= 0, got -2"),
        ({"warmup_steps": 3, "blend_steps": -1}, "`blend_steps` must be an int >= 0, got -1"),
        ({"final_main_weight": 0.0}, "`final_main_weight` must be a finite number in (0, 1]"),
        ({"final_main_weight": 1.5}, "`final_main_weight` must be a finite number in (0, 1]"),
        ({"final_main_weight": -0.1}, "`final_main_weight`"),
        ({"final_main_weight": math.nan}, "`final_main_weight`"),
        ({"temp_start": 0.0}, "`temp_start` must be positive (a finite number > 0)"),
        ({"temp_start": -1.0}, "`temp_start`"),
        ({"temp_start": math.inf}, "`temp_start`"),
        ({"temp_end": 0.0}, "`temp_end` must be positive (a finite number > 0)"),
        ({"temp_end": math.nan}, "`temp_end`"),
        ({"temp_decay_steps": 0}, "`temp_decay_steps` must be positive (an int >= 1), got 0"),
        ({"temp_decay_steps": -5}, "`temp_decay_steps`"),
    ],
)
def test_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        make(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "first"),
    [
        ({"warmup_epochs": -1, "warmup_steps": 5}, "Cannot specify both warmup_epochs"),
        ({"blend_epochs": 1, "blend_steps": 2}, "Cannot specify both blend_epochs"),
        ({"blend_steps": -1}, "blend_steps requires warmup_steps"),
        ({"warmup_epochs": -1, "final_main_weight": 2.0}, "`warmup_epochs`"),
        ({"blend_epochs": -1, "warmup_steps": -1}, "`warmup_steps`"),
        ({"final_main_weight": 2.0, "temp_start": 0.0}, "`final_main_weight`"),
        ({"temp_start": 0.0, "temp_end": 0.0}, "`temp_start`"),
        ({"temp_end": 0.0, "temp_decay_steps": 0}, "`temp_end`"),
    ],
)
def test_value_error_order(kwargs, first):
    with pytest.raises(ValueError, match=re.escape(first)):
        make(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"warmup_loss": "ce"}, "warmup_loss"),
        ({"warmup_loss": nn.functional.cross_entropy}, "warmup_loss"),
        ({"main_loss": None}, "main_loss"),
        ({"warmup_epochs": 2.0}, "warmup_epochs"),
        ({"warmup_epochs": True}, "warmup_epochs"),
        ({"warmup_epochs": "3"}, "warmup_epochs"),
        ({"temp_decay_steps": 100.0}, "temp_decay_steps"),
        ({"blend_epochs": False}, "blend_epochs"),
        ({"warmup_steps": 10.0}, "warmup_steps"),
        ({"warmup_steps": 10, "blend_steps": True}, "blend_steps"),
        ({"final_main_weight": "1"}, "final_main_weight"),
        ({"final_main_weight": True}, "final_main_weight"),
        ({"temp_start": "0.05"}, "temp_start"),
        ({"temp_end": None}, "temp_end"),
        ({"reset_queue_each_epoch": 1}, "reset_queue_each_epoch"),
        ({"gather_distributed": "yes"}, "gather_distributed"),
    ],
)
def test_type_errors(kwargs, name):
    with pytest.raises(TypeError, match=f"`{name}` must be"):
        make(**kwargs)


def test_accepts_edge_values():
    w = make(temp_start=0.1, temp_end=0.1, final_main_weight=1.0, temp_decay_steps=1, warmup_steps=0, blend_steps=0)
    w.on_train_batch_start(3)
    assert w.current_temperature == pytest.approx(0.1)
    assert make(warmup_epochs=0, warmup_steps=5).in_warmup  # warmup_epochs=0 with steps is fine


# --------------------------------------------------------------------------------------------
# Construction: gather_distributed, probes and warnings
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("own", "given", "expected"), [(None, True, True), (None, False, False), (False, None, False)])
def test_gather_distributed_copied_only_when_given(own, given, expected):
    main = SmoothAPLoss(C, queue_size=0, gather_distributed=own)
    w = make(main_loss=main, gather_distributed=given)
    assert main.gather_distributed is expected
    assert w.gather_distributed is given


def test_gather_distributed_skipped_without_attribute():
    main = RecordingLoss()
    make(main_loss=main, gather_distributed=True)
    assert not hasattr(main, "gather_distributed")


def test_construction_warns_without_temperature():
    with caught() as rec:
        warnings.simplefilter("always")
        make(main_loss=RecordingLoss(temperature=None))
    assert len(rec) == 1
    assert issubclass(rec[0].category, UserWarning)
    assert "temperature scheduling will be skipped" in str(rec[0].message)
    assert rec[0].filename == __file__


def test_construction_warns_reset_without_reset_queue():
    with caught() as rec:
        warnings.simplefilter("always")
        make(main_loss=RecordingLoss(), reset_queue_each_epoch=True)
    assert len(rec) == 1
    assert "reset_queue" in str(rec[0].message)
    assert rec[0].filename == __file__


def test_construction_warns_blend_epochs_in_step_mode():
    with pytest.warns(UserWarning, match="blend_epochs=2 is ignored in step mode") as rec:
        w = make(warmup_steps=5, blend_epochs=2)
    assert rec[0].filename == __file__
    w.on_train_batch_start(5)
    assert w.main_weight == 1.0


def test_no_construction_warning_with_ranking_loss():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(warmup_epochs=2, blend_epochs=1, reset_queue_each_epoch=True)
        make(warmup_steps=5, blend_steps=5)


# --------------------------------------------------------------------------------------------
# Runtime warnings
# --------------------------------------------------------------------------------------------


def count_warnings(rec, text: str) -> int:
    return sum(text in str(r.message) for r in rec)


@pytest.mark.parametrize("warmup_epochs", [0, 1])
def test_batch_hook_warning_once_at_user_line(warmup_epochs):
    w = make(warmup_epochs=warmup_epochs)
    logits, targets = batch()
    w.on_train_epoch_start(1)
    with caught() as rec:
        warnings.simplefilter("always")
        for _ in range(3):
            w(logits, targets)
    hits = [r for r in rec if "on_train_batch_start" in str(r.message)]
    assert len(hits) == 1
    assert hits[0].filename == __file__


def test_no_batch_hook_warning_when_called_in_warmup_or_without_temperature():
    logits, targets = batch()
    with caught() as rec:
        warnings.simplefilter("always")
        w = make(warmup_epochs=1)
        w(logits, targets)  # warm-up
        w.on_train_batch_start(0)
        w.on_train_epoch_start(1)
        w(logits, targets)  # hook seen
        plain = make(main_loss=RecordingLoss(temperature=None))  # warns at construction only
        plain(logits, targets)
    assert count_warnings(rec, "on_train_batch_start") == 0
    assert count_warnings(rec, "temperature scheduling will be skipped") == 1


def test_epoch_hook_warning_after_100_training_forwards():
    w = make(warmup_epochs=2, warmup_loss=PlainCE())
    logits, targets = batch(4)
    with caught() as rec:
        warnings.simplefilter("always")
        for _ in range(99):
            w.on_train_batch_start(0)
            w(logits, targets)
        assert count_warnings(rec, "on_train_epoch_start") == 0
        w(logits, targets)  # 100th
        hits = [r for r in rec if "on_train_epoch_start" in str(r.message)]
        assert len(hits) == 1
        assert hits[0].filename == __file__
        assert issubclass(hits[0].category, UserWarning)
        assert "warm-up never ends" in str(hits[0].message)
        for _ in range(150):
            w(logits, targets)
    assert count_warnings(rec, "on_train_epoch_start") == 1
    assert w.in_warmup  # behaviour unchanged: the warning only reports it


def test_step_mode_batch_hook_warning_after_100_training_forwards():
    w = make(warmup_steps=5, warmup_loss=PlainCE())
    logits, targets = batch(4)
    with caught() as rec:
        warnings.simplefilter("always")
        for _ in range(99):
            w(logits, targets)
        assert count_warnings(rec, "never ends") == 0
        for _ in range(50):
            w(logits, targets)
    hits = [str(r.message) for r in rec if "never ends" in str(r.message)]
    assert len(hits) == 1
    assert "on_train_batch_start(global_step)" in hits[0]
    assert "warmup_steps=5" in hits[0]
    assert w.in_warmup


@pytest.mark.parametrize("case", ["hook_called", "eval_mode", "step_mode", "no_warmup"])
def test_epoch_hook_warning_not_raised(case):
    kwargs = {"warmup_steps": 10_000} if case == "step_mode" else {"warmup_epochs": 0 if case == "no_warmup" else 3}
    w = make(warmup_loss=PlainCE(), **kwargs)
    if case == "hook_called":
        w.on_train_epoch_start(0)
    if case == "eval_mode":
        w.eval()
    w.on_train_batch_start(0)
    logits, targets = batch(4)
    with caught() as rec:
        warnings.simplefilter("always")
        for _ in range(150):
            w(logits, targets)
    assert count_warnings(rec, "on_train_epoch_start") == 0


# --------------------------------------------------------------------------------------------
# Persistence (§9.5)
# --------------------------------------------------------------------------------------------


def run_trace_until(wrapper: LossWarmupWrapper, last_step: int) -> None:
    step = 0
    for epoch in range(10):
        wrapper.on_train_epoch_start(epoch)
        for _ in range(3):
            wrapper.on_train_batch_start(step)
            wrapper(*batch(8, seed=step))
            if step == last_step:
                return
            step += 1


def test_state_dict_keys_and_extra_state():
    wrapper, _ = trace_wrapper()
    sd = wrapper.state_dict()
    assert "_extra_state" in sd
    assert {"main_loss._queue._q_logits", "main_loss._queue._q_targets", "main_loss._queue._q_ptr"} <= set(sd)
    assert sd["_extra_state"] == {
        "epoch": 0,
        "global_step": 0,
        "switch_step": None,
        "batch_hook_seen": False,
        "temperature": pytest.approx(0.02),
    }


def test_resume_mid_schedule_continues_without_relatch():
    wrapper, main = trace_wrapper()
    run_trace_until(wrapper, 9)  # epoch 3, latched at step 6
    assert main.resets == 1
    sd = copy.deepcopy(wrapper.state_dict())
    assert sd["_extra_state"]["switch_step"] == 6
    assert sd["_extra_state"]["epoch"] == 3
    saved_targets = sd["main_loss._queue._q_targets"].clone()
    assert int((saved_targets != IGNORE).sum()) == 32

    fresh_main = CountingSmoothAP(num_classes=C, queue_size=64, temperature=0.02)
    fresh = LossWarmupWrapper(
        nn.CrossEntropyLoss(), fresh_main, 2, T0, T1, DECAY, blend_epochs=2
    )  # a new process: same config
    fresh.load_state_dict(sd, strict=True)
    assert fresh_main.temperature == pytest.approx(decayed(9, switch=6, t0=T0, t1=T1, steps=DECAY))
    assert fresh.main_weight == pytest.approx(2 / 3)
    assert torch.equal(fresh_main.state_dict()["_queue._q_targets"], saved_targets)

    with caught() as rec:
        warnings.simplefilter("always")
        fresh.on_train_batch_start(10)
        fresh(*batch(8, seed=10))
    assert count_warnings(rec, "on_train_batch_start") == 0  # batch_hook_seen was restored
    assert fresh_main.resets == 0  # no re-latch: the restored queue survives
    assert fresh_main.temperature == pytest.approx(decayed(10, switch=6, t0=T0, t1=T1, steps=DECAY))
    assert queue_fill(fresh_main) == 40


def test_weights_only_file_round_trip(tmp_path):
    main = CountingSmoothAP(num_classes=C, queue_size=16)
    w = LossWarmupWrapper(nn.CrossEntropyLoss(), main, temp_start=0.2, temp_end=0.02, warmup_steps=3, blend_steps=2)
    for s in range(6):
        w.on_train_batch_start(s)
        w(*batch(8, seed=s))
    path = tmp_path / "ckpt.pt"
    torch.save(w.state_dict(), path)
    sd = torch.load(path, weights_only=True)
    assert sd["_extra_state"] == w.get_extra_state()

    main2 = CountingSmoothAP(num_classes=C, queue_size=16)
    w2 = LossWarmupWrapper(nn.CrossEntropyLoss(), main2, temp_start=0.2, temp_end=0.02, warmup_steps=3, blend_steps=2)
    w2.load_state_dict(sd)
    assert w2.get_extra_state() == w.get_extra_state()
    assert w2.get_extra_state()["global_step"] == 5
    assert (w2.in_warmup, w2.main_weight) == (False, 1.0)
    for key, value in w.state_dict().items():
        if key != "_extra_state":
            assert torch.equal(w2.state_dict()[key], value), key
    w2.on_train_batch_start(6)
    assert main2.resets == 0
    assert main2.temperature == pytest.approx(decayed(6, switch=3, t0=0.2, t1=0.02, steps=10_000))


def test_legacy_state_dict_without_extra_state_loads_strict():
    wrapper, _ = trace_wrapper()
    run_trace_until(wrapper, 9)
    sd = wrapper.state_dict()
    del sd["_extra_state"]
    fresh_main = CountingSmoothAP(num_classes=C, queue_size=64, temperature=0.02)
    fresh = LossWarmupWrapper(nn.CrossEntropyLoss(), fresh_main, 2, T0, T1, DECAY, blend_epochs=2)
    result = fresh.load_state_dict(sd, strict=True)
    assert result.missing_keys == []
    assert result.unexpected_keys == []
    # the schedule restarts (nothing to restore); the queue buffers do load
    assert fresh.get_extra_state() == {
        "epoch": 0,
        "global_step": 0,
        "switch_step": None,
        "batch_hook_seen": False,
        "temperature": pytest.approx(0.02),
    }
    assert torch.equal(fresh_main.state_dict()["_queue._q_targets"], sd["main_loss._queue._q_targets"])
    assert "_extra_state" in fresh.state_dict()


def test_incumbent_written_extra_state_loads():
    main = CountingSmoothAP(num_classes=C, queue_size=8, temperature=0.02)
    w = LossWarmupWrapper(nn.CrossEntropyLoss(), main, 2, T0, T1, DECAY, blend_epochs=2)
    sd = w.state_dict()
    sd["_extra_state"] = {"epoch": 3, "global_step": 0, "switch_step": 6, "batch_hook_seen": True, "temperature": 0.2}
    w.load_state_dict(sd, strict=True)
    assert main.temperature == 0.2
    assert (w.in_warmup, w.in_blend) == (False, True)
    assert w.main_weight == pytest.approx(2 / 3)
    w.on_train_batch_start(7)
    assert main.resets == 0
    assert main.temperature == pytest.approx(decayed(7, switch=6, t0=T0, t1=T1, steps=DECAY))


def test_armed_extra_state_latches_at_next_batch():
    main = CountingSmoothAP(num_classes=C, queue_size=8, temperature=0.02)
    w = LossWarmupWrapper(nn.CrossEntropyLoss(), main, 2, T0, T1, DECAY, blend_epochs=2)
    w.set_extra_state({"epoch": 2, "global_step": 0, "switch_step": -1, "batch_hook_seen": True, "temperature": 0.02})
    w.on_train_batch_start(6)
    assert (main.temperature, main.resets) == (T0, 1)


def test_partial_extra_state_keeps_missing_keys():
    main = SmoothAPLoss(C, queue_size=0, temperature=0.02)
    w = make(warmup_epochs=2, main_loss=main)
    w.set_extra_state({"epoch": 4})
    assert w.get_extra_state() == {
        "epoch": 4,
        "global_step": 0,
        "switch_step": None,
        "batch_hook_seen": False,
        "temperature": pytest.approx(0.02),
    }
    w.set_extra_state({"temperature": None})  # None: the main loss's temperature is left alone
    assert main.temperature == pytest.approx(0.02)
    with pytest.raises(TypeError, match="`state` must be a dict"):
        w.set_extra_state([4])


def test_extra_state_without_temperature_attribute():
    with pytest.warns(UserWarning, match="temperature scheduling will be skipped"):
        w = make(main_loss=RecordingLoss(temperature=None))
    assert w.get_extra_state()["temperature"] is None
    w.set_extra_state({"temperature": 0.3})  # nothing to apply it to
    assert not hasattr(w.main_loss, "temperature")


def test_deepcopy_is_independent():
    w = make(warmup_epochs=2)
    clone = copy.deepcopy(w)
    clone.on_train_epoch_start(5)
    assert w.in_warmup
    assert not clone.in_warmup
