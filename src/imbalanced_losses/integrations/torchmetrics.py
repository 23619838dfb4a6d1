r"""TorchMetrics integration: the exact metrics of :mod:`imbalanced_losses.metrics` over an epoch.

Each class is a :class:`torchmetrics.Metric` that keeps the rows passed to ``update`` (scores,
targets, sample weights) and calls the matching function of :mod:`imbalanced_losses.metrics`
on their concatenation in ``compute``, so the value is exact: the metric over the whole
epoch, not a mean of per-batch values. Under ``torch.distributed`` the rows of every rank are
gathered by TorchMetrics (list states with ``dist_reduce_fx="cat"``) before ``compute``.

* :class:`AveragePrecision` - :func:`~imbalanced_losses.metrics.average_precision`
* :class:`CoverageAtBudget` - :func:`~imbalanced_losses.metrics.coverage_at_budget`
* :class:`PartialAUC` - :func:`~imbalanced_losses.metrics.partial_auc`
* :class:`RecallAtQuantile` - :func:`~imbalanced_losses.metrics.recall_at_quantile`

Every rank must pass the same layout (``[N]`` or ``[N, C]`` scores and targets) and dtypes;
a rank without any row is fine. Memory grows with the epoch (``O(N C)``). For very long
epochs where an exact value is not needed, ``max_rows=k`` keeps a uniform random sample of
at most ``k`` rows instead (see :class:`AveragePrecision`).

Importing this module imports TorchMetrics; install it with
``pip install "imbalanced-losses[torchmetrics]"``.

Example:
    .. code-block:: python

        from imbalanced_losses.integrations.torchmetrics import AveragePrecision

        metric = AveragePrecision(average="macro")
        for x, y in val_loader:
            metric.update(model(x), y)
        print(metric.compute())  # the macro AP over the whole validation set
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .. import metrics as _metrics
from .._validation import INTERPOLATIONS, check_bool, check_choice, check_float, check_int

try:
    from torchmetrics import Metric
    from torchmetrics.utilities.distributed import gather_all_tensors
except ImportError as exc:  # without `torchmetrics`: tests/test_torchmetrics.py
    raise ImportError(
        "imbalanced_losses.integrations.torchmetrics needs TorchMetrics: "
        'pip install "imbalanced-losses[torchmetrics]" (or pip install torchmetrics).'
    ) from exc

__all__ = ["AveragePrecision", "CoverageAtBudget", "PartialAUC", "RecallAtQuantile"]

#: Accepted values of ``average``.
AVERAGES = ("macro", None)

#: Dtypes a rank without rows can rebuild its empty states in (index = code in the layout).
_DTYPES = (
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
)


class _RowMetric(Metric):
    """Keeps the rows of every ``update`` (or a uniform sample of them) and scores them in ``compute``.

    Subclasses set ``_weighted`` and implement :meth:`_score`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    _weighted = True

    scores: list[Tensor]
    targets: list[Tensor]
    weights: list[Tensor]
    keys: list[Tensor]

    def __init__(
        self,
        *,
        ignore_index: int = -100,
        average: str | None = None,
        max_rows: int | None = None,
        seed: int = 0,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_int("ignore_index", ignore_index)
        if average not in AVERAGES:
            raise ValueError(f"`average` must be one of {AVERAGES}, got {average!r}.")
        if max_rows is not None:
            check_int("max_rows", max_rows, minimum=1)
        check_int("seed", seed)
        check_bool("validate_args", validate_args)
        self.ignore_index = ignore_index
        self.average = average
        self.max_rows = max_rows
        self.seed = seed
        self.validate_args = validate_args
        self._generator: torch.Generator | None = None
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")
        if self._weighted:
            self.add_state("weights", default=[], dist_reduce_fx="cat")
        if max_rows is not None:
            self.add_state("keys", default=[], dist_reduce_fx="cat")

    # ------------------------------------------------------------------------------------------

    def _keys(self, n: int, device: torch.device) -> Tensor:
        """``[n]`` float64 uniform keys from the metric's own generator (the global RNG is untouched)."""
        if self._generator is None:
            rank = (
                torch.distributed.get_rank()
                if torch.distributed.is_available() and torch.distributed.is_initialized()
                else 0
            )
            self._generator = torch.Generator().manual_seed(self.seed + 1_000_003 * rank)
        return torch.rand(n, generator=self._generator, dtype=torch.float64).to(device)

    def _update(self, scores: Tensor, targets: Tensor, sample_weight: Tensor | None) -> None:
        if not isinstance(scores, Tensor) or not isinstance(targets, Tensor):
            raise TypeError("`scores` and `targets` must be tensors.")
        if scores.ndim not in (1, 2):
            raise ValueError(f"`scores` must have shape [N] or [N, C], got shape {tuple(scores.shape)}.")
        if targets.ndim not in (1, 2) or targets.shape[0] != scores.shape[0]:
            raise ValueError(
                f"`targets` must have shape [N] or [N, C] with the rows of `scores`, got {tuple(targets.shape)} "
                f"for scores of shape {tuple(scores.shape)}."
            )
        n = scores.shape[0]
        self.scores.append(scores.detach())
        self.targets.append(targets.detach())
        if self._weighted:
            if sample_weight is None:
                w = torch.ones(n, dtype=torch.float64, device=scores.device)
            else:
                if not isinstance(sample_weight, Tensor) or sample_weight.shape != (n,):
                    raise ValueError(f"`sample_weight` must be a tensor of shape [{n}].")
                w = sample_weight.detach().to(device=scores.device, dtype=torch.float64)
            self.weights.append(w)
        if self.max_rows is not None:
            self.keys.append(self._keys(n, scores.device))
            if sum(k.shape[0] for k in self.keys) > self.max_rows:
                self._shrink()

    def _shrink(self) -> None:
        """Keep the ``max_rows`` rows with the smallest keys (a uniform sample without replacement)."""
        assert self.max_rows is not None
        keys = torch.cat(self.keys)
        keep = keys.topk(min(self.max_rows, keys.shape[0]), largest=False, sorted=False).indices
        self.keys = [keys[keep]]
        self.scores = [torch.cat(self.scores)[keep]]
        self.targets = [torch.cat(self.targets)[keep]]
        if self._weighted:
            self.weights = [torch.cat(self.weights)[keep]]

    def _reduce_states(self, incoming_state: dict[str, Any]) -> None:
        """Merge another state (``forward``, ``merge_state``), then sample again down to ``max_rows``."""
        super()._reduce_states(incoming_state)
        if (
            self.max_rows is not None
            and isinstance(self.keys, list)
            and sum(k.shape[0] for k in self.keys) > self.max_rows
        ):
            self._shrink()

    def _layout(self, device: torch.device) -> Tensor:
        """``[7]`` int64: has rows, then ndim, width and dtype code of the scores and of the targets."""
        if not self.scores:
            return torch.zeros(7, dtype=torch.int64, device=device)
        desc = [1]
        for t in (self.scores[0], self.targets[0]):
            if t.dtype not in _DTYPES:
                raise TypeError(f"{type(self).__name__} cannot synchronise a tensor of dtype {t.dtype}.")
            desc += [t.ndim, t.shape[1] if t.ndim == 2 else 0, _DTYPES.index(t.dtype)]
        return torch.tensor(desc, dtype=torch.int64, device=device)

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None) -> None:
        """Give a rank without rows empty states shaped like the others' before TorchMetrics gathers them.

        TorchMetrics would send a 1-D float tensor for an empty list state, which does not match
        ``[M, C]`` scores or integer targets on the other ranks.
        """
        if not isinstance(self.scores, list):  # already synchronised
            super()._sync_dist(dist_sync_fn, process_group)
            return
        device = self.scores[0].device if self.scores else self.device
        layouts = dist_sync_fn(self._layout(device), group=process_group or self.process_group)
        ref = next((d.tolist() for d in layouts if int(d[0]) == 1), None)
        if ref is not None and not self.scores:
            for state, (ndim, width, code) in (("scores", ref[1:4]), ("targets", ref[4:7])):
                shape = (0, width) if ndim == 2 else (0,)
                getattr(self, state).append(torch.empty(shape, dtype=_DTYPES[code], device=device))
            for state in ("weights", "keys"):
                if state in self._defaults:
                    getattr(self, state).append(torch.empty(0, dtype=torch.float64, device=device))
        super()._sync_dist(dist_sync_fn, process_group)

    def compute(self) -> Tensor:
        """The metric on the rows kept since the last ``reset`` (of every rank, once synced).

        Returns:
            A 0-d tensor for 1-D scores, else ``[C]`` (``nan`` for an undefined class); with
            ``average='macro'``, the mean over the defined classes (0-d).

        Raises:
            ValueError: If no row was passed to ``update``, or on inputs the function rejects.
        """
        # After a sync the states are tensors; before, lists (an empty list: no update).
        states = [self.scores, self.targets] + ([self.weights] if self._weighted else [])
        if self.max_rows is not None:
            states.append(self.keys)
        cat = [s if isinstance(s, Tensor) else (torch.cat(s) if s else None) for s in states]
        if cat[0] is None or cat[0].numel() == 0:
            raise ValueError(f"{type(self).__name__}.compute() needs at least one row: call update() first.")
        scores, targets = cat[0], cat[1]
        weights = cat[2] if self._weighted else None
        if self.max_rows is not None:
            keys = cat[-1]
            assert keys is not None
            if keys.shape[0] > self.max_rows:  # the union of the ranks' samples: sample it again
                keep = keys.topk(self.max_rows, largest=False, sorted=False).indices
                scores, targets = scores[keep], targets[keep]  # type: ignore[index]
                weights = None if weights is None else weights[keep]
        assert targets is not None
        value = self._score(scores, targets, weights)
        if self.average == "macro" and value.ndim == 1:
            return value.nanmean()
        return value

    def _score(self, scores: Tensor, targets: Tensor, weights: Tensor | None) -> Tensor:
        raise NotImplementedError


