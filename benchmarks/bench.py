"""Speed and peak-memory benchmark of the ranking losses, ours side by side with another installation.

Every configuration (loss, pool size ``M``, classes ``C``, class balance) runs in a fresh Python
process (the *worker*), so peak-RSS figures do not leak from one configuration into the next.
The worker sets the thread count (default 2), builds the data with a fixed seed (float32
logits ``[M, C]`` with ``requires_grad``), records the RSS after imports and data creation,
builds the loss with ``queue_size=0`` (the whole pool is live), runs one warm-up and then timed
forward + backward passes, and prints one JSON line: median/min seconds, peak ΔRSS (peak
``ru_maxrss`` minus the baseline RSS), the loss value and the versions it imported.

The *driver* (default mode) runs a list of configurations through the worker under our
interpreter and, with ``--incumbent-python``, under another installation's interpreter (e.g.
``imbalanced-losses==0.6.0`` in its own virtualenv, used as a black box through its public API
only), with a wall-clock timeout and an RSS watchdog per configuration, prints a markdown table
with ratios and writes JSON::

    .venv/bin/python benchmarks/bench.py --preset quick --incumbent-python $INC/bin/python
    .venv/bin/python benchmarks/bench.py --preset targets --incumbent-python $INC/bin/python \\
        --out benchmarks/results/targets.json --check-targets
    .venv/bin/python benchmarks/bench.py check benchmarks/results/targets.json
    .venv/bin/python benchmarks/bench.py table benchmarks/results/targets.json
    .venv/bin/python benchmarks/bench.py plot benchmarks/results/grid.json -o benchmarks/figures/grid.png
    .venv/bin/python benchmarks/bench.py worker --loss smooth_ap --m 16384 --c 10 --balance bg

The worker and the driver use only the standard library (plus torch in the worker); ``plot``
needs matplotlib. See ``benchmarks/README.md`` for the method and its caveats.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
REPO_SRC = REPO_ROOT / "src"
DIST_NAME = "imbalanced-losses"
RESULT_PREFIX = "BENCH_RESULT "

LOSSES = ("smooth_ap", "recall", "pauc_trapezoid", "pauc_pairwise")
BALANCES = ("balanced", "bg", "pos1", "pos10")
PAIRWISE_BETA = 0.05  # the pairwise pAUC band used everywhere here (SPEC T4)
GRID_SIZES = (1024, 4096, 16384, 65536, 262144)
BUSY_CORES = 0.3  # others using more than this many cores during a measurement flags it as noisy
MB = 1024.0 * 1024.0  # memory is reported in MiB ("MB" in the tables)
GB_BYTES = 1e9

# ----------------------------------------------------------------------------------------------
# Configurations
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Config:
    """One benchmark configuration.

    Attributes:
        loss: ``smooth_ap``, ``recall``, ``pauc_trapezoid`` or ``pauc_pairwise``.
        m: pool size (rows of live logits; ``queue_size=0``).
        c: number of classes (1 = binary mode).
        balance: ``balanced`` (uniform classes), ``bg`` (class 0 holds 90 % of the rows,
            classes 1..C-1 share the rest), ``pos1`` / ``pos10`` (binary, 1 % / 10 % positive).
        beta: PAUC budget ``beta``; ``None`` = the library default (pairwise uses 0.05).
        skip_bg: ``class_weight`` 0 on the background class 0 (``bg`` only; ours only, the
            incumbent has no ``class_weight``).
    """

    loss: str
    m: int
    c: int
    balance: str
    beta: float | None = None
    skip_bg: bool = False

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; expected one of {LOSSES}")
        if self.balance not in BALANCES:
            raise ValueError(f"unknown balance {self.balance!r}; expected one of {BALANCES}")
        if (self.c == 1) != self.balance.startswith("pos"):
            raise ValueError("balance pos1/pos10 goes with c=1, balanced/bg with c>1")
        if self.skip_bg and self.balance != "bg":
            raise ValueError("skip_bg goes with balance bg")
        if self.loss == "pauc_pairwise" and self.beta is None:
            object.__setattr__(self, "beta", PAIRWISE_BETA)

    @property
    def key(self) -> str:
        """Stable identifier (used to match results across runs and sides)."""
        beta = f" beta={self.beta:g}" if self.beta is not None else ""
        skip = " skip-bg" if self.skip_bg else ""
        return f"{self.loss}{beta} M={self.m} C={self.c} {self.balance}{skip}"

    @property
    def series(self) -> tuple[str, float | None, int, str, bool]:
        """Everything but the pool size (a line in the plots)."""
        return (self.loss, self.beta, self.c, self.balance, self.skip_bg)

    def worker_args(self) -> list[str]:
        """Command-line arguments that make the worker run this configuration."""
        args = ["--loss", self.loss, "--m", str(self.m), "--c", str(self.c), "--balance", self.balance]
        if self.beta is not None:
            args += ["--beta", repr(self.beta)]
        if self.skip_bg:
            args.append("--skip-bg")
        return args

    def class_counts(self) -> list[int]:
        """Rows per class (positives per class in binary mode)."""
        return class_counts(self.m, self.c, self.balance)


def class_counts(m: int, c: int, balance: str) -> list[int]:
    """Exact class sizes: ``[positives]`` for c=1, else rows of each class 0..c-1."""
    if balance in ("pos1", "pos10"):
        frac = 0.01 if balance == "pos1" else 0.10
        return [max(1, round(frac * m))]
    if balance == "balanced":
        return [m // c + (1 if i < m % c else 0) for i in range(c)]
    # bg: class 0 holds 90 %, classes 1..c-1 share the remaining 10 % evenly
    n_bg = round(0.9 * m)
    rest = m - n_bg
    return [n_bg] + [rest // (c - 1) + (1 if i < rest % (c - 1) else 0) for i in range(c - 1)]


# SPEC "Figures to reach": target id -> (configs, requirement text). Keys, not objects, so a
# grid run that contains the same configurations is checked the same way.
TARGETS: dict[str, tuple[list[Config], str]] = {
    "T1": ([Config("smooth_ap", 16384, 10, "balanced")], "≥ 20× faster, ≤ 1/20 memory"),
    "T2": ([Config("smooth_ap", 16384, 10, "bg")], "≥ 20× faster, ≤ 1/20 memory"),
    "T3": ([Config("smooth_ap", 262144, 10, "balanced")], "≤ 1 GB, time reported"),
    "T4": ([Config("pauc_pairwise", 262144, 10, "balanced")], "≥ 10× faster, ≤ 1/10 memory"),
    "T5": (
        [Config("recall", 262144, 10, "balanced"), Config("pauc_trapezoid", 262144, 10, "balanced")],
        "≥ 2× faster",
    ),
    "T6": (
        [Config(loss, 1024, 1, bal) for loss in LOSSES for bal in ("pos1", "pos10")],
        "no slower than the incumbent",
    ),
}

# Minimum (speed-up, memory reduction) per target; None = not required. T3 is absolute (≤ 1 GB).
RATIOS_NEEDED: dict[str, tuple[float, float | None]] = {
    "T1": (20, 20),
    "T2": (20, 20),
    "T4": (10, 10),
    "T5": (2, None),
    "T6": (1, None),
}

# The incumbent's figures as recorded in SPEC.md / incumbent-behaviour.md §14.1 (seconds, MiB).
# Used by `check` only where a run has no incumbent measurement of its own, and marked "†".
SPEC_INCUMBENT: dict[str, tuple[float, float]] = {
    Config("smooth_ap", 16384, 10, "balanced").key: (4.2, 1579.0),
    Config("smooth_ap", 16384, 10, "bg").key: (7.1, 4042.0),
    Config("pauc_pairwise", 262144, 10, "balanced").key: (51.0, 14300.0),
    Config("recall", 262144, 10, "balanced").key: (0.28, 110.0),
    Config("pauc_trapezoid", 262144, 10, "balanced").key: (0.26, 144.0),
    Config("smooth_ap", 1024, 1, "pos1").key: (0.0007, 13.0),
    Config("smooth_ap", 1024, 1, "pos10").key: (0.0012, 16.0),
}


def targets_of(cfg: Config) -> list[str]:
    """SPEC target ids this configuration is evaluated for."""
    return [tid for tid, (cfgs, _) in TARGETS.items() if any(c.key == cfg.key for c in cfgs)]


def preset_configs(name: str) -> list[Config]:
    """Configurations of a preset, ordered by series then pool size."""
    if name == "targets":
        out: list[Config] = []
        for cfgs, _ in TARGETS.values():
            out += [c for c in cfgs if c not in out]
        return out
    if name == "quick":
        return [Config(loss, 1024, 1, "pos10") for loss in LOSSES] + [
            Config(loss, 4096, 10, "balanced") for loss in LOSSES
        ]
    if name == "class_weight":  # A4: a zero-weight background class removes its cost
        return [
            Config(loss, m, 10, "bg", skip_bg=skip) for loss in LOSSES for m in (16384, 65536) for skip in (False, True)
        ]
    if name == "grid":
        out = []
        for loss in LOSSES:
            for c, balances in ((1, ("pos1", "pos10")), (10, ("balanced", "bg"))):
                for bal in balances:
                    out += [Config(loss, m, c, bal) for m in GRID_SIZES]
        return out
    raise ValueError(f"unknown preset {name!r}")


def incumbent_estimate_mb(cfg: Config) -> float:
    """Rough peak ΔRSS of the incumbent (0.6.0), from its measured memory model (§14.1).

    SmoothAP keeps ~5 bytes × Σ_c |P_c|·M alive until backward plus a transient ~12 bytes × the
    largest |P_c|·M; pairwise pAUC ~5 bytes per (positive, in-band negative) pair; Recall and the
    trapezoid surrogate are O(M·C). Only used to skip incumbent configurations that cannot fit.
    """
    counts = cfg.class_counts()
    if cfg.loss == "smooth_ap":
        return (5.0 * sum(counts) * cfg.m + 12.0 * max(counts) * cfg.m) / MB
    if cfg.loss == "pauc_pairwise":
        beta = cfg.beta if cfg.beta is not None else PAIRWISE_BETA
        pairs = sum(p * max(1.0, beta * (cfg.m - p)) for p in counts)
        return 5.0 * pairs / MB
    return 64.0 * cfg.m * cfg.c / MB


# ----------------------------------------------------------------------------------------------
# Worker (one configuration, one process; stdlib + torch only)
# ----------------------------------------------------------------------------------------------


def _current_rss_bytes() -> int | None:
    """Resident set size now (Linux ``/proc/self/statm``), or None where unavailable."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _maxrss_bytes() -> int:
    """Peak RSS of this process so far (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def _import_package(side: str) -> tuple[Any, dict[str, Any]]:
    """Import ``imbalanced_losses`` and describe which installation it came from.

    Under ``side == "incumbent"`` our ``src/`` is removed from ``sys.path`` first, and the import
    is refused if it still resolves into this repository.
    """
    import importlib
    import importlib.metadata

    if side == "incumbent":
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO_SRC]
    pkg = importlib.import_module("imbalanced_losses")
    module_file = str(Path(pkg.__file__ or "").resolve())
    from_repo = Path(module_file).is_relative_to(REPO_SRC)
    if side == "incumbent" and from_repo:
        raise RuntimeError(f"incumbent side imported this repository's package ({module_file})")
    try:
        dist_version: str | None = importlib.metadata.version(DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        dist_version = None
    info = {
        "side": side,
        "module_file": module_file,
        "from_repo": from_repo,
        "dist_version": dist_version,
        "package_version": getattr(pkg, "__version__", None),
        "python": sys.executable,
        "python_version": platform.python_version(),
    }
    return pkg, info


def make_data(cfg: Config, seed: int = 0, signal_strength: float = 0.0) -> tuple[Any, Any]:
    """Float32 logits ``[M, C]`` (standard normal, ``requires_grad``) and int64 targets.

    Class sizes are exact (:func:`class_counts`), rows shuffled with the seeded generator.
    ``signal_strength`` is added to each row's true-class logit (binary: to positives).
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    counts = cfg.class_counts()
    if cfg.c == 1:
        targets = torch.zeros(cfg.m, dtype=torch.long)
        targets[: counts[0]] = 1
    else:
        targets = torch.repeat_interleave(torch.arange(cfg.c), torch.tensor(counts))
    targets = targets[torch.randperm(cfg.m, generator=g)]
    logits = torch.randn(cfg.m, cfg.c, generator=g, dtype=torch.float32)
    if signal_strength:
        if cfg.c == 1:
            logits[:, 0] += signal_strength * targets.float()
        else:
            logits[torch.arange(cfg.m), targets] += signal_strength
    return logits.requires_grad_(), targets


