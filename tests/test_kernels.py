"""The memory-bounded pair kernel (``functional/_pairs.py``) equals the dense formulas.

Smooth-AP and the pairwise pAUC evaluate their ``[|P|, M]`` sigmoid sums through a kernel that
evaluates sorted windows of half-width ``K`` exactly and replaces the pairs with ``|d| > K``
by exponential tail series. This file checks that kernel from the outside, against dense
float64 references written here from the formulas alone (no library internals):

* Smooth-AP, per class ``c`` with positives ``P_c`` and members ``M_c`` (rows not ignored):
  ``R_all(k) = 1 + sum_{j in M_c, j != k} sig((s_j - s_k)/tau)``, ``R_pos(k)`` likewise over
  ``P_c``, ``AP_c = sum_k w_k R_pos(k)/R_all(k) / sum_k w_k`` and ``loss_c = 1 - AP_c``.
* Pairwise pAUC (``pos_numerator='pool'``), with the library's own detached thresholds and
  temperature (``return_diagnostics=True``): band ``B_c = {j negative : t_beta <= s_j <= t_alpha}``,
  ``pAUC_c = sum_{i in P_c} w_i sum_{j in B_c} sig((s_i - s_j)/tau_eff) / (|B_c| sum_i w_i)``.

The references take the very input values the library sees (float32 inputs are upcast, so the
rounding of the input is no part of the error) and differentiate with autograd, positive chunk
by positive chunk. Acceptance (the kernel issue): per-class loss within ``1e-5`` absolute
(float32) / ``1e-9`` (float64); gradient w.r.t. the logits within ``1e-4`` (float32) /
``1e-8`` (float64) of the reference gradient's largest entry.

What is proven (each through the windowed kernel, forced with ``_pairs.DENSE_MAX = -1``, and,
where noted, through the dense small-pool path, forced with a huge ``DENSE_MAX``):

1. Property cases (seeded, every value of each axis in every round of 7): both dtypes; pool
   sizes 1 to 6000; 1, 3 or 5 classes (1 = binary mode); temperatures 1e-4 to 1e3; scores
   Gaussian, heavily tied, all equal, two clusters 100 tau apart (tails dominate), or ~1e3 in
   magnitude with small temperatures; one positive, all but one, ~1 % and balanced targets;
   sample weights with zeros; ``ignore_index`` rows; pAUC bands ``[alpha, beta]`` with both
   ``tau_scale`` options. A third of the cases run with a small ``CHUNK`` (several chunks).
   Pools of up to 257 rows also run through the dense path.
2. Window edge: pairs exactly ``K tau`` apart and one ulp either side, ``K = 2`` (the CPU plan),
   ``K = 8`` and ``K = 10`` (the CUDA plan's float32 and float64 windows).
3. Named pathological pools: a positive hundreds of ``tau_eff`` above a class's band when the
   classes' bands differ in size; an invalid class next to a valid one; a nearly saturated pool;
   scores near 1e3 with ``|s| / tau`` of 1e6 (float32) / 1e10 (float64), all pairs in the tails.
4. Chunking: a small ``CHUNK`` gives the default-``CHUNK`` result to 1e-12 (float64).
5. Memory (slow): Smooth-AP on ``M = 65536, C = 4`` (float32) in a fresh process grows the peak
   RSS by less than 400 MB, and the loss of its three rare classes equals the dense formula.
6. ``torch.autograd.gradcheck`` (float64) through the windowed kernel with pairs on both sides of
   the window edge.

Module-with-queue == functional-on-merged-pool is covered in ``test_module_functional.py``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

import imbalanced_losses.functional.pauc_at_budget as pauc_module
import imbalanced_losses.functional.smooth_ap as ap_module
from imbalanced_losses.functional import _pairs, pauc_at_budget_loss, smooth_ap_loss

pytestmark = pytest.mark.usefixtures("on_device")  # also on CUDA when available (tests/conftest.py)

IGNORE = -100
#: (loss absolute tolerance, gradient tolerance relative to the largest reference entry)
TOLERANCE = {torch.float32: (1e-5, 1e-4), torch.float64: (1e-9, 1e-8)}
#: Derivative below which a pair counts as saturated: the kernel's documented truncation per key,
#: ``e^{-(N+1)K}`` (``e^{-24}`` in float32, ``e^{-40}`` in float64). The spec's gradient bound is
#: relative to the largest entry, which presumes a non-degenerate gradient; when *every* pair is
#: saturated (largest entry below ``SATURATED / tau``, e.g. 1e-163) the bound is taken relative to
#: ``SATURATED / tau`` instead. For any pool with a live pair this changes nothing.
SATURATED = {torch.float32: math.exp(-24.0), torch.float64: math.exp(-40.0)}
#: Pair terms per chunk when a test asks for several chunks.
SMALL_CHUNK = 64 * _pairs.BLOCK
#: Positives per chunk of the dense references (bounds their memory).
REF_CHUNK = 256


# ----------------------------------------------------------------------------------------------
# Forcing the kernel path
# ----------------------------------------------------------------------------------------------


class KernelSpy:
    """Counts windowed-kernel runs and the chunks each one used."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.plans = 0
        self.chunk_counts: list[int] = []
        plan, chunks = _pairs._plan, _pairs._chunks

        def spy_plan(*args: Any, **kwargs: Any) -> Any:
            self.plans += 1
            return plan(*args, **kwargs)

        def spy_chunks(*args: Any, **kwargs: Any) -> Any:
            out = chunks(*args, **kwargs)
            self.chunk_counts.append(len(out))
            return out

        monkeypatch.setattr(_pairs, "_plan", spy_plan)
        monkeypatch.setattr(_pairs, "_chunks", spy_chunks)


