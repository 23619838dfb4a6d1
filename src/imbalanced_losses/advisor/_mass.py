r"""Contestable mass at an alert budget: how much a re-ordering near the cut could still gain.

Everything here is computed on the *expected capture curve* of each class. With the rows of
class :math:`c` (positives and negatives, ``ignore_index`` left out) ranked by descending
score and ties broken uniformly at random, :math:`T(r)` is the expected number of positives
among the top :math:`r` rows, :math:`r = 0, \dots, n`:

.. math::
    T(r) = P_{>v} + P_{=v} \, \frac{r - n_{>v}}{n_{=v}},

with :math:`v` the score at rank :math:`r`, :math:`n_{>v}, P_{>v}` the rows and positives
scored above :math:`v` and :math:`n_{=v}, P_{=v}` those tied at it. :math:`T` is the
ordinary step count without ties, and linear across a tie group. :math:`F(r) = r - T(r)` is
the expected number of negatives among the top :math:`r` rows.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .._validation import binary_offenders, check_float, check_int, check_tensor
from ..functional._quantiles import masked_column_quantiles
from ..metrics import BUDGET_ROWS_SLACK, _parse, budget_rows

__all__ = ["ContestableMass", "contestable_mass"]

#: Bootstrap replicates are processed in chunks of at most this many ``[replicate, class, row]``
#: cells (about 10 float64 work arrays of that size are alive at once, ~300 MiB).
BOOT_CHUNK_CELLS = 2**22

#: Percentile levels of the bootstrap interval of :attr:`ContestableMass.headroom`.
BOOT_LEVELS = (0.025, 0.975)

_F64 = torch.float64


# ----------------------------------------------------------------------------------------------
# Result


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class ContestableMass:
    r"""Per-class statistics of :func:`contestable_mass`.

    Every field is a ``[C]`` tensor, or 0-d for 1-D ``scores``. Counts are expected values
    under a random tie break, hence float64 and possibly fractional; ``k``, ``near_k``,
    ``positives`` and ``negatives`` are exact int64 row counts.

    Attributes:
        budget: The alert budget :math:`b` the statistics were computed at.
        near: The near-miss factor :math:`c`.
        k: Rows flagged, :math:`k = \mathrm{budget\_rows}(b, n)`.
        near_k: End of the near-miss zone, :math:`m = \min(n, \lceil c\,k \rceil)`.
        positives: :math:`P`, positives of the class.
        negatives: :math:`N^-`, negatives of the class.
        false_alerts: :math:`FA = F(k)`, negatives among the top ``k``.
        near_misses: :math:`NM = T(m) - T(k)`, positives ranked in ``(k, m]``.
        far_misses: :math:`FM = P - T(m)`, positives ranked below ``m``.
        coverage: :math:`T(k) / P`, equal to :func:`~imbalanced_losses.metrics.coverage_at_budget`.
        headroom: :math:`\min(FA, NM) / P` (``nan`` without positives).
        contestedness: :math:`NM / (NM + FM)` (``nan`` when no positive is missed).
        fpr_window: ``(lo, hi)``, the contested false-positive-rate window (``nan`` when
            :math:`\min(FA, NM) = 0` or :math:`N^- = 0`); see :func:`contestable_mass`.
        headroom_interval: ``(low, high)`` bootstrap percentile interval of ``headroom``
            (2.5 and 97.5 %), or ``None`` when ``n_boot == 0``.
    """

    budget: float
    near: float
    k: Tensor
    near_k: Tensor
    positives: Tensor
    negatives: Tensor
    false_alerts: Tensor
    near_misses: Tensor
    far_misses: Tensor
    coverage: Tensor
    headroom: Tensor
    contestedness: Tensor
    fpr_window: tuple[Tensor, Tensor]
    headroom_interval: tuple[Tensor, Tensor] | None = None

    def __repr__(self) -> str:
        return format_table(self)


def _num(value: float, digits: int = 4) -> str:
    if math.isnan(value):
        return "nan"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.{digits}g}"


def format_table(mass: ContestableMass, max_rows: int = 20) -> str:
    """A small text table of ``mass``, one line per class (the first ``max_rows`` classes)."""
    cols = [
        mass.k,
        mass.near_k,
        mass.positives,
        mass.false_alerts,
        mass.near_misses,
        mass.far_misses,
        mass.coverage,
        mass.headroom,
        mass.contestedness,
        mass.fpr_window[0],
        mass.fpr_window[1],
    ]
    head = ["class", "k", "near_k", "P", "FA", "NM", "FM", "coverage", "headroom", "contested", "fpr_lo", "fpr_hi"]
    if mass.headroom_interval is not None:
        cols[8:8] = [mass.headroom_interval[0], mass.headroom_interval[1]]
        head[9:9] = ["h_2.5%", "h_97.5%"]
    values = [c.detach().reshape(-1).double().cpu().tolist() for c in cols]
    n_cls = len(values[0])
    rows = [head]
    for i in range(min(n_cls, max_rows)):
        label = "-" if mass.k.ndim == 0 else str(i)
        rows.append([label] + [_num(v[i]) for v in values])
    widths = [max(len(r[j]) for r in rows) for j in range(len(head))]
    lines = [f"ContestableMass(budget={mass.budget:g}, near={mass.near:g})"]
    lines += ["  " + "  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    if n_cls > max_rows:
        lines.append(f"  ... {n_cls - max_rows} more classes")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Ranked columns and the expected capture curve


class _Ranked(NamedTuple):
    """Each class column sorted once by descending score, with its tie groups."""

    vals: Tensor  # [C, N] sorted scores; rows outside the class at -inf (they carry no weight)
    order: Tensor  # [C, N] long, row index of each sorted position
    pos: Tensor  # [C, N] float64 1.0 where the sorted row is a positive of the class
    member: Tensor  # [C, N] float64 1.0 where the sorted row takes part in the class
    start: Tensor  # [C, N] long, first position of the position's tie group
    end: Tensor  # [C, N] long, last position of the position's tie group


def _rank(x: Tensor, pos: Tensor, neg: Tensor) -> _Ranked:
    """Sort each column of ``x [N, C]`` by descending score (``pos``/``neg`` ``[N, C]`` bool)."""
    member = (pos | neg).t()
    vals, order = x.t().masked_fill(~member, float("-inf")).sort(dim=1, descending=True, stable=True)
    c, n = vals.shape
    idx = torch.arange(n, device=x.device).expand(c, n)
    is_first = torch.ones_like(vals, dtype=torch.bool)
    is_first[:, 1:] = vals[:, 1:] != vals[:, :-1]
    is_last = torch.ones_like(vals, dtype=torch.bool)
    is_last[:, :-1] = is_first[:, 1:]
    start = torch.where(is_first, idx, 0).cummax(1).values
    end = torch.where(is_last, idx, n).flip(1).cummin(1).values.flip(1)
    return _Ranked(
        vals,
        order,
        pos.t().gather(1, order).to(_F64),
        member.gather(1, order).to(_F64),
        start,
        end,
    )


def _near_rows(near: float, k: Tensor, n: Tensor) -> Tensor:
    r"""End of the near-miss zone, :math:`m = \min(n, \max(k, \lceil \mathrm{fl}(c\,k)(1 - 2^{-50}) \rceil))`.

    The same float64 slack as :func:`~imbalanced_losses.metrics.budget_rows`: ``near * k``
    meant to be an integer (``1.1 * 10`` is ``11.000000000000002``) does not gain a row.
    """
    m = torch.ceil(k.to(_F64) * near * (1.0 - BUDGET_ROWS_SLACK)).long()
    return torch.minimum(torch.maximum(m, k), n)


class _Curve:
    """The expected capture curve of every class, for rows counted with multiplicities ``w``.

    ``w [R, C, N]`` holds non-negative integer multiplicities in the sorted order of ``ranked``
    (the membership mask for the data themselves, bootstrap counts for a replicate): a row
    drawn ``w`` times is ``w`` rows with one score, i.e. it joins its tie group ``w`` times.
    """

    def __init__(self, ranked: _Ranked, w: Tensor, totals: tuple[Tensor, Tensor] | None = None) -> None:
        """``totals``: ``(n, positives)`` ``[R, C]`` when ``ranked`` and ``w`` are a prefix of the ranking."""
        self.ranked = ranked
        posw = w * ranked.pos
        self.cw = w.cumsum(-1)  # rows down to each position (exact: integers in float64)
        cp = posw.cumsum(-1)
        zero = w.new_zeros((*w.shape[:-1], 1))
        cw0 = torch.cat([zero, self.cw], -1)  # rows strictly above each position
        cp0 = torch.cat([zero, cp], -1)
        start = ranked.start.expand_as(w)
        end = ranked.end.expand_as(w)
        self.above = cw0.gather(-1, start)  # rows scored above the position's tie group
        self.through = self.cw.gather(-1, end)  # rows down to the end of its tie group
        self.pos_above = cp0.gather(-1, start)
        self.pos_group = cp.gather(-1, end) - self.pos_above
        self.n, self.positives = (self.cw[..., -1], cp[..., -1]) if totals is None else totals  # [R, C]

    def locate(self, r: Tensor) -> Tensor:
        """Sorted position holding rank ``r`` (``[R, C, L]`` long ranks ``>= 1``): first with ``cw >= r``."""
        j = torch.searchsorted(self.cw, r.to(_F64).contiguous())
        return j.clamp_max(self.cw.shape[-1] - 1)

    def hits(self, r: Tensor) -> Tensor:
        """:math:`T(r)` for integer ranks ``r`` (``[R, C, L]`` long, ``0 <= r <= n``)."""
        j = self.locate(r)
        rf = r.to(_F64)
        a = self.above.gather(-1, j)
        g = (self.through.gather(-1, j) - a).clamp_min(1.0)  # >= 1 wherever r >= 1
        t = self.pos_above.gather(-1, j) + self.pos_group.gather(-1, j) * (rf - a) / g
        return torch.where(r > 0, t, torch.zeros_like(t))

    def score_at(self, r: Tensor) -> Tensor:
        """Score of the row at rank ``r`` (``[R, C, L]``, ``r >= 1``; ``nan`` for ``r = 0``)."""
        j = self.locate(r)
        vals = self.ranked.vals.to(_F64).expand(*r.shape[:-1], -1)
        s = vals.gather(-1, j)
        return torch.where(r > 0, s, torch.full_like(s, float("nan")))


class _Stats(NamedTuple):
    """Every statistic of :class:`ContestableMass` as ``[R, C]`` tensors."""

    k: Tensor
    near_k: Tensor
    positives: Tensor
    negatives: Tensor
    false_alerts: Tensor
    near_misses: Tensor
    far_misses: Tensor
    coverage: Tensor
    headroom: Tensor
    contestedness: Tensor
    fpr_lo: Tensor
    fpr_hi: Tensor


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with ``nan`` where ``den <= 0``."""
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.full_like(num, float("nan")))


