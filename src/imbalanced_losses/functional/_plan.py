r"""Kernel sizes per device type: one table, read by the pair, quantile and threshold kernels.

A CPU call costs per flop: small blocks, selection instead of sorting and host-side shortcuts
that need a look at the data pay off. A GPU call costs per launched operation and per host
synchronisation: large blocks (few launches), a sort instead of a host-driven selection, and
static shapes pay off. :data:`PLANS` holds both; :func:`kernel_plan` picks the entry of a
tensor's device type (any device other than the CPU takes the ``cuda`` entry).

The environment variable ``IMBALANCED_LOSSES_PLAN`` overrides the choice, read at every call:
``cuda`` makes CPU tensors follow the CUDA plan (CPU tests and benchmarks then exercise the
GPU road, with :data:`EMULATED_FREE_BYTES` standing in for the free device memory), ``cpu``
makes every device follow the CPU plan, and ``auto`` (or unset) picks by device type.

The values are sizes, never results: every plan computes the same loss (the pair kernel's
tails are exact to :math:`e^{-24}` in float32), only the grouping of the arithmetic and hence
the last bits of a float sum can differ between plans.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from ._arith import HOST_ROUNDING

#: Name of the environment variable that overrides the plan (``auto``, ``cpu`` or ``cuda``).
PLAN_ENV = "IMBALANCED_LOSSES_PLAN"
#: Free device memory assumed when a CPU tensor follows the CUDA plan (a 16 GB card's worth).
EMULATED_FREE_BYTES = 16 << 30


@dataclass(frozen=True)
class KernelPlan:
    """Sizes and switches of the kernels for one device type.

    Attributes:
        name: ``"cpu"`` or ``"cuda"``.
        chunk: Pair terms evaluated at once by the pair kernel (one window chunk, or one
            slice of the dense block); ``0`` means "a fraction of the free memory" (see
            :meth:`chunk_terms`).
        memory_fraction: Share of the free device memory one chunk's work buffer may take.
        chunk_min: Smallest chunk when it is derived from memory.
        chunk_max: Largest chunk when it is derived from memory.
        dense_max: Up to this many (padded query, key) pairs, every pair is evaluated (in
            slices of at most ``chunk`` terms) instead of the sorted windows and tails.
        bounded_dense: The dense kernel also needs one query per class against every key
            (its smallest slice) to fit in ``chunk`` terms.
        items: Key slots per step when the tails' gradient is pushed to the keys, per class
            (``[C, items]`` temporaries).
        items_elements: When positive, ``items`` becomes ``max(items, items_elements // C)``.
        sort_max: Pools up to this size are sorted to find order statistics; larger ones use
            a selection with host-side planning (a few synchronisations).
        host_reads: A host read of a device value is free (the CPU's), so the kernels may
            plan with one: a single column of at most ``sort_max`` rows takes the host road of
            the quantiles (its size comes back with its members); a single-class pair problem
            packs its keys with a second ``nonzero`` when they are never queries (a pairwise
            pAUC's band negatives: a smaller block), and the general road packs a single row
            with ``nonzero``; the exponential tails' prefix-sum tables get one column per
            occupied cell of the sorted scores (tables far smaller than the pool; otherwise
            one per score, a static bound); one column's per-class values are formed as
            numbers (:func:`host_scalars`); and the threshold weights of the recall and
            trapezoid pAUC losses are ``sech^2`` ratios, each level's sum read to see that it
            did not underflow (one thread; the softmax otherwise).
        compact_pool: Rows that take part in no class (``ignore_index``, empty queue slots)
            are removed from the pool before the losses run (a ``nonzero``: smaller pools on
            the CPU; on a GPU the masks exclude them at no synchronisation).
        small_bmm: Below this many elements, and when several CPU threads run, a batched,
            matrix-vector or outer product is a broadcast multiply-sum (BLAS would thread it,
            and on a busy machine a thread team can stall); a 2-D matrix product stays one BLAS
            call (one thread at that size). 0: never.
        threshold_block: Elements of the ``[levels, C, M]`` block of the threshold gradient.
        softplus_max: Threshold-gradient blocks of the softmax road of at most this many elements take
            ``log(1 + e^y)`` as one ``softplus``; larger ones as ``exp``, ``+ 1``, ``log``
            (vectorised on the CPU, where ``softplus`` is not; one fused kernel either way on a GPU).
        narrow_window_rows: Pools of at least this many rows (``0``: none) evaluate exactly only
            the pairs within a narrow window and leave the rest to a longer exponential series
            (fewer pair terms, more prefix sums and tables: cheaper where arithmetic is the cost
            and the pool is large; on the CPU from about 32,768 rows); others a wide window and a
            short series (fewer operations, less memory). Same error bound either way (see
            :func:`~imbalanced_losses.functional._pairs.window_and_order`).
    """

    name: str
    chunk: int
    dense_max: int
    bounded_dense: bool
    items: int
    sort_max: int
    host_reads: bool
    compact_pool: bool
    small_bmm: int
    threshold_block: int
    memory_fraction: float = 0.25
    chunk_min: int = 1 << 20
    chunk_max: int = 1 << 28
    items_elements: int = 0
    narrow_window_rows: int = 0
    softplus_max: int = 1 << 62

    def chunk_terms(self, device: torch.device, itemsize: int) -> int:
        """Pair terms per chunk on ``device`` for scores of ``itemsize`` bytes (two work buffers per term).

        A fixed ``chunk`` is returned as it is. Otherwise ``memory_fraction`` of the free memory
        (:func:`torch.cuda.mem_get_info` on a CUDA device, :data:`EMULATED_FREE_BYTES`
        elsewhere), clamped to ``[chunk_min, chunk_max]``.
        """
        if self.chunk > 0:
            return self.chunk
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else EMULATED_FREE_BYTES
        terms = int(free * self.memory_fraction) // (2 * itemsize)
        return max(self.chunk_min, min(self.chunk_max, terms))

    def items_for(self, num_classes: int) -> int:
        """Key slots per step of the tails' gradient for ``num_classes`` rows."""
        if self.items_elements <= 0:
            return self.items
        return max(self.items, self.items_elements // max(num_classes, 1))


#: The table: one plan per device type.
PLANS: dict[str, KernelPlan] = {
    "cpu": KernelPlan(
        name="cpu",
        chunk=1 << 20,
        dense_max=1 << 20,
        bounded_dense=False,  # dense_max == chunk already bounds it
        items=1 << 15,
        sort_max=1 << 15,
        host_reads=True,
        compact_pool=True,
        small_bmm=1 << 15,
        threshold_block=1 << 22,
        narrow_window_rows=1 << 15,
        softplus_max=1 << 14,
    ),
    "cuda": KernelPlan(
        name="cuda",
        chunk=0,  # a quarter of the free memory, within [2^20, 2^28] terms
        dense_max=1 << 30,
        bounded_dense=True,
        items=1 << 15,
        items_elements=1 << 24,
        sort_max=1 << 62,  # always sort: no host-driven selection
        host_reads=False,
        compact_pool=False,
        small_bmm=0,
        threshold_block=1 << 26,
    ),
}


def kernel_plan(device: torch.device) -> KernelPlan:
    """The plan for tensors on ``device``, after the ``IMBALANCED_LOSSES_PLAN`` override.

    Raises:
        ValueError: The environment variable holds something other than ``auto``, ``cpu``
            or ``cuda``.
    """
    choice = os.environ.get(PLAN_ENV, "").strip().lower()
    if choice in ("", "auto"):
        return PLANS["cpu"] if device.type == "cpu" else PLANS["cuda"]
    if choice in PLANS:
        return PLANS[choice]
    raise ValueError(f"`{PLAN_ENV}` must be one of 'auto', 'cpu' or 'cuda', got {choice!r}.")


def override(module_value: int, cpu_value: int, plan_value: int) -> int:
    """``plan_value``, unless a module-level constant was changed from its CPU value (tests force paths so)."""
    return plan_value if module_value == cpu_value else module_value


def host_scalars(scores: Tensor, plan: KernelPlan | None = None) -> bool:
    """Whether the per-class values of ``scores [M, C]`` may be formed on the host as Python numbers.

    One column, a plan whose host reads are free (the CPU's: ``host_reads``), a dtype whose
    arithmetic :data:`~._arith.HOST_ROUNDING` reproduces, and no ``torch.compile`` tracing. Small
    binary pools are dominated by the fixed cost of each operation; a number costs none.
    """
    return (
        scores.shape[1] == 1
        and (plan or kernel_plan(scores.device)).host_reads
        and scores.dtype in HOST_ROUNDING
        and not torch.compiler.is_compiling()
    )


def host_bookkeeping(scores: Tensor, weight: Tensor | None, diagnostics: bool) -> bool:
    """Whether a loss's per-class bookkeeping (counts, temperature, validity) may run on the host.

    One unweighted column without diagnostics (which read those values as tensors), where
    :func:`host_scalars` allows it.
    """
    return weight is None and not diagnostics and host_scalars(scores)
