"""``torch.compile`` report: graph breaks of every loss, and eager vs compiled speed (SPEC A7).

For each loss (the modules, the warm-up wrapper around Smooth-AP, and the functions of
:mod:`imbalanced_losses.functional`), with ``validate_args`` True and False:

1. ``torch._dynamo.explain`` on one medium pool (default ``M = 4096`` rows, ``C = 4`` balanced
   classes, ``queue_size=0``): number of graphs, of graph breaks, and the distinct break
   reasons (first line of Dynamo's reason, at the innermost library frame), plus which path of
   the pair kernel ran (dense / windowed). The two pair-kernel losses are also explained with
   the other path forced through ``_pairs.DENSE_MAX``.
2. Forward + backward time, eager vs ``torch.compile`` (default backend: inductor), median of
   ``--repeats`` after ``--warmup`` calls (the first compiled call's time, i.e. the compile
   cost, is reported separately). Threads: ``--threads`` (default 2, as ``bench.py``).
3. Recompilation under a temperature schedule: ``LossWarmupWrapper`` around Smooth-AP with a
   decaying temperature, graphs compiled at each step (``aot_eager``, which compiles the same
   graphs as inductor without the code generation).

Prints markdown tables. Run::

    .venv/bin/python benchmarks/compile_report.py                 # everything (a few minutes)
    .venv/bin/python benchmarks/compile_report.py --skip-timing   # graph breaks only
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch._dynamo
from torch import nn

from imbalanced_losses import (
    LossWarmupWrapper,
    PAUCAtBudgetLoss,
    RecallAtQuantileLoss,
    SigmoidFocalLoss,
    SmoothAPLoss,
    SoftmaxFocalLoss,
)
from imbalanced_losses.functional import (
    _pairs,
    pauc_at_budget_loss,
    recall_at_quantile_loss,
    sigmoid_focal_loss,
    smooth_ap_loss,
    softmax_focal_loss,
)

PAIRWISE_BETA = 0.05  # as bench.py (SPEC T4)
RESULT_PREFIX = "COMPILE_REPORT_RESULT "


@dataclass
class Case:
    """One loss: a factory of the callable (given ``validate_args``) and its kind of targets."""

    name: str
    make: Callable[[bool, int], Callable[..., Any]]
    kind: str = "ids"  # "ids" [M] class ids, "multi_hot" [M, C] floats
    kernel: bool = False  # uses the pair kernel
    module: bool = True


def _wrapper(validate: bool, c: int) -> nn.Module:
    wrapper = LossWarmupWrapper(
        SoftmaxFocalLoss(gamma=2.0, validate_args=validate),
        SmoothAPLoss(c, queue_size=0, validate_args=validate),
        warmup_steps=0,
        blend_steps=2,
    )
    wrapper.on_train_batch_start(0)  # blend phase: both losses run
    return wrapper


CASES = [
    Case("SmoothAPLoss", lambda v, c: SmoothAPLoss(c, queue_size=0, validate_args=v), kernel=True),
    Case("RecallAtQuantileLoss", lambda v, c: RecallAtQuantileLoss(c, quantile=0.01, queue_size=0, validate_args=v)),
    Case("PAUCAtBudgetLoss trapezoid", lambda v, c: PAUCAtBudgetLoss(c, beta=0.05, queue_size=0, validate_args=v)),
    Case(
        "PAUCAtBudgetLoss pairwise",
        lambda v, c: PAUCAtBudgetLoss(c, beta=PAIRWISE_BETA, surrogate="pairwise", queue_size=0, validate_args=v),
        kernel=True,
    ),
    Case("SigmoidFocalLoss", lambda v, c: SigmoidFocalLoss(validate_args=v), kind="multi_hot"),
    Case("SoftmaxFocalLoss", lambda v, c: SoftmaxFocalLoss(validate_args=v)),
    Case("LossWarmupWrapper(focal → Smooth-AP)", _wrapper, kernel=True),
    Case("smooth_ap_loss", lambda v, c: functools.partial(smooth_ap_loss, validate_args=v), kernel=True, module=False),
    Case(
        "recall_at_quantile_loss",
        lambda v, c: functools.partial(recall_at_quantile_loss, quantile=0.01, validate_args=v),
        module=False,
    ),
    Case(
        "pauc_at_budget_loss trapezoid",
        lambda v, c: functools.partial(pauc_at_budget_loss, beta=0.05, validate_args=v),
        module=False,
    ),
    Case(
        "pauc_at_budget_loss pairwise",
        lambda v, c: functools.partial(pauc_at_budget_loss, beta=PAIRWISE_BETA, surrogate="pairwise", validate_args=v),
        kernel=True,
        module=False,
    ),
    Case(
        "sigmoid_focal_loss",
        lambda v, c: functools.partial(sigmoid_focal_loss, validate_args=v),
        kind="multi_hot",
        module=False,
    ),
    Case("softmax_focal_loss", lambda v, c: functools.partial(softmax_focal_loss, validate_args=v), module=False),
]


def make_batch(kind: str, m: int, c: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced classes (a fixed composition, so that repeated calls see the same shapes)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(m, c, generator=g)
    if kind == "multi_hot":
        return logits, (torch.arange(m * c) % c == 0).float()[torch.randperm(m * c, generator=g)].view(m, c)
    return logits, (torch.arange(m) % c)[torch.randperm(m, generator=g)]


@contextlib.contextmanager
def kernel_path(path: str | None) -> Iterator[dict[str, int]]:
    """Optionally force the pair kernel's path; counts windowed runs (through ``_pairs._plan``)."""
    runs = {"windowed": 0}
    plan, dense_max = _pairs._plan, _pairs.DENSE_MAX

    def spy(*args: Any, **kwargs: Any) -> Any:
        runs["windowed"] += 1
        return plan(*args, **kwargs)

    _pairs._plan = spy
    if path is not None:
        _pairs.DENSE_MAX = -1 if path == "windowed" else 1 << 62
    try:
        yield runs
    finally:
        _pairs._plan, _pairs.DENSE_MAX = plan, dense_max