def _stats(curve: _Curve, budget: float, near: float) -> _Stats:
    n = curve.n.round().long()
    positives = curve.positives.round().long()
    k = budget_rows(budget, n)
    m = _near_rows(near, k, n)
    t = curve.hits(torch.stack([k, m], -1))
    t_k, t_m = t[..., 0], t[..., 1]
    p = positives.to(_F64)
    neg = (n - positives).to(_F64)
    fa = k.to(_F64) - t_k
    nm = t_m - t_k
    fm = p - t_m
    h = torch.minimum(fa, nm)
    # Rank of the lowest near miss: the end of the last tie group holding a positive that
    # starts above m (cut at m), i.e. the first rank r >= k with T(r) = T(m).
    mf = m.to(_F64).unsqueeze(-1)
    holds = (curve.pos_group > 0) & (curve.above < mf)
    last = torch.where(holds, torch.minimum(curve.through, mf), torch.zeros_like(curve.through)).amax(-1)
    r_star = torch.maximum(last, k.to(_F64))
    window = (h > 0) & (neg > 0)
    nan = torch.full_like(h, float("nan"))
    return _Stats(
        k=k,
        near_k=m,
        positives=positives,
        negatives=n - positives,
        false_alerts=fa,
        near_misses=nm,
        far_misses=fm,
        coverage=_ratio(t_k, p),
        headroom=_ratio(h, p),
        contestedness=_ratio(nm, nm + fm),
        fpr_lo=torch.where(window, _ratio(fa - h, neg), nan),
        fpr_hi=torch.where(window, _ratio(r_star - t_m, neg), nan),
    )