class AveragePrecision(_RowMetric):
    """Average precision over every row seen, per class: :func:`~imbalanced_losses.metrics.average_precision`.

    ``update(scores, targets, sample_weight=None)`` takes one batch in the function's formats:
    ``scores`` ``[N]`` (binary) or ``[N, C]``; ``targets`` ``[N]`` binary, ``[N]`` class ids or
    a multi-hot ``[N, C]``; optional ``[N]`` non-negative row weights (rows without weights
    weigh 1). The layout must stay the same across batches. ``compute()`` returns the function
    on the concatenation of the rows kept.

    Args:
        ignore_index: Target value of rows (cells, multi-label) to leave out.
        average: ``None`` (default) returns the function's output (0-d for 1-D scores, else
            ``[C]``); ``'macro'`` returns the mean over the classes on which it is defined
            (``nan`` if none is), a 0-d tensor that ``LightningModule.log`` accepts.
        max_rows: ``None`` (default) keeps every row: exact, ``O(N C)`` memory. An integer
            ``k`` keeps a uniform random sample of at most ``k`` rows of the epoch (bottom-``k``
            of i.i.d. uniform keys, merged exactly across ranks), so memory is ``O(k C)``; with
            at most ``k`` rows in all the value is exact. Otherwise it is the metric of the
            sample: an estimate with a sampling error of order ``1 / sqrt(m)``, where ``m`` is
            the number of rows that decide it among those kept: a class's positives (about
            ``k`` times its prevalence) for the recall-type metrics and AP, and for budgeted
            metrics the rows inside the budget (``budget * k``, ``quantile * k``,
            ``beta * negatives kept``). E.g. ``k = 100_000`` at 1 % prevalence keeps about
            1000 positives: an error of a few hundredths at most.
        seed: Seed of the sampling keys (rank ``r`` uses ``seed + 1_000_003 * r``); the
            global RNG is not used.
        validate_args: Run the function's checks (they synchronise with the device) in
            ``compute``.
        **kwargs: Passed to :class:`torchmetrics.Metric` (``sync_on_compute``,
            ``process_group``, ...).
    """

    def __init__(
        self,
        *,
        ignore_index: int = -100,
        average: str | None = None,
        max_rows: int | None = None,
        seed: int = 0,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            ignore_index=ignore_index,
            average=average,
            max_rows=max_rows,
            seed=seed,
            validate_args=validate_args,
            **kwargs,
        )

    def update(self, scores: Tensor, targets: Tensor, sample_weight: Tensor | None = None) -> None:
        """Add a batch of rows (see the class docstring for the formats)."""
        self._update(scores, targets, sample_weight)

    def _score(self, scores: Tensor, targets: Tensor, weights: Tensor | None) -> Tensor:
        return _metrics.average_precision(
            scores, targets, ignore_index=self.ignore_index, sample_weight=weights, validate_args=self.validate_args
        )


