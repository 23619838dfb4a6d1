"""Brute-force reference implementations of the three ranking losses.

Written straight from the formulas in ``shared/spec/incumbent-behaviour.md`` (§2.4-§2.6, §3, §4,
§5) and ``SPEC.md`` (D5, D6), independently of the library code.  Everything is a plain Python
loop over classes, positives and pairs on 0-d float64 torch tensors, so autograd gives the exact
gradient of the textbook formula.  Only meant for tiny inputs (a few dozen rows).

Conventions shared by the three references:

* The pool is every row whose target is not ``ignore_index``; the companion vectors
  (``sample_weight``, ``iid_mask``, ``live_mask``) are filtered the same way.
* Binary mode is ``C == 1``: a row is positive when its target is non-zero.  Otherwise class
  ``c`` is one-vs-rest: positive when ``target == c``.
* Every reference returns ``(per_class, valid)``: ``per_class[C]`` is the per-class loss with
  ``nan`` for invalid classes, ``valid[C]`` is a bool tensor.  :func:`ref_reduce` turns that into
  the ``reduction`` output.
* Quantile thresholds call ``torch.quantile`` on the detached reference column (SPEC D5: the
  library must give exactly ``torch.quantile``'s value).  Because the order statistic picked by
  the non-linear interpolation modes flips when ``level * (n - 1)`` crosses an integer (or a
  half-integer for ``'nearest'``), the references refuse (``AssertionError``) test data that puts a
  quantile position within ``KNIFE_EDGE`` of such a point: two correct implementations may round
  the level differently there, so a mismatch would say nothing about the library.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

INTERPOLATIONS = ("linear", "lower", "higher", "nearest", "midpoint")
KNIFE_EDGE = 1e-6

__all__ = [
    "GRAD_REL_TO_MAX",
    "INTERPOLATIONS",
    "KNIFE_EDGE",
    "LOSS_ATOL",
    "LOSS_RTOL",
    "RefQueue",
    "assert_grad_close",
    "assert_loss_close",
    "check_unambiguous_level",
    "dense_pauc",
    "dense_recall_at_quantile",
    "dense_smooth_ap",
    "make_case",
    "pauc_levels",
    "quantile_cells",
    "ref_pauc",
    "ref_recall_at_quantile",
    "ref_reduce",
    "ref_smooth_ap",
    "scalarize",
    "value_and_grad",
]


# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------


class _Pool:
    """The filtered pool as Python lists of 0-d tensors (one per cell)."""

    def __init__(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        ignore_index: int,
        *,
        sample_weight: torch.Tensor | None = None,
        iid_mask: torch.Tensor | None = None,
        live_mask: torch.Tensor | None = None,
    ) -> None:
        assert logits.ndim == 2, "reference expects logits [M, C]"
        m, c = logits.shape
        self.num_classes = c
        self.binary = c == 1
        tg = [int(t) for t in targets.reshape(-1).tolist()]
        assert len(tg) == m
        keep = [i for i in range(m) if tg[i] != ignore_index]
        rows = logits.unbind(0)
        self.cells = [list(rows[i].unbind(0)) for i in keep]  # cells[r][c]: 0-d tensor with grad
        self.targets = [tg[i] for i in keep]
        self.weight = [1.0] * len(keep) if sample_weight is None else [float(sample_weight[i]) for i in keep]
        self.iid = [True] * len(keep) if iid_mask is None else [bool(iid_mask[i]) for i in keep]
        self.live = [True] * len(keep) if live_mask is None else [bool(live_mask[i]) for i in keep]
        self.n = len(keep)
        self.dtype = logits.dtype

    def is_pos(self, r: int, c: int) -> bool:
        return self.targets[r] != 0 if self.binary else self.targets[r] == c

    def value(self, r: int, c: int) -> float:
        return float(self.cells[r][c].detach())


def _nan(dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(math.nan, dtype=dtype)


def _finish(losses: list[torch.Tensor | None], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    per_class = torch.stack([_nan(dtype) if x is None else x.reshape(()) for x in losses])
    valid = torch.tensor([x is not None for x in losses], dtype=torch.bool)
    return per_class, valid


def check_unambiguous_level(n: int, level: float, interpolation: str) -> None:
    """Fail loudly if ``torch.quantile`` on ``n`` values at ``level`` sits on a rounding knife-edge.

    Exactly representable dyadic levels (0, 1/8, ..., 1) are exempt: ``level * (n - 1)`` is then
    computed exactly by any implementation.
    """
    if interpolation == "linear" or n <= 1 or float(level * 8).is_integer():
        return
    pos = level * (n - 1)
    frac = pos - math.floor(pos)
    edges = (0.0, 0.5, 1.0) if interpolation == "nearest" else (0.0, 1.0)
    dist = min(abs(frac - e) for e in edges)
    assert dist > KNIFE_EDGE, (
        f"test data error: quantile position {pos!r} (n={n}, level={level!r}, {interpolation}) is on a "
        "rounding knife-edge; pick other sizes/levels"
    )


def _quantile(values: Sequence[float], level: float, interpolation: str, dtype: torch.dtype) -> float:
    check_unambiguous_level(len(values), level, interpolation)
    col = torch.tensor(list(values), dtype=dtype)
    return float(torch.quantile(col, level, interpolation=interpolation))


def _kernel(x: float) -> float:
    """sigma'(x) = e^{-|x|} / (1 + e^{-|x|})^2, in Python floats."""
    e = math.exp(-abs(x))
    return e / (1.0 + e) ** 2