# ----------------------------------------------------------------------------------------------
# Inputs and bootstrap


class _Analysis(NamedTuple):
    """What :func:`contestable_mass` and :func:`~imbalanced_losses.advisor.advise` share."""

    mass: ContestableMass
    stats: _Stats  # [1, C] point statistics
    replicates: Tensor | None  # [B, C] bootstrap headroom, or None
    curve: _Curve  # point curve, R = 1
    x: Tensor  # [N, C] scores, computation dtype
    pos: Tensor  # [N, C] bool
    neg: Tensor  # [N, C] bool


def _check_options(budget: Any, near: Any, n_boot: Any, generator: Any) -> tuple[float, float]:
    budget = check_float("budget", budget, low=0.0, high=1.0)
    near = check_float("near", near, low=1.0, low_open=False)
    check_int("n_boot", n_boot, minimum=0)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator or None, got {type(generator).__name__}.")
    return budget, near


def _parse_inputs(scores: Any, targets: Any, ignore_index: Any) -> tuple[Tensor, Tensor, Tensor]:
    """Validated ``(x [N, C] float, pos, neg)``; binary targets must be exactly 0, 1 or ``ignore_index``."""
    check_int("ignore_index", ignore_index)
    scores = check_tensor("scores", scores)
    targets = check_tensor("targets", targets)
    if not scores.is_floating_point():
        raise TypeError(f"`scores` must be a floating-point tensor, got dtype {scores.dtype}.")
    binary = scores.ndim == 1 or (scores.ndim == 2 and scores.shape[1] == 1)
    column = targets.ndim == 1 or (targets.ndim == 2 and targets.shape[1] == 1)
    if binary and column and targets.numel() > 0 and not targets.is_complex():
        bad = binary_offenders(targets.reshape(-1), ignore_index)
        if bad:
            raise ValueError(
                f"`targets` of binary scores must hold 0, 1 or ignore_index={ignore_index}, got value(s) {bad}."
            )
    x, pos, neg, _ = _parse(scores, targets, None, ignore_index=ignore_index, validate_args=True)
    x = x.detach()
    if x.device.type == "mps":  # float64 work arrays
        x, pos, neg = x.cpu(), pos.cpu(), neg.cpu()
    return x, pos, neg


