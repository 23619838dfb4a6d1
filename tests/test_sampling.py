"""``max_pool_size`` minimum-quota subsampling.

Spec: incumbent-behaviour.md §7 (quota rule, exactly K rows, output grouping, queue receives the
full batch), §2.3 step 9 (subsampling comes after merge and ``ignore_index`` filtering); SPEC.md D8
(optional ``generator``: the same seed selects the same rows) and D4 (the warning is shown once).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from imbalanced_losses import PAUCAtBudgetLoss, RecallAtQuantileLoss, SmoothAPLoss
from imbalanced_losses._sampling import minimum_quota_indices
from imbalanced_losses.functional import pauc_at_budget_loss, recall_at_quantile_loss, smooth_ap_loss

pytestmark = pytest.mark.filterwarnings("ignore:.*max_pool_size.*:UserWarning")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_is_selection(idx: torch.Tensor, m: int, k: int) -> None:
    assert idx.dtype == torch.int64
    assert idx.ndim == 1
    assert idx.numel() == k
    assert idx.unique().numel() == k  # no duplicates
    assert int(idx.min()) >= 0
    assert int(idx.max()) < m


# --------------------------------------------------------------------------------------------
# minimum_quota_indices
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("m", "k"), [(0, 5), (1, 1), (7, 7), (7, 100)])
def test_identity_when_pool_fits(m: int, k: int) -> None:
    targets = torch.randint(0, 3, (m,))
    assert torch.equal(minimum_quota_indices(targets, k), torch.arange(m))
    assert torch.equal(minimum_quota_indices(targets, k, gen(0)), torch.arange(m))


@pytest.mark.parametrize(("m", "k", "classes"), [(100, 10, 2), (1000, 100, 10), (500, 499, 3), (300, 7, 50)])
def test_exactly_k_distinct_rows(m: int, k: int, classes: int) -> None:
    targets = torch.randint(0, classes, (m,))
    for seed in range(3):
        assert_is_selection(minimum_quota_indices(targets, k, gen(seed)), m, k)
    assert_is_selection(minimum_quota_indices(targets, k), m, k)


def test_binary_rare_positives_all_kept() -> None:
    # incumbent §7: 1000 binary rows with 10 positives, K=100 -> all 10 positives + 90 negatives.
    targets = torch.zeros(1000, dtype=torch.long)
    targets[torch.randperm(1000)[:10]] = 1
    for seed in range(5):
        idx = minimum_quota_indices(targets, 100, gen(seed))
        assert_is_selection(idx, 1000, 100)
        assert int(targets[idx].sum()) == 10
        assert int((targets[idx] == 0).sum()) == 90


def test_ten_class_example_every_present_class_gets_its_quota() -> None:
    # incumbent §7: 1000 rows, classes 0..9, class 0 at ~95 %, class 2 absent -> G = 9, q = 100 // 18 = 5.
    sizes = {0: 950, 1: 2, 3: 8, 4: 4, 5: 10, 6: 4, 7: 7, 8: 9, 9: 6}
    targets = torch.cat([torch.full((n,), c) for c, n in sizes.items()])
    targets = targets[torch.randperm(targets.numel())]
    quota = 100 // (2 * len(sizes))
    assert quota == 5
    for seed in range(5):
        idx = minimum_quota_indices(targets, 100, gen(seed))
        assert_is_selection(idx, 1000, 100)
        counts = torch.bincount(targets[idx], minlength=10)
        assert int(counts[2]) == 0
        for c, n in sizes.items():
            assert int(counts[c]) >= min(n, quota), (c, counts.tolist())
        assert int(counts.sum()) == 100


def test_output_order_reserved_rows_grouped_by_class_then_fill() -> None:
    targets = torch.tensor([2] * 30 + [0] * 30 + [1] * 30)[torch.randperm(90)]
    idx = minimum_quota_indices(targets, 30, gen(1))  # G = 3, q = 5: 15 reserved + 15 fill
    head = targets[idx[:15]]
    assert head.tolist() == [0] * 5 + [1] * 5 + [2] * 5


def test_reserved_rows_exceeding_k_are_cut_to_k() -> None:
    # 50 classes, K=20: q = max(1, 20 // 100) = 1 -> 50 reserved rows > K, keep a random 20 of them.
    targets = torch.arange(50).repeat_interleave(10)
    idx = minimum_quota_indices(targets, 20, gen(3))
    assert_is_selection(idx, 500, 20)
    chosen = targets[idx]
    assert chosen.unique().numel() == 20  # at most one row per class
    assert torch.equal(chosen, chosen.sort().values)  # class grouping preserved


def test_same_generator_seed_same_selection() -> None:
    targets = torch.randint(0, 5, (2000,))
    a = minimum_quota_indices(targets, 200, gen(42))
    b = minimum_quota_indices(targets, 200, gen(42))
    assert torch.equal(a, b)


def test_different_seeds_different_selection() -> None:
    targets = torch.randint(0, 5, (2000,))
    picks = {tuple(minimum_quota_indices(targets, 200, gen(seed)).tolist()) for seed in range(4)}
    assert len(picks) == 4


def test_generator_leaves_the_global_rng_alone() -> None:
    targets = torch.randint(0, 5, (2000,))
    state = torch.get_rng_state()
    minimum_quota_indices(targets, 200, gen(0))
    assert torch.equal(torch.get_rng_state(), state)


def test_default_generator_is_the_global_one() -> None:
    targets = torch.randint(0, 5, (2000,))
    torch.manual_seed(7)
    a = minimum_quota_indices(targets, 200)
    torch.manual_seed(7)
    b = minimum_quota_indices(targets, 200)
    assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------
# Inside the losses
# --------------------------------------------------------------------------------------------

MAKERS = {
    "SmoothAP": lambda **kw: SmoothAPLoss(num_classes=4, temperature=0.1, **kw),
    "Recall": lambda **kw: RecallAtQuantileLoss(num_classes=4, quantile=0.1, **kw),
    "PAUC": lambda **kw: PAUCAtBudgetLoss(num_classes=4, beta=0.1, surrogate="pairwise", **kw),
}
ALL = pytest.mark.parametrize("name", list(MAKERS))


def batch(n: int = 600) -> tuple[torch.Tensor, torch.Tensor]:
    targets = torch.zeros(n, dtype=torch.long)
    targets[: n // 10] = torch.randint(1, 4, (n // 10,))
    return torch.randn(n, 4), targets


@ALL
def test_identically_seeded_losses_pick_the_same_rows(name: str) -> None:
    logits, targets = batch()
    a = MAKERS[name](queue_size=0, max_pool_size=100, generator=gen(5))
    b = MAKERS[name](queue_size=0, max_pool_size=100, generator=gen(5))
    c = MAKERS[name](queue_size=0, max_pool_size=100, generator=gen(6))
    for _ in range(3):  # the generators advance identically
        la, lb, lc = a(logits, targets), b(logits, targets), c(logits, targets)
        assert torch.equal(la, lb)
        assert not torch.equal(la, lc)


@ALL
def test_generator_in_a_loss_leaves_the_global_rng_alone(name: str) -> None:
    logits, targets = batch()
    loss_fn = MAKERS[name](queue_size=0, max_pool_size=100, generator=gen(5))
    state = torch.get_rng_state()
    loss_fn(logits, targets)
    assert torch.equal(torch.get_rng_state(), state)


FUNCTIONAL = {
    "SmoothAP": lambda x, y, **kw: smooth_ap_loss(x, y, temperature=0.1, **kw),
    "Recall": lambda x, y, **kw: recall_at_quantile_loss(x, y, quantile=0.1, **kw),
    "PAUC": lambda x, y, **kw: pauc_at_budget_loss(x, y, beta=0.1, surrogate="pairwise", **kw),
}


@ALL
def test_module_subsample_is_the_functional_on_the_selected_pool_rows(name: str) -> None:
    """Pool = [live; queue slots] minus ignore_index rows, then minimum_quota_indices with the generator."""
    loss_fn = MAKERS[name](queue_size=300, max_pool_size=150, generator=gen(11))
    with torch.no_grad():
        loss_fn(*batch(200))  # subsamples too: it advances the generator
    loss_fn.generator = gen(11)
    q = loss_fn._queue
    q_logits, q_targets, q_iid = q._q_logits.clone(), q._q_targets.clone(), q._q_iid.clone()
    logits, targets = batch(120)
    targets[:7] = -100
    logits.requires_grad_()
    got = loss_fn(logits, targets)

    pool_logits = torch.cat([logits, q_logits])
    pool_targets = torch.cat([targets, q_targets])
    keep = (pool_targets != -100).nonzero().squeeze(1)
    assert keep.numel() == 113 + 200
    rows = keep[minimum_quota_indices(pool_targets[keep], 150, gen(11))]
    kwargs = {}
    if name == "PAUC":
        live = torch.cat([torch.ones(120, dtype=torch.bool), torch.zeros(300, dtype=torch.bool)])
        kwargs = {"iid_mask": torch.cat([torch.ones(120, dtype=torch.bool), q_iid])[rows], "live_mask": live[rows]}
    expected = FUNCTIONAL[name](pool_logits[rows], pool_targets[rows], **kwargs)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    (g_mod,) = torch.autograd.grad(got, logits)
    (g_fun,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(g_mod, g_fun, rtol=0, atol=1e-6)


@ALL
def test_queue_receives_the_full_batch_not_the_subsample(name: str) -> None:
    loss_fn = MAKERS[name](queue_size=1000, max_pool_size=50, generator=gen(0))
    logits, targets = batch(600)
    targets[::50] = -100
    loss_fn(logits, targets)
    q = loss_fn._queue
    assert q._q_ptr.tolist() == [600]
    assert torch.equal(q._q_logits[:600], logits)
    assert torch.equal(q._q_targets[:600], targets)


@ALL
def test_subsampling_warning_once_per_instance_at_the_users_line(name: str) -> None:
    logits, targets = batch()
    loss_fn = MAKERS[name](queue_size=0, max_pool_size=100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss_fn(logits, targets)
        loss_fn(logits, targets)
        MAKERS[name](queue_size=0, max_pool_size=1000)(logits, targets)  # fits: no warning
    sub = [w for w in caught if "max_pool_size" in str(w.message)]
    assert len(sub) == 1
    assert sub[0].filename == __file__
    assert issubclass(sub[0].category, UserWarning)
    assert "600" in str(sub[0].message)
    assert "100" in str(sub[0].message)


@ALL
def test_ignored_rows_do_not_count_towards_the_cap(name: str) -> None:
    logits, targets = batch(120)
    targets[:30] = -100  # 90 rows remain, under the cap of 100
    loss_fn = MAKERS[name](queue_size=0, max_pool_size=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = loss_fn(logits, targets)
    assert torch.equal(got, MAKERS[name](queue_size=0)(logits, targets))


def test_generator_state_survives_deepcopy() -> None:
    import copy

    logits, targets = batch()
    a = SmoothAPLoss(num_classes=4, queue_size=0, max_pool_size=100, generator=gen(9))
    a(logits, targets)
    b = copy.deepcopy(a)
    assert torch.equal(a(logits, targets), b(logits, targets))
