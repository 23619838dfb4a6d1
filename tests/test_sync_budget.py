"""Operation and host-synchronisation budgets of one forward+backward call, counted on the CPU.

On a GPU a loss call costs per launched operation and per host synchronisation, not per flop.
Both are properties of the operators a call dispatches, not of the device, so they are counted
here on the CPU: a :class:`~torch.utils._python_dispatch.TorchDispatchMode` sees every ATen
operation of the forward and the backward pass. ``IMBALANCED_LOSSES_PLAN=cuda`` makes the CPU
tensors follow the CUDA plan (large chunks, sorting instead of host-planned selection, no
CPU-only shortcuts), so the counted road is the one a CUDA call takes.

Counted as a synchronisation (each one a device-to-host read on CUDA): ``.item()`` and friends
(``_local_scalar_dense``: ``int(t)``, ``bool(t)``, ``if t:``), ``Tensor.tolist``, ``nonzero``,
boolean-mask indexing (read, or write of a tensor value), ``masked_select``, ``unique``,
``bincount``, ``repeat_interleave`` with tensor repeats and no ``output_size``, ``equal``.
Counted apart as a host-to-device copy: a tensor built from host data (``torch.tensor(list)``,
``new_tensor``: ``lift_fresh``), a blocking copy when its target is a GPU.

Budgets (issue 16; ``validate_args=False``):

* binary call (batch 4,096 + ``queue_size`` 8,192 = a pool of 12,288 rows, 21 positives):
  every ranking loss at most as many operations as imbalanced-losses 0.6.0 dispatches for the
  same call (:data:`INCUMBENT_BINARY_OPS`, counted with this counter from outside that
  package), at most 2 synchronisations, no host-to-device copy; the focal losses none;
* Smooth-AP at 16,384 x 10: at most 600 operations;
* pairwise pAUC at 262,144 x 10 (``beta=0.05``): at most 2,000 operations.

The large calls would take long on a CPU if every pair term were evaluated, so operations on
tensors of at least :data:`FAKE_ELEMENTS` elements from a fixed list of arithmetic operators
are not executed: their output is an uninitialised tensor of the right shape (found on the
``meta`` device). They are still counted. No host read depends on such an output (the host
reads plan the blocks from the sorted scores), so the counted road is the real one; the loss
value is not checked there.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import imbalanced_losses as il

#: Operations dispatched by imbalanced-losses 0.6.0 for the binary call (forward + backward),
#: counted with :class:`OpCounter` on torch 2.13 (0.6 always validates; its own syncs: 13-19).
INCUMBENT_BINARY_OPS = {"smooth_ap": 101, "recall": 80, "pauc_trapezoid": 130, "pauc_pairwise": 115}
#: Our operations for the same call today: a ratchet (lower it when a change cuts operations).
BINARY_OPS = {"smooth_ap": 90, "recall": 75, "pauc_trapezoid": 101, "pauc_pairwise": 113}
#: Inputs at least this large of the operators in :data:`FAKED` are not computed (see the module docstring).
FAKE_ELEMENTS = 1 << 22
FAKED = {
    "sub",
    "sub_",
    "div",
    "div_",
    "neg",
    "sigmoid",
    "sigmoid_",
    "mul",
    "mul_",
    "bmm",
    "sum",
    "add",
    "add_",
    "transpose",
    "clone",
    "copy_",
    "_to_copy",
    "index",
    "masked_fill",
    "masked_fill_",
    "scatter_",
    "gather",
    "expand",
}

aten = torch.ops.aten
SYNC_OPS = {
    "_local_scalar_dense",
    "nonzero",
    "argwhere",
    "masked_select",
    "_unique",
    "_unique2",
    "unique_consecutive",
    "unique_dim",
    "unique_dim_consecutive",
    "bincount",
    "equal",
    "is_nonzero",
    "allclose",
}


def _bool_index(indices: Any) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


class OpCounter(TorchDispatchMode):
    """Counts ATen operations, host synchronisations and host-to-device copies (see the module docstring)."""

    def __init__(self, fake_elements: int | None = None) -> None:
        super().__init__()
        self.fake_elements = fake_elements
        self.ops = 0
        self.syncs = 0
        self.h2d = 0
        self.faked = 0
        self.names: collections.Counter[str] = collections.Counter()
        self.sync_names: collections.Counter[str] = collections.Counter()

    def sync(self, name: str) -> None:
        self.syncs += 1
        self.sync_names[name] += 1

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        self.ops += 1
        self.names[name] += 1
        if name in SYNC_OPS:
            self.sync(name)
        elif name in ("index", "index_put", "index_put_", "_index_put_impl_"):
            indices = args[1] if len(args) > 1 else kwargs.get("indices")
            if _bool_index(indices):
                value = args[2] if len(args) > 2 else kwargs.get("values")
                # x[mask] = scalar is a masked_fill (ATen's canDispatchToMaskedFill): no sync.
                if name == "index" or not (isinstance(value, torch.Tensor) and value.dim() == 0):
                    self.sync(name + "[bool]")
        elif name == "repeat_interleave" and func._overloadname in ("Tensor", "self_Tensor"):
            if kwargs.get("output_size") is None:
                self.sync(name)
        elif name in ("lift_fresh", "lift_fresh_copy"):
            self.h2d += 1
        if self.fake_elements is not None and name in FAKED and self._large(args):
            self.faked += 1
            return self._fake(func, args, kwargs)
        return func(*args, **kwargs)

    def _large(self, args: Any) -> bool:
        return any(isinstance(a, torch.Tensor) and a.numel() >= self.fake_elements for a in args)

    @staticmethod
    def _fake(func: Any, args: Any, kwargs: Any) -> Any:
        """``func``'s output metadata, from the meta device, as uninitialised CPU tensors (in place: ``self``)."""
        if func._schema.is_mutable or "out" in kwargs:
            return kwargs["out"] if "out" in kwargs else args[0]
        to_meta = lambda a: a.to("meta") if isinstance(a, torch.Tensor) else a  # noqa: E731
        out = func(*[to_meta(a) for a in args], **{k: to_meta(v) for k, v in kwargs.items()})
        if func.is_view:  # a view of the real input
            base = next(a for a in args if isinstance(a, torch.Tensor))
            return base.as_strided(out.shape, out.stride(), base.storage_offset() + out.storage_offset())
        return torch.empty_strided(out.shape, out.stride(), dtype=out.dtype)