def _prefix_rows(m: Tensor) -> Tensor:
    """Rows of the data's ranking a replicate almost surely needs to reach rank ``m`` (``[C]``).

    A replicate's count over a prefix holding ``R`` of the data's rows is about Poisson(``R``),
    and its ``m`` moves with its own row count; twice ``m`` plus 8 standard deviations leaves a
    shortfall practically impossible. A replicate that still falls short is recomputed on the
    whole ranking, so this only sets the speed, never the result.
    """
    return 2 * m + 8 * m.to(_F64).sqrt().ceil().long() + 32


def _prefix(ranked: _Ranked, m: Tensor) -> _Ranked | None:
    """The leading positions of ``ranked`` holding :func:`_prefix_rows` rows of each class, whole tie groups.

    ``None`` when that is more than half the ranking (no saving).
    """
    n_pos = ranked.vals.shape[1]
    held = ranked.member.cumsum(1)  # [C, N]
    total = held[:, -1:]
    want = torch.minimum(_prefix_rows(m).to(_F64).unsqueeze(1), total)  # a sparse class: down to its last row
    length = int(torch.searchsorted(held, want).max()) + 1  # first position holding `want` rows, per class
    if length >= n_pos // 2:
        return None
    length = int(ranked.end[:, length - 1].max()) + 1  # whole tie groups: every group end inside
    if length >= n_pos // 2:
        return None
    return _Ranked(*(t[:, :length] for t in ranked))