def attach(value: float, cells: Sequence[torch.Tensor], width: float, dtype: torch.dtype) -> torch.Tensor:
    """``value`` with the gradient of a kernel-smoothed quantile (the library's default).

    ``d theta / d s_j = sigma'((s_j - theta)/h) / sum_k sigma'((s_k - theta)/h)`` over the
    ``cells`` (the negatives among the rows that define the threshold); the value stays ``value``.
    """
    out = torch.tensor(value, dtype=dtype)
    if not cells:  # no negative defines it: nothing to move
        return out
    ks = [_kernel((float(cell.detach()) - value) / width) for cell in cells]
    total = sum(ks)
    for k, cell in zip(ks, cells, strict=True):
        out = out + (k / total) * (cell - cell.detach())
    return out


def quantile_cells(values: Sequence[float], levels: Sequence[float]) -> set[int]:
    """Indices (into ``values``) of every order statistic any interpolation mode may read at ``levels``.

    Used by the gradcheck tests to hold threshold-defining cells constant (the thresholds are
    detached, so a finite difference through them would disagree with autograd by design).
    """
    order = sorted(range(len(values)), key=lambda i: values[i])
    out: set[int] = set()
    n = len(values)
    for lv in levels:
        pos = lv * (n - 1)
        out.add(order[math.floor(pos)])
        out.add(order[min(n - 1, math.ceil(pos))])
    return out


def ref_reduce(per_class: torch.Tensor, valid: torch.Tensor, reduction: str, logits: torch.Tensor) -> torch.Tensor:
    """Reduce a reference per-class vector like §2.5 + SPEC D6.

    ``'none'``: per-class vector, ``nan`` where invalid. ``'sum'`` / ``'mean'``: sum / arithmetic mean
    over the valid classes; with no valid class, a graph-connected zero (``logits.sum() * 0``).
    """
    if reduction == "none":
        return per_class
    vals = [per_class[c] for c in range(per_class.shape[0]) if bool(valid[c])]
    if not vals:
        return logits.sum() * 0.0
    total = vals[0]
    for v in vals[1:]:
        total = total + v
    if reduction == "sum":
        return total
    assert reduction == "mean", reduction
    return total / len(vals)


# ----------------------------------------------------------------------------------------------
# Smooth-AP (§3)
# ----------------------------------------------------------------------------------------------