def parse_options(items: Iterable[str] | None) -> dict[str, Any]:
    """``NAME=VALUE`` strings as keyword arguments; each value is read as JSON, else kept as a string."""
    options: dict[str, Any] = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise SystemExit(f"--ours-option/--option expects NAME=VALUE, got {item!r}")
        try:
            options[name] = json.loads(value)
        except json.JSONDecodeError:
            options[name] = value
    return options


def build_loss(pkg: Any, cfg: Config, options: dict[str, Any] | None = None) -> Any:
    """The loss module for ``cfg`` (``queue_size=0``; library defaults, or ``options``, otherwise)."""
    common: dict[str, Any] = {"num_classes": cfg.c, "queue_size": 0, **(options or {})}
    if cfg.skip_bg:
        common["class_weight"] = [0.0] + [1.0] * (cfg.c - 1)
    if cfg.loss == "smooth_ap":
        return pkg.SmoothAPLoss(**common)
    if cfg.loss == "recall":
        return pkg.RecallAtQuantileLoss(**common)
    surrogate = "pairwise" if cfg.loss == "pauc_pairwise" else "trapezoid"
    kwargs: dict[str, Any] = {"surrogate": surrogate}
    if cfg.beta is not None:
        kwargs["beta"] = cfg.beta
    return pkg.PAUCAtBudgetLoss(**common, **kwargs)