def force_path(monkeypatch: pytest.MonkeyPatch, path: str) -> KernelSpy:
    """Route every pool through ``path``: 'windowed' (sorted windows + tails) or 'dense' (one block
    holding every pair, taken when ``C * |P| * |keys| <= _pairs.DENSE_MAX``). Returns a spy on the
    windowed kernel."""
    monkeypatch.setattr(_pairs, "DENSE_MAX", -1 if path == "windowed" else 1 << 62)
    return KernelSpy(monkeypatch)


def test_the_only_path_switch_is_dense_max() -> None:
    """``force_path`` sets ``_pairs.DENSE_MAX``; a new dense/windowed switch must be wired there too."""
    assert isinstance(_pairs.DENSE_MAX, int)
    switches = [
        f"{module.__name__}.{name}"
        for module in (_pairs, ap_module, pauc_module)
        for name in vars(module)
        if name.isupper() and "DENSE" in name
    ]
    assert switches == ["imbalanced_losses.functional._pairs.DENSE_MAX"], switches


# ----------------------------------------------------------------------------------------------
# Dense float64 references
# ----------------------------------------------------------------------------------------------


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """``torch.sigmoid`` whose autograd derivative keeps full relative precision for large ``x``.

    ``torch.sigmoid``'s backward forms ``y (1 - y)``, which cancels for ``x >> 1`` (relative error
    ``eps * e^x``: 1e-7 at ``x = 20`` in float64). For ``x > 0`` the same value is computed as
    ``1 - sigmoid(-x)``, whose derivative ``sigmoid(-x) (1 - sigmoid(-x))`` is exact to rounding.
    """
    return torch.where(x > 0, 1.0 - torch.sigmoid(-x), torch.sigmoid(x))


@dataclass
class Reference:
    loss: torch.Tensor  # [C] float64, nan where the reference finds the class invalid
    valid: torch.Tensor  # [C] bool
    grad: torch.Tensor  # [M, C] float64: gradient of sum_c class_weight_c * loss_c over valid classes
    tau: float  # smallest temperature of a valid class (inf when none)


def _positive_mask(targets: torch.Tensor, c: int, num_classes: int) -> torch.Tensor:
    members = targets != IGNORE
    return members & ((targets != 0) if num_classes == 1 else (targets == c))


def dense_smooth_ap(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    sample_weight: torch.Tensor | None,
    class_weight: torch.Tensor,
    with_grad: bool = True,
    classes: list[int] | None = None,
) -> Reference:
    """The dense Smooth-AP formula in float64 (see the module docstring), on ``classes`` (default all)."""
    m, num_classes = logits.shape
    s_all = logits.detach().double().requires_grad_(with_grad)
    members = targets != IGNORE
    w_all = torch.ones(m, dtype=torch.float64) if sample_weight is None else sample_weight.double()
    loss = torch.full((num_classes,), float("nan"), dtype=torch.float64)
    valid = torch.zeros(num_classes, dtype=torch.bool)
    grad = torch.zeros(m, num_classes, dtype=torch.float64)
    member_rows = members.nonzero().squeeze(1)
    for c in range(num_classes) if classes is None else classes:
        pos = _positive_mask(targets, c, num_classes)
        neg = members & ~pos
        pos_rows = pos.nonzero().squeeze(1)
        total_w = w_all[pos_rows].sum()
        if not (pos.any() and neg.any() and total_w > 0):
            continue
        valid[c] = True
        key_is_pos = pos[member_rows].double()
        ap = torch.zeros((), dtype=torch.float64)
        for start in range(0, pos_rows.numel(), REF_CHUNK):
            rows = pos_rows[start : start + REF_CHUNK]
            s = s_all[:, c]
            sig = sigmoid((s[member_rows].unsqueeze(0) - s[rows].unsqueeze(1)) / temperature)
            sig = sig.masked_fill(member_rows.unsqueeze(0) == rows.unsqueeze(1), 0.0)  # j != k
            r_all = 1.0 + sig.sum(1)
            r_pos = 1.0 + (sig * key_is_pos).sum(1)
            term = (w_all[rows] * r_pos / r_all).sum() / total_w
            ap = ap + term.detach()
            if with_grad:
                grad += torch.autograd.grad(-class_weight[c] * term, s_all)[0]
        loss[c] = 1.0 - ap
    return Reference(loss, valid, grad, temperature if bool(valid.any()) else math.inf)


def dense_pairwise_pauc(
    logits: torch.Tensor,
    targets: torch.Tensor,
    stats: dict[str, torch.Tensor],
    sample_weight: torch.Tensor | None,
    class_weight: torch.Tensor,
) -> Reference:
    """The dense pairwise-pAUC formula in float64 on the library's thresholds and ``tau_eff``.

    ``valid`` marks the classes where this formula is defined (a positive, a negative, positive
    weight, a non-empty band); the library may further skip classes whose reference dispersion
    is degenerate, which is why its thresholds come from ``stats``.
    """
    m, num_classes = logits.shape
    s_all = logits.detach().double().requires_grad_(True)
    members = targets != IGNORE
    w_all = torch.ones(m, dtype=torch.float64) if sample_weight is None else sample_weight.double()
    loss = torch.full((num_classes,), float("nan"), dtype=torch.float64)
    valid = torch.zeros(num_classes, dtype=torch.bool)
    grad = torch.zeros(m, num_classes, dtype=torch.float64)
    tau_min = math.inf
    for c in range(num_classes):
        t_alpha, t_beta, tau = (float(stats[k][c]) for k in ("t_alpha", "t_beta", "tau_eff"))
        if tau != tau:  # nan: the library skipped the class
            continue
        pos = _positive_mask(targets, c, num_classes)
        s = s_all[:, c]
        band = members & ~pos & (s.detach() >= t_beta) & (s.detach() <= t_alpha)
        pos_rows, band_rows = pos.nonzero().squeeze(1), band.nonzero().squeeze(1)
        total_w = w_all[pos_rows].sum()
        if not (pos.any() and band.any() and total_w > 0):
            continue
        valid[c] = True
        tau_min = min(tau_min, tau)
        pauc = torch.zeros((), dtype=torch.float64)
        for start in range(0, pos_rows.numel(), REF_CHUNK):
            rows = pos_rows[start : start + REF_CHUNK]
            sig = sigmoid((s[rows].unsqueeze(1) - s[band_rows].unsqueeze(0)) / tau)
            term = (w_all[rows] * sig.sum(1)).sum() / (band_rows.numel() * total_w)
            pauc = pauc + term.detach()
            grad += torch.autograd.grad(-class_weight[c] * term, s_all)[0]
        loss[c] = 1.0 - pauc
    return Reference(loss, valid, grad, tau_min)


