"""The pipeline of a functional ranking loss: validate -> pool -> core (kept classes) -> reduce."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from .._validation import REDUCTIONS, check_bool, check_choice
from .._warnings import warn
from ._classes import check_class_weight, run_on_classes
from ._pool import Pool, make_pool, validate_batch
from ._reduce import RankingResult, package


def run_functional(
    logits: Tensor,
    targets: Tensor,
    core: Callable[[Pool], RankingResult],
    *,
    reduction: str,
    ignore_index: int,
    sample_weight: Tensor | None,
    class_weight: Any,
    return_per_class: bool,
    return_diagnostics: bool,
    validate_args: bool,
    on_result: Callable[[RankingResult], None] | None = None,
) -> Any:
    """Validate a functional call, run ``core`` on its pool and assemble the public return form.

    ``core(pool) -> RankingResult`` sees only the classes of non-zero ``class_weight``;
    ``on_result`` (e.g. a warning on degenerate classes) sees the full-width result.
    """
    check_choice("reduction", reduction, REDUCTIONS)
    check_bool("return_per_class", return_per_class)
    check_bool("return_diagnostics", return_diagnostics)
    logits, ids, weight, all_kept = validate_batch(
        logits,
        targets,
        sample_weight,
        num_classes=None,
        ignore_index=ignore_index,
        validate_args=validate_args,
        warn=lambda key, message: warn(message),
    )
    weights = check_class_weight(class_weight, logits.shape[1])
    result = run_on_classes(core, make_pool(logits, ids, weight, ignore_index, all_rows=all_kept), weights)
    if on_result is not None:
        on_result(result)
    return package(
        result,
        reduction=reduction,
        anchor=logits,
        return_per_class=return_per_class,
        return_diagnostics=return_diagnostics,
        class_weight=None if weights is None else weights.weight,
        checked_finite=validate_args,
    )