def ref_smooth_ap(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float,
    ignore_index: int = -100,
    sample_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class ``1 - AP`` with self-excluded sigmoid ranks.

    For each positive k: ``R_all = 1 + sum_{j != k} sig((s_j - s_k)/tau)`` over the pool,
    ``R_pos`` the same over positives only, ``prec = R_pos / R_all``; AP is the (weighted) mean of
    ``prec`` over positives.  Invalid: no positives, no negatives, or zero positive weight mass.
    """
    pool = _Pool(logits, targets, ignore_index, sample_weight=sample_weight)
    losses: list[torch.Tensor | None] = []
    for c in range(pool.num_classes):
        pos = [r for r in range(pool.n) if pool.is_pos(r, c)]
        n_neg = pool.n - len(pos)
        wsum = sum(pool.weight[k] for k in pos)
        if not pos or n_neg == 0 or wsum == 0.0:
            losses.append(None)
            continue
        pos_set = set(pos)
        acc = None
        for k in pos:
            s_k = pool.cells[k][c]
            r_all = 1.0
            r_pos = 1.0
            for j in range(pool.n):
                if j == k:  # self comparison excluded (not sigma(0) = 1/2)
                    continue
                sg = torch.sigmoid((pool.cells[j][c] - s_k) / temperature)
                r_all = r_all + sg
                if j in pos_set:
                    r_pos = r_pos + sg
            term = pool.weight[k] * (r_pos / r_all)
            acc = term if acc is None else acc + term
        ap = acc / wsum
        losses.append(1.0 - ap)
    return _finish(losses, pool.dtype)


# ----------------------------------------------------------------------------------------------
# Recall at quantile (§4)
# ----------------------------------------------------------------------------------------------


def ref_recall_at_quantile(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    quantile: float,
    temperature: float,
    interpolation: str = "higher",
    ignore_index: int = -100,
    sample_weight: torch.Tensor | None = None,
    return_thresholds: bool = False,
    tau_scale: str = "iqr",
    detach_thresholds: bool = False,
):
    """Per-class ``1 - soft recall`` above the pool quantile at level ``1 - quantile``.

    ``theta_c = torch.quantile(sg(pool column c), 1 - q, interpolation)`` over *all* pooled rows;
    ``rec_c`` = (weighted) mean over positives of ``sig((s_i - theta_c)/tau)``, with
    ``tau = temperature * IQR`` of the column (``tau_scale='iqr'``; ``temperature`` when the IQR
    is ``<= 1e-12``) or ``tau = temperature`` (``'logit'``). Unless ``detach_thresholds``, the
    threshold and the quartiles carry the gradient of :func:`attach`. Invalid: no positives or
    zero positive weight mass (an all-positive pool is valid).
    """
    pool = _Pool(logits, targets, ignore_index, sample_weight=sample_weight)
    losses: list[torch.Tensor | None] = []
    thresholds: list[float] = []
    for c in range(pool.num_classes):
        pos = [r for r in range(pool.n) if pool.is_pos(r, c)]
        wsum = sum(pool.weight[i] for i in pos)
        if not pos or wsum == 0.0:
            losses.append(None)
            thresholds.append(math.nan)
            continue
        col = [pool.value(r, c) for r in range(pool.n)]
        neg_cells = [pool.cells[r][c] for r in range(pool.n) if not pool.is_pos(r, c)]
        theta_value = _quantile(col, 1.0 - quantile, interpolation, pool.dtype)
        thresholds.append(theta_value)
        quartiles = [_quantile(col, lv, interpolation, pool.dtype) for lv in (0.75, 0.25)]
        spread = quartiles[0] - quartiles[1]
        dispersed = tau_scale == "iqr" and spread > 1e-12
        tau_value = temperature * (spread if dispersed else 1.0)
        theta: float | torch.Tensor = theta_value
        tau: float | torch.Tensor = tau_value
        if not detach_thresholds:
            theta = attach(theta_value, neg_cells, tau_value, pool.dtype)
            if dispersed:
                tau = temperature * (
                    attach(quartiles[0], neg_cells, tau_value, pool.dtype)
                    - attach(quartiles[1], neg_cells, tau_value, pool.dtype)
                )
        acc = None
        for i in pos:
            term = pool.weight[i] * torch.sigmoid((pool.cells[i][c] - theta) / tau)
            acc = term if acc is None else acc + term
        losses.append(1.0 - acc / wsum)
    per_class, valid = _finish(losses, pool.dtype)
    if return_thresholds:
        return per_class, valid, thresholds
    return per_class, valid


# ----------------------------------------------------------------------------------------------
# pAUC at budget (§5)
# ----------------------------------------------------------------------------------------------


def pauc_levels(alpha: float, beta: float, n_knots: int) -> list[float]:
    """Trapezoid knot levels ``1 - f_k``, ``f_k = alpha + k (beta - alpha)/(K - 1)``, ends pinned."""
    k1 = n_knots - 1
    levels = [1.0 - (alpha + k * (beta - alpha) / k1) for k in range(n_knots)]
    levels[0] = 1.0 - alpha
    levels[-1] = 1.0 - beta
    return levels


def ref_pauc(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    alpha: float = 0.0,
    beta: float = 0.005,
    surrogate: str = "trapezoid",
    n_knots: int = 2,
    tau_scale: str = "iqr",
    pos_numerator: str = "pool",
    budget_basis: str = "fpr",
    temperature: float = 0.1,
    interpolation: str = "higher",
    ignore_index: int = -100,
    iid_mask: torch.Tensor | None = None,
    live_mask: torch.Tensor | None = None,
    sample_weight: torch.Tensor | None = None,
    detach_thresholds: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Per-class ``1 - pAUC`` over the FPR band [alpha, beta] plus the §5.5 diagnostics.

    Unless ``detach_thresholds``, the trapezoid's knots and its scale carry the gradient of
    :func:`attach` over the reference rows (kernel width ``tau_eff``).

    Returns ``(per_class, valid, diag)`` with ``diag`` holding ``t_alpha``, ``t_beta``, ``tau_eff``,
    ``pauc_var`` (float, ``nan`` for invalid classes) and ``band_neg_count`` (int64, 0 for invalid).
    """
    pool = _Pool(logits, targets, ignore_index, sample_weight=sample_weight, iid_mask=iid_mask, live_mask=live_mask)
    dtype = pool.dtype
    losses: list[torch.Tensor | None] = []
    diag: dict[str, list] = {"t_alpha": [], "t_beta": [], "tau_eff": [], "band_neg_count": [], "pauc_var": []}

    def invalid() -> None:
        losses.append(None)
        for key in ("t_alpha", "t_beta", "tau_eff", "pauc_var"):
            diag[key].append(math.nan)
        diag["band_neg_count"].append(0)

    for c in range(pool.num_classes):
        rows = range(pool.n)
        pos = [r for r in rows if pool.is_pos(r, c)]
        neg = [r for r in rows if not pool.is_pos(r, c)]
        neg_iid = [r for r in neg if pool.iid[r]]
        numer = pos if pos_numerator == "pool" else [r for r in pos if pool.live[r]]
        # Validity gates, §5.1 (the second one applies in both bases).
        if not pos or not neg_iid or not numer:
            invalid()
            continue
        wsum = sum(pool.weight[i] for i in numer)
        if wsum == 0.0:
            invalid()
            continue
        ref_rows = neg_iid if budget_basis == "fpr" else [r for r in rows if pool.iid[r]]
        ref = [pool.value(r, c) for r in ref_rows]
        ref_cells = [pool.cells[r][c] for r in ref_rows if not pool.is_pos(r, c)]

        def q(level: float, ref: list[float] = ref) -> float:
            return _quantile(ref, level, interpolation, dtype)

        t_alpha = q(1.0 - alpha)
        t_beta = q(1.0 - beta)
        scale = (q(0.75) - q(0.25)) if tau_scale == "iqr" else (t_alpha - t_beta)
        if scale <= 1e-12:
            invalid()
            continue
        tau_eff = temperature * scale
        band_iid = sum(1 for r in neg_iid if t_beta <= pool.value(r, c) <= t_alpha)

        contrib: dict[int, torch.Tensor] = {}  # v_i per numerator positive
        if surrogate == "trapezoid":
            knots: list = [q(lv) for lv in pauc_levels(alpha, beta, n_knots)]
            knots[0], knots[-1] = t_alpha, t_beta  # pinned (§5.2)
            tau: float | torch.Tensor = tau_eff
            if not detach_thresholds:
                knots = [attach(k, ref_cells, tau_eff, dtype) for k in knots]
                if tau_scale == "iqr":
                    upper, lower = (attach(q(lv), ref_cells, tau_eff, dtype) for lv in (0.75, 0.25))
                    tau = temperature * (upper - lower)
                else:
                    tau = temperature * (knots[0] - knots[-1])
            omega = [0.5] + [1.0] * (n_knots - 2) + [0.5]
            for i in numer:
                v = None
                for wk, tk in zip(omega, knots, strict=True):
                    term = wk * torch.sigmoid((pool.cells[i][c] - tk) / tau)
                    v = term if v is None else v + term
                contrib[i] = v / (n_knots - 1)
        else:
            band = [r for r in neg if t_beta <= pool.value(r, c) <= t_alpha]  # all negatives
            if not band:
                invalid()
                continue
            for i in numer:
                v = None
                for j in band:
                    term = torch.sigmoid((pool.cells[i][c] - pool.cells[j][c]) / tau_eff)
                    v = term if v is None else v + term
                contrib[i] = v / len(band)
        # The trapezoid pAUC is the (weighted) mean over numerator positives of v_i; so is the
        # pairwise one (sum_i w_i sum_j sig / (|B| sum_i w_i)).
        acc = None
        for i in numer:
            term = pool.weight[i] * contrib[i]
            acc = term if acc is None else acc + term
        losses.append(1.0 - acc / wsum)
        vs = [float(contrib[i].detach()) for i in numer]
        mean_v = sum(vs) / len(vs)
        diag["t_alpha"].append(t_alpha)
        diag["t_beta"].append(t_beta)
        diag["tau_eff"].append(tau_eff)
        diag["band_neg_count"].append(band_iid)
        diag["pauc_var"].append(sum((v - mean_v) ** 2 for v in vs) / len(vs))

    per_class, valid = _finish(losses, dtype)
    stats = {k: torch.tensor(v, dtype=dtype) for k, v in diag.items() if k != "band_neg_count"}
    stats["band_neg_count"] = torch.tensor(diag["band_neg_count"], dtype=torch.int64)
    return per_class, valid, stats


# ----------------------------------------------------------------------------------------------
# Test-data factories, a reference memory queue and comparison helpers
# ----------------------------------------------------------------------------------------------

#: Loss tolerance (float64): SPEC A2 promises the dense formula to 1e-9 absolute in float64.
LOSS_RTOL = 1e-9
LOSS_ATOL = 1e-9
#: Gradient tolerance (float64): SPEC A2 promises 1e-8 of the largest gradient entry.
GRAD_REL_TO_MAX = 1e-8


def make_case(
    seed: int,
    *,
    n: int,
    num_classes: int,
    pos_rate: float = 0.3,
    ties: bool = False,
    n_ignore: int = 0,
    ignore_index: int = -100,
    absent: Sequence[int] = (),
    weights: str | None = None,
    iid_frac: float | None = None,
    live_frac: float | None = None,
    float32_exact: bool = False,
    scale: float = 1.0,
) -> dict:
    """Seeded random pool.

    ``ties`` rounds logits to multiples of 0.5 (many exact ties, within and across classes).
    ``absent`` lists classes (multi-class) that get no row.  ``weights``: ``None``, ``'rand'``
    (uniform [0.2, 2)), ``'some_zero'`` (rand with ~30% exact zeros) or ``'class1_zero'`` (rand, but
    every row of class 1 - binary: every positive - gets weight 0).
    """
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, num_classes, generator=g, dtype=torch.float64) * scale
    if ties:
        logits = (logits * 2.0).round() / 2.0
    if float32_exact:
        logits = logits.float().double()
    if num_classes == 1:
        targets = (torch.rand(n, generator=g) < pos_rate).long()
        targets[0], targets[1] = 1, 0  # at least one of each (before ignoring)
        targets[2], targets[3] = 1, 0
    else:
        present = [c for c in range(num_classes) if c not in absent]
        idx = torch.randint(0, len(present), (n,), generator=g)
        targets = torch.tensor([present[i] for i in idx.tolist()], dtype=torch.long)
        for k, c in enumerate(present):  # every present class twice at least
            targets[2 * k] = c
            targets[2 * k + 1] = c
    if n_ignore:
        perm = torch.randperm(n, generator=g)[:n_ignore]
        targets[perm] = ignore_index
    out = {"logits": logits, "targets": targets, "sample_weight": None, "iid_mask": None, "live_mask": None}
    if weights is not None:
        w = 0.2 + 1.8 * torch.rand(n, generator=g, dtype=torch.float64)
        if float32_exact:
            w = w.float().double()
        if weights == "some_zero":
            w[torch.rand(n, generator=g) < 0.3] = 0.0
        elif weights == "class1_zero":
            w[targets == 1] = 0.0
        else:
            assert weights == "rand", weights
        out["sample_weight"] = w
    if iid_frac is not None:
        out["iid_mask"] = torch.rand(n, generator=g) < iid_frac
    if live_frac is not None:
        out["live_mask"] = torch.rand(n, generator=g) < live_frac
    return out