# ----------------------------------------------------------------------------------------------
# Library side and comparison
# ----------------------------------------------------------------------------------------------


def library_loss_and_grad(
    fn: Callable[..., Any], logits: torch.Tensor, class_weight: torch.Tensor, **options: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor] | None]:
    """``(per_class, valid, grad of sum_c class_weight_c * per_class_c over valid c, stats)``."""
    x = logits.detach().clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pAUC's degenerate-dispersion notice
        out = fn(x, reduction="none", return_per_class=True, **options)
    per_class, valid = out[1], out[2]
    stats = out[3] if len(out) > 3 else None
    objective = (per_class[valid] * class_weight[valid].to(x.dtype)).sum()
    grad = torch.autograd.grad(objective, x, allow_unused=True)[0] if valid.any() else None
    return per_class.detach(), valid, torch.zeros_like(x) if grad is None else grad, stats


def assert_matches(
    per_class: torch.Tensor, grad: torch.Tensor, ref: Reference, compared: torch.Tensor, label: str
) -> None:
    """Spec tolerances on the classes in ``compared``; the gradient is compared everywhere."""
    loss_tol, grad_tol = TOLERANCE[per_class.dtype]
    assert bool(torch.isfinite(per_class[compared]).all()), f"{label}: non-finite loss on a valid class"
    loss_err = (per_class[compared].double() - ref.loss[compared]).abs().max() if compared.any() else 0.0
    assert loss_err <= loss_tol, f"{label}: loss error {float(loss_err):.3e} > {loss_tol:g}"
    scale = max(float(ref.grad.abs().max()), SATURATED[per_class.dtype] / ref.tau)
    grad_err = float((grad.double() - ref.grad).abs().max())
    assert grad_err <= grad_tol * scale, (
        f"{label}: gradient error {grad_err:.3e} > {grad_tol:g} * {scale:.3e} (largest reference entry "
        f"{float(ref.grad.abs().max()):.3e})"
    )


# ----------------------------------------------------------------------------------------------
# Case generation
# ----------------------------------------------------------------------------------------------

DTYPES = (torch.float32, torch.float64)
SIZES = (1, 2, 7, 33, 257, 2000, 6000)
CLASS_COUNTS = (1, 3, 5)
TEMPERATURES = (1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0, 1e3)
DISTRIBUTIONS = ("randn", "ties", "equal", "clusters", "large")
TARGET_KINDS = ("one_pos", "all_but_one", "rare", "balanced")
#: pAUC options (alpha, beta, tau_scale) cycled through the pAUC cases.
PAUC_BANDS = ((0.0, 0.05, "iqr"), (0.0, 1.0, "band"), (0.01, 0.3, "band"), (0.0, 0.5, "iqr"))


@dataclass
class Case:
    dtype: torch.dtype
    m: int
    num_classes: int
    temperature: float
    distribution: str
    targets: str
    weighted: bool
    ignored: bool
    small_chunk: bool
    seed: int
    pauc: tuple[float, float, str] = field(default=(0.0, 0.05, "iqr"))

    @property
    def id(self) -> str:
        return (
            f"{str(self.dtype)[-7:]}-M{self.m}-C{self.num_classes}-t{self.temperature:g}-{self.distribution}"
            f"-{self.targets}{'-w' if self.weighted else ''}{'-ign' if self.ignored else ''}"
            f"{'-chunks' if self.small_chunk else ''}"
        )


def make_cases(
    rounds: int,
    seed: int,
    sizes: tuple[int, ...] = SIZES,
    distributions: tuple[str, ...] = DISTRIBUTIONS,
    target_kinds: tuple[str, ...] = TARGET_KINDS,
) -> list[Case]:
    """``rounds`` rounds of 7 cases; within a round every value of every axis appears at least once.

    Pools of 6000 rows appear in even rounds only, so the dense references stay cheap.
    """
    g = torch.Generator().manual_seed(seed)

    def column(values: tuple[Any, ...]) -> list[Any]:
        order = torch.randperm(len(values), generator=g).tolist()
        extra = torch.randint(len(values), (7 - len(values),), generator=g).tolist()
        picks = [values[i] for i in order + extra]
        return [picks[i] for i in torch.randperm(7, generator=g).tolist()]

    cases = []
    for r in range(rounds):
        axes = [
            column(DTYPES),
            column(sizes if r % 2 == 0 else tuple(m for m in sizes if m < 6000)),
            column(CLASS_COUNTS),
            column(TEMPERATURES),
            column(distributions),
            column(target_kinds),
            column((False, True)),
            column((False, True)),
            column((False, True)),
            column(PAUC_BANDS),
        ]
        for i in range(7):
            dtype, m, c, t, dist, kind, weighted, ignored, small_chunk, band = (axis[i] for axis in axes)
            cases.append(
                Case(dtype, m, c, t, dist, kind, weighted, ignored, small_chunk, 1000 * seed + 7 * r + i, band)
            )
    return cases


