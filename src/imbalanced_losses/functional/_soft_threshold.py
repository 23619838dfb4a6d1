r"""Soft crossings of quantile thresholds: the shared kernel of the recall and trapezoid pAUC losses.

Both losses score the positives of each class against a few quantile thresholds (*knots*) of
the class's reference rows, with a temperature scaled by a spread of the same rows:

.. math::
    L_c = 1 - \frac{\sum_{i \in P_c} w_i \sum_k \omega_k\, \sigma\!\left((s_i - t_{c,k})/\tau_c\right)}
                   {\sum_{i \in P_c} w_i},
    \qquad \tau_c = \tau \cdot (t_{c,h} - t_{c,l}) \text{ (or } \tau \text{ when that spread is below } \epsilon)

with knot weights :math:`\omega_k` summing to one (recall: one knot; trapezoid: the trapezoid
rule over the band) and :math:`(h, l)` two levels (the quartiles, or the band edges); without a
scale, :math:`\tau_c = \tau` in logits.

**The thresholds' gradient.** Taken as constants (``detach``), the thresholds let the surrogate
lift positives but never lower a negative: every step pushes the scores up, the thresholds
follow, and the logit scale runs away. Here a threshold keeps its exact value but passes its
gradient on to the rows around it, as the implicit derivative of a kernel-smoothed quantile
does. For the smoothed quantile :math:`\theta` of a column, defined by
:math:`\sum_j \sigma((s_j - \theta)/h) = \text{const}` over the member rows,

.. math::
    \frac{\partial \theta}{\partial s_j} = \frac{\sigma'((s_j - \theta)/h)}{\sum_k \sigma'((s_k - \theta)/h)}
    = \operatorname{softmax}_j \log \sigma'((s_j - \theta)/h),

a weight distribution over the members (it sums to one, so a common shift of every member
moves the threshold by as much), with the width :math:`h = \tau_c`. As a softmax of
:math:`\log \sigma'(x) = -|x| - 2\log(1 + e^{-|x|})` it stays defined when every member lies
many widths away: the nearest one then takes the whole gradient, the derivative of the exact
order statistic. Where a host read is free (the CPU) the ratio is formed as it stands, from
:math:`\sigma'(x) = \tfrac14 \operatorname{sech}^2(x/2)`, and the softmax serves only a level
whose sum underflows (:func:`_spread`). The losses pass the *negatives* that take part in a threshold as its members
(``spread``). A positive at the cut would otherwise be pushed down by the whole pool's demand
on the threshold, more than its own term lifts it; trained from scratch with a sharp
temperature, that sank the positives below chance. On the negatives alone the pair "positives
up, negatives at the cut down" is the pairwise contrast that keeps the pairwise pAUC surrogate
healthy.

**One pass.** The objective is known in the forward pass, so :class:`_SoftThreshold` forms its
gradient there, in closed form, and the backward pass is one product: a fraction of the
operations autograd would dispatch through the same formula (the cost of a loss call on a
GPU), and none of its temporaries is kept for the backward pass.

**One column on the CPU.** A small binary pool is dominated by the fixed cost of each
operation, and a host read is free on the CPU: there the per-class values (the scale and
temperature, the total weight, their reciprocals) are Python numbers (:class:`Scalars`), each
rounded to the scores' dtype as the tensor arithmetic rounds it, so that every result is the
same, bitwise, for about ten operations fewer (``tests/test_host_scalars.py``). The loss of that
single class is 0-d (its reduction needs no view), and a single column's gradient comes out of
one ``addmm`` that also subtracts the positives' own term.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ._arith import HOST_ROUNDING, FlushDenormals, host_safe_reciprocal, safe_reciprocal
from ._autograd import once_differentiable_backward
from ._constants import device_constant
from ._plan import PLANS, KernelPlan, host_scalars, kernel_plan, override
from ._pool import positive_weights
from ._quantiles import MIN_DISPERSION, masked_column_quantiles, sorted_column_quantiles

#: Elements of the ``[levels, C, M]`` block of threshold weights formed at once: the CPU plan's
#: value (:mod:`._plan`); another value set here overrides every plan.
BLOCK_ELEMENTS = PLANS["cpu"].threshold_block


class Knots(NamedTuple):
    r"""Where the thresholds sit and how they enter a loss.

    Attributes:
        levels: Quantile levels of the thresholds, the ``K`` knots first.
        weights: ``K`` knot weights :math:`\omega_k` (they sum to one).
        scale: ``(h, l)``: the temperature is scaled by ``t_h - t_l``; ``None``: logit units.
    """

    levels: tuple[float, ...]
    weights: tuple[float, ...]
    scale: tuple[int, int] | None


class Scalars(NamedTuple):
    """A single column's per-class values as Python numbers, rounded to the scores' dtype as tensors would be."""

    den: float  # the positives' total weight
    flat: bool  # the scale is at most MIN_DISPERSION
    inv_den: float  # 1 / den (1 without a positive)
    inv_tau: float
    knot: float  # the first threshold (0 in place of nan)
    temperature: float
    finite: bool  # every threshold is finite


class Crossings(NamedTuple):
    """The kernel's result, per class ``[C]`` (``thresholds [L, C]``); only ``loss`` carries a gradient.

    On the host road (``host``) ``den``, ``tau`` and ``flat`` are ``None``: the callers read the
    validity from ``host`` (its ``flat`` and ``den``) and ask for no diagnostics there.
    """

    loss: Tensor  # 1 - the weighted mean soft crossing of the positives (0-d on the host road)
    den: Tensor | None  # the positives' total weight (0: no positive)
    thresholds: Tensor  # exact quantile values, nan for a class without reference rows
    tau: Tensor | None  # the effective temperature
    flat: Tensor | None  # bool: the scale is at most MIN_DISPERSION (tau is then in logits); False without a scale
    crossing: Tensor | None  # [M, C] each row's knot-weighted soft crossing, when asked for
    host: Scalars | None = None  # the same values as numbers, when the host road formed them


def soft_crossings(
    scores: Tensor,
    *,
    ref: Tensor | None,
    numer: Tensor,
    spread: Tensor | None,
    weight: Tensor | None,
    knots: Knots,
    temperature: float | Tensor,
    interpolation: str,
    keep_crossing: bool = False,
    host: bool = False,
) -> Crossings:
    r"""The loss of every class at once (see the module docstring), with its gradient formed in the forward pass.

    Args:
        scores: ``[M, C]`` pool scores (carry the graph).
        ref: ``[M, C]`` bool rows that define the thresholds; ``None``: every row (a single
            column's thresholds are then read at ranks formed on the host, and several columns
            are selected without masks).
        numer: ``[M, C]`` bool positives scored against the knots.
        spread: ``[M, C]`` bool rows the thresholds' gradient reaches; ``None``: the thresholds
            are constants.
        weight: ``[M]`` sample weights of the positives, or ``None``.
        knots: The levels, knot weights and scale.
        temperature: :math:`\tau`, a float or a 0-d tensor.
        interpolation: :func:`torch.quantile`'s interpolation of the thresholds.
        keep_crossing: Also return each row's soft crossing (diagnostics).
        host: The caller needs no ``tau`` or ``flat`` tensor (it reads ``Crossings.host`` when
            that is set): a single column on a plan whose host reads are free
            (:func:`._plan.host_scalars`) then forms its per-class values as numbers
            (:class:`Scalars`; the same results bitwise, about ten operations fewer).
    """
    values = scores.detach()  # the thresholds carry no graph (their gradient is formed below)
    if ref is None and scores.shape[1] == 1:  # ranks formed on the host: one sort, one indexing
        thresholds = sorted_column_quantiles(values.sort(dim=0).values, knots.levels, interpolation)
    else:
        thresholds = masked_column_quantiles(values, ref, knots.levels, interpolation)[0]
    finite = ref is None and scores.shape[0] > 0  # every threshold is a score: no nan to replace
    scalars = None
    plan = kernel_plan(scores.device)
    if host and not keep_crossing and host_scalars(scores, plan):
        # the total weight as a number: a count (exact), or the tensor road's sum read back
        total = numer.count_nonzero().item() if weight is None else _total_weight(numer, weight, scores.dtype).item()
        scalars = _scalars(thresholds, float(total), scores.dtype, weight is not None, knots, temperature)
        finite = scalars.finite
    loss, den, tau, flat, crossing = _SoftThreshold.apply(
        scores, thresholds, numer, spread, weight, knots, temperature, finite, keep_crossing, scalars, plan
    )
    return Crossings(loss, den, thresholds, tau, flat, crossing, scalars)


def _total_weight(numer: Tensor, weight: Tensor | None, dtype: torch.dtype) -> Tensor:
    """``[C]`` the positives' total weight (a count, exact in any float dtype, when unweighted)."""
    return numer.sum(0, dtype=dtype) if weight is None else positive_weights(numer, weight, dtype).sum(0)