# ----------------------------------------------------------------------------------------------
# Graph breaks
# ----------------------------------------------------------------------------------------------


def _short(reason: str) -> str:
    """The gist of a Dynamo break reason: first line, without addresses and long tails."""
    line = reason.strip().splitlines()[0] if reason.strip() else "?"
    line = re.sub(r" at 0x[0-9a-f]+", "", line)
    line = re.sub(r"\s+", " ", line)
    return line[:90] + ("…" if len(line) > 90 else "")


def _where(stack: list[Any]) -> tuple[str, str]:
    """Innermost frame of the library (else the innermost frame): ``("file.py:line", source line)``."""
    frames = [f for f in stack if "imbalanced_losses" in f.filename] or list(stack)
    if not frames:
        return "?", ""
    f = frames[-1]
    code = (f.line or "").strip()
    return f"{os.path.basename(f.filename)}:{f.lineno}", code[:70] + ("…" if len(code) > 70 else "")


@dataclass
class Explained:
    graphs: int
    breaks: int
    reasons: dict[tuple[str, str], str] = field(default_factory=dict)  # (short reason, file:line) -> code
    path: str = "-"


def explain(case: Case, validate: bool, m: int, c: int, path: str | None = None) -> Explained:
    torch._dynamo.reset()
    fn = case.make(validate, c)
    logits, targets = make_batch(case.kind, m, c)
    x = logits.requires_grad_()
    with kernel_path(path) as runs, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = torch._dynamo.explain(fn)(x, targets)
    result = Explained(out.graph_count, out.graph_break_count)
    for r in out.break_reasons:
        where, code = _where(r.user_stack)
        result.reasons[(_short(r.reason), where)] = code
    if case.kernel:
        result.path = "windowed" if runs["windowed"] else "dense"
    return result


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


