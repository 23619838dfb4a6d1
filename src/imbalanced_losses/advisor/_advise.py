"""A loss recommendation from the contestable mass of a baseline's held-out scores."""

from __future__ import annotations

import dataclasses
import math
import textwrap
from typing import Any

import torch
from torch import Tensor

from ..functional._quantiles import MIN_DISPERSION
from ._mass import ContestableMass, _analyse, _Analysis, _iqr, format_table

__all__ = [
    "CONTESTEDNESS_MIN",
    "DEFAULT_TEMPERATURE",
    "HEADROOM_MIN",
    "KEEP_CROSS_ENTROPY",
    "MDE_Z",
    "TEMPERATURE_BOUNDS",
    "TEMPERATURE_SPREAD_FACTOR",
    "Advice",
    "advise",
]

# ----------------------------------------------------------------------------------------------
# Decision thresholds. PROVISIONAL: chosen by hand from one worked example (the fraud model of
# benchmarks/REAL_DATA.md). The meta-benchmark benchmarks/effectiveness.py (51 cells: 10 data
# sets x 3 model classes x budgets; benchmarks/EFFECTIVENESS.md) tried to calibrate them
# left-one-data-set-out and failed its pre-registered criteria: no thresholds of this rule
# predicted which cells gain (precision and recall far below 0.7), and the contestedness was
# not predictive at all. What held is the bound: the headroom caps the gain (exceeded in 1 of
# 51 cells). So read "keep cross-entropy" on a small headroom as reliable, and a
# recommendation, or "keep cross-entropy" for a low contestedness, as a lead to test.

#: Provisional (not calibrated): the smallest headroom (coverage points, macro mean over the
#: classes with positives; its bootstrap 2.5 % bound when ``n_boot > 0``) worth a ranking loss.
HEADROOM_MIN = 0.02

#: Provisional (not calibrated): the smallest contestedness ``NM / (NM + FM)`` (macro mean)
#: for a ranking loss: below it most misses are far misses, which only new features can lift.
CONTESTEDNESS_MIN = 0.3

#: Provisional (not calibrated): the headroom must also reach the minimum detectable effect
#: ``MDE_Z * sqrt(cov (1 - cov) / P)`` (binary; the macro mean's standard error for ``C > 1``),
#: about the smallest coverage gain a test set of this size resolves. Seed noise of the
#: baseline, which the advisor cannot see, comes on top.
MDE_Z = 2.0

#: Provisional (not calibrated): advised temperature = this factor times the score width of the
#: near-miss zone (score at rank ``k`` minus score at rank ``near_k``), in units of the
#: inter-quartile range the loss scales its temperature by. A near miss at the far end of the
#: zone then sits ``2`` temperatures below the cut, where the sigmoid's slope is still 42 %
#: of its peak.
TEMPERATURE_SPREAD_FACTOR = 0.5

#: Range the advised temperature is clipped to (multiples of the inter-quartile range).
TEMPERATURE_BOUNDS = (0.01, 1.0)

#: Temperature advised when the near-miss zone or the inter-quartile range has no width (the
#: losses' default).
DEFAULT_TEMPERATURE = 0.1

#: ``Advice.loss`` when no ranking loss is advised.
KEEP_CROSS_ENTROPY = "keep cross-entropy"

_PAUC = "PAUCAtBudgetLoss"
_RECALL = "RecallAtQuantileLoss"
_MIN_WIDTH = MIN_DISPERSION  # as the losses