def _scalars(
    thresholds: Tensor, total: float, dtype: torch.dtype, weighted: bool, knots: Knots, temperature: float | Tensor
) -> Scalars:
    """:class:`Scalars` of one column: each step of :meth:`_SoftThreshold.forward`'s ``[C]`` arithmetic, rounded alike.

    One float32 ``+ - * /`` of float32 values is the double result rounded once
    (:data:`~._arith.HOST_ROUNDING`); a tensor times a Python number or 0-d tensor rounds the
    number to the dtype first.
    """
    rounded = HOST_ROUNDING[dtype]
    values = [v for row in thresholds.tolist() for v in row]  # [L, 1]
    rows = [0.0 if math.isnan(v) else v for v in values]  # as nan_to_num: any finite value serves
    temp = rounded(float(temperature))
    flat = False
    tau = temp  # ones * temperature
    if knots.scale is not None:
        high, low = knots.scale
        scale = rounded(rows[high] - rows[low])
        flat = scale <= MIN_DISPERSION
        tau = rounded((1.0 if flat else scale) * temp)
    # as safe_reciprocal (weighted) and clamp_min(1).reciprocal() (a count) form it
    inv_den = host_safe_reciprocal(total, dtype) if weighted else rounded(1.0 / max(total, 1.0))
    finite = all(math.isfinite(v) for v in values)
    return Scalars(total, flat, inv_den, rounded(1.0 / tau), rows[0], temp, finite)