class RecallAtQuantile(_RowMetric):
    """Recall inside the top ``quantile`` of every row seen: :func:`~imbalanced_losses.metrics.recall_at_quantile`.

    ``update(scores, targets, sample_weight=None)`` as :class:`AveragePrecision`.

    Args:
        quantile: Budget ``q`` in ``(0, 1)``.
        interpolation: :func:`torch.quantile` interpolation of the threshold (default ``'higher'``).
        ignore_index: Target value of rows (cells, multi-label) to leave out.
        average: ``None`` (default) returns the function's output (0-d for 1-D scores, else
            ``[C]``); ``'macro'`` returns the mean over the classes on which it is defined
            (``nan`` if none is), a 0-d tensor that ``LightningModule.log`` accepts.
        max_rows: ``None`` (default) keeps every row: exact, ``O(N C)`` memory. An integer
            ``k`` keeps a uniform random sample of at most ``k`` rows of the epoch (bottom-``k``
            of i.i.d. uniform keys, merged exactly across ranks), so memory is ``O(k C)``; with
            at most ``k`` rows in all the value is exact. Otherwise it is the metric of the
            sample: an estimate with a sampling error of order ``1 / sqrt(m)``, where ``m`` is
            the number of rows that decide it among those kept: a class's positives (about
            ``k`` times its prevalence) for the recall-type metrics and AP, and for budgeted
            metrics the rows inside the budget (``budget * k``, ``quantile * k``,
            ``beta * negatives kept``). E.g. ``k = 100_000`` at 1 % prevalence keeps about
            1000 positives: an error of a few hundredths at most.
        seed: Seed of the sampling keys (rank ``r`` uses ``seed + 1_000_003 * r``); the
            global RNG is not used.
        validate_args: Run the function's checks (they synchronise with the device) in
            ``compute``.
        **kwargs: Passed to :class:`torchmetrics.Metric` (``sync_on_compute``,
            ``process_group``, ...).
    """

    def __init__(
        self,
        *,
        quantile: float,
        interpolation: str = "higher",
        ignore_index: int = -100,
        average: str | None = None,
        max_rows: int | None = None,
        seed: int = 0,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            ignore_index=ignore_index,
            average=average,
            max_rows=max_rows,
            seed=seed,
            validate_args=validate_args,
            **kwargs,
        )
        self.quantile = check_float("quantile", quantile, low=0.0, high=1.0)
        check_choice("interpolation", interpolation, INTERPOLATIONS)
        self.interpolation = interpolation

    def update(self, scores: Tensor, targets: Tensor, sample_weight: Tensor | None = None) -> None:
        """Add a batch of rows (see :class:`AveragePrecision` for the formats)."""
        self._update(scores, targets, sample_weight)

    def _score(self, scores: Tensor, targets: Tensor, weights: Tensor | None) -> Tensor:
        return _metrics.recall_at_quantile(
            scores,
            targets,
            quantile=self.quantile,
            interpolation=self.interpolation,
            ignore_index=self.ignore_index,
            sample_weight=weights,
            validate_args=self.validate_args,
        )