@dataclasses.dataclass(frozen=True, eq=False)
class Advice:
    """What :func:`advise` recommends, and why.

    Attributes:
        loss: ``"PAUCAtBudgetLoss"``, ``"RecallAtQuantileLoss"`` or ``"keep cross-entropy"``.
        kwargs: Constructor arguments of ``loss``, ready to pass
            (``PAUCAtBudgetLoss(**advice.kwargs)``); empty for cross-entropy.
        numbers: The statistics the decision was taken from (floats; counts summed over
            classes, ratios macro-averaged over the classes with positives).
        reasoning: One paragraph explaining the decision.
        mass: The per-class :class:`ContestableMass` behind ``numbers``.
        candidates: Constructor arguments of *both* ranking losses, whatever the decision:
            ``{"PAUCAtBudgetLoss": {...}, "RecallAtQuantileLoss": {...}}``, for trying one
            where cross-entropy is advised (``kwargs`` is the entry of ``loss``). Where no
            false-positive-rate window is contested (``fpr_lo`` is ``nan``) the pAUC band
            falls back to ``[0, budget]``.
    """

    loss: str
    kwargs: dict[str, Any]
    numbers: dict[str, float]
    reasoning: str
    mass: ContestableMass = dataclasses.field(repr=False)
    candidates: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict, repr=False)

    def __str__(self) -> str:
        call = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        head = f"Recommendation: {self.loss}({call})" if self.kwargs else f"Recommendation: {self.loss}"
        width = max(len(k) for k in self.numbers)
        nums = "\n".join(f"  {k.ljust(width)}  {_fmt(v)}" for k, v in self.numbers.items())
        text = textwrap.fill(self.reasoning, width=96, initial_indent="  ", subsequent_indent="  ")
        return f"{head}\n\nNumbers:\n{nums}\n\nReasoning:\n{text}\n\nPer class:\n{format_table(self.mass)}"


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "nan"
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v):,}"
    return f"{v:.4g}"


def _round_out(v: float, up: bool, digits: int = 3) -> float:
    """``v`` rounded to ``digits`` significant digits, away from the inside of a band (up or down)."""
    if v == 0.0 or not math.isfinite(v):
        return v
    e = math.floor(math.log10(abs(v))) - digits + 1
    scaled = v / 10.0**e
    q = math.ceil(scaled - 1e-9) if up else math.floor(scaled + 1e-9)
    return float(f"{q}e{e}")


def _nanmean(t: Tensor) -> float:
    ok = ~torch.isnan(t)
    return float(t[ok].mean()) if bool(ok.any()) else float("nan")


def _temperature(ratios: Tensor) -> float:
    """Median over classes of ``TEMPERATURE_SPREAD_FACTOR * spread / IQR``, clipped, 2 significant digits."""
    ok = ~torch.isnan(ratios)
    if not bool(ok.any()):
        return DEFAULT_TEMPERATURE
    t = TEMPERATURE_SPREAD_FACTOR * float(ratios[ok].median())
    t = min(max(t, TEMPERATURE_BOUNDS[0]), TEMPERATURE_BOUNDS[1])
    return float(f"{t:.2g}")


