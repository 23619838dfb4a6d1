"""The user's page, ``tests/seed/use-ranking-losses.md``: every snippet runs unchanged, with its stated outcome.

Spec: SPEC.md item 1 ("Every snippet runs unchanged, with the outcome it states"), D4 (warnings
point at the user's line), D8; incumbent-behaviour.md §2, §6, §7.

``tests/seed/use-ranking-losses.md`` is an exact copy of the seed page (CI has no path to the
shared folder). The first test runs every ```python block of it, in order, in one namespace;
the other tests copy one snippet each, verbatim (the lines between ``# fmt: off`` and
``# fmt: on``), and check what the page says about it.
"""

# The snippets are copied verbatim (between `# fmt: off` and `# fmt: on`), unused loop names and
# import layout included.
# ruff: noqa: I001, B007

from __future__ import annotations

import re
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from imbalanced_losses import PAUCAtBudgetLoss, RecallAtQuantileLoss, SmoothAPLoss
from imbalanced_losses.functional import pauc_at_budget_loss, recall_at_quantile_loss, smooth_ap_loss

SEED = Path(__file__).resolve().parent / "seed" / "use-ranking-losses.md"
QUEUE_KEYS = ("_q_logits", "_q_targets", "_q_ptr", "_q_iid", "_q_weight")
DIAG_KEYS = ("t_alpha", "t_beta", "tau_eff", "band_neg_count", "pauc_var", "grad_pos_count")


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", SEED.read_text(encoding="utf-8"), flags=re.DOTALL)


def assert_scalar_in_unit_interval(loss: torch.Tensor) -> None:
    assert isinstance(loss, torch.Tensor)
    assert loss.ndim == 0
    assert torch.isfinite(loss)
    assert 0.0 <= float(loss.detach()) <= 1.0


def queue_state(loss_fn: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in loss_fn.state_dict().items()}


def queue_fill(loss_fn: nn.Module) -> int:
    """Number of written (non-``ignore_index``) queue slots."""
    return int((loss_fn._queue._q_targets != loss_fn.ignore_index).sum())


# --------------------------------------------------------------------------------------------
# The whole page, in order, in one namespace
# --------------------------------------------------------------------------------------------


def test_seed_copy_has_the_fourteen_snippets() -> None:
    blocks = python_blocks()
    assert len(blocks) == 14
    assert "SmoothAPLoss(num_classes=4, queue_size=1024, temperature=0.01)" in blocks[0]
    assert "for epoch in range(epochs):" in blocks[-1]


def _verbatim_regions() -> list[str]:
    """The code between ``# fmt: off`` and ``# fmt: on`` in this file, dedented."""
    text = Path(__file__).read_text(encoding="utf-8")
    regions = re.findall(r"\n([ \t]*)# fmt: off\n(.*?)\n[ \t]*# fmt: on", text, flags=re.DOTALL)
    return [textwrap.dedent(body) for _, body in regions]


def test_explicit_snippet_tests_copy_the_page_verbatim() -> None:
    blocks = python_blocks()
    regions = _verbatim_regions()
    assert len(regions) == 14
    for region in regions:
        lines = [line for line in region.splitlines() if line.strip()]
        assert any(
            "\n".join(lines) in "\n".join(line for line in block.splitlines() if line.strip()) for block in blocks
        ), region
    # Every snippet of the page has its explicit test.
    for i, block in enumerate(blocks):
        assert any(region.strip() == block.strip() for region in regions), f"python block {i + 1} has no explicit test"


def _context_for(block: str, ns: dict) -> None:
    """Names the page leaves to the reader: defined only right before the block that uses them."""
    if "return_diagnostics=True" in block:
        # The page's diagnostics snippet follows the 4-class `pos_numerator="live"` loss, but the
        # latest `logits`/`targets` on the page are the *binary* PAUC example ([256, 1]). The page
        # means the 4-class PAUC batch of its first PAUC example, so give it that.
        num_classes = ns["loss_fn"].num_classes
        ns["logits"] = torch.randn(256, num_classes)
        ns["targets"] = torch.randint(0, num_classes, (256,))
    if "train_loader" in block:
        num_classes = ns["loss_fn"].num_classes
        ns["epochs"] = 2
        ns["model"] = nn.Linear(8, num_classes)
        ns["train_loader"] = [(torch.randn(64, 8), torch.randint(0, num_classes, (64,))) for _ in range(3)]
        ns["val_loader"] = [(torch.randn(64, 8), torch.randint(0, num_classes, (64,))) for _ in range(2)]