def make_scores(case: Case, g: torch.Generator) -> torch.Tensor:
    m, c, t = case.m, case.num_classes, case.temperature
    noise = torch.randn(m, c, generator=g, dtype=torch.float64)
    if case.distribution == "randn":
        s = noise
    elif case.distribution == "ties":  # four values only: many exact ties
        s = torch.randint(0, 4, (m, c), generator=g).double() * 0.5
    elif case.distribution == "equal":
        s = torch.full((m, c), 0.3, dtype=torch.float64)
    elif case.distribution == "clusters":  # two clusters 100 tau apart: every cross pair is in a tail
        side = torch.randint(0, 2, (m, c), generator=g).double() * 2 - 1
        s = side * 50 * t + noise * 3 * t
    else:  # "large": magnitude 1e3, spread ~30 tau so pairs sit in the window and in the tails
        s = 1e3 + noise * 30 * t
    return s.to(case.dtype)


def make_targets(case: Case, g: torch.Generator) -> torch.Tensor:
    m, c = case.m, case.num_classes
    if c == 1:
        if case.targets == "one_pos":
            t = torch.zeros(m, dtype=torch.long)
            t[0] = 1
        elif case.targets == "all_but_one":
            t = torch.ones(m, dtype=torch.long)
            t[0] = 0
        elif case.targets == "rare":
            t = (torch.rand(m, generator=g) < 0.01).long()
            t[0] = 1
        else:
            t = torch.randint(0, 2, (m,), generator=g)
    else:
        t = torch.zeros(m, dtype=torch.long)
        if case.targets == "one_pos":  # one positive for classes 1..C-1, class 0 takes the rest
            k = min(m, c - 1)
            t[:k] = torch.arange(1, k + 1)
        elif case.targets == "all_but_one":  # class 0: all but one row; class 1: one row; others: none
            t[0] = 1
        elif case.targets == "rare":
            rare = torch.rand(m, generator=g) < 0.01 * (c - 1)
            t[rare] = torch.randint(1, c, (int(rare.sum()),), generator=g)
            k = min(m, c - 1)
            t[:k] = torch.arange(1, k + 1)
        else:
            t = torch.randint(0, c, (m,), generator=g)
    t = t[torch.randperm(m, generator=g)]
    if case.ignored:
        t[torch.rand(m, generator=g) < 0.1] = IGNORE
    return t


def make_weights(case: Case, g: torch.Generator) -> torch.Tensor | None:
    if not case.weighted:
        return None
    w = 0.1 + 2 * torch.rand(case.m, generator=g, dtype=torch.float64)
    w[torch.rand(case.m, generator=g) < 0.2] = 0.0
    return w.to(case.dtype)