class PartialAUC(_RowMetric):
    """Partial ROC AUC over FPR ``[alpha, beta]`` of every row seen: :func:`~imbalanced_losses.metrics.partial_auc`.

    ``update(scores, targets, sample_weight=None)`` as :class:`AveragePrecision`.

    Args:
        alpha: Lower FPR edge, ``0 <= alpha < beta``.
        beta: Upper FPR edge, ``beta <= 1``.
        normalize: ``'band'`` (default), ``'mcclish'`` or ``None``.
        ignore_index: Target value of rows (cells, multi-label) to leave out.
        average: ``None`` (default) returns the function's output (0-d for 1-D scores, else
            ``[C]``); ``'macro'`` returns the mean over the classes on which it is defined
            (``nan`` if none is), a 0-d tensor that ``LightningModule.log`` accepts.
        max_rows: ``None`` (default) keeps every row: exact, ``O(N C)`` memory. An integer
            ``k`` keeps a uniform random sample of at most ``k`` rows of the epoch (bottom-``k``
            of i.i.d. uniform keys, merged exactly across ranks), so memory is ``O(k C)``; with
            at most ``k`` rows in all the value is exact. Otherwise it is the metric of the
            sample: an estimate with a sampling error of order ``1 / sqrt(m)``, where ``m`` is
            the number of rows that decide it among those kept: a class's positives (about
            ``k`` times its prevalence) for the recall-type metrics and AP, and for budgeted
            metrics the rows inside the budget (``budget * k``, ``quantile * k``,
            ``beta * negatives kept``). E.g. ``k = 100_000`` at 1 % prevalence keeps about
            1000 positives: an error of a few hundredths at most.
        seed: Seed of the sampling keys (rank ``r`` uses ``seed + 1_000_003 * r``); the
            global RNG is not used.
        validate_args: Run the function's checks (they synchronise with the device) in
            ``compute``.
        **kwargs: Passed to :class:`torchmetrics.Metric` (``sync_on_compute``,
            ``process_group``, ...).
    """

    def __init__(
        self,
        *,
        alpha: float = 0.0,
        beta: float = 1.0,
        normalize: str | None = "band",
        ignore_index: int = -100,
        average: str | None = None,
        max_rows: int | None = None,
        seed: int = 0,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            ignore_index=ignore_index,
            average=average,
            max_rows=max_rows,
            seed=seed,
            validate_args=validate_args,
            **kwargs,
        )
        self.alpha = check_float("alpha", alpha, low=0.0, high=1.0, low_open=False, high_open=True)
        self.beta = check_float("beta", beta, low=0.0, high=1.0, low_open=True, high_open=False)
        if not self.alpha < self.beta:
            raise ValueError(
                f"`alpha` and `beta` must satisfy 0 <= alpha < beta <= 1, got alpha={alpha!r}, beta={beta!r}."
            )
        if normalize not in _metrics.NORMALIZATIONS:
            raise ValueError(f"`normalize` must be one of {_metrics.NORMALIZATIONS}, got {normalize!r}.")
        self.normalize = normalize

    def update(self, scores: Tensor, targets: Tensor, sample_weight: Tensor | None = None) -> None:
        """Add a batch of rows (see :class:`AveragePrecision` for the formats)."""
        self._update(scores, targets, sample_weight)

    def _score(self, scores: Tensor, targets: Tensor, weights: Tensor | None) -> Tensor:
        return _metrics.partial_auc(
            scores,
            targets,
            alpha=self.alpha,
            beta=self.beta,
            normalize=self.normalize,
            ignore_index=self.ignore_index,
            sample_weight=weights,
            validate_args=self.validate_args,
        )