def advise(
    scores: Tensor,
    targets: Tensor,
    *,
    budget: float,
    near: float = 2.0,
    ignore_index: int = -100,
    n_boot: int = 1000,
    generator: torch.Generator | None = None,
) -> Advice:
    r"""Recommend a training loss for coverage at ``budget``, from a baseline's held-out scores.

    Runs :func:`contestable_mass` and decides, with the provisional thresholds of this module
    (:data:`HEADROOM_MIN`, :data:`CONTESTEDNESS_MIN`, :data:`MDE_Z`; a calibration on 51
    benchmark cells did not validate them, see ``benchmarks/EFFECTIVENESS.md``):

    1. no class with positives: keep cross-entropy (nothing to assess);
    2. headroom :math:`H` (macro mean over the classes with positives; with ``n_boot > 0`` the
       2.5 % bootstrap bound of that mean) below :math:`\max(\text{HEADROOM\_MIN},
       \text{MDE})`, :math:`\text{MDE} = \text{MDE\_Z} \cdot \mathrm{se}(\text{coverage})`:
       keep cross-entropy: no re-ordering near the cut can gain a detectable amount;
    3. contestedness below :data:`CONTESTEDNESS_MIN`: keep cross-entropy: most misses are far
       misses, which need new information, not a new loss;
    4. otherwise a ranking loss. If some class's budget is below its prevalence
       (:math:`k < P`), where ``RecallAtQuantileLoss`` cannot reach its optimum (the top
       :math:`k` cannot hold every positive), ``PAUCAtBudgetLoss`` with the pairwise surrogate
       and its band aimed at the contested FPR window (``alpha = lo``, ``beta = hi``, rounded
       outward to 3 significant digits; union over classes); else ``RecallAtQuantileLoss``
       with ``quantile = budget``, which optimises the top-``budget`` recall directly.

    The advised ``temperature`` (both losses take it as a multiple of an inter-quartile
    range) is :data:`TEMPERATURE_SPREAD_FACTOR` times the score width of the near-miss zone,
    :math:`s_{(k)} - s_{(m)}` (scores at ranks :math:`k` and :math:`m`), divided by the
    inter-quartile range the loss uses: of the negatives for ``PAUCAtBudgetLoss``
    (``budget_basis='fpr'``), of all rows for ``RecallAtQuantileLoss``; the median over
    classes, clipped to :data:`TEMPERATURE_BOUNDS` (:data:`DEFAULT_TEMPERATURE` where either
    width is zero). The ratio is scale-free, so it carries over from held-out to training
    scores.

    Args:
        scores: ``[N]`` (binary) or ``[N, C]`` held-out scores of the baseline model.
        targets: ``[N]`` binary ``{0, 1}``, ``[N]`` class ids or multi-hot ``[N, C]``.
        budget: Alert budget :math:`b \in (0, 1)`.
        near: Near-miss factor :math:`c \ge 1` (see :func:`contestable_mass`).
        ignore_index: Target value of rows (cells) to leave out.
        n_boot: Bootstrap replicates for the headroom's interval (``0``: decide on the point
            estimate).
        generator: Optional :class:`torch.Generator` drawing the bootstrap resamples.

    Returns:
        An :class:`Advice`.

    Raises:
        ValueError: As :func:`contestable_mass`.
        TypeError: As :func:`contestable_mass`.

    Example:
        >>> import torch
        >>> from imbalanced_losses.advisor import advise
        >>> scores = torch.linspace(1.0, 0.0, 10_000)  # already ranked
        >>> targets = torch.zeros(10_000, dtype=torch.long)
        >>> targets[0:200:2] = 1  # 100 positives interleaved with negatives around k = 100
        >>> targets[-50:] = 1  # and 50 far misses: P = 150 > k
        >>> advice = advise(scores, targets, budget=0.01, n_boot=0)
        >>> advice.loss, advice.kwargs["alpha"], advice.kwargs["beta"]  # beta: 99 / 9850 negatives
        ('PAUCAtBudgetLoss', 0.0, 0.0101)
        >>> advice.numbers["headroom"], advice.numbers["contestedness"]  # 50 / 150; 50 / (50 + 50)
        (0.3333333333333333, 0.5)
    """
    an = _analyse(
        scores, targets, budget=budget, near=near, ignore_index=ignore_index, n_boot=n_boot, generator=generator
    )
    return _advice(an)