def _step(fn: Callable[..., Any], logits: torch.Tensor, targets: torch.Tensor) -> float:
    x = logits.detach().clone().requires_grad_()
    t0 = time.perf_counter()
    loss = fn(x, targets)
    loss = loss[0] if isinstance(loss, tuple) else loss
    loss.backward()
    return time.perf_counter() - t0


def time_case(case: Case, validate: bool, m: int, c: int, backend: str, warmup: int, repeats: int) -> dict[str, float]:
    """Eager first, then compiled, in this (fresh) process."""
    logits, targets = make_batch(case.kind, m, c)
    eager = case.make(validate, c)
    for _ in range(warmup):
        _step(eager, logits, targets)
    t_eager = statistics.median(_step(eager, logits, targets) for _ in range(repeats))
    torch._dynamo.reset()
    compiled = torch.compile(case.make(validate, c), backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = _step(compiled, logits, targets)
        for _ in range(max(warmup - 1, 0)):
            _step(compiled, logits, targets)
        t_comp = statistics.median(_step(compiled, logits, targets) for _ in range(repeats))
    return {"eager": t_eager, "compiled": t_comp, "first": first}


def time_in_subprocess(index: int, validate: bool, args: argparse.Namespace) -> dict[str, Any]:
    """Run :func:`time_case` in a fresh interpreter.

    One process per measurement: the thread pools, compile workers and caches left by earlier
    compilations (inductor's OpenMP kernels next to ATen's) otherwise stall later measurements
    by whole scheduler time slices on a 2-core machine.
    """
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(index), "--validate", str(int(validate))]
    cmd += ["--m", str(args.m), "--c", str(args.c), "--threads", str(args.threads), "--backend", args.backend]
    cmd += ["--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Unsupported)\b", ln)]
    return {"error": (errors or lines or [f"exit code {proc.returncode}"])[-1]}


# ----------------------------------------------------------------------------------------------
# Recompilation under a temperature schedule
# ----------------------------------------------------------------------------------------------