class Counted:
    """One counted call's numbers."""

    def __init__(self, counter: OpCounter) -> None:
        self.ops, self.syncs, self.h2d, self.faked = counter.ops, counter.syncs, counter.h2d, counter.faked
        self.names, self.sync_names = counter.names, counter.sync_names

    def __repr__(self) -> str:
        return f"ops={self.ops} syncs={self.syncs} {dict(self.sync_names)} h2d={self.h2d}"


_TOLIST = torch.Tensor.tolist


def count(call: Callable[[], torch.Tensor], fake_elements: int | None = None) -> Counted:
    """Count ``call()`` and the ``backward()`` of its result; ``Tensor.tolist`` counts as a synchronisation."""
    counter = OpCounter(fake_elements)

    def tolist(self: torch.Tensor) -> Any:
        counter.sync("tolist")
        return _TOLIST(self)

    torch.Tensor.tolist = tolist  # type: ignore[method-assign]
    try:
        with counter:
            call().backward()
    finally:
        torch.Tensor.tolist = _TOLIST  # type: ignore[method-assign]
    return Counted(counter)


@pytest.fixture(autouse=True)
def cuda_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here follows the CUDA plan on the CPU."""
    monkeypatch.setenv("IMBALANCED_LOSSES_PLAN", "cuda")


def binary_batch(n: int, positives: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 1, generator=g)
    targets = torch.zeros(n, dtype=torch.long)
    targets[torch.randperm(n, generator=g)[:positives]] = 1
    return logits, targets


def multi_batch(n: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g), (torch.arange(n) % c)[torch.randperm(n, generator=g)]


RANKING = {
    "smooth_ap": lambda c, q: il.SmoothAPLoss(num_classes=c, queue_size=q, validate_args=False),
    "recall": lambda c, q: il.RecallAtQuantileLoss(num_classes=c, queue_size=q, validate_args=False),
    "pauc_trapezoid": lambda c, q: il.PAUCAtBudgetLoss(
        num_classes=c, queue_size=q, surrogate="trapezoid", validate_args=False
    ),
    "pauc_pairwise": lambda c, q: il.PAUCAtBudgetLoss(
        num_classes=c, queue_size=q, surrogate="pairwise", beta=0.05, validate_args=False
    ),
}


def binary_call(name: str) -> Counted:
    """The binary call: 3 batches of 4,096 fill the 8,192-row queue, the 4th (7 positives each) is counted."""
    loss = RANKING[name](1, 8192).train()
    for seed in (1, 2, 3):
        logits, targets = binary_batch(4096, 7, seed)
        loss(logits.requires_grad_(), targets).backward()
    logits, targets = binary_batch(4096, 7, 4)
    logits.requires_grad_()
    return count(lambda: loss(logits, targets))


def multi_call(name: str, rows: int, fake: bool) -> Counted:
    loss = RANKING[name](10, 0).train()
    warm_logits, warm_targets = multi_batch(1024, 10, 99)
    loss(warm_logits.requires_grad_(), warm_targets).backward()
    logits, targets = multi_batch(rows, 10, 7)
    logits.requires_grad_()
    return count(lambda: loss(logits, targets), FAKE_ELEMENTS if fake else None)


@pytest.mark.parametrize("name", sorted(RANKING))
def test_binary_call_two_syncs_and_no_more_ops_than_recorded(name: str) -> None:
    got = binary_call(name)
    assert got.syncs <= 2, got
    assert got.h2d == 0, got
    assert got.ops <= BINARY_OPS[name], got


@pytest.mark.parametrize("name", sorted(RANKING))
def test_binary_call_within_the_incumbents_ops(name: str) -> None:
    assert binary_call(name).ops <= INCUMBENT_BINARY_OPS[name]


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: (il.SigmoidFocalLoss(validate_args=False), False), id="sigmoid"),
        pytest.param(lambda: (il.SoftmaxFocalLoss(validate_args=False), True), id="softmax"),
    ],
)
def test_focal_losses_do_not_synchronise(make: Callable[[], tuple[torch.nn.Module, bool]]) -> None:
    loss, class_ids = make()
    logits, targets = multi_batch(4096, 10, 3)
    target = targets if class_ids else torch.nn.functional.one_hot(targets, 10).float()
    logits.requires_grad_()
    got = count(lambda: loss(logits, target))
    assert got.syncs == 0, got
    assert got.h2d == 0, got


def test_smooth_ap_16k_by_10_within_600_ops() -> None:
    got = multi_call("smooth_ap", 16384, fake=True)
    assert got.ops <= 600, got
    assert got.syncs <= 2, got
    assert got.h2d == 0, got


@pytest.mark.slow
def test_pairwise_pauc_262k_by_10_within_2000_ops() -> None:
    got = multi_call("pauc_pairwise", 262144, fake=True)
    assert got.ops <= 2000, got
    assert got.syncs <= 2, got
    assert got.h2d == 0, got


def test_the_fake_arithmetic_keeps_the_counted_road() -> None:
    """A pool with a few large blocks counts the same operations and syncs with and without faking."""
    real = multi_call("pauc_pairwise", 16384, fake=False)
    faked_counter = multi_call("pauc_pairwise", 16384, fake=True)
    assert faked_counter.faked > 0
    assert real.faked == 0
    assert (real.ops, real.syncs, real.h2d) == (faked_counter.ops, faked_counter.syncs, faked_counter.h2d)


# ----------------------------------------------------------------------------------------------
# The CUDA plan's own road (its values and sizes; the budgets above count it)
# ----------------------------------------------------------------------------------------------


def _loss_and_grad(fn: Callable[..., torch.Tensor], logits: torch.Tensor, **options: Any) -> tuple[Any, Any]:
    x = logits.clone().requires_grad_()
    loss = fn(x, reduction="none", **options)
    loss.nansum().backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("case", ["smooth_ap", "pauc_pairwise_weighted"])
def test_cuda_plan_dense_slices_give_the_one_block_result(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dense kernel in many query slices (a tiny chunk) gives the CPU plan's single block, to 1e-12 (float64)."""
    from imbalanced_losses.functional import _pairs, pauc_at_budget_loss, smooth_ap_loss

    g = torch.Generator().manual_seed(5)
    logits = torch.randn(300, 3, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 3, (300,), generator=g)
    if case == "smooth_ap":
        fn, options = smooth_ap_loss, {"targets": targets, "temperature": 0.05}
    else:
        weight = torch.rand(300, generator=g, dtype=torch.float64)
        fn = pauc_at_budget_loss
        options = {"targets": targets, "surrogate": "pairwise", "beta": 0.5, "sample_weight": weight}
    monkeypatch.setattr(_pairs, "DENSE_MAX", 1 << 62)  # the dense kernel on both plans
    monkeypatch.setenv("IMBALANCED_LOSSES_PLAN", "cpu")
    ref_loss, ref_grad = _loss_and_grad(fn, logits, **options)
    monkeypatch.setenv("IMBALANCED_LOSSES_PLAN", "cuda")
    monkeypatch.setattr(_pairs, "CHUNK", 4096)  # a few queries per slice
    blocks = []
    block_terms = _pairs._block_terms
    monkeypatch.setattr(_pairs, "_block_terms", lambda *a, **k: blocks.append(1) or block_terms(*a, **k))
    loss, grad = _loss_and_grad(fn, logits, **options)
    assert len(blocks) > 3, blocks
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-12, equal_nan=True)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(RANKING))
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_binary_cuda_plan_gives_the_cpu_plans_loss_and_gradient(
    name: str, weighted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The binary road the budgets count (one block over every pool row, thresholds under a mask,
    no key packing) gives the CPU plan's values, with ignored rows in the pool (float64)."""
    from imbalanced_losses.functional import pauc_at_budget_loss, recall_at_quantile_loss, smooth_ap_loss

    g = torch.Generator().manual_seed(11)
    logits = torch.randn(600, 1, generator=g, dtype=torch.float64)
    targets = (torch.rand(600, generator=g) < 0.05).long()
    targets[torch.rand(600, generator=g) < 0.1] = -100
    weight = torch.rand(600, generator=g, dtype=torch.float64) if weighted else None
    fn, options = {
        "smooth_ap": (smooth_ap_loss, {"temperature": 0.05}),
        "recall": (recall_at_quantile_loss, {"quantile": 0.05}),
        "pauc_trapezoid": (pauc_at_budget_loss, {"beta": 0.1, "n_knots": 3}),
        "pauc_pairwise": (pauc_at_budget_loss, {"beta": 0.1, "surrogate": "pairwise"}),
    }[name]
    monkeypatch.setenv("IMBALANCED_LOSSES_PLAN", "cpu")
    ref_loss, ref_grad = _loss_and_grad(fn, logits, targets=targets, sample_weight=weight, **options)
    monkeypatch.setenv("IMBALANCED_LOSSES_PLAN", "cuda")
    loss, grad = _loss_and_grad(fn, logits, targets=targets, sample_weight=weight, **options)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12)
    assert float(grad.abs().max()) > 0