class _Entries(NamedTuple):
    """The positives the knots score, and how per-class values reach them and come back.

    A single column is taken whole, masked (``[M, 1]`` entries: no host read, a fixed shape);
    several columns are gathered (``[P]`` entries, class-major: one ``nonzero``, and work in
    proportion to the positives rather than to ``M x C``).
    """

    scores: Tensor  # [M, 1] or [P]
    weight: Tensor  # [M, 1] bool mask or float weights, or [P] float weights
    cls: Tensor | None  # [P] class of each entry; None: the masked single column
    flat_index: Tensor | None  # [P] index of each entry in the flattened [M, C] pool

    def per_entry(self, values: Tensor) -> Tensor:
        """Each entry's value of per-class ``values [C]`` or ``[K, C]`` (broadcasting against the entries)."""
        if self.cls is None:
            return values.unsqueeze(-2) if values.ndim > 1 else values
        return values.index_select(-1, self.cls)

    def class_sum(self, x: Tensor, num_classes: int, *, keepdim: bool = False, knots: bool = False) -> Tensor:
        """``[..., C]`` sums of the entry values ``x [..., E]``.

        ``keepdim``: a leading axis of 1 (one knot); ``knots``: the leading (knot) axis summed too.
        """
        if self.cls is None:
            return x.sum((0, -2) if knots else -2, keepdim=keepdim)
        x = x.sum(0) if knots else x
        x = x.unsqueeze(0) if keepdim else x
        return x.new_zeros(*x.shape[:-1], num_classes).index_add_(-1, self.cls, x)

    def subtract(self, pool: Tensor | None, values: Tensor, shape: tuple[int, int]) -> Tensor:
        """``pool [M, C]`` (``None``: zeros) minus the entry ``values`` at their cells, in place where it can."""
        if self.flat_index is None:
            return -values if pool is None else pool.sub_(values)
        flat = values.new_zeros(shape[0] * shape[1]) if pool is None else pool.contiguous().view(-1)
        return flat.index_add_(0, self.flat_index, values, alpha=-1.0).view(shape)

    def to_pool(self, values: Tensor, shape: tuple[int, int]) -> Tensor:
        """The entry ``values`` as ``[M, C]`` (0 in the other cells)."""
        if self.flat_index is None:
            return values
        return values.new_zeros(shape[0] * shape[1]).index_copy_(0, self.flat_index, values).view(shape)