class RefQueue:
    """A list-based ring buffer written from §6.2 (enqueue) and §6.3 (read = all Q slots)."""

    def __init__(self, size: int, num_classes: int, ignore_index: int) -> None:
        self.size = size
        self.logits = torch.zeros(size, num_classes, dtype=torch.float64)
        self.targets = torch.full((size,), ignore_index, dtype=torch.long)
        self.iid = torch.ones(size, dtype=torch.bool)
        self.weight = torch.ones(size, dtype=torch.float64)
        self.ptr = 0

    def enqueue(self, logits, targets, iid=None, weight=None) -> None:
        n = logits.shape[0]
        iid = torch.ones(n, dtype=torch.bool) if iid is None else iid.bool()
        weight = torch.ones(n, dtype=torch.float64) if weight is None else weight
        if n >= self.size:
            sl = slice(n - self.size, n)
            self.logits[:] = logits.detach()[sl]
            self.targets[:] = targets[sl]
            self.iid[:] = iid[sl]
            self.weight[:] = weight[sl]
            self.ptr = 0
            return
        for r in range(n):
            slot = (self.ptr + r) % self.size
            self.logits[slot] = logits.detach()[r]
            self.targets[slot] = targets[r]
            self.iid[slot] = iid[r]
            self.weight[slot] = weight[r]
        self.ptr = (self.ptr + n) % self.size

    def weighted(self) -> bool:
        return bool((self.weight != 1).any())

    def pool(self, logits, targets, iid=None, weight=None):
        """The merged pool of §2.3 step 7: live rows then every slot (queue rows constant)."""
        n = logits.shape[0]
        iid = torch.ones(n, dtype=torch.bool) if iid is None else iid.bool()
        weighted = weight is not None or self.weighted()
        live_w = torch.ones(n, dtype=torch.float64) if weight is None else weight
        return {
            "logits": torch.cat([logits, self.logits.clone()]),
            "targets": torch.cat([targets, self.targets.clone()]),
            "iid_mask": torch.cat([iid, self.iid.clone()]),
            "live_mask": torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(self.size, dtype=torch.bool)]),
            "sample_weight": torch.cat([live_w, self.weight.clone()]) if weighted else None,
        }


