"""Index plumbing of the pair kernel's large-pool road, against plain references.

:func:`~imbalanced_losses.functional._pairs._sorted_subset` picks the queries out of the sorted
keys (no second sort) and must give :func:`~imbalanced_losses.functional._pairs.sorted_rows`'
layout; :func:`~imbalanced_losses.functional._pairs._members` packs one channel's keys for its
own tail tables. Both are checked against a per-row Python reference. The narrow products
(:func:`~imbalanced_losses.functional._pairs._mm`) take one of three layouts by shape; each must
be the product.
"""

from __future__ import annotations

import pytest
import torch

from imbalanced_losses.functional import _pairs


def _masks(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores ``[C, M]`` with ties, keys and a query subset of them; one row without queries, one without keys."""
    g = torch.Generator().manual_seed(seed)
    c, m = 4, 200
    scores = torch.randint(0, 60, (c, m), generator=g).double() / 7.0 + 1.0  # many ties, none 0
    keys = torch.rand(c, m, generator=g) < 0.6
    keys[3] = False
    queries = keys & (torch.rand(c, m, generator=g) < 0.3)
    queries[2] = False
    return scores, keys, queries


def test_sorted_subset_matches_sorted_rows() -> None:
    scores, keys, queries = _masks(0)
    nk, nq = keys.sum(1), queries.sum(1)
    sorted_keys = _pairs.sorted_rows(scores, keys, nk, int(nk.max()) + 3)
    width = int(nq.max()) + 5
    got = _pairs._sorted_subset(sorted_keys, queries, nq, width)
    want = _pairs.sorted_rows(scores, queries, nq, width)
    torch.testing.assert_close(got.values, want.values, rtol=0, atol=0)  # same layout, padding included
    for row in range(scores.shape[0]):
        n = int(nq[row])
        assert sorted(got.rows[row, :n].tolist()) == queries[row].nonzero()[:, 0].tolist()
        assert got.rows[row, n:].eq(0).all()
        torch.testing.assert_close(scores[row, got.rows[row, :n]], got.values[row, :n], rtol=0, atol=0)


def test_members_packs_each_row_in_order() -> None:
    scores, keys, _ = _masks(1)
    values = scores.sort(1).values
    member = keys  # any mask over the sorted slots
    counts = torch.zeros(keys.shape[0], keys.shape[1] + 1, dtype=torch.long)
    counts[:, 1:] = member.long().cumsum(1)
    width = int(counts[:, -1].max())
    packed, weight, source = _pairs._members(values, member, counts, width)
    assert weight is not None
    for row in range(values.shape[0]):
        slots = member[row].nonzero()[:, 0]
        n = slots.numel()
        assert source[row, :n].tolist() == slots.tolist()
        torch.testing.assert_close(packed[row, :n], values[row, slots], rtol=0, atol=0)
        assert weight[row, 0, :n].eq(1).all()
        assert weight[row, 0, n:].eq(0).all()
        assert packed[row, n:].eq(packed[row, n - 1] if n else values[row, 0]).all()  # sorted padding


@pytest.mark.parametrize(
    ("rows", "inner", "cols", "road"),
    [
        (12, 1024, 2, "blas"),  # a small matrix product: one BLAS call
        (1, 64, 2, "broadcast"),  # a vector times a matrix
        (64, 1, 2, "broadcast"),  # an outer product
        (12, 64, 1, "broadcast"),  # a matrix times a vector
        (300, 300, 2, "transposed"),  # above the small size: (b^T a^T)^T
    ],
)
def test_narrow_product_roads_equal_the_product(rows: int, inner: int, cols: int, road: str) -> None:
    g = torch.Generator().manual_seed(rows + inner + cols)
    a = torch.randn(rows, inner, generator=g, dtype=torch.float64)
    b = torch.randn(inner, cols, generator=g, dtype=torch.float64)
    called = []
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the small roads are taken with several threads only
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(torch.Tensor, "contiguous", lambda self: called.append("transposed") or self.clone())
            patch.setattr(torch.Tensor, "__matmul__", lambda x, y: called.append("blas") or torch.matmul(x, y))
            got = _pairs._mm(a, b, 1 << 15)
    finally:
        torch.set_num_threads(threads)
    assert (called[0] if called else "broadcast") == road, called
    torch.testing.assert_close(got, a @ b, rtol=1e-13, atol=1e-13)