def _advice(an: _Analysis) -> Advice:
    """:func:`advise` on an analysis already made."""
    mass, st, curve = an.mass, an.stats, an.curve
    c = an.x.shape[1]
    p = st.positives[0]  # [C]
    has_pos = p > 0
    n_def = int(has_pos.sum())

    def total(t: Tensor) -> float:
        return float(t[0].to(torch.float64).sum())

    head = st.headroom[0][has_pos]
    cov = st.coverage[0][has_pos]
    headroom = _nanmean(head)
    var = (cov * (1 - cov) / p[has_pos].to(torch.float64)).sum()
    mde = MDE_Z * math.sqrt(float(var)) / n_def if n_def else float("nan")
    low = high = float("nan")
    if an.replicates is not None and n_def:
        reps = an.replicates[:, has_pos]
        ok = ~torch.isnan(reps)
        macro = torch.where(ok, reps, torch.zeros_like(reps)).sum(1) / ok.sum(1).clamp_min(1)
        macro = macro[ok.any(1)]
        if macro.numel():
            q = torch.quantile(macro, torch.tensor([0.025, 0.975], dtype=macro.dtype, device=macro.device))
            low, high = float(q[0]), float(q[1])
    lo_all, hi_all = st.fpr_lo[0], st.fpr_hi[0]
    win = ~torch.isnan(lo_all)
    fpr_lo = float(lo_all[win].min()) if bool(win.any()) else float("nan")
    fpr_hi = float(hi_all[win].max()) if bool(win.any()) else float("nan")

    # Temperature: width of the near-miss zone in units of each loss's inter-quartile range.
    s = curve.score_at(torch.stack([st.k, st.near_k], -1))[0]  # [C, 2]
    spread = s[:, 0] - s[:, 1]
    iqr_neg, iqr_all = _iqr(an.x, an.neg), _iqr(an.x, an.pos | an.neg)
    nan = torch.full_like(spread, float("nan"))

    def ratio(iqr: Tensor) -> Tensor:
        ok = has_pos & (spread > _MIN_WIDTH) & (iqr > _MIN_WIDTH)
        return torch.where(ok, spread / torch.where(ok, iqr, torch.ones_like(iqr)), nan)

    ratio_neg, ratio_all = ratio(iqr_neg), ratio(iqr_all)

    numbers: dict[str, float] = {
        "budget": mass.budget,
        "near": mass.near,
        "classes": float(c),
        "classes_with_positives": float(n_def),
        "k": total(st.k),
        "near_k": total(st.near_k),
        "positives": total(st.positives),
        "negatives": total(st.negatives),
        "false_alerts": total(st.false_alerts),
        "near_misses": total(st.near_misses),
        "far_misses": total(st.far_misses),
        "coverage": _nanmean(cov),
        "headroom": headroom,
        "headroom_low": low,
        "headroom_high": high,
        "mde": mde,
        "contestedness": _nanmean(st.contestedness[0][has_pos]),
        "fpr_lo": fpr_lo,
        "fpr_hi": fpr_hi,
        "spread_over_iqr_negatives": float(ratio_neg.nanmedian()) if n_def else float("nan"),
        "spread_over_iqr_rows": float(ratio_all.nanmedian()) if n_def else float("nan"),
    }
    loss, _, reasoning = _decide(numbers, below_prevalence=bool((st.k[0] < p)[has_pos].any()))
    contested = not math.isnan(fpr_lo)
    candidates: dict[str, dict[str, Any]] = {
        _PAUC: {
            "num_classes": c,
            "alpha": max(0.0, _round_out(fpr_lo, up=False)) if contested else 0.0,
            "beta": min(1.0, _round_out(fpr_hi, up=True)) if contested else mass.budget,
            "surrogate": "pairwise",
            "temperature": _temperature(ratio_neg),
        },
        _RECALL: {"num_classes": c, "quantile": mass.budget, "temperature": _temperature(ratio_all)},
    }
    kwargs = dict(candidates.get(loss, {}))
    if "temperature" in kwargs:
        reasoning += (
            f" Temperature {kwargs['temperature']:g}: {TEMPERATURE_SPREAD_FACTOR:g} x the score width of the "
            "near-miss zone (ranks k to near_k) over the inter-quartile range the loss scales by."
        )
    return Advice(loss=loss, kwargs=kwargs, numbers=numbers, reasoning=reasoning, mass=mass, candidates=candidates)