def scalarize(out: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor | None:
    """A scalar to differentiate: the output itself, or a fixed mix of the valid entries of a vector."""
    if out.ndim == 0:
        return out
    terms = [out[c] * (1.0 + 0.37 * c) for c in range(out.shape[0]) if valid is None or bool(valid[c])]
    if not terms:  # 'none' with no valid class: nothing to differentiate
        return None
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def value_and_grad(fn, x: torch.Tensor, valid: torch.Tensor | None = None):
    """Run ``fn`` on a fresh leaf copy of ``x``; return (output detached, grad w.r.t. x, raw result)."""
    leaf = x.detach().clone().requires_grad_(True)
    res = fn(leaf)
    out = res[0] if isinstance(res, tuple) else res
    s = scalarize(out, valid)
    if s is not None and s.requires_grad:
        (g,) = torch.autograd.grad(s, leaf, allow_unused=True)
        g = torch.zeros_like(leaf) if g is None else g
    else:
        g = None  # output not attached to the graph: callers decide whether that is allowed
    return out.detach(), g, res


def assert_loss_close(got: torch.Tensor, expected: torch.Tensor, what: str = "loss") -> None:
    torch.testing.assert_close(
        got.detach().to(torch.float64),
        expected.detach().to(torch.float64),
        rtol=LOSS_RTOL,
        atol=LOSS_ATOL,
        equal_nan=True,
        msg=lambda m: f"{what} differs from the reference:\n{m}\n got={got.tolist()}\n exp={expected.tolist()}",
    )


def assert_grad_close(got: torch.Tensor | None, expected: torch.Tensor | None, what: str = "grad") -> None:
    if expected is None:  # nothing differentiable on the reference side ('none', no valid class)
        return
    assert got is not None, f"{what}: library output is not attached to the autograd graph"
    atol = GRAD_REL_TO_MAX * float(expected.abs().max()) + 1e-14
    torch.testing.assert_close(
        got.to(torch.float64),
        expected.to(torch.float64),
        rtol=1e-7,
        atol=atol,
        msg=lambda m: f"{what} differs from the reference gradient:\n{m}",
    )


# ----------------------------------------------------------------------------------------------
# Dense (vectorised) versions of the same formulas, for pools too large for the loops
# ----------------------------------------------------------------------------------------------
# Straight [|P|, M] matrix forms of §3-§5, used to exercise the library's chunked / sorted kernels
# (SPEC A2) at sizes where chunk boundaries and the "count instead of evaluate" shortcut kick in.
# They are checked against the loop references above on small pools (test files).


def _dense_pool(logits, targets, ignore_index, *extra):
    keep = targets.reshape(-1) != ignore_index
    out = [logits[keep], targets.reshape(-1)[keep]]
    out += [None if e is None else e[keep] for e in extra]
    return out


def _pos_mask(t: torch.Tensor, c: int, num_classes: int) -> torch.Tensor:
    return t != 0 if num_classes == 1 else t == c


def dense_smooth_ap(logits, targets, *, temperature, ignore_index=-100, sample_weight=None):
    x, t, w = _dense_pool(logits, targets, ignore_index, sample_weight)
    num_classes = logits.shape[1]
    w = torch.ones(x.shape[0], dtype=x.dtype) if w is None else w
    losses: list[torch.Tensor | None] = []
    for c in range(num_classes):
        pos = _pos_mask(t, c, num_classes)
        idx = torch.nonzero(pos).flatten()
        wsum = float(w[pos].sum())
        if idx.numel() == 0 or bool(pos.all()) or wsum == 0.0:
            losses.append(None)
            continue
        s = x[:, c]
        d = torch.sigmoid((s[None, :] - s[idx][:, None]) / temperature)
        self_mask = torch.zeros_like(d, dtype=torch.bool)
        self_mask[torch.arange(idx.numel()), idx] = True
        d = d.masked_fill(self_mask, 0.0)
        prec = (1.0 + (d * pos[None, :]).sum(1)) / (1.0 + d.sum(1))
        losses.append(1.0 - (w[idx] * prec).sum() / wsum)
    return _finish(losses, x.dtype)


def dense_attach(value, s, member, width):
    """Vectorised :func:`attach`: ``value`` plus the kernel-weighted gradient path to ``s[member]``."""
    x = ((s.detach()[member] - value) / width).abs()
    k = torch.exp(-x) / (1.0 + torch.exp(-x)) ** 2
    return value + (k * (s[member] - s.detach()[member])).sum() / k.sum()


def dense_recall_at_quantile(
    logits,
    targets,
    *,
    quantile,
    temperature,
    interpolation="higher",
    ignore_index=-100,
    sample_weight=None,
    tau_scale="iqr",
    detach_thresholds=False,
):
    x, t, w = _dense_pool(logits, targets, ignore_index, sample_weight)
    num_classes = logits.shape[1]
    w = torch.ones(x.shape[0], dtype=x.dtype) if w is None else w
    losses: list[torch.Tensor | None] = []
    for c in range(num_classes):
        pos = _pos_mask(t, c, num_classes)
        wsum = float(w[pos].sum())
        if not bool(pos.any()) or wsum == 0.0:
            losses.append(None)
            continue
        s = x[:, c]
        check_unambiguous_level(s.numel(), 1.0 - quantile, interpolation)
        theta = torch.quantile(s.detach(), 1.0 - quantile, interpolation=interpolation)
        q75, q25 = (torch.quantile(s.detach(), lv, interpolation=interpolation) for lv in (0.75, 0.25))
        dispersed = tau_scale == "iqr" and float(q75 - q25) > 1e-12
        tau = temperature * (q75 - q25) if dispersed else torch.tensor(temperature, dtype=x.dtype)
        if not detach_thresholds:
            width = tau.detach()
            theta = dense_attach(theta, s, ~pos, width)
            if dispersed:
                tau = temperature * (dense_attach(q75, s, ~pos, width) - dense_attach(q25, s, ~pos, width))
        losses.append(1.0 - (w[pos] * torch.sigmoid((s[pos] - theta) / tau)).sum() / wsum)
    return _finish(losses, x.dtype)


def dense_pauc(
    logits,
    targets,
    *,
    alpha=0.0,
    beta=0.005,
    surrogate="trapezoid",
    n_knots=2,
    tau_scale="iqr",
    pos_numerator="pool",
    budget_basis="fpr",
    temperature=0.1,
    interpolation="higher",
    ignore_index=-100,
    iid_mask=None,
    live_mask=None,
    sample_weight=None,
    detach_thresholds=False,
):
    x, t, iid, live, w = _dense_pool(logits, targets, ignore_index, iid_mask, live_mask, sample_weight)
    n, num_classes = x.shape
    iid = torch.ones(n, dtype=torch.bool) if iid is None else iid.bool()
    live = torch.ones(n, dtype=torch.bool) if live is None else live.bool()
    w = torch.ones(n, dtype=x.dtype) if w is None else w
    losses: list[torch.Tensor | None] = []
    for c in range(num_classes):
        pos = _pos_mask(t, c, num_classes)
        neg_iid = ~pos & iid
        numer = pos if pos_numerator == "pool" else pos & live
        wsum = float(w[numer].sum())
        if not bool(pos.any()) or not bool(neg_iid.any()) or not bool(numer.any()) or wsum == 0.0:
            losses.append(None)
            continue
        s = x[:, c]
        ref = s.detach()[neg_iid] if budget_basis == "fpr" else s.detach()[iid]

        def q(level, ref=ref):
            check_unambiguous_level(ref.numel(), level, interpolation)
            return torch.quantile(ref, level, interpolation=interpolation)

        t_alpha, t_beta = q(1.0 - alpha), q(1.0 - beta)
        scale = (q(0.75) - q(0.25)) if tau_scale == "iqr" else (t_alpha - t_beta)
        if float(scale) <= 1e-12:
            losses.append(None)
            continue
        tau_eff = temperature * scale
        if surrogate == "trapezoid":
            knots = torch.stack([q(lv) for lv in pauc_levels(alpha, beta, n_knots)])
            if not detach_thresholds:
                member = neg_iid
                width = tau_eff.detach()
                knots = torch.stack([dense_attach(k, s, member, width) for k in knots])
                if tau_scale == "iqr":
                    upper, lower = (dense_attach(q(lv), s, member, width) for lv in (0.75, 0.25))
                    tau_eff = temperature * (upper - lower)
                else:
                    tau_eff = temperature * (knots[0] - knots[-1])
            omega = torch.ones(n_knots, dtype=x.dtype)
            omega[0] = omega[-1] = 0.5
            v = (torch.sigmoid((s[numer][:, None] - knots[None, :]) / tau_eff) * omega).sum(1) / (n_knots - 1)
        else:
            band = ~pos & (s.detach() >= t_beta) & (s.detach() <= t_alpha)
            if not bool(band.any()):
                losses.append(None)
                continue
            v = torch.sigmoid((s[numer][:, None] - s[band][None, :]) / tau_eff).mean(1)
        losses.append(1.0 - (w[numer] * v).sum() / wsum)
    return _finish(losses, x.dtype)