def schedule_recompiles(steps: int, m: int, c: int) -> list[int]:
    """Graphs compiled at each step by ``aot_eager`` for the wrapper with a decaying temperature."""
    torch._dynamo.reset()
    count = {"graphs": 0}
    inner = torch._dynamo.lookup_backend("aot_eager")

    def backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        count["graphs"] += 1
        return inner(gm, example_inputs)

    wrapper = LossWarmupWrapper(
        SoftmaxFocalLoss(),
        SmoothAPLoss(c, queue_size=0, validate_args=False),
        warmup_steps=1,
        temp_start=0.05,
        temp_end=0.005,
        temp_decay_steps=steps,
    )
    compiled = torch.compile(wrapper, backend=backend)
    logits, targets = make_batch("ids", m, c)
    per_step = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step in range(steps):
            wrapper.on_train_batch_start(step)
            before = count["graphs"]
            _step(compiled, logits, targets)
            per_step.append(count["graphs"] - before)
    return per_step


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=4096, help="pool rows")
    parser.add_argument("--c", type=int, default=4, help="classes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend for the timings")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--schedule-steps", type=int, default=12)
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-schedule", action="store_true")
    parser.add_argument("--only", default=None, help="regex on the loss names")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per timing subprocess")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--validate", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch._logging.set_logs(dynamo=logging.ERROR)
    if args.worker is not None:
        result = time_case(
            CASES[args.worker], bool(args.validate), args.m, args.c, args.backend, args.warmup, args.repeats
        )
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0
    cases = [k for k in CASES if args.only is None or re.search(args.only, k.name)]
    m, c = args.m, args.c
    print(f"# torch.compile report — torch {torch.__version__}, M={m}, C={c}, {args.threads} threads\n")

    print("## Graph breaks (`torch._dynamo.explain`, one call, queue_size=0)\n")
    print("| loss | validate_args | kernel path | graphs | graph breaks | distinct (reason, place) |")
    print("|---|---|---|---:|---:|---:|")
    all_reasons: dict[tuple[str, str], tuple[str, set[str]]] = {}
    for case in cases:
        for validate in (True, False):
            runs = [explain(case, validate, m, c)]
            if case.kernel and case.module and "Wrapper" not in case.name:  # the other path, forced
                runs.append(explain(case, validate, m, c, "dense" if runs[0].path == "windowed" else "windowed"))
            for i, res in enumerate(runs):
                label = res.path + (" (forced)" if i else "")
                print(
                    f"| {case.name} | {validate} | {label} | {res.graphs} | {res.breaks} | {len(res.reasons)} |",
                    flush=True,
                )
                tag = f"{case.name}{'' if validate else ' (v=F)'}"
                for key, code in res.reasons.items():
                    all_reasons.setdefault(key, (code, set()))[1].add(tag)

    print("\n## Distinct graph-break reasons (all losses)\n")
    print("`(v=F)`: seen with validate_args=False too (else only with validate_args=True).\n")
    print("| reason | where | code | losses |")
    print("|---|---|---|---|")
    for (reason, where), (code, tags) in sorted(all_reasons.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        names = sorted({t.removesuffix(" (v=F)") for t in tags})
        shown = [n + (" (v=F)" if f"{n} (v=F)" in tags else "") for n in names]
        print(f"| {reason.replace('|', '/')} | {where} | `{code.replace('|', '/')}` | {', '.join(shown)} |")

    if not args.skip_timing:
        print(f"\n## Forward + backward, eager vs `torch.compile(backend={args.backend!r})`\n")
        print(
            f"One fresh process per row (eager measured first); median of {args.repeats} after {args.warmup} "
            "warm-up calls; 'first call' is the first compiled call, compilation included.\n"
        )
        print("| loss | validate_args | eager (ms) | compiled (ms) | speed-up | first compiled call (s) |")
        print("|---|---|---:|---:|---:|---:|")
        failures = []
        load_before = os.getloadavg()[0]
        for case in cases:
            for validate in (True, False):
                t = time_in_subprocess(CASES.index(case), validate, args)
                if "error" in t:
                    failures.append(f"- {case.name}, validate_args={validate}: `{t['error'][:200]}`")
                    print(f"| {case.name} | {validate} | — | **fails** (below) | — | — |", flush=True)
                    continue
                print(
                    f"| {case.name} | {validate} | {t['eager'] * 1e3:.1f} | {t['compiled'] * 1e3:.1f} | "
                    f"{t['eager'] / t['compiled']:.2f}× | {t['first']:.1f} |",
                    flush=True,
                )
        if failures:
            print("\n" + "\n".join(failures))
        load = (load_before, os.getloadavg()[0])
        cpus = os.cpu_count() or 1
        print(f"\n1-minute load average before / after the timings: {load[0]:.1f} / {load[1]:.1f} ({cpus} CPUs)")
        if max(load) > cpus:  # this report accounts for about one of it
            print("**Warning: the machine was busy; the timings are noisy.**")

    if not args.skip_schedule:
        per_step = schedule_recompiles(args.schedule_steps, min(m, 512), c)
        print("\n## Recompilation under a temperature schedule\n")
        print(
            "`LossWarmupWrapper(SoftmaxFocalLoss(), SmoothAPLoss(validate_args=False), warmup_steps=1, "
            f"temp_decay_steps={args.schedule_steps})`, aot_eager, M={min(m, 512)}: graphs compiled at each step "
            f"(recompile_limit={torch._dynamo.config.recompile_limit})\n"
        )
        print("| step | " + " | ".join(str(i) for i in range(len(per_step))) + " |")
        print("|---|" + "---:|" * len(per_step))
        print("| graphs compiled | " + " | ".join(str(n) for n in per_step) + " |")
    torch._dynamo.reset()
    return 0


if __name__ == "__main__":
    sys.exit(main())