def _bootstrap(
    ranked: _Ranked,
    pos: Tensor,
    neg: Tensor,
    near_k: Tensor,
    budget: float,
    near: float,
    n_boot: int,
    generator: torch.Generator | None,
) -> Tensor:
    """Headroom ``[B, C]`` over ``n_boot`` resamples of the rows (``near_k [C]``: the data's ``m``).

    Each replicate draws the rows taking part in at least one class with replacement, as
    many as there are; a row drawn ``w`` times enters the ranking ``w`` times (a tie group of
    ``w`` copies). The ranking of the data is reused: a replicate only reweights it, and only
    its top (the rows down to about twice ``m``; the totals come from every row) is needed.
    """
    device = pos.device
    member_rows = (pos | neg).to(_F64)  # [N, C]
    pos_rows = pos.to(_F64)
    kept = member_rows.sum(1).nonzero().squeeze(1)
    n_rows, n_kept = pos.shape[0], kept.numel()
    c = pos.shape[1]
    top = _prefix(ranked, near_k)
    width = ranked.vals.shape[1] if top is None else top.vals.shape[1]
    gen_device = generator.device if generator is not None else device
    chunk = max(1, BOOT_CHUNK_CELLS // max(n_rows, c * width))
    heads = []
    for first in range(0, n_boot, chunk):
        r = min(chunk, n_boot - first)
        draws = torch.randint(n_kept, (r, n_kept), generator=generator, device=gen_device).to(device)
        counts = torch.zeros(r, n_rows, dtype=_F64, device=device)
        counts.scatter_add_(1, kept[draws], torch.ones(r, n_kept, dtype=_F64, device=device))
        totals = (counts @ member_rows, counts @ pos_rows)  # [r, C]: n and P of each replicate
        head = None
        if top is not None:
            w = counts[:, top.order] * top.member  # [r, C, L]: the top of each class's ranking
            st = _stats(_Curve(top, w, totals), budget, near)
            if bool((w.sum(-1) >= st.near_k).all()):  # every replicate reaches its m inside the prefix
                head = st.headroom
        if head is None:
            w = counts[:, ranked.order] * ranked.member  # [r, C, N]: the whole ranking
            head = _stats(_Curve(ranked, w, totals), budget, near).headroom
        heads.append(head)
    return torch.cat(heads)


def _analyse(
    scores: Any,
    targets: Any,
    *,
    budget: Any,
    near: Any,
    ignore_index: Any,
    n_boot: Any,
    generator: Any,
) -> _Analysis:
    budget, near = _check_options(budget, near, n_boot, generator)
    x, pos, neg = _parse_inputs(scores, targets, ignore_index)
    if x.shape[0] == 0:  # no rows: a single -inf row of weight 0 keeps every shape non-empty
        x = x.new_zeros((1, x.shape[1]))
        pos = neg = torch.zeros_like(x, dtype=torch.bool)
    ranked = _rank(x, pos, neg)
    curve = _Curve(ranked, ranked.member.unsqueeze(0))
    st = _stats(curve, budget, near)
    reps = None
    interval = None
    if n_boot > 0 and bool((pos | neg).any()):
        reps = _bootstrap(ranked, pos, neg, st.near_k[0], budget, near, n_boot, generator)
        levels = torch.tensor(BOOT_LEVELS, dtype=_F64, device=reps.device)
        q = torch.nanquantile(reps, levels, dim=0)  # [2, C]; nan where every replicate is nan
        interval = (q[0], q[1])
    elif n_boot > 0:
        nan = torch.full((x.shape[1],), float("nan"), dtype=_F64, device=x.device)
        interval = (nan, nan)

    def out(t: Tensor) -> Tensor:
        t = t.reshape(-1)
        return t.squeeze(0) if scores.ndim == 1 else t

    mass = ContestableMass(
        budget=budget,
        near=near,
        k=out(st.k),
        near_k=out(st.near_k),
        positives=out(st.positives),
        negatives=out(st.negatives),
        false_alerts=out(st.false_alerts),
        near_misses=out(st.near_misses),
        far_misses=out(st.far_misses),
        coverage=out(st.coverage),
        headroom=out(st.headroom),
        contestedness=out(st.contestedness),
        fpr_window=(out(st.fpr_lo), out(st.fpr_hi)),
        headroom_interval=None if interval is None else (out(interval[0]), out(interval[1])),
    )
    return _Analysis(mass, st, reps, curve, x, pos, neg)


# ----------------------------------------------------------------------------------------------
# Public entry point


def contestable_mass(
    scores: Tensor,
    targets: Tensor,
    *,
    budget: float,
    near: float = 2.0,
    ignore_index: int = -100,
    n_boot: int = 0,
    generator: torch.Generator | None = None,
) -> ContestableMass:
    r"""Contestable mass at an alert budget: what a re-ordering near the cut could still gain.

    Computed per class (one-vs-rest) from a baseline model's held-out scores. With the
    :math:`n` rows of the class ranked by descending score, :math:`P` positives,
    :math:`N^- = n - P` negatives, :math:`k` = :func:`~imbalanced_losses.metrics.budget_rows`\
    ``(budget, n)`` rows flagged and :math:`m = \min(n, \lceil c\,k \rceil)` (``c = near``, the
    same float-rounding slack as ``budget_rows``), on the expected capture curve :math:`T`
    (ties broken uniformly at random, see the module docstring; :math:`F(r) = r - T(r)`):

    .. math::
        FA = F(k), \qquad NM = T(m) - T(k), \qquad FM = P - T(m),

        \mathrm{headroom} = \frac{\min(FA, NM)}{P}, \qquad
        \mathrm{contestedness} = \frac{NM}{NM + FM}.

    ``false_alerts`` (:math:`FA`) are the negatives in the top :math:`k`, ``near_misses``
    (:math:`NM`) the positives ranked in :math:`(k, m]`, ``far_misses`` (:math:`FM`) those
    below :math:`m`. The headroom bounds the coverage gain of any re-ordering confined to the
    top :math:`m` rows: each positive it brings into the top :math:`k` must be a near miss
    and must evict a false alert. A larger gain has to lift far misses, i.e. needs new
    information, which no ranking loss supplies. Counts are expected values under a random
    tie break (a tie group straddling rank :math:`k` or :math:`m` contributes fractionally,
    as in :func:`~imbalanced_losses.metrics.coverage_at_budget`); the headroom is the
    minimum of the expected counts.

    **FPR window.** With :math:`h = \min(FA, NM)` and :math:`r^\ast = \min\{r \ge k : T(r) =
    T(m)\}` the rank of the lowest near miss (the end of its tie group):

    .. math::
        \mathrm{lo} = \frac{FA - h}{N^-}, \qquad \mathrm{hi} = \frac{F(r^\ast)}{N^-}.

    ``lo`` is the false-positive rate (negatives ranked above / all negatives) at the highest
    of the :math:`h` lowest false alerts, the ones a headroom-achieving swap evicts (the
    :math:`FA - h` above them stay out of reach: there are not enough near misses to displace
    them); ``hi`` is the false-positive rate at the lowest near miss. Between them lie the
    evictable false alerts and every negative interleaved with the near misses, so
    ``PAUCAtBudgetLoss(alpha=lo, beta=hi, surrogate="pairwise")`` contrasts the positives with
    exactly the negatives of the contest. Both are ``nan`` when :math:`h = 0` (no contest)
    or :math:`N^- = 0`; otherwise ``lo < hi``.

    **Bootstrap.** With ``n_boot > 0``, the rows taking part in at least one class are
    resampled with replacement ``n_boot`` times (a row drawn :math:`w` times enters the
    ranking :math:`w` times), everything above is recomputed on each replicate, and
    ``headroom_interval`` holds the 2.5 and 97.5 percentiles of the replicates' headroom
    (``nan`` replicates, without positives, left out). Vectorised over rows and replicates.

    Args:
        scores: ``[N]`` (binary) or ``[N, C]`` held-out scores of the baseline; any monotone
            transform gives the same result.
        targets: ``[N]`` binary ``{0, 1}`` (``C == 1``), ``[N]`` class ids (``C > 1``) or a
            multi-hot ``[N, C]``; ``ignore_index`` rows (cells) are left out of that class.
        budget: Alert budget :math:`b \in (0, 1)`, the fraction of rows flagged.
        near: Near-miss factor :math:`c \ge 1`: positives ranked in :math:`(k, \lceil c k \rceil]`
            are near misses.
        ignore_index: Target value of rows (cells) to leave out.
        n_boot: Bootstrap replicates for ``headroom_interval`` (``0``: none).
        generator: Optional :class:`torch.Generator` drawing the bootstrap resamples.

    Returns:
        A :class:`ContestableMass` of ``[C]`` tensors (0-d for 1-D ``scores``); ``nan`` where a
        ratio is undefined (a class without positives, nothing missed, no contest).

    Raises:
        ValueError: On a shape mismatch, non-finite scores, targets outside their range
            (binary: 0, 1 or ``ignore_index``), ``budget`` outside ``(0, 1)``, ``near < 1`` or
            ``n_boot < 0``.
        TypeError: On a non-tensor input, non-float scores or an option of the wrong type.

    Example:
        >>> import torch
        >>> from imbalanced_losses.advisor import contestable_mass
        >>> scores = torch.linspace(1.0, 0.1, 10)  # already ranked
        >>> targets = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 0, 0])
        >>> cm = contestable_mass(scores, targets, budget=0.2)  # k = 2, near zone: ranks 3-4
        >>> cm.false_alerts.item(), cm.near_misses.item(), cm.far_misses.item()
        (1.0, 2.0, 1.0)
        >>> cm.headroom.item(), round(cm.contestedness.item(), 4)  # 1/4, 2/3
        (0.25, 0.6667)
        >>> [round(v.item(), 4) for v in cm.fpr_window]  # 0 and 1/6: one negative above rank 4
        [0.0, 0.1667]
    """
    return _analyse(
        scores, targets, budget=budget, near=near, ignore_index=ignore_index, n_boot=n_boot, generator=generator
    ).mass


def _iqr(x: Tensor, member: Tensor) -> Tensor:
    """``[C]`` inter-quartile range of each column over ``member`` rows, ``'higher'`` interpolation (as the losses)."""
    q, _ = masked_column_quantiles(x, member, [0.75, 0.25], "higher")
    return (q[0] - q[1]).to(_F64)