def _decide(nb: dict[str, float], *, below_prevalence: bool) -> tuple[str, dict[str, Any], str]:
    """The decision rule of :func:`advise` on its ``numbers``: ``(loss, kwargs placeholder, reasoning)``."""
    provisional = (
        "The thresholds (HEADROOM_MIN, CONTESTEDNESS_MIN, MDE_Z) are provisional: in the library's "
        "meta-benchmark the headroom capped the gain, but no thresholds predicted which models gain, so "
        "treat this as a lead to test, not a result."
    )
    if nb["classes_with_positives"] == 0:
        return KEEP_CROSS_ENTROPY, {}, f"No class has a positive: there is nothing to assess. {provisional}"
    boot = not math.isnan(nb["headroom_low"])
    h_stat = nb["headroom_low"] if boot else nb["headroom"]
    need = max(HEADROOM_MIN, nb["mde"])
    h_txt = f"headroom {nb['headroom']:.3g}" + (
        f" (95% bootstrap interval [{nb['headroom_low']:.3g}, {nb['headroom_high']:.3g}])" if boot else ""
    )
    facts = (
        f"At budget {nb['budget']:g} ({_fmt(nb['k'])} rows flagged, {_fmt(nb['positives'])} positives) the "
        f"baseline has {nb['false_alerts']:.4g} false alerts in its top k, {nb['near_misses']:.4g} near misses "
        f"(ranked k+1 to near_k = {_fmt(nb['near_k'])}) and {nb['far_misses']:.4g} far misses; coverage "
        f"{nb['coverage']:.3g}. Re-ordering the top near_k rows can gain at most the {h_txt}; a ranking loss "
        f"needs {'its lower bound' if boot else 'it'} to reach {need:.3g}, the larger of HEADROOM_MIN = "
        f"{HEADROOM_MIN:g} and the minimum detectable effect {nb['mde']:.3g} "
        f"(MDE_Z = {MDE_Z:g} standard errors of the coverage)."
    )
    if nb["false_alerts"] <= nb["near_misses"]:
        limit = "the top k is nearly clean, there are few false alerts left to evict"
    else:
        limit = "few positives sit close enough below the cut to be swapped with the false alerts"
    if not h_stat >= need:
        return (
            KEEP_CROSS_ENTROPY,
            {},
            f"{facts} It does not: {limit}, so no loss that only re-orders the ranking can gain a "
            f"detectable amount; better features or more data are what would help. {provisional}",
        )
    rho = nb["contestedness"]
    if not rho >= CONTESTEDNESS_MIN:
        return (
            KEEP_CROSS_ENTROPY,
            {},
            f"{facts} It does, but only {rho:.3g} of the misses are near misses (CONTESTEDNESS_MIN = "
            f"{CONTESTEDNESS_MIN:g}): most missed positives are far below the cut, where only new "
            f"information lifts them. {provisional}",
        )
    if below_prevalence:
        return (
            _PAUC,
            {},
            f"{facts} It does, and {rho:.3g} of the misses are near misses (CONTESTEDNESS_MIN = "
            f"{CONTESTEDNESS_MIN:g}). The budget is below the prevalence (k < P) for at least one class, "
            f"where RecallAtQuantileLoss cannot reach its optimum, so aim PAUCAtBudgetLoss's pairwise band at "
            f"the contested false-positive-rate window [{nb['fpr_lo']:.3g}, {nb['fpr_hi']:.3g}] (from the "
            f"lowest false alert a swap would evict down to the lowest near miss). Fine-tune from the converged "
            f"cross-entropy model and compare against cross-entropy trained for the same extra steps. "
            f"{provisional}",
        )
    return (
        _RECALL,
        {},
        f"{facts} It does, and {rho:.3g} of the misses are near misses (CONTESTEDNESS_MIN = "
        f"{CONTESTEDNESS_MIN:g}). The budget covers the prevalence (k >= P), so RecallAtQuantileLoss with "
        f"quantile = budget optimises the coverage at the cut directly. Fine-tune from the converged "
        f"cross-entropy model and compare against cross-entropy trained for the same extra steps. {provisional}",
    )