def test_cuda_plan_chunk_is_a_fraction_of_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CUDA device the chunk comes from ``mem_get_info``; CPU tensors never query it."""
    from imbalanced_losses.functional import _plan

    cuda = _plan.PLANS["cuda"]
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 << 30, 16 << 30))
    assert cuda.chunk_terms(torch.device("cuda"), 4) == (8 << 30) // 4 // 8  # a quarter, 8 bytes a term
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 << 20, 16 << 30))
    assert cuda.chunk_terms(torch.device("cuda"), 4) == cuda.chunk_min
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: pytest.fail("queried for a CPU tensor"))
    assert cuda.chunk_terms(torch.device("cpu"), 4) == cuda.chunk_max  # 16 GiB emulated: past the cap
    assert _plan.PLANS["cpu"].chunk_terms(torch.device("cpu"), 4) == 1 << 20


def test_plan_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from imbalanced_losses.functional._plan import PLANS, kernel_plan

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert kernel_plan(cpu) is PLANS["cuda"]  # set by the fixture
    monkeypatch.setenv("IMBALANCED_LOSSES_PLAN", "auto")
    assert (kernel_plan(cpu), kernel_plan(cuda)) == (PLANS["cpu"], PLANS["cuda"])
    monkeypatch.delenv("IMBALANCED_LOSSES_PLAN")
    assert (kernel_plan(cpu), kernel_plan(cuda)) == (PLANS["cpu"], PLANS["cuda"])
    monkeypatch.setenv("IMBALANCED_LOSSES_PLAN", "CPU")
    assert kernel_plan(cuda) is PLANS["cpu"]
    monkeypatch.setenv("IMBALANCED_LOSSES_PLAN", "gpu")
    with pytest.raises(ValueError, match=r"IMBALANCED_LOSSES_PLAN.*'auto', 'cpu' or 'cuda'.*'gpu'"):
        kernel_plan(cpu)