class CoverageAtBudget(_RowMetric):
    """Share of positives in the top ``budget`` of the rows: :func:`~imbalanced_losses.metrics.coverage_at_budget`.

    ``update(scores, targets)`` as :class:`AveragePrecision`, without weights (the function
    takes none).

    Args:
        budget: Fraction of the rows flagged, in ``(0, 1]``.
        ignore_index: Target value of rows (cells, multi-label) to leave out.
        average: ``None`` (default) returns the function's output (0-d for 1-D scores, else
            ``[C]``); ``'macro'`` returns the mean over the classes on which it is defined
            (``nan`` if none is), a 0-d tensor that ``LightningModule.log`` accepts.
        max_rows: ``None`` (default) keeps every row: exact, ``O(N C)`` memory. An integer
            ``k`` keeps a uniform random sample of at most ``k`` rows of the epoch (bottom-``k``
            of i.i.d. uniform keys, merged exactly across ranks), so memory is ``O(k C)``; with
            at most ``k`` rows in all the value is exact. Otherwise it is the metric of the
            sample: an estimate with a sampling error of order ``1 / sqrt(m)``, where ``m`` is
            the number of rows that decide it among those kept: a class's positives (about
            ``k`` times its prevalence) for the recall-type metrics and AP, and for budgeted
            metrics the rows inside the budget (``budget * k``, ``quantile * k``,
            ``beta * negatives kept``). E.g. ``k = 100_000`` at 1 % prevalence keeps about
            1000 positives: an error of a few hundredths at most.
        seed: Seed of the sampling keys (rank ``r`` uses ``seed + 1_000_003 * r``); the
            global RNG is not used.
        validate_args: Run the function's checks (they synchronise with the device) in
            ``compute``.
        **kwargs: Passed to :class:`torchmetrics.Metric` (``sync_on_compute``,
            ``process_group``, ...).
    """

    _weighted = False

    def __init__(
        self,
        *,
        budget: float,
        ignore_index: int = -100,
        average: str | None = None,
        max_rows: int | None = None,
        seed: int = 0,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            ignore_index=ignore_index,
            average=average,
            max_rows=max_rows,
            seed=seed,
            validate_args=validate_args,
            **kwargs,
        )
        self.budget = check_float("budget", budget, low=0.0, high=1.0, low_open=True, high_open=False)

    def update(self, scores: Tensor, targets: Tensor) -> None:
        """Add a batch of rows (see :class:`AveragePrecision` for the formats)."""
        self._update(scores, targets, None)

    def _score(self, scores: Tensor, targets: Tensor, weights: Tensor | None) -> Tensor:
        return _metrics.coverage_at_budget(
            scores, targets, budget=self.budget, ignore_index=self.ignore_index, validate_args=self.validate_args
        )