def materialise(case: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    g = torch.Generator().manual_seed(case.seed)
    logits, targets, weight = make_scores(case, g), make_targets(case, g), make_weights(case, g)
    class_weight = 0.5 + torch.rand(case.num_classes, generator=g, dtype=torch.float64)
    return logits, targets, weight, class_weight


# Every axis value, degenerate ones included (a 1-row pool, all scores equal, a single negative),
# plus rounds restricted to pools where the class is usually defined, so that most cases compare
# numbers rather than only agreeing that a class is invalid.
AP_CASES = make_cases(rounds=2, seed=1) + make_cases(rounds=4, seed=3, sizes=SIZES[1:])
PAUC_CASES = make_cases(rounds=2, seed=2) + make_cases(
    rounds=6,
    seed=4,
    sizes=SIZES[2:],
    distributions=("randn", "ties", "clusters", "large"),
    target_kinds=("one_pos", "rare", "balanced"),
)


def _check_coverage(cases: list[Case]) -> None:
    for name, values in [
        ("dtype", DTYPES),
        ("m", SIZES),
        ("num_classes", CLASS_COUNTS),
        ("temperature", TEMPERATURES),
        ("distribution", DISTRIBUTIONS),
        ("targets", TARGET_KINDS),
    ]:
        assert {getattr(case, name) for case in cases} == set(values), name


#: Property cases up to this size also run through the dense fast path (the windowed kernel runs them all).
DENSE_PATH_MAX_M = 257


def with_paths(cases: list[Case]) -> list[tuple[str, Case]]:
    return [("windowed", case) for case in cases] + [("dense", case) for case in cases if case.m <= DENSE_PATH_MAX_M]


def path_ids(cases: list[Case]) -> list[str]:
    return [f"{path}-{case.id}" for path, case in with_paths(cases)]


def test_property_cases_cover_every_axis_value() -> None:
    _check_coverage(AP_CASES)
    _check_coverage(PAUC_CASES)


# ----------------------------------------------------------------------------------------------
# 1. Property cases
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "case"), with_paths(AP_CASES), ids=path_ids(AP_CASES))
def test_smooth_ap_kernel_matches_dense_formula(path: str, case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = force_path(monkeypatch, path)
    if case.small_chunk:
        monkeypatch.setattr(_pairs, "CHUNK", SMALL_CHUNK)
    logits, targets, weight, class_weight = materialise(case)
    per_class, valid, grad, _ = library_loss_and_grad(
        smooth_ap_loss, logits, class_weight, targets=targets, temperature=case.temperature, sample_weight=weight
    )
    ref = dense_smooth_ap(logits, targets, case.temperature, weight, class_weight)
    assert (spy.plans >= 1) == (path == "windowed"), "the kernel took the wrong path"
    assert torch.equal(valid, ref.valid), f"{case.id}: valid {valid.tolist()} != reference {ref.valid.tolist()}"
    assert bool(per_class[~valid].isnan().all())
    assert_matches(per_class, grad, ref, valid, case.id)


@pytest.mark.parametrize(("path", "case"), with_paths(PAUC_CASES), ids=path_ids(PAUC_CASES))
def test_pairwise_pauc_kernel_matches_dense_formula(path: str, case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = force_path(monkeypatch, path)
    if case.small_chunk:
        monkeypatch.setattr(_pairs, "CHUNK", SMALL_CHUNK)
    logits, targets, weight, class_weight = materialise(case)
    alpha, beta, tau_scale = case.pauc
    per_class, valid, grad, stats = library_loss_and_grad(
        pauc_at_budget_loss,
        logits,
        class_weight,
        targets=targets,
        surrogate="pairwise",
        alpha=alpha,
        beta=beta,
        tau_scale=tau_scale,
        temperature=case.temperature,
        sample_weight=weight,
        return_diagnostics=True,
    )
    assert stats is not None
    ref = dense_pairwise_pauc(logits, targets, stats, weight, class_weight)
    assert (spy.plans >= 1) == (path == "windowed"), "the kernel took the wrong path"
    assert torch.equal(valid, ref.valid), f"{case.id}: valid {valid.tolist()} != reference {ref.valid.tolist()}"
    assert_matches(per_class, grad, ref, valid, case.id)


def test_property_cases_mostly_compare_numbers() -> None:
    """Guard against a case generator whose pools are mostly degenerate (nothing compared)."""

    def any_valid(case: Case, fn: Callable[..., Any], **options: Any) -> bool:
        logits, targets, weight, _ = materialise(case)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out = fn(
                logits, targets, temperature=case.temperature, sample_weight=weight, return_per_class=True, **options
            )
        return bool(out[2].any())

    small_ap = [case for case in AP_CASES if case.m <= 257]
    assert sum(any_valid(case, smooth_ap_loss) for case in small_ap) >= 0.8 * len(small_ap)
    small_pauc = [case for case in PAUC_CASES if case.m <= 257]
    pauc_valid = sum(
        any_valid(case, pauc_at_budget_loss, surrogate="pairwise", alpha=a, beta=b, tau_scale=ts)
        for case in small_pauc
        for a, b, ts in [case.pauc]
    )
    assert pauc_valid >= 0.7 * len(small_pauc)


# ----------------------------------------------------------------------------------------------
# 2. Window edge: |d| exactly K tau, and one ulp either side
# ----------------------------------------------------------------------------------------------


def edge_pool(dtype: torch.dtype, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary pool: positives at 3 anchors; negatives at ``anchor +- k tau`` (k = 2, 8, 10) and 1 ulp around.

    Also a few negatives at ``+-(k +- 1e-3) tau`` and ties with the anchors.
    """
    anchors = torch.tensor([0.0, 0.37, 5.0], dtype=dtype)
    t = torch.tensor(tau, dtype=dtype)
    negatives = []
    for a in anchors:
        for k in (2.0, 8.0, 10.0):
            for sign in (-1.0, 1.0):
                exact = a + sign * k * t
                inf = torch.tensor(float("inf"), dtype=dtype)
                negatives += [exact, torch.nextafter(exact, inf), torch.nextafter(exact, -inf)]
                negatives += [a + sign * (k - 1e-3) * t, a + sign * (k + 1e-3) * t]
        negatives.append(a.clone())
    scores = torch.cat([anchors, torch.stack(negatives)]).unsqueeze(1)
    targets = torch.cat([torch.ones(3, dtype=torch.long), torch.zeros(len(negatives), dtype=torch.long)])
    return scores, targets


@pytest.mark.parametrize("path", ["windowed", "dense"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("tau", [1e-3, 0.25])
def test_smooth_ap_window_edge(dtype: torch.dtype, tau: float, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = force_path(monkeypatch, path)
    logits, targets = edge_pool(dtype, tau)
    class_weight = torch.ones(1, dtype=torch.float64)
    per_class, valid, grad, _ = library_loss_and_grad(
        smooth_ap_loss, logits, class_weight, targets=targets, temperature=tau
    )
    ref = dense_smooth_ap(logits, targets, tau, None, class_weight)
    assert bool(valid.all())
    assert_matches(per_class, grad, ref, valid, f"edge-ap-{dtype}-{tau}-{path}")
    assert (spy.plans >= 1) == (path == "windowed")


@pytest.mark.parametrize("path", ["windowed", "dense"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_pairwise_pauc_window_edge(dtype: torch.dtype, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Negatives span ``[0, 1]`` and the band is all of them (``alpha=0, beta=1``), so with
    ``tau_scale='band'`` ``tau_eff`` is exactly the temperature; positives sit ``K tau_eff``
    (and 1 ulp around) from negatives."""
    spy = force_path(monkeypatch, path)
    tau = 0.01
    t = torch.tensor(tau, dtype=dtype)
    inf = torch.tensor(float("inf"), dtype=dtype)
    negatives = torch.tensor([0.0, 0.2, 0.5, 0.5, 1.0], dtype=dtype)
    positives = []
    for anchor in (0.2, 0.5):
        for k in (2.0, 8.0, 10.0):
            for sign in (-1.0, 1.0):
                exact = torch.tensor(anchor, dtype=dtype) + sign * k * t
                positives += [exact, torch.nextafter(exact, inf), torch.nextafter(exact, -inf)]
    positives.append(torch.tensor(0.5, dtype=dtype))  # tied with two negatives
    logits = torch.cat([negatives, torch.stack(positives)]).unsqueeze(1)
    targets = torch.cat([torch.zeros(5, dtype=torch.long), torch.ones(len(positives), dtype=torch.long)])
    class_weight = torch.ones(1, dtype=torch.float64)
    per_class, valid, grad, stats = library_loss_and_grad(
        pauc_at_budget_loss,
        logits,
        class_weight,
        targets=targets,
        surrogate="pairwise",
        alpha=0.0,
        beta=1.0,
        tau_scale="band",
        temperature=tau,
        return_diagnostics=True,
    )
    assert stats is not None
    assert float(stats["tau_eff"][0]) == float(t)
    ref = dense_pairwise_pauc(logits, targets, stats, None, class_weight)
    assert bool(valid.all())
    assert bool(ref.valid.all())
    assert_matches(per_class, grad, ref, valid, f"edge-pauc-{dtype}-{path}")
    assert (spy.plans >= 1) == (path == "windowed")


@pytest.mark.parametrize("path", ["windowed", "dense"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_small_pools_on_both_paths(dtype: torch.dtype, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny multi-class pools (weights, ignored rows) through each kernel path, both losses."""
    force_path(monkeypatch, path)
    for seed, (m, c, t) in enumerate([(7, 3, 0.05), (33, 5, 1e-3), (40, 1, 0.5)]):
        case = Case(dtype, m, c, t, "randn", "balanced", True, True, False, 500 + seed, (0.0, 1.0, "band"))
        logits, targets, weight, class_weight = materialise(case)
        per_class, valid, grad, _ = library_loss_and_grad(
            smooth_ap_loss, logits, class_weight, targets=targets, temperature=t, sample_weight=weight
        )
        assert_matches(per_class, grad, dense_smooth_ap(logits, targets, t, weight, class_weight), valid, case.id)
        per_class, valid, grad, stats = library_loss_and_grad(
            pauc_at_budget_loss,
            logits,
            class_weight,
            targets=targets,
            surrogate="pairwise",
            beta=1.0,
            temperature=t,
            sample_weight=weight,
            return_diagnostics=True,
        )
        assert stats is not None
        ref = dense_pairwise_pauc(logits, targets, stats, weight, class_weight)
        assert_matches(per_class, grad, ref, valid, case.id)


@pytest.mark.parametrize("path", ["windowed", "dense"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_pairwise_pauc_positive_far_above_a_smaller_band(
    dtype: torch.dtype, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two classes with bands of different sizes (the smaller one is padded in the kernel's
    ``[C, L]`` layout) and positives hundreds of ``tau_eff`` above their band: the loss is 0 for
    class 0 and every value and gradient is finite."""
    force_path(monkeypatch, path)
    g = torch.Generator().manual_seed(0)
    targets = torch.tensor([0] * 30 + [1] * 10)
    logits = torch.randn(40, 2, generator=g, dtype=torch.float64)
    logits[:30, 0] += 30.0  # class-0 positives ~30 above class-0 band (tau_eff ~ 0.05: d ~ 600)
    logits = logits.to(dtype)
    class_weight = torch.ones(2, dtype=torch.float64)
    per_class, valid, grad, stats = library_loss_and_grad(
        pauc_at_budget_loss,
        logits,
        class_weight,
        targets=targets,
        surrogate="pairwise",
        beta=1.0,
        tau_scale="band",
        temperature=0.01,
        return_diagnostics=True,
    )
    assert stats is not None
    assert bool(valid.all())
    ref = dense_pairwise_pauc(logits, targets, stats, None, class_weight)
    assert_matches(per_class, grad, ref, valid, f"far-positive-{dtype}-{path}")


@pytest.mark.parametrize("path", ["windowed", "dense"])
def test_pairwise_pauc_invalid_class_leaves_the_gradient_finite(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Class 0 has a single negative (degenerate dispersion: skipped, ``tau_eff`` falls back to 1)
    and positives ~1000 above it; the mean over the valid class must have a finite gradient."""
    force_path(monkeypatch, path)
    g = torch.Generator().manual_seed(1)
    targets = torch.tensor([0] * 39 + [1])
    logits = torch.randn(40, 2, generator=g, dtype=torch.float64)
    logits[:39, 0] += 1000.0
    x = logits.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        loss, _, valid = pauc_at_budget_loss(x, targets, surrogate="pairwise", beta=1.0, return_per_class=True)
    assert valid.tolist() == [False, True]
    (grad,) = torch.autograd.grad(loss, x)
    assert bool(torch.isfinite(grad).all()), f"non-finite gradient entries per class: {(~grad.isfinite()).sum(0)}"
    assert bool((grad[:, 0] == 0).all())


@pytest.mark.parametrize("path", ["windowed", "dense"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_smooth_ap_nearly_saturated_gradient(dtype: torch.dtype, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two positives far apart, a negative 15.5 tau below the upper one and two negatives far
    above both: the only live pair is (upper positive, close negative), with a gradient of ~1e-5.
    Each positive's own pair (``d = 0``, identically zero gradient) has terms ~1e6 times larger
    on its query and key sides, which must cancel."""
    spy = force_path(monkeypatch, path)
    tau = 1e-3
    logits = torch.tensor([0.0, 0.5, 0.5 - 15.5 * tau, 1.0, 1.2], dtype=dtype).unsqueeze(1)
    targets = torch.tensor([1, 1, 0, 0, 0])
    class_weight = torch.ones(1, dtype=torch.float64)
    per_class, valid, grad, _ = library_loss_and_grad(
        smooth_ap_loss, logits, class_weight, targets=targets, temperature=tau
    )
    ref = dense_smooth_ap(logits, targets, tau, None, class_weight)
    assert_matches(per_class, grad, ref, valid, f"saturated-ap-{dtype}-{path}")
    assert (spy.plans >= 1) == (path == "windowed")


@pytest.mark.parametrize("path", ["windowed", "dense"])
@pytest.mark.parametrize(("dtype", "d"), [(torch.float32, 12.0), (torch.float64, 20.0)], ids=["float32", "float64"])
def test_pairwise_pauc_saturated_pair_keeps_its_gradient(
    dtype: torch.dtype, d: float, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One positive ``d tau_eff`` below the lower of two band negatives (the other is farther):
    the loss is ~1 and its gradient is ``sigma'(d) / tau_eff`` (``sigma(d)`` rounds to 1 in the
    dtype's last bits, so ``sigma (1 - sigma)`` would cancel). No self pair is involved."""
    force_path(monkeypatch, path)
    tau = 0.05
    logits = torch.tensor([1.0, 2.0, 1.0 - d * tau], dtype=dtype).unsqueeze(1)
    targets = torch.tensor([0, 0, 1])
    class_weight = torch.ones(1, dtype=torch.float64)
    per_class, valid, grad, stats = library_loss_and_grad(
        pauc_at_budget_loss,
        logits,
        class_weight,
        targets=targets,
        surrogate="pairwise",
        alpha=0.0,
        beta=1.0,
        tau_scale="band",
        temperature=tau,
        return_diagnostics=True,
    )
    assert stats is not None
    assert bool(valid.all())
    ref = dense_pairwise_pauc(logits, targets, stats, None, class_weight)
    assert_matches(per_class, grad, ref, valid, f"saturated-pauc-{dtype}-{path}")


@pytest.mark.parametrize("path", ["windowed", "dense"])
@pytest.mark.parametrize(
    ("dtype", "tau", "d_range"),
    [(torch.float32, 1e-3, (-9.5, -8.1)), (torch.float64, 1e-7, (-12.0, -10.1))],
    ids=["float32", "float64"],
)
def test_smooth_ap_tails_at_large_magnitude(
    dtype: torch.dtype, tau: float, d_range: tuple[float, float], path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scores near 1000 with ``|s| / tau`` of 1e6 (float32) or 1e10 (float64; pAUC's ``tau_eff`` is
    that small when the reference spread is ~1e-3): one positive and 200 negatives all just past
    the window edge, so the loss and gradient come from the exponential tails. The pool is
    translation invariant, so only differences ``s_j - s_i`` may matter."""
    force_path(monkeypatch, path)
    targets = torch.tensor([1] + [0] * 200)
    class_weight = torch.ones(1, dtype=torch.float64)
    for offset in range(0, 40, 4):
        s_pos = torch.tensor(1000.0 + offset * tau, dtype=dtype)
        d = torch.linspace(*d_range, 200, dtype=torch.float64)
        logits = torch.cat([s_pos.view(1), (s_pos.double() + d * tau).to(dtype)]).unsqueeze(1)
        per_class, valid, grad, _ = library_loss_and_grad(
            smooth_ap_loss, logits, class_weight, targets=targets, temperature=tau
        )
        ref = dense_smooth_ap(logits, targets, tau, None, class_weight)
        assert_matches(per_class, grad, ref, valid, f"large-magnitude-{dtype}-{path}-s{float(s_pos)!r}")


# ----------------------------------------------------------------------------------------------
# 3. Chunking
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["smooth_ap", "pauc"])
def test_small_chunk_equals_default_chunk(loss: str, monkeypatch: pytest.MonkeyPatch) -> None:
    case = Case(torch.float64, 1500, 3, 0.02, "randn", "balanced", True, True, False, 77, (0.0, 0.3, "iqr"))
    logits, targets, weight, class_weight = materialise(case)
    if loss == "smooth_ap":
        fn, options = smooth_ap_loss, {"temperature": 0.02}
    else:
        fn, options = pauc_at_budget_loss, {"surrogate": "pairwise", "beta": 0.3, "temperature": 0.02}

    spy = force_path(monkeypatch, "windowed")

    def run() -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        spy.chunk_counts.clear()
        per_class, valid, grad, _ = library_loss_and_grad(
            fn, logits, class_weight, targets=targets, sample_weight=weight, **options
        )
        assert bool(valid.all())
        return per_class, grad, list(spy.chunk_counts)

    default_loss, default_grad, default_chunks = run()
    monkeypatch.setattr(_pairs, "CHUNK", SMALL_CHUNK)
    small_loss, small_grad, small_chunks = run()
    assert max(small_chunks) > 1, small_chunks
    assert sum(small_chunks) > sum(default_chunks), (default_chunks, small_chunks)
    assert (small_loss - default_loss).abs().max() <= 1e-12
    assert (small_grad - default_grad).abs().max() <= 1e-12 * default_grad.abs().max()


# ----------------------------------------------------------------------------------------------
# 4. Memory bound
# ----------------------------------------------------------------------------------------------

BIG_M, BIG_C, BIG_TAU, BIG_SEED = 65536, 4, 1e-3, 4242
RSS_BUDGET_MB = 400

_BIG_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    from imbalanced_losses.functional import _pairs, smooth_ap_loss
    _pairs.DENSE_MAX = -1  # the windowed kernel, whatever the dense threshold
    sys.path.insert(0, {tests_dir!r})
    from test_kernels import big_pool
    logits, targets = big_pool()
    logits.requires_grad_(True)
    smooth_ap_loss(logits[:64], targets[:64], temperature={tau!r}).backward()  # warm up the allocator
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    per_class = smooth_ap_loss(logits, targets, temperature={tau!r}, reduction="none")
    per_class.nansum().backward()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({{"loss": per_class.tolist(), "grad_finite": bool(torch.isfinite(logits.grad).all()),
                      "growth_mb": (after - before) / 1024}}))
    """
)


def big_pool() -> tuple[torch.Tensor, torch.Tensor]:
    """``[65536, 4]`` float32 scores; classes 1-3 hold ~0.3 % of the rows each, class 0 the rest."""
    g = torch.Generator().manual_seed(BIG_SEED)
    logits = torch.randn(BIG_M, BIG_C, generator=g)
    targets = torch.zeros(BIG_M, dtype=torch.long)
    rare = torch.rand(BIG_M, generator=g) < 0.009
    targets[rare] = torch.randint(1, BIG_C, (int(rare.sum()),), generator=g)
    logits[targets > 0, targets[targets > 0]] += 1.0  # positives rank somewhat higher
    return logits, targets


@pytest.mark.slow
def test_smooth_ap_large_pool_is_memory_bounded_and_exact() -> None:
    """The library call runs first, in a fresh process, so ``ru_maxrss`` measures its own peak."""
    script = _BIG_SCRIPT.format(tests_dir=str(Path(__file__).resolve().parent), tau=BIG_TAU)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["growth_mb"] < RSS_BUDGET_MB, f"peak RSS grew by {result['growth_mb']:.0f} MB"
    assert result["grad_finite"]
    loss = torch.tensor(result["loss"], dtype=torch.float64)
    assert bool(torch.isfinite(loss).all())
    assert bool(((loss >= 0) & (loss < 1)).all())
    # Dense reference on the rare classes (class 0 has ~64k positives: 4e9 pairs, too slow here).
    logits, targets = big_pool()
    rare = list(range(1, BIG_C))
    ref = dense_smooth_ap(logits, targets, BIG_TAU, None, torch.ones(BIG_C), with_grad=False, classes=rare)
    assert bool(ref.valid[1:].all())
    err = (loss[1:] - ref.loss[1:]).abs().max()
    assert err <= TOLERANCE[torch.float32][0], f"loss error {float(err):.3e}"


# ----------------------------------------------------------------------------------------------
# 5. gradcheck through the windowed kernel
# ----------------------------------------------------------------------------------------------


def _spread_scores(m: int, c: int, seed: int) -> torch.Tensor:
    """Scores on a grid of step 0.7 centred on 0, shuffled per class."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.arange(m, dtype=torch.float64) * 0.7 - 0.35 * (m - 1)
    return torch.stack([grid[torch.randperm(m, generator=g)] for _ in range(c)], dim=1)


def _assert_both_sides_of_edge(d: torch.Tensor) -> None:
    """Pair distances ``|d|`` (in temperature units) fall in the window and in the tails, none
    within 0.1 of a float64 edge (``K = 2`` on the CPU plan, ``K = 10`` on the CUDA plan): a 1e-6
    perturbation never moves a pair across."""
    for edge in (2.0, 10.0):
        assert bool((d > edge + 0.1).any())
        assert bool(((d > 0) & (d < edge - 0.1)).any())
        assert not bool(((d - edge).abs() < 0.1).any())


GRADCHECK_M = 24
GRADCHECK_TARGETS = torch.tensor([0, 1, 1, 0, 0, 1] * 4)


@pytest.mark.grad
def test_gradcheck_smooth_ap_windowed(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = force_path(monkeypatch, "windowed")
    tau = 0.5
    logits = _spread_scores(GRADCHECK_M, 2, seed=11)
    _assert_both_sides_of_edge((logits.unsqueeze(0) - logits.unsqueeze(1)).abs() / tau)
    weight = torch.linspace(0.2, 1.5, GRADCHECK_M, dtype=torch.float64)

    def f(x: torch.Tensor) -> torch.Tensor:
        return smooth_ap_loss(x, GRADCHECK_TARGETS, temperature=tau, sample_weight=weight, reduction="none")

    assert torch.autograd.gradcheck(f, (logits.clone().requires_grad_(True),), eps=1e-6, atol=1e-7, rtol=1e-5)
    assert spy.plans >= 1


@pytest.mark.grad
def test_gradcheck_pairwise_pauc_windowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """``alpha=0, beta=1, tau_scale='band'``: the (detached) thresholds are the extreme negatives
    of each class, so those cells are held constant; every other cell is a gradcheck input."""
    spy = force_path(monkeypatch, "windowed")
    logits = _spread_scores(GRADCHECK_M, 2, seed=12)
    targets = GRADCHECK_TARGETS
    frozen = torch.zeros_like(logits, dtype=torch.bool)
    temperature = 0.03
    for c in range(2):
        pos_rows, neg_rows = (targets == c).nonzero().squeeze(1), (targets != c).nonzero().squeeze(1)
        col = logits[neg_rows, c]
        frozen[neg_rows[col.argmax()], c] = frozen[neg_rows[col.argmin()], c] = True
        tau_eff = temperature * float(col.max() - col.min())
        _assert_both_sides_of_edge((logits[pos_rows, c].unsqueeze(1) - col.unsqueeze(0)).abs() / tau_eff)
    free = ~frozen
    base = logits.clone()

    def f(x: torch.Tensor) -> torch.Tensor:
        full = base.masked_scatter(free, x)
        return pauc_at_budget_loss(
            full, targets, surrogate="pairwise", alpha=0.0, beta=1.0, tau_scale="band", temperature=temperature
        )

    x0 = base[free].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (x0,), eps=1e-6, atol=1e-7, rtol=1e-5)
    assert spy.plans >= 1