def test_every_snippet_runs_in_order_in_one_namespace(capsys: pytest.CaptureFixture[str]) -> None:
    ns: dict = {"__name__": "seed_page"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i, block in enumerate(python_blocks()):
            _context_for(block, ns)
            try:
                exec(compile(block, f"{SEED.name}[python block {i + 1}]", "exec"), ns)
            except Exception as exc:  # pragma: no cover - reported with the failing block
                pytest.fail(f"python block {i + 1} of the seed page raised {type(exc).__name__}: {exc}\n{block}")
    assert [str(w.message) for w in caught] == []
    out = capsys.readouterr().out
    assert out.count("tensor(") == 2  # the two prints of the diagnostics snippet


# --------------------------------------------------------------------------------------------
# SmoothAPLoss
# --------------------------------------------------------------------------------------------


def test_snippet_multiclass_ap() -> None:
    # fmt: off
    import torch
    from imbalanced_losses import SmoothAPLoss

    loss_fn = SmoothAPLoss(num_classes=4, queue_size=1024, temperature=0.01)
    logits  = torch.randn(32, 4)
    targets = torch.randint(0, 4, (32,))
    loss = loss_fn(logits, targets)
    loss.backward()
    # fmt: on
    assert_scalar_in_unit_interval(loss)


def test_multiclass_ap_gradients_are_finite() -> None:
    loss_fn = SmoothAPLoss(num_classes=4, queue_size=1024, temperature=0.01)
    for _ in range(3):  # also against a filled queue
        logits = torch.randn(32, 4, requires_grad=True)
        targets = torch.randint(0, 4, (32,))
        loss = loss_fn(logits, targets)
        assert_scalar_in_unit_interval(loss)
        loss.backward()
        assert logits.grad is not None
        assert torch.isfinite(logits.grad).all()
        assert logits.grad.abs().sum() > 0


def test_snippet_binary_ap() -> None:
    # fmt: off
    loss_fn = SmoothAPLoss(num_classes=1, queue_size=256)
    logits  = torch.randn(32, 1)
    targets = torch.randint(0, 2, (32,))
    loss = loss_fn(logits, targets)
    loss.backward()
    # fmt: on
    assert_scalar_in_unit_interval(loss)


def test_binary_ap_is_one_vs_rest_on_the_single_column() -> None:
    loss_fn = SmoothAPLoss(num_classes=1, queue_size=256)
    logits = torch.randn(32, 1, requires_grad=True)
    targets = torch.randint(0, 2, (32,))
    targets[:2] = torch.tensor([0, 1])
    loss, per_class, valid = loss_fn(logits, targets, return_per_class=True)
    assert per_class.shape == (1,)
    assert valid.tolist() == [True]
    torch.testing.assert_close(loss, smooth_ap_loss(logits, targets, temperature=0.01), rtol=0, atol=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_snippet_disable_queue() -> None:
    # fmt: off
    loss_fn = SmoothAPLoss(num_classes=4, queue_size=0)
    # fmt: on
    assert list(loss_fn.buffers()) == []
    assert loss_fn.state_dict() == {}
    logits, targets = torch.randn(16, 4), torch.randint(0, 4, (16,))
    first = loss_fn(logits, targets)
    second = loss_fn(logits, targets)  # batch only: nothing remembered from the first call
    assert torch.equal(first, second)
    torch.testing.assert_close(first, smooth_ap_loss(logits, targets), rtol=0, atol=1e-6)


@pytest.mark.parametrize("queue_size", [0, 64])
def test_snippet_reset_queue(queue_size: int) -> None:
    loss_fn = SmoothAPLoss(num_classes=4, queue_size=queue_size)
    for _ in range(3):
        loss_fn(torch.randn(16, 4), torch.randint(0, 4, (16,)))
    # fmt: off
    loss_fn.reset_queue()
    # then run validation loop
    # fmt: on
    if queue_size:
        q = loss_fn._queue
        assert (q._q_targets == -100).all()
        assert q._q_ptr.tolist() == [0]
        assert (q._q_logits == 0).all()
        assert q._q_iid.all()
        assert (q._q_weight == 1).all()
    logits, targets = torch.randn(16, 4), torch.randint(0, 4, (16,))
    torch.testing.assert_close(loss_fn(logits, targets), smooth_ap_loss(logits, targets), rtol=0, atol=1e-6)


def test_snippet_seq2seq() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # fmt: off
        B, T, C = 4, 128, 10
        loss_fn = SmoothAPLoss(num_classes=C, queue_size=1024, max_pool_size=4096)
        logits  = torch.randn(B, T, C).view(-1, C)    # [B*T, C]
        targets = torch.randint(0, C, (B, T)).view(-1) # [B*T]
        loss = loss_fn(logits, targets)
        # fmt: on
    assert_scalar_in_unit_interval(loss)
    assert logits.shape == (512, 10)
    # 512 rows <= max_pool_size: no subsampling, no warning, the exact (deterministic) loss.
    assert caught == []
    torch.testing.assert_close(loss, smooth_ap_loss(logits, targets), rtol=0, atol=1e-6)
    assert queue_fill(loss_fn) == 512


def _subsample_warnings(caught: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    return [w for w in caught if issubclass(w.category, UserWarning) and "max_pool_size" in str(w.message)]


def test_seq2seq_subsampling_warns_once_at_the_users_line() -> None:
    B, T, C = 30, 512, 10  # the page's "30 sequences x 512 tokens": a pool of 15 360 rows
    loss_fn = SmoothAPLoss(num_classes=C, queue_size=1024, max_pool_size=4096)
    logits = torch.randn(B * T, C, requires_grad=True)
    targets = torch.randint(0, C, (B * T,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = loss_fn(logits, targets)
    sub = _subsample_warnings(caught)
    assert len(sub) == 1, [str(w.message) for w in caught]
    assert sub[0].filename == __file__
    assert_scalar_in_unit_interval(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    # "The queue is unaffected — it continues to accumulate the original full batch."
    assert torch.equal(loss_fn._queue._q_logits, logits.detach()[-1024:])
    assert torch.equal(loss_fn._queue._q_targets, targets[-1024:])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss_fn(torch.randn(B * T, C), torch.randint(0, C, (B * T,)))
    assert _subsample_warnings(caught) == []


def test_subsampling_quota_gives_rare_class_its_reserved_rows() -> None:
    # "each observed class receives an equal reserved quota of max_pool_size // (2 x n_classes) rows"
    C, K = 10, 400
    targets = torch.zeros(6000, dtype=torch.long)
    targets[:300] = torch.arange(1, C).repeat_interleave(34)[:300]  # rare classes 1..9
    logits = torch.randn(6000, C)
    loss_fn = SmoothAPLoss(num_classes=C, queue_size=0, max_pool_size=K)
    with pytest.warns(UserWarning, match="max_pool_size"):
        _, _, valid = loss_fn(logits, targets, return_per_class=True)
    assert valid.all()
    from imbalanced_losses._sampling import minimum_quota_indices

    rows = minimum_quota_indices(targets, K, torch.Generator().manual_seed(0))
    counts = torch.bincount(targets[rows], minlength=C)
    assert rows.numel() == K
    assert (counts[1:] >= K // (2 * C)).all()


# --------------------------------------------------------------------------------------------
# RecallAtQuantileLoss
# --------------------------------------------------------------------------------------------


def test_snippet_recall_top_half_percent() -> None:
    # fmt: off
    from imbalanced_losses import RecallAtQuantileLoss

    loss_fn = RecallAtQuantileLoss(num_classes=4, quantile=0.005, queue_size=1024)
    logits  = torch.randn(32, 4)
    targets = torch.randint(0, 4, (32,))
    loss = loss_fn(logits, targets)
    loss.backward()
    # fmt: on
    assert_scalar_in_unit_interval(loss)


def test_recall_gradients_are_finite() -> None:
    loss_fn = RecallAtQuantileLoss(num_classes=4, quantile=0.005, queue_size=1024)
    logits = torch.randn(32, 4, requires_grad=True)
    loss = loss_fn(logits, torch.randint(0, 4, (32,)))
    assert_scalar_in_unit_interval(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_queue_1024_with_batch_32_gives_1056_pooled_samples() -> None:
    loss_fn = RecallAtQuantileLoss(num_classes=4, quantile=0.005, queue_size=1024)
    for _ in range(1024 // 32):
        loss_fn(torch.randn(32, 4), torch.randint(0, 4, (32,)))
    assert queue_fill(loss_fn) == 1024
    state = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    q_logits, q_targets = state["_queue._q_logits"], state["_queue._q_targets"]
    logits, targets = torch.randn(32, 4), torch.randint(0, 4, (32,))
    pool_logits, pool_targets = torch.cat([logits, q_logits]), torch.cat([targets, q_targets])
    assert pool_logits.shape[0] == 1056
    got = loss_fn(logits, targets)
    expected = recall_at_quantile_loss(pool_logits, pool_targets, quantile=0.005)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # The subsampling warning reports the pool size: 1056 rows.
    capped = RecallAtQuantileLoss(num_classes=4, quantile=0.005, queue_size=1024, max_pool_size=1055)
    capped.load_state_dict(state)
    with pytest.warns(UserWarning, match="1056"):
        capped(logits, targets)


def test_snippet_recall_binary() -> None:
    # fmt: off
    loss_fn = RecallAtQuantileLoss(num_classes=1, quantile=0.01, queue_size=512)
    logits  = torch.randn(32, 1)
    targets = torch.randint(0, 2, (32,))
    loss = loss_fn(logits, targets)
    # fmt: on
    assert_scalar_in_unit_interval(loss)
    assert queue_fill(loss_fn) == 32


def test_snippet_quantile_interpolation_linear() -> None:
    # fmt: off
    loss_fn = RecallAtQuantileLoss(
        num_classes=4,
        quantile=0.01,
        quantile_interpolation="linear",
    )
    # fmt: on
    assert loss_fn.quantile_interpolation == "linear"
    logits, targets = torch.randn(200, 4, dtype=torch.float64), torch.randint(0, 4, (200,))
    loss = loss_fn(logits, targets)
    # The threshold is torch.quantile(column, 1 - q, interpolation="linear") over the whole pool;
    # the sigmoid's width is temperature (0.1) times the column's inter-quartile range (D12).
    expected = []
    for c in range(4):
        theta, upper, lower = torch.quantile(
            logits[:, c], torch.tensor([0.99, 0.75, 0.25], dtype=torch.float64), interpolation="linear"
        )
        tau = 0.1 * (upper - lower)
        expected.append(1 - torch.sigmoid((logits[targets == c, c] - theta) / tau).mean())
    torch.testing.assert_close(loss, torch.stack(expected).mean(), rtol=0, atol=1e-12)
    higher = RecallAtQuantileLoss(num_classes=4, quantile=0.01)(logits, targets)
    assert not torch.equal(loss, higher)


# --------------------------------------------------------------------------------------------
# PAUCAtBudgetLoss
# --------------------------------------------------------------------------------------------


def test_snippet_pauc_multiclass() -> None:
    # fmt: off
    from imbalanced_losses import PAUCAtBudgetLoss

    # Recommended band: alpha=0, beta=budget.
    # Contrasts positives against all false-positives above the operating threshold.
    loss_fn = PAUCAtBudgetLoss(num_classes=4, alpha=0.0, beta=0.005, queue_size=1024)
    logits  = torch.randn(256, 4)
    targets = torch.randint(0, 4, (256,))
    loss = loss_fn(logits, targets)
    loss.backward()
    # fmt: on
    assert_scalar_in_unit_interval(loss)


def test_snippet_pauc_binary() -> None:
    # fmt: off
    loss_fn = PAUCAtBudgetLoss(num_classes=1, alpha=0.0, beta=0.005, queue_size=1024)
    logits  = torch.randn(256, 1)
    targets = torch.randint(0, 2, (256,))
    loss = loss_fn(logits, targets)
    loss.backward()
    # fmt: on
    assert_scalar_in_unit_interval(loss)


@pytest.mark.parametrize("num_classes", [1, 4])
def test_pauc_gradients_are_finite(num_classes: int) -> None:
    loss_fn = PAUCAtBudgetLoss(num_classes=num_classes, alpha=0.0, beta=0.005, queue_size=1024)
    logits = torch.randn(256, num_classes, requires_grad=True)
    loss = loss_fn(logits, torch.randint(0, max(num_classes, 2), (256,)))
    assert_scalar_in_unit_interval(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_snippet_choose_surrogate() -> None:
    # fmt: off
    # Default band (alpha=0, beta=budget): trapezoid with 2 knots is accurate for narrow bands
    loss_fn = PAUCAtBudgetLoss(num_classes=4, alpha=0.0, beta=0.005, surrogate="trapezoid", n_knots=2)

    # Wide or volatile band: pairwise is more robust
    loss_fn = PAUCAtBudgetLoss(num_classes=4, alpha=0.0, beta=0.05, surrogate="pairwise")
    # fmt: on
    assert loss_fn.surrogate == "pairwise"
    assert loss_fn.beta == 0.05
    logits = torch.randn(400, 4, requires_grad=True)
    targets = torch.randint(0, 4, (400,))
    loss = loss_fn(logits, targets)
    assert_scalar_in_unit_interval(loss)
    loss.backward()
    # "band negatives also carry gradient"
    for c in range(4):
        neg_grad = logits.grad[targets != c, c]
        assert (neg_grad != 0).any()
        assert (neg_grad >= 0).all()  # negatives are pushed down


@pytest.mark.parametrize("detach", [True, False])
def test_trapezoid_gradient_reaches_positives_and_with_d12_the_negatives_at_the_knots(detach: bool) -> None:
    """The page's "gradient flows through positives only" is 0.6's gradient (``detach_thresholds=True``).

    By default (D12) the knots pass their gradient on to the negatives around them: the top
    negative (the knot ``t_alpha`` for ``alpha=0``) is pushed down, and the gradient of each
    column sums to zero. (The spread's quartiles pass theirs on too, with either sign.)
    """
    loss_fn = PAUCAtBudgetLoss(
        num_classes=4, alpha=0.0, beta=0.005, surrogate="trapezoid", n_knots=2, detach_thresholds=detach
    )
    logits = torch.randn(400, 4, requires_grad=True)
    targets = torch.randint(0, 4, (400,))
    loss_fn(logits, targets).backward()
    for c in range(4):
        assert (logits.grad[targets == c, c] < 0).any()
        negatives = logits.grad[targets != c, c]
        if detach:
            assert (negatives == 0).all()
        else:
            top_negative = logits[targets != c, c].argmax()
            assert negatives[top_negative] > 0
            assert abs(float(logits.grad[:, c].sum())) < 1e-6


def test_snippet_pos_numerator_live() -> None:
    # fmt: off
    # Few live positives per batch + large queue: undilute the trapezoid numerator
    loss_fn = PAUCAtBudgetLoss(num_classes=4, alpha=0.0, beta=0.005,
                               surrogate="trapezoid", pos_numerator="live", queue_size=8192)
    # fmt: on
    assert loss_fn.pos_numerator == "live"
    assert loss_fn.queue_size == 8192
    for _ in range(4):
        loss_fn(torch.randn(256, 4), torch.randint(0, 4, (256,)))
    q = loss_fn._queue
    q_logits, q_targets, q_iid = q._q_logits.clone(), q._q_targets.clone(), q._q_iid.clone()
    logits = torch.randn(256, 4, requires_grad=True)
    targets = torch.randint(0, 4, (256,))
    loss = loss_fn(logits, targets)
    assert_scalar_in_unit_interval(loss)
    # The numerator uses the live positives only; the queue still feeds the thresholds.
    live = torch.cat([torch.ones(256, dtype=torch.bool), torch.zeros(8192, dtype=torch.bool)])
    expected = pauc_at_budget_loss(
        torch.cat([logits, q_logits]),
        torch.cat([targets, q_targets]),
        beta=0.005,
        pos_numerator="live",
        iid_mask=torch.cat([torch.ones(256, dtype=torch.bool), q_iid]),
        live_mask=live,
    )
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("detach", [True, False])
def test_pos_numerator_live_undilutes_the_gradient(detach: bool) -> None:
    """Binary, trapezoid: same thresholds, so grad_live = grad_pool * |P_pool| / |P_live| exactly.

    With the knots' gradient passed on (D12, the default) the negatives' share of it comes from
    every numerator positive, so the exact ratio holds on the positives' rows.
    """
    torch.manual_seed(1)
    history = [(torch.randn(256, 1), (torch.rand(256) < 0.2).long()) for _ in range(4)]
    grads = {}
    for mode in ("pool", "live"):
        loss_fn = PAUCAtBudgetLoss(
            num_classes=1, beta=0.05, pos_numerator=mode, queue_size=4096, detach_thresholds=detach
        )
        for x, y in history:
            loss_fn(x, y)
        logits = torch.randn(64, 1, generator=torch.Generator().manual_seed(3)).requires_grad_()
        targets = torch.zeros(64, dtype=torch.long)
        targets[:3] = 1
        loss_fn(logits, targets).backward()
        grads[mode] = logits.grad.clone()
    n_pool = 3 + sum(int(y.sum()) for _, y in history)
    rows = slice(None) if detach else slice(0, 3)
    torch.testing.assert_close(grads["live"][rows], grads["pool"][rows] * n_pool / 3, rtol=1e-5, atol=1e-9)
    assert grads["live"][rows].abs().sum() > grads["pool"][rows].abs().sum()


def test_snippet_diagnostics(capsys: pytest.CaptureFixture[str]) -> None:
    loss_fn = PAUCAtBudgetLoss(
        num_classes=4, alpha=0.0, beta=0.005, surrogate="trapezoid", pos_numerator="live", queue_size=8192
    )
    logits = torch.randn(256, 4)
    targets = torch.randint(0, 4, (256,))
    # fmt: off
    loss, stats = loss_fn(logits, targets, return_diagnostics=True)
    # stats keys: t_alpha, t_beta, tau_eff, band_neg_count, pauc_var, grad_pos_count (all [C] tensors)
    print(stats["band_neg_count"])  # iid negatives landing in the FPR band
    print(stats["grad_pos_count"])  # live positives carrying gradient (rank-local)
    # fmt: on
    assert_scalar_in_unit_interval(loss)
    assert set(DIAG_KEYS) <= set(stats)
    for key in DIAG_KEYS:
        assert isinstance(stats[key], torch.Tensor), key
        assert stats[key].shape == (4,), key
    assert stats["band_neg_count"].dtype == torch.int64
    assert stats["grad_pos_count"].dtype == torch.int64
    assert stats["grad_pos_count"].tolist() == torch.bincount(targets, minlength=4).tolist()
    assert (stats["band_neg_count"] >= 1).all()
    out = capsys.readouterr().out
    assert out.count("tensor(") == 2


def test_diagnostics_thresholds_with_alpha_zero() -> None:
    # "With alpha=0, t_alpha = max(neg_iid) ... t_beta = quantile(neg_iid, 1 - beta)"
    loss_fn = PAUCAtBudgetLoss(num_classes=4, alpha=0.0, beta=0.005, queue_size=1024)
    logits = torch.randn(1280, 4)
    targets = torch.randint(0, 4, (1280,))
    _, stats = loss_fn(logits, targets, return_diagnostics=True)
    for c in range(4):
        neg = logits[targets != c, c]
        assert stats["t_alpha"][c] == neg.max()
        assert stats["t_beta"][c] == torch.quantile(neg, 1 - 0.005, interpolation="higher")
        in_band = (neg >= stats["t_beta"][c]) & (neg <= stats["t_alpha"][c])
        assert int(stats["band_neg_count"][c]) == int(in_band.sum())


# --------------------------------------------------------------------------------------------
# Queue behaviour during validation
# --------------------------------------------------------------------------------------------

LOSSES = [
    pytest.param(lambda **kw: SmoothAPLoss(num_classes=4, **kw), id="SmoothAP"),
    pytest.param(lambda **kw: RecallAtQuantileLoss(num_classes=4, quantile=0.3, **kw), id="Recall"),
    pytest.param(lambda **kw: PAUCAtBudgetLoss(num_classes=4, beta=0.2, **kw), id="PAUC"),
]


@pytest.mark.parametrize("make", LOSSES)
def test_queue_frozen_in_eval_mode(make) -> None:
    loss_fn = make(queue_size=64)
    loss_fn(torch.randn(16, 4), torch.randint(0, 4, (16,)))
    before = queue_state(loss_fn)
    loss_fn.eval()
    with torch.no_grad():
        loss_fn(torch.randn(16, 4), torch.randint(0, 4, (16,)))
    after = queue_state(loss_fn)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    # ... and it resumes where it stopped once training restarts (no reset_queue needed).
    loss_fn.train()
    loss_fn(torch.randn(16, 4), torch.randint(0, 4, (16,)))
    assert loss_fn._queue._q_ptr.tolist() == [32]


@pytest.mark.parametrize("make", LOSSES)
def test_queue_updates_in_eval_with_update_queue_in_eval(make) -> None:
    loss_fn = make(queue_size=64, update_queue_in_eval=True)
    loss_fn(torch.randn(16, 4), torch.randint(0, 4, (16,)))
    loss_fn.eval()
    logits = torch.randn(16, 4)
    with torch.no_grad():
        loss_fn(logits, torch.randint(0, 4, (16,)))
    assert loss_fn._queue._q_ptr.tolist() == [32]
    assert torch.equal(loss_fn._queue._q_logits[16:32], logits)


def test_model_eval_freezes_a_loss_held_by_the_model() -> None:
    # "freeze the queue when the model is in eval mode (model.eval())": a loss registered on the
    # model follows model.train()/model.eval().
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(8, 4)
            self.loss_fn = SmoothAPLoss(num_classes=4, queue_size=256)

    model = Model()
    model.train()
    model.loss_fn(model.net(torch.randn(32, 8)), torch.randint(0, 4, (32,)))
    model.eval()
    before = queue_state(model.loss_fn)
    with torch.no_grad():
        model.loss_fn(model.net(torch.randn(32, 8)), torch.randint(0, 4, (32,)))
    for key, value in queue_state(model.loss_fn).items():
        assert torch.equal(value, before[key])


def test_snippet_training_loop_pattern() -> None:
    loss_fn = PAUCAtBudgetLoss(num_classes=4, beta=0.05, queue_size=1024)
    model = nn.Linear(8, 4)
    epochs = 2
    train_loader = [(torch.randn(64, 8), torch.randint(0, 4, (64,))) for _ in range(3)]
    val_loader = [(torch.randn(64, 8), torch.randint(0, 4, (64,))) for _ in range(2)]
    # fmt: off
    # Training loop pattern — no extra handling needed
    for epoch in range(epochs):
        model.train()
        for xb, yb in train_loader:
            loss = loss_fn(model(xb), yb)  # queue updates
            ...

        model.eval()
        with torch.no_grad():
            for xb, yb in val_loader:
                ...  # queue frozen, no contamination
    # fmt: on
    assert_scalar_in_unit_interval(loss)
    assert loss_fn._queue._q_ptr.tolist() == [2 * 3 * 64]
