"""One-shot GPU check: correctness on CUDA, host syncs, timings against 0.6, peak memory, CUDA graphs.

One command on a machine with a GPU (about 5-7 minutes, global budget ``--budget-s`` 450 s)::

    bash benchmarks/gpu_check.sh          # once, where pip reaches the registry: 0.6 into .gpu_inc/
    python3 benchmarks/gpu_check.py --out results-dir

and on the CPU at tiny sizes (what ``tests/test_gpu_check_smoke.py`` runs, a few seconds)::

    python benchmarks/gpu_check.py --smoke --device cpu --in-process --out /some/dir

Writes ``gpu_check.json`` (everything) and ``gpu_check.md`` (the tables, also printed) into
``--out``. Stages, in priority order (a stage that no longer fits the budget is skipped and
says so):

``env``
    torch / CUDA / GPU names; calibration: seconds per tiny eager op and per ``.item()``.
``correct``
    Ours, functional API, ``validate_args=False`` on the device in float32 and float64 against
    the CPU float64 result (loss and gradient) on every kernel road: Smooth-AP and the pairwise
    pAUC through the dense block, the sorted windows in one chunk and in many small chunks;
    recall at quantile with learned and detached thresholds, on pools on both sides of the CPU
    plan's sort/selection cut-off; the trapezoid pAUC; multi-label (multi-hot) targets;
    ``class_weight``; ``sample_weight`` with ``ignore_index`` rows; the sigmoid and softmax focal
    losses. Tolerances as ``tests/test_kernels.py``: loss 1e-9 / 1e-5 absolute, gradient 1e-8 /
    1e-4 of the reference's largest entry (float64 / float32). Also whether two float32 runs
    are bitwise equal (CUDA atomics need not be).
``syncs`` (CUDA only)
    Modules with ``validate_args=False`` in steady state (binary call with a full queue; 16,384
    x 10): host synchronisations of one forward+backward counted under
    ``torch.cuda.set_sync_debug_mode("warn")`` (with source lines), and whether the call runs
    under ``"error"``. 0.6 is counted the same way (it has no ``validate_args``).
``time``
    Forward+backward per call, ours against 0.6 on identical data, each in its own process:
    T1 (Smooth-AP 16,384 x 10 balanced), the binary call (batch 4,096 + queue 8,192, 7
    positives per batch; the four ranking losses), T4 (pairwise pAUC, beta = 0.05, 262,144 x
    10) and a seq2seq pool of 1,000,000 x 5 (90 % class 0) for Smooth-AP with
    ``class_weight=[0, 1, 1, 1, 1]`` (0.6 has no ``class_weight``: not run). Median latency
    (synchronised per call), pipelined time per call (10 calls, one synchronisation) and the
    peak of ``torch.cuda.max_memory_allocated`` above what was allocated before.
``graph`` (CUDA only)
    Can one functional forward+backward (``validate_args=False``) be captured in a CUDA graph
    (``torch.cuda.graph``), and does its replay match eager? Per loss.

0.6 (``imbalanced-losses==0.6.0``, a black box: constructors and ``forward`` only) is looked for
in ``--peer`` (default ``.gpu_inc`` at the repository root, filled by ``gpu_check.sh``); without
it every 0.6 arm is skipped and the tables say so. Ours and 0.6 are both named
``imbalanced_losses``, so each library's stages run in a child process with its folder first on
``PYTHONPATH`` (``--in-process`` runs ours in this process instead: no isolation from an out of
memory error, for the CPU smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
RANKING = ("smooth_ap", "recall", "pauc_trapezoid", "pauc_pairwise")
FOCAL = ("sigmoid_focal", "softmax_focal")
#: (loss absolute tolerance, gradient tolerance relative to the reference's largest entry)
TOLERANCE = {"f64": (1e-9, 1e-8), "f32": (1e-5, 1e-4)}


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def make_targets(torch: Any, m: int, c: int, kind: str, gen: Any, positives: int = 0) -> Any:
    """``balanced``: equal classes; ``bg``: class 0 holds 90 %; ``bin``: ``positives`` ones among ``m``."""
    if kind == "balanced":
        t = torch.arange(m) % c
    elif kind == "bg":
        n0 = round(0.9 * m)
        t = torch.cat([torch.zeros(n0, dtype=torch.long), 1 + torch.arange(m - n0) % (c - 1)])
    else:
        t = torch.zeros(m, dtype=torch.long)
        t[:positives] = 1
    return t[torch.randperm(m, generator=gen)]


# ----------------------------------------------------------------------------------------------
# Stage: correctness (ours only)
# ----------------------------------------------------------------------------------------------


def functional_call(il: Any, loss: str) -> Callable[..., Any]:
    F = il.functional
    return {
        "smooth_ap": lambda x, t, **k: F.smooth_ap_loss(x, t, temperature=0.01, **k),
        "recall": lambda x, t, **k: F.recall_at_quantile_loss(x, t, quantile=0.05, temperature=0.05, **k),
        "recall_detached": lambda x, t, **k: F.recall_at_quantile_loss(
            x, t, quantile=0.05, temperature=0.05, detach_thresholds=True, **k
        ),
        "pauc_trapezoid": lambda x, t, **k: F.pauc_at_budget_loss(x, t, beta=0.05, surrogate="trapezoid", **k),
        "pauc_pairwise": lambda x, t, **k: F.pauc_at_budget_loss(x, t, beta=0.05, surrogate="pairwise", **k),
        "sigmoid_focal": lambda x, t, **k: F.sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0, **k),
        "softmax_focal": lambda x, t, **k: F.softmax_focal_loss(x, t, gamma=2.0, **k),
    }[loss]


def correctness_cases(torch: Any, smoke: bool) -> list[dict[str, Any]]:
    """Every kernel road: (name, loss, logits float64 [M, C], targets, kwargs, forced road)."""
    g = torch.Generator().manual_seed(1)
    s = 8 if smoke else 1
    cases: list[dict[str, Any]] = []

    def add(name: str, losses: tuple[str, ...], x: Any, t: Any, kw: dict[str, Any] | None = None, roads=("default",)):
        for loss in losses:
            for road in roads:
                cases.append({"case": name, "loss": loss, "x": x, "t": t, "kw": kw or {}, "road": road})

    pair_roads = ("default", "dense", "windowed", "chunks")
    m = 12288 // s  # the binary call's pool: ~21 positives
    x, t = torch.randn(m, 1, generator=g, dtype=torch.float64), make_targets(torch, m, 1, "bin", g, 21)
    add("binary", ("smooth_ap", "pauc_pairwise"), x, t, roads=pair_roads)
    add("binary", ("recall", "recall_detached", "pauc_trapezoid"), x, t)
    m = 4096 // s  # many positives: the one-class windowed road
    x, t = torch.randn(m, 1, generator=g, dtype=torch.float64), make_targets(torch, m, 1, "bin", g, m * 3 // 10)
    add("binary_30pct", ("smooth_ap", "pauc_pairwise"), x, t, roads=pair_roads)
    m, c = (16384, 10) if not smoke else (512, 4)
    x, t = torch.randn(m, c, generator=g, dtype=torch.float64), make_targets(torch, m, c, "balanced", g)
    add(f"multi_{m}x{c}", ("smooth_ap", "pauc_pairwise"), x, t, roads=pair_roads)
    add(f"multi_{m}x{c}", ("recall", "recall_detached", "pauc_trapezoid"), x, t)
    m = 40000 if not smoke else 600  # above the CPU plan's sort cut-off (2^15): the selection road
    x, t = torch.randn(m, 2, generator=g, dtype=torch.float64), make_targets(torch, m, 2, "balanced", g)
    add(f"select_{m}x2", ("recall", "recall_detached", "pauc_trapezoid"), x, t)
    m = 4096 // s
    hot = (torch.rand(m, 5, generator=g) < 0.1).long()
    hot[torch.rand(hot.shape, generator=g) < 0.02] = -100
    add("multilabel", (*RANKING, "recall_detached"), torch.randn(m, 5, generator=g, dtype=torch.float64), hot)
    t = make_targets(torch, m, 4, "balanced", g)
    x = torch.randn(m, 4, generator=g, dtype=torch.float64)
    add("class_weight", RANKING, x, t, {"class_weight": [0.0, 1.0, 2.0, 0.5]})
    t = t.clone()
    t[torch.rand(t.shape, generator=g) < 0.05] = -100
    w = torch.rand(m, generator=g, dtype=torch.float64) * 2
    add("sample_weight+ignore", RANKING, x, t, {"sample_weight": w})
    m = 8192 // s
    y = (torch.rand(m, 6, generator=g) < 0.05).double()
    add("focal", ("sigmoid_focal",), torch.randn(m, 6, generator=g, dtype=torch.float64), y)
    add(
        "focal_weighted",
        ("sigmoid_focal",),
        torch.randn(m, 6, generator=g, dtype=torch.float64),
        y,
        {"sample_weight": torch.rand(m, generator=g, dtype=torch.float64)},
    )
    t = torch.randint(0, 6, (m,), generator=g)
    t[torch.rand(m, generator=g) < 0.05] = -100
    x = torch.randn(m, 6, generator=g, dtype=torch.float64)
    add("focal", ("softmax_focal",), x, t)
    add(
        "focal_alpha_smooth",
        ("softmax_focal",),
        x,
        t,
        {"alpha": [0.25, 1.0, 1.0, 0.5, 1.0, 2.0], "label_smoothing": 0.1},
    )
    return cases


class RoadSpy:
    """Forces a road of the pair kernel through the module constants tests use, and records the road taken."""

    def __init__(self, il: Any, road: str, smoke: bool) -> None:
        from imbalanced_losses.functional import _pairs

        self.pairs, self.road, self.taken = _pairs, road, []
        self.saved = {k: getattr(_pairs, k) for k in ("DENSE_MAX", "CHUNK") if hasattr(_pairs, k)}
        self.wrapped = {k: getattr(_pairs, k) for k in ("_windowed", "_dense") if hasattr(_pairs, k)}
        self.smoke = smoke

    def __enter__(self) -> RoadSpy:
        p = self.pairs
        if self.road == "dense" and "DENSE_MAX" in self.saved:
            p.DENSE_MAX = 1 << 62
        elif self.road in ("windowed", "chunks") and "DENSE_MAX" in self.saved:
            p.DENSE_MAX = -1
        if self.road == "chunks" and "CHUNK" in self.saved:
            p.CHUNK = 64 * getattr(p, "BLOCK", 32) if self.smoke else 1 << 16  # many chunks, not thousands
        for name, fn in self.wrapped.items():

            def spy(*args: Any, _fn: Any = fn, _name: str = name, **kwargs: Any) -> Any:
                self.taken.append(_name.strip("_"))
                return _fn(*args, **kwargs)

            setattr(p, name, spy)
        return self

    def __exit__(self, *exc: Any) -> None:
        for k, v in {**self.saved, **self.wrapped}.items():
            setattr(self.pairs, k, v)

    def roads(self) -> str:
        return "+".join(sorted(set(self.taken))) or "-"


def stage_correct(torch: Any, il: Any, a: argparse.Namespace) -> list[dict[str, Any]]:
    dev = torch.device(a.device)
    rows = []

    def run(loss: str, x: Any, t: Any, kw: dict[str, Any], validate: bool, device: Any, dtype: Any) -> tuple[Any, Any]:
        x = x.detach().to(device, dtype).requires_grad_()
        kw = {k: (v.to(device, dtype) if torch.is_tensor(v) else v) for k, v in kw.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = functional_call(il, loss)(
                x, t.to(device).to(dtype) if t.is_floating_point() else t.to(device), validate_args=validate, **kw
            )
        out.backward()
        return out.detach().double().cpu(), x.grad.double().cpu()

    # On the CPU the "device" arm follows the CUDA plan (IMBALANCED_LOSSES_PLAN=cuda), so a CPU
    # run checks the GPU road's arithmetic against the CPU plan's.
    plan = {"IMBALANCED_LOSSES_PLAN": "cuda"} if dev.type == "cpu" else {}

    def device_run(*args: Any) -> tuple[Any, Any]:
        saved = {k: os.environ.get(k) for k in plan}
        os.environ.update(plan)
        try:
            return run(*args)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    references: dict[tuple[str, str], tuple[Any, Any]] = {}
    for case in correctness_cases(torch, a.smoke):
        loss, x32 = case["loss"], case["x"].float()
        row = {k: case[k] for k in ("case", "loss", "road")}
        try:
            if (case["case"], loss) not in references:  # CPU float64 on the float32 values, default road
                references[case["case"], loss] = run(
                    loss, x32.double(), case["t"], case["kw"], True, torch.device("cpu"), torch.float64
                )
            ref_v, ref_g = references[case["case"], loss]
            scale = float(ref_g.abs().max()) or 1.0
            ok = True
            for name, dtype in (("f64", torch.float64), ("f32", torch.float32)):
                with RoadSpy(il, case["road"], a.smoke) as spy:
                    v, gr = device_run(loss, x32, case["t"], case["kw"], False, dev, dtype)
                row[f"{name}_loss_err"] = float((v - ref_v).abs().max())
                row[f"{name}_grad_err"] = float((gr - ref_g).abs().max()) / scale
                tol_v, tol_g = TOLERANCE[name]
                ok = ok and row[f"{name}_loss_err"] <= tol_v and row[f"{name}_grad_err"] <= tol_g
                row["taken"] = spy.roads()
                if name == "f32":
                    with RoadSpy(il, case["road"], a.smoke):
                        v2, g2 = device_run(loss, x32, case["t"], case["kw"], False, dev, dtype)
                    row["bitwise_repeat"] = bool(torch.equal(v, v2) and torch.equal(gr, g2))
            row["ok"] = ok
        except Exception as err:
            row.update(ok=False, error=f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# Modules (ours and 0.6): syncs, time
# ----------------------------------------------------------------------------------------------


def build_module(il: Any, lib: str, loss: str, c: int, queue: int, **extra: Any) -> Any:
    """The loss module, library defaults except those named (0.6: no ``validate_args``/``class_weight``)."""
    if lib == "ours":
        extra.setdefault("validate_args", False)
    if loss == "smooth_ap":
        return il.SmoothAPLoss(num_classes=c, queue_size=queue, **extra)
    if loss == "recall":
        return il.RecallAtQuantileLoss(num_classes=c, queue_size=queue, **extra)
    if loss == "sigmoid_focal":
        return il.SigmoidFocalLoss(**{k: v for k, v in extra.items() if k == "validate_args"})
    if loss == "softmax_focal":
        return il.SoftmaxFocalLoss(**{k: v for k, v in extra.items() if k == "validate_args"})
    surrogate = "pairwise" if loss == "pauc_pairwise" else "trapezoid"
    if surrogate == "pairwise":
        extra.setdefault("beta", 0.05)
    return il.PAUCAtBudgetLoss(num_classes=c, queue_size=queue, surrogate=surrogate, **extra)


def focal_inputs(torch: Any, loss: str, x: Any, t: Any) -> tuple[Any, Any]:
    """Sigmoid focal: multi-hot float targets; softmax focal: class ids (binary: two logits)."""
    if loss == "sigmoid_focal":
        return x, (t.float().unsqueeze(1) if x.shape[1] == 1 else torch.nn.functional.one_hot(t, x.shape[1]).float())
    if loss == "softmax_focal" and x.shape[1] == 1:
        return torch.cat([-x, x], 1), t
    return x, t


def sync_regimes(smoke: bool) -> dict[str, dict[str, Any]]:
    s = 32 if smoke else 1
    return {
        "binary": {"m": 4096 // s, "c": 1, "kind": "bin", "q": 8192 // s, "positives": 7, "batches": 4},
        "multi": {"m": 16384 // s, "c": 10, "kind": "balanced", "q": 0, "positives": 0, "batches": 1},
    }


def stage_syncs(torch: Any, il: Any, a: argparse.Namespace) -> list[dict[str, Any]]:
    dev = torch.device(a.device)
    rows = []
    for regime, r in sync_regimes(a.smoke).items():
        g = torch.Generator().manual_seed(2)
        data = [
            (
                torch.randn(r["m"], r["c"], generator=g).to(dev),
                make_targets(torch, r["m"], r["c"], r["kind"], g, r["positives"]).to(dev),
            )
            for _ in range(r["batches"])
        ]
        for loss in RANKING + FOCAL:
            row: dict[str, Any] = {"regime": regime, "loss": loss}
            try:
                fn = build_module(il, a.lib, loss, r["c"], r["q"]).to(dev)

                def call(i: int, fn: Any = fn, loss: str = loss, data: list[Any] = data) -> None:
                    x, t = data[i % len(data)]
                    x = x.clone().requires_grad_()
                    fn(*focal_inputs(torch, loss, x, t)).backward()

                for i in range(3):  # fills the queue: steady state afterwards
                    call(i)
                if dev.type != "cuda":  # the sync debug mode is CUDA's: the calls above ran, nothing to count
                    row.update(syncs="n/a (CPU)", sites={}, error_mode="n/a (CPU)")
                    rows.append(row)
                    continue
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        call(3)
                finally:
                    torch.cuda.set_sync_debug_mode(0)
                sites: dict[str, int] = {}
                for w in caught:
                    if "synchroniz" in str(w.message):
                        key = f"{Path(w.filename).parent.name}/{Path(w.filename).name}:{w.lineno}"
                        sites[key] = sites.get(key, 0) + 1
                row.update(syncs=sum(sites.values()), sites=sites)
                torch.cuda.set_sync_debug_mode("error")
                try:
                    call(3)
                    row["error_mode"] = "runs"
                except RuntimeError as err:
                    row["error_mode"] = f"raises: {str(err).splitlines()[0][:100]}"
                finally:
                    torch.cuda.set_sync_debug_mode(0)
            except Exception as err:
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
            rows.append(row)
    return rows


def time_cases(smoke: bool) -> dict[str, dict[str, Any]]:
    s, s4, s2 = (32, 128, 500) if smoke else (1, 1, 1)
    return {
        "T1": {"losses": ("smooth_ap",), "m": 16384 // s, "c": 10, "kind": "balanced", "q": 0},
        "binary": {"losses": RANKING, "m": 4096 // s, "c": 1, "kind": "bin", "q": 8192 // s, "positives": 7},
        "T4": {"losses": ("pauc_pairwise",), "m": 262144 // s4, "c": 10, "kind": "balanced", "q": 0},
        "s2s_1Mx5_cw": {
            "losses": ("smooth_ap",),
            "m": 1_000_000 // s2,
            "c": 5,
            "kind": "bg",
            "q": 0,
            "class_weight": [0.0, 1.0, 1.0, 1.0, 1.0],
        },
    }


def _timed(
    torch: Any, dev: Any, call: Callable[[int], None], warmup: int, max_calls: int, budget_s: float
) -> dict[str, Any]:
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for i in range(warmup):
        call(i)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else 0
    times: list[float] = []
    start = time.perf_counter()
    for i in range(max_calls):
        t0 = time.perf_counter()
        call(i)
        sync()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    n = min(len(times), 10, max_calls)
    t0 = time.perf_counter()  # pipelined: the host may run ahead of the device (not past a sync)
    for i in range(n):
        call(i)
    sync()
    piped = (time.perf_counter() - t0) / n
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None
    return {
        "median_ms": 1e3 * statistics.median(times),
        "min_ms": 1e3 * min(times),
        "pipelined_ms": 1e3 * piped,
        "calls": len(times),
        "peak_mb": peak,
    }


def stage_time(torch: Any, il: Any, a: argparse.Namespace) -> list[dict[str, Any]]:
    dev = torch.device(a.device)
    case = time_cases(a.smoke)[a.case]
    if a.lib == "peer" and "class_weight" in case:
        return [{"loss": loss, "error": "n/a: 0.6 has no class_weight"} for loss in case["losses"]]
    g = torch.Generator().manual_seed(3)  # the same data for both libraries
    batches = [
        (
            torch.randn(case["m"], case["c"], generator=g).to(dev),
            make_targets(torch, case["m"], case["c"], case["kind"], g, case.get("positives", 0)).to(dev),
        )
        for _ in range(8 if case["q"] else 1)
    ]
    big = case["m"] * case["c"] >= 262144 * 5
    max_calls, budget_s = (2, 0.2) if a.smoke else ((3, 20.0) if big else (20, 3.0))
    rows = []
    for loss in case["losses"]:
        row: dict[str, Any] = {"loss": loss}
        try:
            extra = {"class_weight": case["class_weight"]} if "class_weight" in case else {}
            fn = build_module(il, a.lib, loss, case["c"], case["q"], **extra).to(dev)
            value: list[Any] = []

            def call(i: int, fn: Any = fn, value: list[Any] = value) -> None:
                x, t = batches[i % len(batches)]
                x = x.clone().requires_grad_()
                out = fn(x, t)
                out.backward()
                value[:] = [out]

            row.update(_timed(torch, dev, call, 3 if case["q"] else 1, max_calls, budget_s))
            row["loss_value"] = float(value[0].detach())
        except Exception as err:
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# Stage: CUDA graph capture (ours)
# ----------------------------------------------------------------------------------------------


def stage_graph(torch: Any, il: Any, a: argparse.Namespace) -> list[dict[str, Any]]:
    """One loss per process (``--case``): a failed capture can leave the CUDA context unusable."""
    dev = torch.device(a.device)
    rows = []
    for loss in [a.case] if a.case else FOCAL + RANKING:
        g = torch.Generator().manual_seed(4)
        x = torch.randn(4096, 5 if loss in FOCAL else 1, generator=g).to(dev)
        t = make_targets(torch, 4096, 1, "bin", g, 21).to(dev)
        if loss == "sigmoid_focal":
            t = (torch.rand(4096, 5, generator=g) < 0.1).float().to(dev)
        elif loss == "softmax_focal":
            t = torch.randint(0, 5, (4096,), generator=g).to(dev)
        f = functional_call(il, loss)
        row: dict[str, Any] = {"loss": loss}
        try:
            xs = x.clone().requires_grad_()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for _ in range(3):
                    xs.grad = None
                    f(xs, t, validate_args=False).backward()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            xs.grad = None
            with torch.cuda.graph(graph):
                static = f(xs, t, validate_args=False)
                static.backward()
            xs.data.copy_(torch.randn_like(xs))
            graph.replay()
            torch.cuda.synchronize()
            replay_v, replay_g = float(static), xs.grad.clone()
            xe = xs.detach().clone().requires_grad_()
            eager = f(xe, t, validate_args=False)
            eager.backward()
            same = abs(replay_v - float(eager)) <= 1e-5 and bool(torch.allclose(replay_g, xe.grad, atol=1e-5))
            row.update(captured=True, replay_matches_eager=same)
        except Exception as err:
            row.update(captured=False, error=f"{type(err).__name__}: {str(err).splitlines()[0][:160]}")
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# Stage: environment
# ----------------------------------------------------------------------------------------------


def stage_env(torch: Any, il: Any, a: argparse.Namespace) -> dict[str, Any]:
    dev = torch.device(a.device)
    info: dict[str, Any] = {
        "lib": a.lib,
        "torch": torch.__version__,
        "device": str(dev),
        "python": sys.version.split()[0],
    }
    try:
        from importlib.metadata import version

        info["version"] = version("imbalanced-losses") if a.lib == "peer" else getattr(il, "__version__", "?")
    except Exception:
        info["version"] = getattr(il, "__version__", "?")
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(dev)))
        info["cuda"] = torch.version.cuda
        info["memory_gib"] = round(torch.cuda.get_device_properties(dev).total_memory / 2**30, 1)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    x = torch.zeros(1024, device=dev)
    for _ in range(200):
        x.add_(1)
    sync()
    t0 = time.perf_counter()
    for _ in range(2000):
        x.add_(1)
    sync()
    info["us_per_tiny_op"] = round(1e6 * (time.perf_counter() - t0) / 2000, 2)
    t0 = time.perf_counter()
    for _ in range(200):
        x[0].item()
    info["us_per_item"] = round(1e6 * (time.perf_counter() - t0) / 200, 2)
    return info


STAGES: dict[str, Callable[[Any, Any, argparse.Namespace], Any]] = {
    "env": stage_env,
    "correct": stage_correct,
    "syncs": stage_syncs,
    "time": stage_time,
    "graph": stage_graph,
}


def run_stage(a: argparse.Namespace) -> Any:
    import torch

    torch.manual_seed(0)
    import imbalanced_losses as il

    return STAGES[a.stage](torch, il, a)


# ----------------------------------------------------------------------------------------------
# Orchestration
# ----------------------------------------------------------------------------------------------


def peer_folder(path: str | None) -> Path | None:
    if path in (None, "", "none"):
        return None
    folder = Path(path).resolve()
    return folder if (folder / "imbalanced_losses" / "__init__.py").is_file() else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: a CPU check of this script")
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "results" / "gpu_check"))
    p.add_argument(
        "--peer", default=str(ROOT / ".gpu_inc"), help="folder holding imbalanced_losses 0.6.0 ('none': skip)"
    )
    p.add_argument("--ours", default=str(ROOT / "src"), help="folder holding our imbalanced_losses")
    p.add_argument("--budget-s", type=float, default=450.0, help="no stage starts after this many seconds")
    p.add_argument("--in-process", action="store_true", help="run our stages in this process (no isolation)")
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--lib", default="ours", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.device is None:
        import torch

        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.stage:  # a child: one stage, one library
        try:
            result = run_stage(a)
        except Exception:
            result = {"error": traceback.format_exc(limit=4)[-800:]}
        print("RESULT " + json.dumps(result, default=str), flush=True)
        return 0

    start = time.perf_counter()
    cuda = a.device.startswith("cuda")
    peer = peer_folder(a.peer)
    results: list[dict[str, Any]] = []
    notes = []
    if peer is None:
        notes.append(f"0.6 not found in {a.peer!r} (run benchmarks/gpu_check.sh): every 0.6 arm skipped")
    if not cuda:
        notes.append(
            "device is the CPU: no syncs are counted and the graph stage is skipped (CUDA only); CPU timings; "
            "the correctness stage's device arm follows the CUDA plan (IMBALANCED_LOSSES_PLAN=cuda)"
        )

    def spawn(stage: str, lib: str, timeout: float, **kw: Any) -> None:
        entry: dict[str, Any] = {"stage": stage, "lib": lib, **kw}
        results.append(entry)
        left = a.budget_s - (time.perf_counter() - start)
        if lib == "peer" and peer is None:
            entry["skipped"] = "0.6 not installed"
            return
        if stage == "graph" and not cuda:
            entry["skipped"] = "CUDA only"
            return
        if left < min(timeout, 30) and stage != "env":
            entry["skipped"] = "time budget spent"
            return
        child = argparse.Namespace(**{**vars(a), "stage": stage, "lib": lib, **kw})
        t0 = time.perf_counter()
        if lib == "ours" and a.in_process:
            try:
                entry["result"] = json.loads(json.dumps(run_stage(child), default=str))
            except Exception:
                entry["result"] = {"error": traceback.format_exc(limit=4)[-800:]}
        else:
            folder = str(peer if lib == "peer" else Path(a.ours).resolve())
            env = dict(os.environ, PYTHONPATH=folder, PYTHONUNBUFFERED="1")
            cmd = [sys.executable, str(HERE), "--stage", stage, "--lib", lib, "--device", a.device]
            cmd += ["--smoke"] if a.smoke else []
            cmd += [x for k, v in kw.items() for x in (f"--{k}", str(v))]
            try:
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=min(timeout, max(left, 30)))
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                entry["result"] = json.loads(lines[-1][7:]) if lines else {"error": proc.stderr[-800:]}
            except subprocess.TimeoutExpired:
                entry["result"] = {"error": f"timeout after {timeout:.0f} s"}
        entry["wall_s"] = round(time.perf_counter() - t0, 1)
        print(f"[{time.perf_counter() - start:6.1f} s] {stage} {lib} {kw or ''}: {entry['wall_s']} s", flush=True)

    spawn("env", "ours", 60)
    spawn("env", "peer", 60)
    spawn("correct", "ours", 150)
    spawn("syncs", "ours", 90)
    spawn("syncs", "peer", 90)
    for case, timeout in (("T1", 60), ("binary", 90), ("T4", 120), ("s2s_1Mx5_cw", 150)):
        spawn("time", "ours", timeout, case=case)
        spawn("time", "peer", timeout, case=case)
    for loss in FOCAL + RANKING:
        spawn("graph", "ours", 45, case=loss)

    report = {
        "args": {k: v for k, v in vars(a).items() if k not in ("stage", "lib", "case")},
        "notes": notes,
        "wall_s": round(time.perf_counter() - start, 1),
        "results": results,
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    md = markdown(report)
    (out / "gpu_check.md").write_text(md)
    print("\n" + md)
    bad = [r for r in _rows(results, "correct", "ours") if not r.get("ok")]
    return 1 if bad or not _rows(results, "correct", "ours") else 0


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def _rows(results: list[dict[str, Any]], stage: str, lib: str, **kw: Any) -> list[dict[str, Any]]:
    for e in results:
        if e["stage"] == stage and e["lib"] == lib and all(e.get(k) == v for k, v in kw.items()):
            r = e.get("result")
            return r if isinstance(r, list) else []
    return []


def _status(results: list[dict[str, Any]], stage: str, lib: str, **kw: Any) -> str:
    for e in results:
        if e["stage"] == stage and e["lib"] == lib and all(e.get(k) == v for k, v in kw.items()):
            if "skipped" in e:
                return f"skipped ({e['skipped']})"
            r = e.get("result")
            if isinstance(r, dict) and "error" in r:
                return "ERROR: " + r["error"].strip().splitlines()[-1][:200]
            return "ok"
    return "not run"


def _ms(row: dict[str, Any] | None) -> str:
    if not row:
        return "—"
    if "median_ms" not in row:
        return row.get("error", "—")[:60]
    return f"{row['median_ms']:.2f}"


def markdown(report: dict[str, Any]) -> str:
    results = report["results"]
    lines = ["# gpu_check", ""]
    for e in results:
        if e["stage"] == "env":
            r = e.get("result")
            if isinstance(r, dict) and "error" not in r:
                lines.append(f"- {e['lib']}: " + ", ".join(f"{k} {v}" for k, v in r.items()))
            else:
                lines.append(f"- {e['lib']}: {_status(results, 'env', e['lib'])}")
    lines += [f"- note: {n}" for n in report["notes"]]
    lines += [f"- wall time: {report['wall_s']} s", ""]

    rows = _rows(results, "correct", "ours")
    n_ok = sum(1 for r in rows if r.get("ok"))
    lines += [
        "## Correctness (device float64 / float32 vs CPU float64)",
        "",
        f"{n_ok}/{len(rows)} cases within tolerance; stage: {_status(results, 'correct', 'ours')}.",
        "",
        "| case | loss | road forced | road taken | f64 loss | f64 grad | f32 loss | f32 grad "
        "| f32 bitwise repeat | ok |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['loss']} | {r['road']} | | {r['error'][:80]} | | | | | **FAIL** |")
            continue
        lines.append(
            f"| {r['case']} | {r['loss']} | {r['road']} | {r.get('taken', '')} | {r['f64_loss_err']:.1e} | "
            f"{r['f64_grad_err']:.1e} | {r['f32_loss_err']:.1e} | {r['f32_grad_err']:.1e} | "
            f"{r.get('bitwise_repeat')} | {'ok' if r['ok'] else '**FAIL**'} |"
        )
    lines.append("")

    ours, peer = _rows(results, "syncs", "ours"), _rows(results, "syncs", "peer")
    lines += ["## Host synchronisations per forward+backward (steady state)", ""]
    if not ours:
        lines += [f"ours: {_status(results, 'syncs', 'ours')}", ""]
    else:
        by_peer = {(r["regime"], r["loss"]): r for r in peer}
        lines += [
            '| regime | loss | ours: syncs (warn mode) | ours under `"error"` | ours sites | 0.6: syncs |',
            "|---|---|---|---|---|---|",
        ]
        for r in ours:
            q = by_peer.get((r["regime"], r["loss"]), {})
            theirs = q.get("syncs", q.get("error", _status(results, "syncs", "peer")))
            sites = ", ".join(f"{k}×{v}" for k, v in r.get("sites", {}).items())
            lines.append(
                f"| {r['regime']} | {r['loss']} | {r.get('syncs', r.get('error'))} | "
                f"{r.get('error_mode', '')} | {sites} | {theirs} |"
            )
        lines.append("")

    lines += [
        "## Time per forward+backward (ms, median, synchronised per call) and peak memory",
        "",
        "| case | loss | ours ms | ours pipelined ms | 0.6 ms | 0.6 / ours | ours peak MB | 0.6 peak MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case in time_cases(bool(report["args"].get("smoke"))):
        mine = {r["loss"]: r for r in _rows(results, "time", "ours", case=case)}
        theirs = {r["loss"]: r for r in _rows(results, "time", "peer", case=case)}
        if not mine:
            lines.append(f"| {case} | | {_status(results, 'time', 'ours', case=case)} | | | | | |")
            continue
        for loss, r in mine.items():
            q = theirs.get(loss)
            peer_txt = _ms(q) if q else _status(results, "time", "peer", case=case)
            ratio = f"{q['median_ms'] / r['median_ms']:.2f}×" if q and "median_ms" in q and "median_ms" in r else "—"
            peak = f"{r['peak_mb']:.0f}" if r.get("peak_mb") is not None else "n/a"
            qpeak = f"{q['peak_mb']:.0f}" if q and q.get("peak_mb") is not None else "n/a"
            piped = f"{r['pipelined_ms']:.2f}" if "pipelined_ms" in r else "—"
            lines.append(f"| {case} | {loss} | {_ms(r)} | {piped} | {peer_txt} | {ratio} | {peak} | {qpeak} |")
    lines.append("")

    lines += [
        "## CUDA graph capture of one functional forward+backward",
        "",
        "| loss | captured | replay matches eager | error |",
        "|---|---|---|---|",
    ]
    for loss in FOCAL + RANKING:
        graphs = _rows(results, "graph", "ours", case=loss)
        if not graphs:
            lines.append(f"| {loss} | {_status(results, 'graph', 'ours', case=loss)} | | |")
        for r in graphs:
            lines.append(f"| {loss} | {r['captured']} | {r.get('replay_matches_eager', '')} | {r.get('error', '')} |")
    lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
