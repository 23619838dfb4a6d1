"""Black-box parity check against another installation of ``imbalanced_losses``.

Runs a fixed set of cases through whichever ``imbalanced_losses`` the interpreter imports and
saves loss values, per-class values, validity and logit gradients. Run it once in our venv
and once in a separate venv holding ``imbalanced-losses==0.6.0``, then compare::

    .venv/bin/python benchmarks/parity.py dump ours.pt
    /path/to/other/venv/bin/python benchmarks/parity.py dump theirs.pt
    .venv/bin/python benchmarks/parity.py compare ours.pt theirs.pt

Only the public API is used (constructor arguments, forward), so the other installation is
treated as a black box. An installation that has D12's keywords gets 0.6's settings through
them (:data:`SETTINGS_OF_06`), so the recall and trapezoid cases compare 0.6's loss and gradient.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

import torch

import imbalanced_losses as il

#: Keywords that select 0.6's formula where an installation has them (D12 of the migration page).
SETTINGS_OF_06: dict[str, dict[str, Any]] = {
    "RecallAtQuantileLoss": {"tau_scale": "logit", "detach_thresholds": True},
    "PAUCAtBudgetLoss": {"detach_thresholds": True},
}


def settings_of_06(cls: type) -> dict[str, Any]:
    """The keywords of :data:`SETTINGS_OF_06` that ``cls`` accepts (none for 0.6 itself)."""
    accepted = inspect.signature(cls).parameters
    return {k: v for k, v in SETTINGS_OF_06.get(cls.__name__, {}).items() if k in accepted}


def cases() -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(name, class name, constructor kwargs, data kwargs)."""
    out = []
    for c in (1, 4):
        data = {"n": 300, "c": c}
        out += [
            (f"ap-c{c}", "SmoothAPLoss", {"temperature": 0.05}, data),
            (f"ap-c{c}-t1", "SmoothAPLoss", {"temperature": 1.0}, data),
            (f"ap-c{c}-w", "SmoothAPLoss", {"temperature": 0.05}, {**data, "weight": True}),
            (f"ap-c{c}-ign", "SmoothAPLoss", {"temperature": 0.05}, {**data, "ignore": True}),
        ]
        for interp in ("linear", "lower", "higher", "nearest", "midpoint"):
            out.append(
                (
                    f"recall-c{c}-{interp}",
                    "RecallAtQuantileLoss",
                    {"quantile": 0.05, "temperature": 0.05, "quantile_interpolation": interp},
                    data,
                )
            )
        for surrogate in ("trapezoid", "pairwise"):
            for extra in (
                {},
                {"tau_scale": "band", "alpha": 0.01, "beta": 0.2},
                {"budget_basis": "population", "beta": 0.1},
                {"pos_numerator": "live", "n_knots": 5, "beta": 0.1},
                {"quantile_interpolation": "linear", "beta": 0.07},
            ):
                tag = "-".join(f"{k}={v}" for k, v in extra.items()) or "default"
                out.append(
                    (f"pauc-c{c}-{surrogate}-{tag}", "PAUCAtBudgetLoss", {"surrogate": surrogate, **extra}, data)
                )
                out.append(
                    (
                        f"pauc-c{c}-{surrogate}-{tag}-iid-w",
                        "PAUCAtBudgetLoss",
                        {"surrogate": surrogate, **extra},
                        {**data, "weight": True, "iid": True},
                    )
                )
    return out


def make_batch(step: int, n: int, c: int, **flags: bool) -> dict[str, Any]:
    g = torch.Generator().manual_seed(1000 * step + 7 * c + n)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64)
    targets = (torch.rand(n, generator=g) < 0.1).long() if c == 1 else torch.randint(0, c, (n,), generator=g)
    if flags.get("ignore"):
        targets[torch.rand(n, generator=g) < 0.2] = -100
    out: dict[str, Any] = {"logits": logits, "targets": targets}
    if flags.get("weight"):
        out["sample_weight"] = torch.rand(n, generator=g, dtype=torch.float64) * 2
    if flags.get("iid"):
        out["iid_mask"] = torch.rand(n, generator=g) < 0.8
    return out


def dump(path: str) -> None:
    results = {}
    for name, cls, ctor, data in cases():
        data = dict(data)
        n, c = data.pop("n"), data.pop("c")
        loss_cls = getattr(il, cls)
        loss_fn = loss_cls(num_classes=c, queue_size=200, **ctor, **settings_of_06(loss_cls)).double()
        steps = []
        for step in range(3):  # the queue fills and wraps
            batch = make_batch(step, n, c, **data)
            logits = batch["logits"].requires_grad_()
            kwargs = {"sample_weight": batch["sample_weight"]} if "sample_weight" in batch else {}
            loss, per_class, valid = loss_fn(logits, batch["targets"], batch.get("iid_mask"), True, **kwargs)
            loss.backward()
            steps.append((loss.detach(), per_class.detach(), valid, logits.grad))
        results[name] = steps
    torch.save(results, path)
    print(f"{len(results)} cases written to {path}")


def compare(path_a: str, path_b: str) -> int:
    a, b = torch.load(path_a), torch.load(path_b)
    worst_loss = worst_grad = 0.0
    failures = 0
    for name in a:
        for step, ((la, pa, va, ga), (lb, pb, vb, gb)) in enumerate(zip(a[name], b[name], strict=True)):
            d_loss = (la - lb).abs().max().item()
            d_grad = ((ga - gb).abs().max() / gb.abs().max().clamp_min(1e-300)).item()
            same_valid = torch.equal(va, vb) and torch.equal(pa.isnan(), pb.isnan())
            worst_loss, worst_grad = max(worst_loss, d_loss), max(worst_grad, d_grad)
            if d_loss > 1e-9 or d_grad > 1e-8 or not same_valid:
                failures += 1
                print(f"DIFF {name} step {step}: |dloss|={d_loss:.3g} rel|dgrad|={d_grad:.3g} valid={same_valid}")
    print(
        f"{len(a)} cases x 3 steps: max |dloss| {worst_loss:.3g}, max relative |dgrad| {worst_grad:.3g}, "
        f"{failures} differences above 1e-9 / 1e-8"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["dump"]:
        dump(sys.argv[2])
    elif sys.argv[1:2] == ["compare"]:
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