def _percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (``q`` in [0, 1])."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "can't allocate memory" in text or "out of memory" in text


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Measure one configuration in this process; returns the result record."""
    cfg = Config(args.loss, args.m, args.c, args.balance, args.beta, args.skip_bg)
    out: dict[str, Any] = {"key": cfg.key, "config": dataclasses.asdict(cfg), "status": "failed"}
    try:
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
        import torch

        torch.set_num_threads(args.threads)
        pkg, info = _import_package(args.side)
        out.update(info)
        out.update({"torch": torch.__version__, "threads": torch.get_num_threads(), "seed": args.seed})
        logits, targets = make_data(cfg, args.seed, args.signal)
        import gc

        gc.collect()
        baseline = _current_rss_bytes()
        out["baseline_rss_mb"] = None if baseline is None else baseline / MB
        out["maxrss_at_baseline_mb"] = _maxrss_bytes() / MB
        if baseline is None:  # no /proc: fall back to the peak so far
            baseline = _maxrss_bytes()
        options = parse_options(args.option)
        if options:
            out["options"] = options
        loss_fn = build_loss(pkg, cfg, options)

        t0 = time.perf_counter()
        loss = loss_fn(logits, targets)
        loss.backward()
        out["warmup_s"] = time.perf_counter() - t0
        out["loss"] = float(loss.detach())
        del loss

        fwd: list[float] = []
        total: list[float] = []
        while True:
            logits.grad = None
            t0 = time.perf_counter()
            loss = loss_fn(logits, targets)
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            del loss
            fwd.append(t1 - t0)
            total.append(t2 - t0)
            n, spent = len(total), sum(total)
            if n >= args.max_repeats:
                break
            if n >= args.repeats and spent >= args.min_time:
                break
            if n >= args.min_repeats and spent >= args.max_time:
                break
        peak = _maxrss_bytes()
        if len(total) <= 50:
            out["times_s"] = total
        out.update(
            {
                "status": "ok",
                "n_repeats": len(total),
                "median_s": statistics.median(total),
                "min_s": min(total),
                "p25_s": _percentile(total, 0.25),
                "p75_s": _percentile(total, 0.75),
                "fwd_median_s": statistics.median(fwd),
                "peak_rss_mb": peak / MB,
                "peak_delta_mb": (peak - baseline) / MB,
                "grad_finite": bool(torch.isfinite(logits.grad).all()) if logits.grad is not None else None,
            }
        )
    except Exception as exc:
        out["status"] = "OOM" if _is_oom(exc) else "failed"
        out["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        out["traceback"] = traceback.format_exc()[-4000:]
    return out


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def _proc_rss_bytes(pid: int) -> int:
    """RSS of another process (0 if unavailable)."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _busy_cpu_seconds() -> float | None:
    """Non-idle CPU seconds of the whole machine so far (``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # guest time is already counted in user
    return busy / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's waited-for children."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _mem_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_config(
    python: str, side: str, cfg: Config, opts: argparse.Namespace, mem_limit_bytes: int | None
) -> dict[str, Any]:
    """Run one configuration in a fresh worker process; never raises for worker failures."""
    cmd = [python, str(Path(__file__).resolve()), "worker", *cfg.worker_args(), "--side", side]
    cmd += ["--threads", str(opts.threads), "--repeats", str(opts.repeats), "--min-repeats", str(opts.min_repeats)]
    cmd += ["--max-repeats", str(opts.max_repeats), "--min-time", repr(opts.min_time)]
    cmd += ["--max-time", repr(opts.max_time), "--seed", str(opts.seed), "--signal", repr(opts.signal)]
    if side == "ours":
        cmd += [f"--option={item}" for item in opts.ours_option or ()]
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(opts.threads)
    if side == "incumbent":  # nothing of ours may leak into the other interpreter
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONHOME", None)
    busy0, child0 = _busy_cpu_seconds(), _children_cpu_seconds()
    t_start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(REPO_ROOT / "benchmarks"),
        start_new_session=True,
    )
    killed: str | None = None
    watch_peak = 0
    stdout = stderr = ""
    while True:
        try:
            out, err = proc.communicate(timeout=0.05)
            stdout, stderr = stdout + (out or ""), stderr + (err or "")
            break
        except subprocess.TimeoutExpired:
            pass
        rss = _proc_rss_bytes(proc.pid)
        watch_peak = max(watch_peak, rss)
        if mem_limit_bytes is not None and rss > mem_limit_bytes:
            killed = "OOM"
        elif time.perf_counter() - t_start > opts.timeout:
            killed = "timeout"
        if killed:
            _kill_group(proc)
            out, err = proc.communicate()
            stdout, stderr = stdout + (out or ""), stderr + (err or "")
            break
    wall = time.perf_counter() - t_start
    busy1, child1 = _busy_cpu_seconds(), _children_cpu_seconds()
    result: dict[str, Any] | None = None
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
    if killed == "timeout":
        result = {"status": "timeout", "reason": f"exceeded {opts.timeout:g} s"}
    elif killed == "OOM":
        result = {"status": "OOM", "reason": f"RSS above the {mem_limit_bytes / GB_BYTES:.1f} GB limit"}
    elif result is None:
        status = "OOM" if proc.returncode == -signal.SIGKILL else "failed"
        result = {"status": status, "reason": f"worker exit code {proc.returncode}", "stderr": stderr[-3000:]}
    result["wall_s"] = wall
    result["watchdog_peak_rss_mb"] = watch_peak / MB
    result["side"] = side
    if side == "ours":  # src/ may change during a long run while others work in the checkout
        result["src_sha256"] = _src_hash()
    if busy0 is not None and busy1 is not None and wall > 0:
        # CPU the rest of the machine used meanwhile (cores): a noise indicator on a shared VM
        result["background_cores"] = max(0.0, (busy1 - busy0) - (child1 - child0)) / wall
    result.setdefault("python", python)
    return result


def wait_until_quiet(max_wait: float, threshold: float) -> tuple[float, float | None]:
    """Wait (up to ``max_wait`` s) until the rest of the machine uses < ``threshold`` cores.

    Returns (seconds waited, background cores in the last 1-second sample).
    """
    t0 = time.perf_counter()
    load = None
    while True:
        b0, t_a = _busy_cpu_seconds(), time.perf_counter()
        time.sleep(1.0)
        b1, t_b = _busy_cpu_seconds(), time.perf_counter()
        if b0 is None or b1 is None:
            return time.perf_counter() - t0, None
        load = (b1 - b0) / (t_b - t_a)
        if load < threshold or time.perf_counter() - t0 >= max_wait:
            return time.perf_counter() - t0, load


def measure(
    python: str, side: str, cfg: Config, opts: argparse.Namespace, mem_limit_bytes: int | None
) -> dict[str, Any]:
    """``--rounds`` fresh-process runs of one configuration; keeps the round with the lowest median."""
    best: dict[str, Any] | None = None
    medians: list[float] = []
    for _ in range(max(1, opts.rounds)):
        waited, load = (0.0, None)
        if opts.wait_quiet > 0:
            waited, load = wait_until_quiet(opts.wait_quiet, opts.quiet_cores)
        res = run_config(python, side, cfg, opts, mem_limit_bytes)
        res["waited_s"], res["background_before"] = waited, load
        if res["status"] != "ok":
            return res
        medians.append(res["median_s"])
        if best is None or res["median_s"] < best["median_s"]:
            best = res
    assert best is not None
    if len(medians) > 1:
        best["round_medians_s"] = medians
    return best


def _git_info() -> dict[str, Any]:
    """Commit and a content hash of ``src/`` (the code actually measured, dirty or not)."""
    info: dict[str, Any] = {}
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        info["src_dirty"] = bool(dirty)
    except (OSError, subprocess.CalledProcessError):
        pass
    info["src_sha256"] = _src_hash()
    return info


def _src_hash() -> str:
    """Short content hash of ``src/**/*.py`` (identifies the code measured, committed or not)."""
    h = hashlib.sha256()
    for path in sorted(REPO_SRC.rglob("*.py")):
        h.update(str(path.relative_to(REPO_SRC)).encode())
        with contextlib.suppress(OSError):
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count()}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                info["mem_total_gb"] = round(int(line.split()[1]) * 1024 / GB_BYTES, 1)
    return info


def _failed_series(status: str) -> bool:
    return status in ("timeout", "OOM")


def run_driver(opts: argparse.Namespace) -> int:
    """Run the selected configurations on each side, print the table, write JSON."""
    configs = preset_configs(opts.preset)
    if opts.only:
        pattern = re.compile(opts.only)
        configs = [c for c in configs if pattern.search(c.key) or any(pattern.search(t) for t in targets_of(c))]
    sides: list[tuple[str, str]] = []
    if not opts.skip_ours:
        sides.append(("ours", opts.python))
    if opts.incumbent_python:
        sides.append(("incumbent", opts.incumbent_python))
    if opts.list:
        for cfg in configs:
            est = incumbent_estimate_mb(cfg)
            print(f"{cfg.key:45s} {','.join(targets_of(cfg)):6s} incumbent est. {est:,.0f} MB")
        return 0
    if opts.reuse_incumbent and not opts.incumbent_python:
        sides.append(("incumbent", ""))  # reused results only
    if not sides:
        print("nothing to run (--skip-ours without --incumbent-python)", file=sys.stderr)
        return 2

    avail = _mem_available_bytes()
    if opts.mem_limit_gb is not None:
        mem_limit: int | None = int(opts.mem_limit_gb * GB_BYTES)
    else:
        mem_limit = int(0.8 * avail) if avail else None
    reuse: dict[str, dict[str, Any]] = {}
    if opts.reuse_incumbent:
        for row in json.loads(Path(opts.reuse_incumbent).read_text())["runs"]:
            inc = row.get("incumbent")
            if inc and inc.get("status") == "ok":
                reuse[row["key"]] = {**inc, "reused_from": opts.reuse_incumbent}

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
        "preset": opts.preset,
        "threads": opts.threads,
        "repeats": opts.repeats,
        "min_repeats": opts.min_repeats,
        "min_time_s": opts.min_time,
        "max_time_s": opts.max_time,
        "timeout_s": opts.timeout,
        "mem_limit_gb": None if mem_limit is None else mem_limit / GB_BYTES,
        "seed": opts.seed,
        "signal": opts.signal,
        "rounds": opts.rounds,
        "wait_quiet_s": opts.wait_quiet,
        "quiet_cores": opts.quiet_cores,
        "ours_options": parse_options(opts.ours_option),
        "machine": _machine_info(),
        "repo": _git_info(),
    }
    doc: dict[str, Any] = {"meta": meta, "runs": []}
    failed: dict[tuple[str, tuple[Any, ...]], tuple[int, str]] = {}
    for cfg in configs:
        row: dict[str, Any] = {"key": cfg.key, "config": dataclasses.asdict(cfg), "targets": targets_of(cfg)}
        for side, python in sides:
            res: dict[str, Any] | None = None
            prev = failed.get((side, cfg.series))
            if side == "incumbent" and cfg.key in reuse:
                res = reuse[cfg.key]
            elif side == "incumbent" and not python:
                res = {"status": "skipped", "reason": "not in the reused file"}
            elif side == "incumbent" and cfg.skip_bg:
                res = {"status": "skipped", "reason": "no class_weight in 0.6"}
            elif prev is not None and prev[0] < cfg.m:
                res = {"status": "skipped", "reason": f"{prev[1]} at M={prev[0]}"}
            elif side == "incumbent":
                est = incumbent_estimate_mb(cfg) * MB
                if mem_limit is not None and est > mem_limit:
                    res = {"status": "skipped", "reason": f"estimated {est / GB_BYTES:.0f} GB > memory limit"}
                elif opts.incumbent_skip_large and est > opts.large_gb * GB_BYTES:
                    res = {"status": "skipped", "reason": f"estimated {est / GB_BYTES:.1f} GB (--incumbent-skip-large)"}
            if res is None:
                print(f"[{side:9s}] {cfg.key} ...", end="", flush=True, file=sys.stderr)
                res = measure(python, side, cfg, opts, mem_limit)
                busy = res.get("background_cores", 0.0)
                note = f"  (busy machine: others used {busy:.1f} cores)" if busy > BUSY_CORES else ""
                print(f" {_fmt_side(res)}{note}", file=sys.stderr)
            if _failed_series(res["status"]):
                failed[(side, cfg.series)] = (cfg.m, res["status"])
            row[side] = res
        doc["runs"].append(row)
        if opts.out:  # incremental, so an interrupted run keeps what it measured
            _write_json(opts.out, doc)
    print(format_table(doc))
    if opts.check_targets:
        print()
        print(format_targets(doc))
    if opts.out:
        print(f"\nresults written to {opts.out}", file=sys.stderr)
    return 0


def _write_json(path: str, doc: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)


# ----------------------------------------------------------------------------------------------
# Tables and target check
# ----------------------------------------------------------------------------------------------


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1.0:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def _fmt_mb(mb: float | None) -> str:
    if mb is None:
        return "—"
    return f"{mb:,.0f} MB" if abs(mb) >= 10 else f"{mb:.1f} MB"


def _noisy(res: dict[str, Any] | None) -> bool:
    return bool(res) and res.get("background_cores", 0.0) > BUSY_CORES


def _fmt_side(res: dict[str, Any] | None) -> str:
    if not res:
        return "—"
    if res.get("status") != "ok":
        return _status_cell(res)
    return f"{_fmt_time(res['median_s'])}{' *' if _noisy(res) else ''}, {_fmt_mb(res['peak_delta_mb'])}"


def _status_cell(res: dict[str, Any] | None) -> str:
    """Status of a side that has no figures (with the reason when it was skipped)."""
    if not res:
        return "—"
    status = str(res.get("status", "—"))
    return f"{status} ({res['reason']})" if status == "skipped" and res.get("reason") else status


def _ok(res: dict[str, Any] | None) -> bool:
    return bool(res) and res.get("status") == "ok"


def _mem_ratio(inc_mb: float, ours_mb: float) -> tuple[float, bool]:
    """Incumbent / ours ΔRSS; ours is floored at 1 MB (then the ratio is a lower bound)."""
    floor = ours_mb < 1.0
    return inc_mb / max(ours_mb, 1.0), floor


def _fmt_ratio(r: float, lower_bound: bool = False) -> str:
    text = f"{r:.3g}×" if r < 100 else f"{r:,.0f}×"
    return ("≥ " if lower_bound else "") + text


def _loss_agreement(ours: dict[str, Any] | None, inc: dict[str, Any] | None) -> str:
    if not (ours and inc) or ours.get("loss") is None or inc.get("loss") is None:
        return "—"
    if inc.get("reused_from") and inc.get("seed") != ours.get("seed"):
        return "—"
    diff = abs(ours["loss"] - inc["loss"])
    return f"{diff:.1e}" + ("" if diff <= 1e-4 * max(1.0, abs(inc["loss"])) else " ✗")


NOISE_NOTE = (
    f"* other processes used more than {BUSY_CORES} cores during this measurement (shared VM): the time is"
    " unreliable, rerun it on a quiet machine (--wait-quiet, --rounds)."
)


def format_table(doc: dict[str, Any]) -> str:
    """Markdown table of every configuration, both sides and their ratios."""
    has_inc = any(r.get("incumbent") for r in doc["runs"])
    head = ["config", "target", "ours time", "ours ΔRSS"]
    if has_inc:
        head += ["incumbent time", "incumbent ΔRSS", "time ratio (inc/ours)", "memory ratio (inc/ours)", "|Δloss|"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in doc["runs"]:
        ours, inc = row.get("ours"), row.get("incumbent")
        cells = [f"`{row['key']}`", ",".join(row.get("targets", []))]
        cells += [_fmt_time(ours["median_s"]) + (" *" if _noisy(ours) else "") if _ok(ours) else _status_cell(ours)]
        cells += [_fmt_mb(ours["peak_delta_mb"]) if _ok(ours) else ""]
        if has_inc:
            cells += [_fmt_time(inc["median_s"]) + (" *" if _noisy(inc) else "") if _ok(inc) else _status_cell(inc)]
            cells += [_fmt_mb(inc["peak_delta_mb"]) if _ok(inc) else ""]
            if _ok(ours) and _ok(inc):
                r_mem, floor = _mem_ratio(inc["peak_delta_mb"], ours["peak_delta_mb"])
                cells += [_fmt_ratio(inc["median_s"] / ours["median_s"]), _fmt_ratio(r_mem, floor)]
            else:
                cells += ["", ""]
            cells += [_loss_agreement(ours, inc)]
        lines.append("| " + " | ".join(cells) + " |")
    if any(_noisy(r.get(side)) for r in doc["runs"] for side in ("ours", "incumbent")):
        lines += ["", NOISE_NOTE]
    return "\n".join(lines)


def evaluate_targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (target, configuration): measured figures, ratios, pass/fail."""
    runs = {r["key"]: r for r in doc["runs"]}
    rows = []
    for tid, (cfgs, requirement) in TARGETS.items():
        for cfg in cfgs:
            row = runs.get(cfg.key, {})
            ours, inc = row.get("ours"), row.get("incumbent")
            inc_time = inc_mem = None
            spec = False
            if _ok(inc):
                inc_time, inc_mem = inc["median_s"], inc["peak_delta_mb"]
            elif cfg.key in SPEC_INCUMBENT:
                (inc_time, inc_mem), spec = SPEC_INCUMBENT[cfg.key], True
            out: dict[str, Any] = {
                "id": tid,
                "key": cfg.key,
                "requirement": requirement,
                "ours": ours,
                "incumbent": inc,
                "inc_time": inc_time,
                "inc_mem": inc_mem,
                "inc_from_spec": spec,
                "time_ratio": None,
                "mem_ratio": None,
                "mem_floor": False,
                "result": "not run",
            }
            if not _ok(ours):
                out["result"] = "not run" if ours is None else f"fail ({ours.get('status')})"
                rows.append(out)
                continue
            t, m = ours["median_s"], ours["peak_delta_mb"]
            if inc_time is not None:
                out["time_ratio"] = inc_time / t
            if inc_mem is not None:
                out["mem_ratio"], out["mem_floor"] = _mem_ratio(inc_mem, m)
            if tid == "T3":
                passed: bool | None = m * MB <= GB_BYTES
            elif out["time_ratio"] is None:
                passed = None
            else:
                need_t, need_m = RATIOS_NEEDED[tid]
                passed = out["time_ratio"] >= need_t and (need_m is None or out["mem_ratio"] >= need_m)
            out["result"] = "no incumbent figure" if passed is None else ("pass" if passed else "FAIL")
            rows.append(out)
    return rows