def _entries(scores: Tensor, numer: Tensor, weight: Tensor | None) -> _Entries:
    if scores.shape[1] == 1:
        return _Entries(scores, numer if weight is None else numer * weight.unsqueeze(1), None, None)
    cls, rows = numer.t().nonzero(as_tuple=True)
    index = rows * scores.shape[1] + cls
    w = torch.ones_like(index, dtype=scores.dtype) if weight is None else weight.index_select(0, rows)
    return _Entries(scores.reshape(-1).index_select(0, index), w, cls, index)


class _SoftThreshold(torch.autograd.Function):
    """Forward: the loss and its gradient in closed form; backward: one product."""

    @staticmethod
    def forward(
        ctx: Any,
        scores: Tensor,
        thresholds: Tensor,
        numer: Tensor,
        spread: Tensor | None,
        weight: Tensor | None,
        knots: Knots,
        temperature: float | Tensor,
        finite: bool,
        keep_crossing: bool,
        host: Scalars | None,
        plan: KernelPlan,
    ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
        ctx.set_materialize_grads(False)  # the outputs other than the loss get no gradient to build
        k, (m, c) = len(knots.weights), scores.shape
        # A class without reference rows (nan thresholds) is invalid anyway: any finite value serves.
        t = thresholds if finite else torch.nan_to_num(thresholds, nan=0.0)
        e = _entries(scores, numer, weight)
        tau: Tensor | None
        flat: Tensor | bool | None
        inv_tau: Tensor | float
        inv_den: Tensor | float
        if host is not None:  # one column: the per-class values are numbers (see `_scalars`)
            den, tau, flat, inv_tau, inv_den = None, None, host.flat, host.inv_tau, host.inv_den
            knot: Tensor | float = host.knot if k == 1 else e.per_entry(t[:k])
            scaled: Tensor | float = inv_tau
            rate: Tensor | float = HOST_ROUNDING[scores.dtype](inv_den * inv_tau)
        else:
            rows = t.unbind(0)
            if knots.scale is None:
                tau, flat = torch.ones_like(rows[0]) * temperature, torch.zeros_like(rows[0], dtype=torch.bool)
            else:
                high, low = knots.scale
                scale = rows[high] - rows[low]
                flat = scale <= MIN_DISPERSION
                tau = scale.masked_fill(flat, 1.0) * temperature
            inv_tau = tau.reciprocal()
            den = _total_weight(numer, weight, scores.dtype)
            # the total weight is a count when unweighted (exact in any float dtype)
            inv_den = den.clamp_min(1.0).reciprocal() if weight is None else safe_reciprocal(den)
            knot, scaled = e.per_entry(rows[0] if k == 1 else t[:k]), e.per_entry(inv_tau)
            rate = e.per_entry(inv_den * inv_tau)
        # Each positive against each knot, in temperatures: [E], or [K, E] for several knots.
        z = (e.scores - knot) * scaled
        h = torch.sigmoid(z)
        if k == 1:
            hw = crossing = h
        else:  # the knot weights, shaped [K, 1] (or [K, 1, 1] for the masked column)
            omega = device_constant(
                tuple(((w,),) if e.cls is None else (w,) for w in knots.weights), scores.dtype, scores.device
            )
            hw = h * omega
            crossing = hw.sum(0)
        # The sum over the entries comes last, as one reduction whatever K is: rows that take
        # part in no class (kept or dropped by the caller) then cannot change its rounding.
        crossing_w = crossing * e.weight
        # the host road's single class: a 0-d loss, which its reduction takes as it is (no view)
        total = crossing_w.sum() if host is not None else e.class_sum(crossing_w, c)
        loss = torch.rsub(total * inv_den, 1.0)
        hwp = crossing_w if k == 1 else hw * e.weight
        ctx.mark_non_differentiable(*(x for x in (den, tau, flat) if isinstance(x, Tensor)))
        ctx.grad = None
        if ctx.needs_input_grad[0]:
            # a = -d loss / d s_i for each (knot, positive): omega_k w_i sigma'(z) / (den tau).
            a = torch.addcmul(hwp, hwp, h, value=-1.0).mul_(rate)  # hwp - hwp h, one operation
            a_rows = a if k == 1 else a.sum(0)
            if spread is None:
                ctx.grad = e.subtract(None, a_rows, (m, c))
            else:
                # a single column's positives' term is folded into the threshold part's last product
                minus = a_rows if e.cls is None else None
                temp = host.temperature if host else temperature
                part = _threshold_part(scores, t, spread, knots, e, a, z, inv_tau, flat, temp, plan, minus)
                ctx.grad = part if minus is not None else e.subtract(part, a_rows, (m, c))
        crossing_out = e.to_pool(crossing, (m, c)) if keep_crossing else None
        return loss, den, tau, (None if isinstance(flat, bool) else flat), crossing_out

    @staticmethod
    @once_differentiable_backward
    def backward(ctx: Any, grad_loss: Tensor | None, *_: Any) -> tuple[Tensor | None, ...]:
        grad = None if ctx.grad is None or grad_loss is None else grad_loss * ctx.grad
        return grad, None, None, None, None, None, None, None, None, None, None


def _threshold_part(
    scores: Tensor,
    t: Tensor,
    spread: Tensor,
    knots: Knots,
    e: _Entries,
    a: Tensor,
    z: Tensor,
    inv_tau: Tensor | float,
    flat: Tensor | bool,
    temperature: float | Tensor,
    plan: KernelPlan,
    minus: Tensor | None,
) -> Tensor:
    """``[M, C]``: the loss's gradient through the thresholds, spread over the ``spread`` rows, less ``minus``."""
    k, c = len(knots.weights), scores.shape[1]
    levels = len(knots.levels)
    # d loss / d t_k = sum_i a_ki; d loss / d tau = sum_i a_ki z_ki.
    if knots.scale is not None and k == 1 and levels == 3 and isinstance(flat, bool):
        # one knot and the scale's own two levels, on the host road: [knot, high, low] take
        # [sum a, T sum a z, -T sum a z] (T = 0 when flat), one product
        scale = 0.0 if flat else float(temperature)
        to_levels = device_constant(((1.0, 0.0), (0.0, scale), (0.0, -scale)), a.dtype, a.device)
        g_levels = torch.mm(to_levels, e.class_sum(torch.stack([a, a * z]), c))
        return _spread(scores, t, spread, g_levels, inv_tau, plan, minus)
    g_levels = e.class_sum(a, c, keepdim=k == 1)  # [K, C]
    if knots.scale is not None:
        g_tau = e.class_sum(a * z, c, knots=k > 1)
        # d tau / d scale = temperature (0 where the scale is flat: tau does not follow it there)
        if isinstance(flat, bool):  # a number (the host road)
            g_scale = torch.zeros_like(g_tau) if flat else g_tau * temperature
        else:
            g_scale = (g_tau * temperature).masked_fill(flat, 0.0)
        high, low = knots.scale
        if levels > k:  # the scale's two levels follow the knots: +g_scale and -g_scale
            g_levels = torch.cat([g_levels, g_scale * device_constant(((1.0,), (-1.0,)), a.dtype, a.device)])
        else:  # the scale is the band: two of the knots
            sign = tuple((1.0,) if i == high else (-1.0,) if i == low else (0.0,) for i in range(levels))
            g_levels = g_levels + g_scale * device_constant(sign, a.dtype, a.device)
    return _spread(scores, t, spread, g_levels, inv_tau, plan, minus)


def _log1p_exp(y: Tensor, softplus_max: int) -> Tensor:
    """``log(1 + e^y)`` for ``y <= 0``: one ``softplus`` up to ``softplus_max`` elements, else ``exp``, ``+1``, ``log``.

    On the CPU ``softplus`` is not vectorised (several times slower per element than ``exp``
    and ``log``), but ``exp`` and ``log`` go through MKL's vector math, which opens an OpenMP
    parallel region even for a few thousand elements: on a small block, waking the thread
    team, not the arithmetic, is the cost (about 25 us each on two threads), and one operation
    is dispatched instead of three. ``log(1 + e^y)`` loses only terms below ``e^y < 2^-24``: a
    relative change of the weight below float32's rounding.
    """
    if y.numel() <= softplus_max:
        return torch.nn.functional.softplus(y)
    return torch.exp(y).add_(1.0).log_()


def _spread(
    scores: Tensor,
    t: Tensor,
    spread: Tensor,
    g: Tensor,
    inv_tau: Tensor | float,
    plan: KernelPlan,
    minus: Tensor | None,
) -> Tensor:
    r"""``[M, C]``: ``sum_l g[l, c] * d t_lc / d s_jc`` with the kernel weights of the module docstring, less ``minus``.

    ``minus`` (``[M, 1]``, a single column only) is subtracted by the last product. The rows
    are laid out class-major (``[C, M]``; a copy for several classes, a view of one column), so
    that each level's reduction runs along the last, contiguous axis.

    **Weights.** On a plan whose host reads are free (the CPU's) each level's weights are
    :math:`\sigma'(y) / \sum \sigma'(y)` with :math:`\sigma'(y) = \tfrac14 \operatorname{sech}^2(y/2)`:
    ``cosh`` and a power (one thread, no sign to take), a sum, and for a single column one
    ``addmm`` that weighs the levels, sums them and subtracts ``minus``. A softmax over more
    than one row would open a parallel region on the CPU, whose thread wake costs more than a
    small block's arithmetic. The ratio needs no shift while every level's mass is at least
    ``tiny / eps`` of the dtype: a member flushed to zero (below ``tiny``) then weighs less
    than one rounding of it. Below that (every member many widths away, or none at all), and on
    other plans (no host read), the level's weights are the softmax of :math:`\log \sigma'(y)`
    (``nansum``: a class without members has ``nan`` weights and takes nothing).
    """
    x = torch.where(spread, scores, device_constant((math.inf,), scores.dtype, scores.device)).t()  # non-members: 0
    one = x.shape[0] == 1
    if not one:
        x = x.contiguous()
    inv_tau = inv_tau.unsqueeze(1) if isinstance(inv_tau, Tensor) else inv_tau  # [C, 1], or a number
    levels, elements = t.shape[0], max(1, x.numel())
    step = max(1, override(BLOCK_ELEMENTS, PLANS["cpu"].threshold_block, plan.threshold_block) // elements)
    info = torch.finfo(scores.dtype)
    min_mass = info.tiny / info.eps
    out = None  # [M, 1] (one column, less minus) or [C, M]
    with FlushDenormals(x.device.type == "cpu" and not torch.compiler.is_compiling()):
        for first in range(0, levels, step):
            t_block, g_block = (t, g) if levels <= step else (t[first : first + step], g[first : first + step])
            if not one:
                t_block = t_block.unsqueeze(2)  # [l, C, 1] against the [C, M] rows
            d = x - t_block  # s - t per level (, class) and row
            coef = None
            if plan.host_reads:
                u = d.mul_(inv_tau * 0.5).cosh_().pow_(-2)  # 4 sigma'((s - t) / tau)
                mass = u.sum(-1, keepdim=one)  # [l, 1] or [l, C]
                if min(min(row) for row in mass.tolist()) >= min_mass:
                    coef = g_block / mass
                else:  # d was scaled in place
                    d = x - t_block
            if coef is None:  # the softmax of log sigma'(y), y = -|s - t| / tau
                y = d.abs_().mul_(-inv_tau)
                u = y.add_(_log1p_exp(y, plan.softplus_max), alpha=-2.0).softmax(-1)
                if one:
                    u = u.nan_to_num_(nan=0.0)
                coef = g_block
            if one:  # u^T coef: the levels weighed and summed, less minus
                assert minus is not None
                out = torch.addmm(minus, u.t(), coef, beta=-1.0) if out is None else out.addmm_(u.t(), coef)
            else:
                part = u.mul_(coef.unsqueeze(2)).nansum(0)
                out = part if out is None else out.add_(part)
    assert out is not None
    return out if one else out.t()
