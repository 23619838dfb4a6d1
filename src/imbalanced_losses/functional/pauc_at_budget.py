r"""Partial AUC inside a false-positive budget band ``[alpha, beta]``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._validation import INTERPOLATIONS, check_bool, check_choice, check_float, check_int
from .._warnings import warn
from ._arith import HOST_ROUNDING, class_sum, host_safe_reciprocal, safe_divide, safe_reciprocal
from ._constants import device_constant
from ._diagnostics import SATURATION, pool_stats, saturated_pair_fraction, saturated_threshold_fraction
from ._exact_metrics import partial_auc_from_masks
from ._pairs import QueryParams, pair_sums
from ._plan import host_bookkeeping
from ._pool import Pairs, Pool, entries, flagged, row_mask, select_pairs
from ._quantiles import MIN_DISPERSION, masked_column_quantiles
from ._reduce import RankingResult, host_valid_result
from ._run import run_functional
from ._soft_threshold import Knots, soft_crossings

SURROGATES = ("trapezoid", "pairwise")
TAU_SCALES = ("iqr", "band")
POS_NUMERATORS = ("pool", "live")
BUDGET_BASES = ("fpr", "population")


def check_pauc_args(
    *, alpha: float, beta: float, n_knots: int, surrogate: str, tau_scale: str, pos_numerator: str, budget_basis: str
) -> tuple[float, float]:
    """Validate the pAUC options; returns ``(alpha, beta)`` as floats."""
    band = "0 <= alpha < beta <= 1"  # the messages name both, as 0.6's ("alpha.*beta") did
    alpha = check_float("alpha", alpha, low=0.0, high=1.0, low_open=False, high_open=True, constraint=band)
    beta = check_float("beta", beta, low=0.0, high=1.0, low_open=True, high_open=False, constraint=band)
    if not alpha < beta:
        raise ValueError(f"`alpha` and `beta` must satisfy 0 <= alpha < beta <= 1, got alpha={alpha!r}, beta={beta!r}.")
    check_int("n_knots", n_knots, minimum=2)
    check_choice("surrogate", surrogate, SURROGATES)
    check_choice("tau_scale", tau_scale, TAU_SCALES)
    check_choice("pos_numerator", pos_numerator, POS_NUMERATORS)
    check_choice("budget_basis", budget_basis, BUDGET_BASES)
    return alpha, beta


def dispersion_message(*, alpha: float, budget_basis: str, tau_scale: str) -> str:
    """Text of the one-time warning for a class skipped because its reference scores do not spread."""
    population = "iid negatives" if budget_basis == "fpr" else "pooled iid population"
    scale = "inter-quartile range" if tau_scale == "iqr" else "band width t_alpha - t_beta"
    hint = (
        f" With alpha={alpha:g} the upper band edge needs about {1.0 / alpha:.0f} reference rows to resolve; "
        "consider alpha=0 or a larger queue_size."
        if alpha > 0
        else " Increase queue_size or check that the model's scores are not constant."
    )
    return (
        f"PAUCAtBudgetLoss: degenerate dispersion of the reference scores ({population}, {scale} <= "
        f"{MIN_DISPERSION:g}) for at least one class; the band collapses and those classes are skipped.{hint}"
    )


def _knot_levels(alpha: float, beta: float, n_knots: int) -> list[float]:
    """Quantile levels ``1 - f_k`` of the trapezoid knots, end points pinned to ``1 - alpha``/``1 - beta``."""
    inner = [1.0 - (alpha + k * (beta - alpha) / (n_knots - 1)) for k in range(1, n_knots - 1)]
    return [1.0 - alpha, *inner, 1.0 - beta]


def _grouped_var(values: Tensor, cls: Tensor, counts: Tensor) -> Tensor:
    """Population variance of ``values [P]`` grouped by ``cls [P]`` (``counts [C]`` members per class)."""
    n = counts.to(values.dtype)
    mean = safe_divide(class_sum(values, cls, n.shape[0]), n)
    return safe_divide(class_sum((values - mean[cls]) ** 2, cls, n.shape[0]), n)


def _pairwise_objective(r: Tensor, params: QueryParams) -> tuple[Tensor, Tensor]:
    """Per positive ``w / den * (1 - R / |B|)`` (class constants ``(1/den, 1/|B|)``) and its slope in ``R``."""
    coef, inv_band = params.weighted(params.consts[..., 0]), params.consts[..., 1]
    return coef * (1.0 - r[..., 0] * inv_band), (-coef * inv_band).unsqueeze(-1)


def _pairwise_one_column(
    scores: Tensor,
    thresholds: Tensor,
    numer: Tensor,
    neg: Tensor,
    neg_iid: Tensor,
    *,
    iqr: bool,
    temperature: float | Tensor,
) -> RankingResult:
    """The pairwise surrogate of one unweighted column, its bookkeeping (scale, counts, validity) read on the host.

    Small binary pools are dominated by the fixed cost of each operation; a host read is free on
    the CPU, and the per-class values here are Python numbers, each rounded to the scores' dtype
    as the tensor arithmetic of :func:`pauc_at_budget_core` rounds it (one float32 ``+ - * /`` of
    float32 values is the double result rounded once), so the result is the same, bitwise, with
    about a dozen operations fewer. ``thresholds [L, 1]``: the band edges, then the quartiles.
    """
    dtype, device = scores.dtype, scores.device
    rounded = HOST_ROUNDING[dtype]
    t_alpha, t_beta, *quartiles = (row[0] for row in thresholds.tolist())  # [L, 1]
    scale = rounded(quartiles[0] - quartiles[1]) if iqr else rounded(t_alpha - t_beta)
    dispersed = scale > MIN_DISPERSION  # False for nan (no reference row)
    tau = rounded(rounded(float(temperature)) * scale)
    den = int(numer.count_nonzero())
    gated = _gated(den, neg_iid)
    band = neg & (scores >= t_beta) & (scores <= t_alpha)  # a nan threshold leaves the band empty
    n_band = int(band.count_nonzero())
    params = [host_safe_reciprocal(n, dtype) for n in (den, n_band)]  # (1 / den, 1 / |B|)
    out = pair_sums(
        scores,
        device_constant((tau if gated and dispersed else 1.0,), dtype, device),  # cached by value
        band.unsqueeze(2),
        numer,
        None,
        device_constant((tuple(params),), dtype, device),
        _pairwise_objective,
        queries_are_keys=False,
    )
    return _one_column_result(torch.rsub(out.per_class, 1.0), gated=gated, flat=not dispersed, band_empty=n_band == 0)


def _gated(den: float, neg_iid: Tensor) -> bool:
    """One column has a positive weight and an iid negative (``den > 0``: a numerator positive, hence a positive)."""
    return den > 0 and bool(neg_iid.any())


def _one_column_result(loss: Tensor, *, gated: bool, flat: bool, band_empty: bool = False) -> RankingResult:
    """The result of one column whose validity was read on the host, as :func:`pauc_at_budget_core` forms it.

    Valid when ``gated`` (see :func:`_gated`) and dispersed (not ``flat``) with a non-empty band;
    degenerate when gated but flat.
    """
    degenerate = device_constant((True,), torch.bool, loss.device) if gated and flat else None
    return host_valid_result(loss, gated and not flat and not band_empty, degenerate)


def pauc_at_budget_core(
    pool: Pool,
    *,
    iid: Tensor | None,
    live: Tensor | None,
    alpha: float = 0.0,
    beta: float = 0.005,
    surrogate: str = "trapezoid",
    n_knots: int = 2,
    tau_scale: str = "iqr",
    pos_numerator: str = "pool",
    budget_basis: str = "fpr",
    temperature: float | Tensor = 0.1,
    interpolation: str = "higher",
    detach_thresholds: bool = False,
    diagnostics: bool = False,
) -> RankingResult:
    """Per-class loss ``1 - pAUC_c`` on a pool (no reduction), with the diagnostics if asked.

    ``iid`` and ``live`` are ``[M]`` bool row flags, ``None`` for every row. See
    :func:`pauc_at_budget_loss` for the math.
    """
    scores, pos, neg, weight = pool.scores, pool.pos, pool.neg, pool.weight
    dtype = scores.dtype
    c = scores.shape[1]
    neg_iid = flagged(neg, iid)
    numer = pos if pos_numerator == "pool" else flagged(pos, live)
    iqr = tau_scale == "iqr"
    population = budget_basis == "population"
    ref = flagged(pos | neg, iid) if population else neg_iid

    if surrogate == "trapezoid":
        knots = Knots(
            levels=(*_knot_levels(alpha, beta, n_knots), *((0.75, 0.25) if iqr else ())),
            weights=tuple(
                0.5 / (n_knots - 1) if k in (0, n_knots - 1) else 1.0 / (n_knots - 1) for k in range(n_knots)
            ),
            scale=(n_knots, n_knots + 1) if iqr else (0, n_knots - 1),
        )
        every_row = pool.all_rows and population and iid is None
        crossings = soft_crossings(
            scores,
            ref=None if every_row else ref,  # None: every row, known on the host
            numer=numer,
            spread=None if detach_thresholds else (ref & neg if population else ref),  # the negatives among them
            weight=weight,
            knots=knots,
            temperature=temperature,
            interpolation=interpolation,
            keep_crossing=diagnostics,
            host=not diagnostics,  # the diagnostics read tau and the flat scale as tensors
        )
        if crossings.host is not None:  # one column: its bookkeeping on the host
            host = crossings.host
            return _one_column_result(crossings.loss, gated=_gated(host.den, neg_iid), flat=host.flat)
        loss, qs, den, tau_eff = crossings.loss, crossings.thresholds, crossings.den, crossings.tau
        assert tau_eff is not None  # the tensor road
        assert den is not None
        assert crossings.flat is not None
        dispersed = ~crossings.flat
        t_alpha, t_beta = qs[0], qs[n_knots - 1]
    else:
        # One selection pass resolves every threshold of every class: band edges and quartiles.
        levels = [1.0 - alpha, 1.0 - beta, *((0.75, 0.25) if iqr else ())]
        thresholds = masked_column_quantiles(scores, ref, levels, interpolation)[0]
        if host_bookkeeping(scores, weight, diagnostics):
            return _pairwise_one_column(scores, thresholds, numer, neg, neg_iid, iqr=iqr, temperature=temperature)
        t_alpha, t_beta, *quartiles = thresholds.unbind(0)
        scale = quartiles[0] - quartiles[1] if iqr else t_alpha - t_beta
        dispersed = scale > MIN_DISPERSION
        tau_eff = temperature * scale
        n_numer = numer.sum(0)
        if weight is not None:
            den = select_pairs(numer, scores, weight).total_weight(n_numer, dtype)
        else:  # unweighted: the pair kernel takes the positives from the mask, den is their count
            den = n_numer.to(dtype)
    # den > 0 implies a numerator positive, hence a positive: those tests are implied.
    gated = neg_iid.any(0) & (den > 0)
    degenerate = gated & ~dispersed
    valid = gated & dispersed
    if surrogate == "pairwise" or diagnostics:  # a nan threshold (no reference row) leaves the band empty
        in_band = (scores >= t_beta) & (scores <= t_alpha)

    if surrogate == "pairwise":
        tau_safe = torch.where(valid, tau_eff, 1.0)
        band = neg & in_band  # every pooled negative in the band, iid or not
        n_band = band.sum(0)
        valid = valid & (n_band > 0)
        class_params = safe_reciprocal(torch.stack([den, n_band.to(dtype)], 1))  # (1 / den, 1 / |B|)
        out = pair_sums(
            scores,
            tau_safe,
            band.unsqueeze(2),
            numer,
            weight,
            class_params,
            _pairwise_objective,
            queries_are_keys=False,
        )
        loss = 1.0 - out.per_class

    if not diagnostics:
        return RankingResult(loss, valid, None, degenerate)
    s = scores.detach()
    if surrogate == "trapezoid":  # (numerator positive, knot) terms
        n_numer = numer.sum(0)
        cls, rows = numer.t().nonzero(as_tuple=True)
        tau_safe = torch.where(valid, tau_eff, 1.0)
        knot_values = torch.nan_to_num(qs[:n_knots], nan=0.0).t()  # [C, K]
        saturated = saturated_threshold_fraction(
            Pairs(cls, entries(s, rows, cls), None), knot_values, SATURATION * tau_safe, c
        )
        assert crossings.crossing is not None
        v, v_cls = entries(crossings.crossing, rows, cls), cls
    else:  # (numerator positive, band negative) pairs
        saturated = saturated_pair_fraction(scores, numer, band, SATURATION * tau_safe, exclude_self=False)
        # Each positive's share of the band negatives below it.
        query_valid, inv_band = out.valid_slots(), class_params[:, 1]
        v_cls = torch.arange(c, device=s.device).unsqueeze(1).expand_as(query_valid)[query_valid]
        v = (1.0 - out.ratios[..., 0] * inv_band.double().unsqueeze(1))[query_valid].to(dtype)

    nan = torch.full_like(t_alpha, float("nan"))
    stats = {
        "t_alpha": torch.where(valid, t_alpha.detach(), nan),
        "t_beta": torch.where(valid, t_beta.detach(), nan),
        "tau_eff": torch.where(valid, tau_eff.detach(), nan),
        "band_neg_count": torch.where(valid, (neg_iid & in_band).sum(0), torch.zeros_like(n_numer)),
        "pauc_var": torch.where(valid, _grouped_var(v, v_cls, n_numer), nan),
        "grad_pos_count": flagged(pos, live).sum(0),
        **pool_stats(pool),
        "pauc": partial_auc_from_masks(s, pos, neg, alpha=alpha, beta=beta, normalize="band"),
        "saturated_fraction": torch.where(valid, saturated, nan),
    }
    return RankingResult(loss, valid, stats, degenerate)


def pauc_at_budget_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    alpha: float = 0.0,
    beta: float = 0.005,
    surrogate: str = "trapezoid",
    n_knots: int = 2,
    tau_scale: str = "iqr",
    pos_numerator: str = "pool",
    budget_basis: str = "fpr",
    temperature: float = 0.1,
    quantile_interpolation: str = "higher",
    reduction: str = "mean",
    ignore_index: int = -100,
    iid_mask: Tensor | None = None,
    live_mask: Tensor | None = None,
    sample_weight: Tensor | None = None,
    class_weight: Tensor | Sequence[float] | None = None,
    return_per_class: bool = False,
    return_diagnostics: bool = False,
    validate_args: bool = True,
    detach_thresholds: bool = False,
) -> Any:
    r"""Partial-AUC loss over the false-positive band ``[alpha, beta]``.

    Thresholds are quantiles of a reference set ``Ref`` (iid negatives for
    ``budget_basis='fpr'``, every iid row for ``'population'``):
    :math:`t_\alpha = Q_{1-\alpha}(\mathrm{Ref})`, :math:`t_\beta = Q_{1-\beta}(\mathrm{Ref})`.
    The temperature is scale-aware: :math:`\tau_{eff} = \tau \cdot \mathrm{scale}` with
    ``scale`` the inter-quartile range of ``Ref`` (``tau_scale='iqr'``) or
    :math:`t_\alpha - t_\beta` (``'band'``). With numerator positives :math:`P_n` (all pooled
    positives, or only live ones for ``pos_numerator='live'``):

    Trapezoid (``K = n_knots`` knots :math:`t_k` at FPR levels spread evenly over the band):

    .. math::
        \mathrm{TPR}_k = \frac{\sum_{i \in P_n} w_i \sigma((s_i - t_k)/\tau_{eff})}{\sum_{i \in P_n} w_i},\qquad
        \mathrm{pAUC} = \frac{1}{K-1}\Big(\tfrac12 \mathrm{TPR}_0 + \sum_{k=1}^{K-2}\mathrm{TPR}_k
                        + \tfrac12 \mathrm{TPR}_{K-1}\Big)

    Pairwise, against the band negatives :math:`B = \{j \in N : t_\beta \le s_j \le t_\alpha\}`:

    .. math::
        \mathrm{pAUC} = \frac{\sum_{i \in P_n} w_i \sum_{j \in B} \sigma((s_i - s_j)/\tau_{eff})}
                             {|B| \sum_{i \in P_n} w_i}

    and :math:`L_c = 1 - \mathrm{pAUC}_c \in [0, 1]`.

    **Gradient.** The pairwise form's thresholds only select the band. The trapezoid's knots
    :math:`t_k` and its dispersion keep their exact values but pass their gradient on to the
    reference negatives :math:`N` around them, as the implicit derivative of a kernel-smoothed
    quantile does: :math:`\partial t_k / \partial s_j = \sigma'((s_j - t_k)/\tau_{eff}) /
    \sum_{l \in N} \sigma'((s_l - t_k)/\tau_{eff})` for :math:`j \in N`. The weights sum to
    one, so a common shift (or rescaling) of the scores gains nothing and the negatives at
    the knots are pushed down as the positives are pushed up. ``detach_thresholds=True``
    treats them as constants (0.6's gradient: positives only, and a logit scale that can run
    away under a shared network). As :math:`\tau \to 0` the pairwise form
    tends to the fraction of (positive, band-negative) pairs ranked correctly and the
    trapezoid form to the band-mean of the TPR at the knots.

    Args:
        logits: ``[M, C]`` scores (``C = 1`` is binary mode).
        targets: ``[M]`` class ids (binary: ``{0, 1}``) or a multi-hot ``[M, C]``
            (multi-label); ``ignore_index`` rows (multi-label: cells) are excluded.
        alpha: Lower FPR edge of the band, ``0 <= alpha < beta``.
        beta: Upper FPR edge (the budget), ``beta <= 1``.
        surrogate: ``'trapezoid'`` (knots at fixed FPR levels) or ``'pairwise'`` (against
            every band negative).
        n_knots: Number of trapezoid knots, an ``int >= 2`` (ignored by ``'pairwise'``).
        tau_scale: ``'iqr'`` or ``'band'``, the dispersion that scales ``temperature``.
        pos_numerator: ``'pool'`` or ``'live'`` (numerator over the ``live_mask`` rows only).
        budget_basis: ``'fpr'`` or ``'population'``, the reference set of the thresholds.
        temperature: Dimensionless multiplier of the dispersion.
        quantile_interpolation: :func:`torch.quantile` interpolation mode.
        reduction: ``'mean'``, ``'sum'`` or ``'none'``.
        ignore_index: Target value of rows to leave out.
        iid_mask: Optional ``[M]`` bool; only iid rows define the thresholds (default all).
        live_mask: Optional ``[M]`` bool marking the rows of the current batch (default all).
        sample_weight: Optional ``[M]`` weights; only numerator positives' weights matter.
        class_weight: Optional ``[C]`` non-negative class weights: weighted mean (or sum) over
            the valid classes; a class of weight 0 is not computed (``nan``, invalid).
        return_per_class: Also return ``per_class [C]`` and ``valid [C]``.
        return_diagnostics: Also return a dict of ``[C]`` tensors: ``t_alpha``, ``t_beta``,
            ``tau_eff``, ``band_neg_count`` (iid negatives in the band), ``pauc_var``
            (variance of the positives' contributions), ``grad_pos_count`` (live positives),
            ``pos_count``, ``neg_count``, ``pauc`` (the exact partial AUC of the pool over
            ``[alpha, beta]``, normalised by the band width), ``saturated_fraction`` (sigmoid
            terms with :math:`|x| > 6`), and ``pool_size`` (rows taking part in the class).
        validate_args: Run the checks that need a host synchronisation, and the warning on a
            degenerate reference dispersion (``False``: such classes are still invalid, silently).
        detach_thresholds: Treat the trapezoid's knots and dispersion as constants (0.6).

    Returns:
        ``loss``; ``(loss, per_class, valid)``; ``(loss, stats)``; or
        ``(loss, per_class, valid, stats)``. A class is invalid when it has no positive, no
        iid negative, no numerator positive, zero positive weight, a reference dispersion
        ``<= 1e-12`` (warned), or (pairwise) an empty band.

    Raises:
        ValueError: On a bad shape, out-of-range class id, non-finite logit or bad option.
        TypeError: On a non-tensor input, non-float logits or a non-int ``n_knots``.

    Example:
        >>> import torch
        >>> from imbalanced_losses.functional import pauc_at_budget_loss
        >>> logits = torch.cat([torch.linspace(-3, 0, 200), torch.tensor([2.0, 3.0])]).unsqueeze(1)
        >>> targets = torch.cat([torch.zeros(200), torch.ones(2)]).long()
        >>> pauc_at_budget_loss(logits, targets, beta=0.05, surrogate="pairwise", temperature=0.01).item()
        0.0
    """
    alpha, beta = check_pauc_args(
        alpha=alpha,
        beta=beta,
        n_knots=n_knots,
        surrogate=surrogate,
        tau_scale=tau_scale,
        pos_numerator=pos_numerator,
        budget_basis=budget_basis,
    )
    temperature = check_float("temperature", temperature, low=0.0)
    check_choice("quantile_interpolation", quantile_interpolation, INTERPOLATIONS)
    check_bool("detach_thresholds", detach_thresholds)

    def core(pool: Pool) -> RankingResult:
        n, device = pool.scores.shape[0], pool.scores.device
        return pauc_at_budget_core(
            pool,
            iid=row_mask("iid_mask", iid_mask, n, device),
            live=row_mask("live_mask", live_mask, n, device),
            alpha=alpha,
            beta=beta,
            surrogate=surrogate,
            n_knots=n_knots,
            tau_scale=tau_scale,
            pos_numerator=pos_numerator,
            budget_basis=budget_basis,
            temperature=temperature,
            interpolation=quantile_interpolation,
            detach_thresholds=detach_thresholds,
            diagnostics=return_diagnostics,
        )

    def warn_degenerate(result: RankingResult) -> None:
        # The warning reads a device flag (a host synchronisation): only under validate_args.
        if validate_args and result.degenerate is not None and bool(result.degenerate.any()):
            warn(dispersion_message(alpha=alpha, budget_basis=budget_basis, tau_scale=tau_scale))

    return run_functional(
        logits,
        targets,
        core,
        reduction=reduction,
        ignore_index=ignore_index,
        sample_weight=sample_weight,
        class_weight=class_weight,
        return_per_class=return_per_class,
        return_diagnostics=return_diagnostics,
        validate_args=validate_args,
        on_result=warn_degenerate,
    )