def format_targets(doc: dict[str, Any]) -> str:
    """Markdown table of the SPEC targets T1–T6 (usable in RESULTS.md)."""
    lines = [
        "| id | case | incumbent 0.6.0 | ours | speed-up | memory | target | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    any_spec = False
    for r in evaluate_targets(doc):
        if r["inc_time"] is not None:
            inc = f"{_fmt_time(r['inc_time'])}, {_fmt_mb(r['inc_mem'])}" + (" †" if r["inc_from_spec"] else "")
            any_spec |= r["inc_from_spec"]
        else:
            inc = _status_cell(r["incumbent"]) if r["incumbent"] else "not run"
        ours = _fmt_side(r["ours"]) if r["ours"] else "not run"
        speed = _fmt_ratio(r["time_ratio"]) if r["time_ratio"] is not None else "—"
        mem = "—"
        if r["mem_ratio"] is not None:
            if r["mem_ratio"] >= 1:
                mem = ("≤ " if r["mem_floor"] else "") + f"1/{r['mem_ratio']:.3g}"
            else:
                mem = f"{1 / r['mem_ratio']:.3g}×"
        lines.append(
            f"| {r['id']} | `{r['key']}` | {inc} | {ours} | {speed} | {mem} | {r['requirement']} | {r['result']} |"
        )
    notes = [
        "",
        "Times: median forward + backward; memory: peak ΔRSS (MB = 2^20 bytes); speed-up = incumbent / ours;"
        " memory = ours / incumbent. T3 passes at ≤ 10^9 bytes.",
    ]
    if any(_noisy(r.get(side)) for r in doc["runs"] for side in ("ours", "incumbent")):
        notes.append(NOISE_NOTE)
    if any_spec:
        notes.append("† incumbent figure from SPEC.md / incumbent-behaviour.md §14.1, not measured in this run.")
    return "\n".join(lines + notes)


# ----------------------------------------------------------------------------------------------
# Plot
# ----------------------------------------------------------------------------------------------


def plot(paths: Sequence[str], output: str) -> int:
    """Time and memory vs pool size (log-log), one column per loss, ours vs the incumbent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot needs matplotlib: pip install matplotlib (it is not a dependency of the package)", file=sys.stderr)
        return 2

    runs: list[dict[str, Any]] = []
    for p in paths:
        runs += json.loads(Path(p).read_text())["runs"]
    losses = [loss for loss in LOSSES if any(r["config"]["loss"] == loss for r in runs)]
    if not losses:
        print("no results to plot", file=sys.stderr)
        return 1
    fig, axes = plt.subplots(2, len(losses), figsize=(4.2 * len(losses), 7.5), squeeze=False)
    colours = {"ours": "tab:blue", "incumbent": "tab:red"}
    styles = {"balanced": ("-", "o"), "bg": ("--", "s"), "pos1": (":", "^"), "pos10": ("-.", "v")}
    for j, loss in enumerate(losses):
        series: dict[tuple[str, int, str], dict[int, dict[str, Any]]] = {}
        for r in runs:
            cfg = r["config"]
            if cfg["loss"] != loss:
                continue
            for side in ("ours", "incumbent"):
                res = r.get(side)
                if _ok(res):
                    series.setdefault((side, cfg["c"], cfg["balance"]), {})[cfg["m"]] = res
        for (side, c, bal), points in sorted(series.items()):
            ms = sorted(points)
            ls, marker = styles[bal]
            label = f"{side}, C={c} {bal}"
            kw = {"color": colours[side], "linestyle": ls, "marker": marker, "label": label}
            axes[0][j].plot(ms, [points[m]["median_s"] for m in ms], **kw)
            axes[1][j].plot(ms, [max(points[m]["peak_delta_mb"], 0.1) for m in ms], **kw)
        beta = next((r["config"]["beta"] for r in runs if r["config"]["loss"] == loss), None)
        axes[0][j].set_title(loss + (f" (beta={beta:g})" if beta is not None else ""))
        axes[0][j].set_ylabel("median forward+backward (s)")
        axes[1][j].set_ylabel("peak ΔRSS (MB)")
        for i in (0, 1):
            axes[i][j].set_xscale("log", base=2)
            axes[i][j].set_yscale("log")
            axes[i][j].set_xlabel("pool size M")
            axes[i][j].grid(True, which="both", alpha=0.3)
        axes[0][j].legend(fontsize=7)
    fig.suptitle("Forward + backward, queue_size=0, CPU; missing points = timeout / OOM / skipped", fontsize=10)
    fig.tight_layout()
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    print(f"figure written to {output}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
    "quick": {"repeats": 3, "min_repeats": 2, "min_time": 0.1, "max_time": 5.0},
    "targets": {"repeats": 5, "min_repeats": 3, "min_time": 0.5, "max_time": 60.0},
    "grid": {"repeats": 5, "min_repeats": 3, "min_time": 0.3, "max_time": 30.0},
    "class_weight": {"repeats": 5, "min_repeats": 3, "min_time": 0.5, "max_time": 60.0},
}


def _add_timing_args(p: argparse.ArgumentParser, defaults: bool) -> None:
    d: dict[str, Any] = PRESET_DEFAULTS["targets"] if defaults else dict.fromkeys(PRESET_DEFAULTS["targets"])
    p.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads (default 2)")
    p.add_argument("--repeats", type=int, default=d["repeats"], help="timed repeats wanted (after 1 warm-up)")
    p.add_argument("--min-repeats", type=int, default=d["min_repeats"], help="repeats at least, even past --max-time")
    p.add_argument("--max-repeats", type=int, default=2000, help="repeats at most")
    p.add_argument("--min-time", type=float, default=d["min_time"], help="keep repeating until this much time is spent")
    p.add_argument("--max-time", type=float, default=d["max_time"], help="stop after --min-repeats once this is spent")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument("--signal", type=float, default=0.0, help="added to each row's true-class logit (default 0)")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="driver (default): run configurations in fresh processes")
    run.add_argument("--preset", choices=sorted(PRESET_DEFAULTS), default="targets")
    run.add_argument("--only", help="regex on the config key or target id (e.g. 'T5|T6', 'smooth_ap.*C=10')")
    run.add_argument("--python", default=sys.executable, help="interpreter for our package (default: this one)")
    run.add_argument("--incumbent-python", help="the other installation's interpreter, e.g. $INC/bin/python")
    run.add_argument("--skip-ours", action="store_true", help="run the incumbent side only")
    run.add_argument(
        "--reuse-incumbent", metavar="JSON", help="take incumbent results from an earlier run instead of rerunning"
    )
    run.add_argument(
        "--incumbent-skip-large",
        action="store_true",
        help="skip incumbent configs whose estimated memory exceeds --large-gb (T3, T4, big grid points)",
    )
    run.add_argument("--large-gb", type=float, default=6.0, help="threshold for --incumbent-skip-large (default 6)")
    run.add_argument("--timeout", type=float, default=600.0, help="wall-clock limit per configuration (s)")
    run.add_argument(
        "--mem-limit-gb", type=float, help="kill a worker above this RSS (default: 80%% of MemAvailable at start)"
    )
    run.add_argument("--rounds", type=int, default=1, help="fresh-process runs per config and side; best median kept")
    run.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each run wait up to S seconds for the machine to be quiet (see --quiet-cores)",
    )
    run.add_argument("--quiet-cores", type=float, default=0.25, help="'quiet' = others use fewer cores than this")
    run.add_argument(
        "--ours-option",
        action="append",
        metavar="NAME=VALUE",
        help="a keyword argument for our loss modules only (JSON value), e.g. detach_thresholds=true",
    )
    run.add_argument("--out", help="write JSON results here (e.g. benchmarks/results/targets.json)")
    run.add_argument("--check-targets", action="store_true", help="also print the T1–T6 pass/fail table")
    run.add_argument("--list", action="store_true", help="list the configurations and exit")
    _add_timing_args(run, defaults=False)

    worker = sub.add_parser("worker", help="measure one configuration in this process")
    worker.add_argument("--loss", choices=LOSSES, required=True)
    worker.add_argument("--m", type=int, required=True)
    worker.add_argument("--c", type=int, required=True)
    worker.add_argument("--balance", choices=BALANCES, required=True)
    worker.add_argument("--beta", type=float, help="PAUC beta (pauc_pairwise defaults to 0.05)")
    worker.add_argument("--skip-bg", action="store_true", help="class_weight 0 on class 0 (bg only)")
    worker.add_argument("--side", choices=("ours", "incumbent"), default="ours")
    worker.add_argument("--option", action="append", metavar="NAME=VALUE", help="a keyword argument of the loss")
    _add_timing_args(worker, defaults=True)

    check = sub.add_parser("check", help="T1–T6 pass/fail table from a results JSON")
    check.add_argument("results")
    table = sub.add_parser("table", help="the side-by-side table from a results JSON")
    table.add_argument("results")
    plt = sub.add_parser("plot", help="time and memory vs pool size (needs matplotlib)")
    plt.add_argument("results", nargs="+")
    plt.add_argument("-o", "--output", required=True)
    return parser, {"run": run, "worker": worker}


def main(argv: Iterable[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["run", *argv]
    parser, _ = build_parser()
    args = parser.parse_args(argv)
    if args.command == "worker":
        res = run_worker(args)
        print(RESULT_PREFIX + json.dumps(res), flush=True)
        return 0
    if args.command == "run":
        for name, value in PRESET_DEFAULTS[args.preset].items():
            if getattr(args, name) is None:
                setattr(args, name, value)
        return run_driver(args)
    if args.command == "check":
        print(format_targets(json.loads(Path(args.results).read_text())))
        return 0
    if args.command == "table":
        print(format_table(json.loads(Path(args.results).read_text())))
        return 0
    if args.command == "plot":
        return plot(args.results, args.output)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
