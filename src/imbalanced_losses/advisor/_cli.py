"""Command line of the advisor: ``python -m imbalanced_losses.advisor FILE --budget B``."""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ._advise import _advice
from ._mass import _analyse, _Analysis, _check_options

__all__ = ["main"]

PROG = "python -m imbalanced_losses.advisor"
_EXTRA = 'pip install "imbalanced-losses[examples]"'
_SCORE_KEYS = ("scores",)
_LABEL_KEYS = ("labels", "targets")


class InputError(Exception):
    """A file, column or key the advisor cannot use (exit code 2)."""


# ----------------------------------------------------------------------------------------------
# Loading


def _as_scores(value: Any, where: str) -> Tensor:
    try:
        t = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{where}: cannot be read as a numeric array ({exc}).") from exc
    if t.is_complex():
        raise InputError(f"{where}: scores must be real numbers, got dtype {t.dtype}.")
    return t if t.is_floating_point() else t.to(torch.float64)


def _as_labels(value: Any, where: str) -> Tensor:
    try:
        t = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{where}: cannot be read as a numeric array ({exc}).") from exc
    if t.is_floating_point() and t.numel() and bool(torch.isfinite(t).all()) and bool((t == t.round()).all()):
        t = t.long()  # labels stored as floats (0.0, 1.0, 3.0)
    return t


def _parse_number(text: str, where: str, integer: bool) -> float | int:
    s = text.strip()
    try:
        if integer:
            try:
                return int(s)
            except ValueError:
                f = float(s)
                if f.is_integer():
                    return int(f)
                raise ValueError(s) from None
        return float(s)
    except ValueError:
        kind = "an integer label" if integer else "a number"
        raise InputError(f"{where}: expected {kind}, got {text!r}.") from None


def load_csv(path: Path, score_col: str | None, label_col: str | None) -> tuple[Tensor, Tensor]:
    """Scores and labels from a CSV file with a header row (comma-separated score columns: ``[N, C]``)."""
    score_names = [c.strip() for c in (score_col or "score").split(",")]
    label_name = (label_col or "label").strip()
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise InputError(f"{path}: empty file, expected a header row with columns {[*score_names, label_name]}.")
        names = [h.strip() for h in header]
        for want, opt in [*((s, "--score-col") for s in score_names), (label_name, "--label-col")]:
            if want not in names:
                raise InputError(f"{path}: no column {want!r} ({opt}); the header has {names}.")
        s_idx = [names.index(s) for s in score_names]
        l_idx = names.index(label_name)
        scores: list[list[float | int]] = []
        labels: list[float | int] = []
        for line, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) < len(names):
                raise InputError(f"{path}, line {line}: {len(row)} fields, the header has {len(names)}.")
            scores.append([_parse_number(row[i], f"{path}, line {line}, column {names[i]!r}", False) for i in s_idx])
            labels.append(_parse_number(row[l_idx], f"{path}, line {line}, column {label_name!r}", True))
    s = torch.tensor(scores, dtype=torch.float64).reshape(len(scores), len(s_idx))
    return (s.squeeze(1) if len(s_idx) == 1 else s), torch.tensor(labels, dtype=torch.long)


def _pick(keys: Sequence[str], wanted: str | None, defaults: tuple[str, ...], what: str, path: Path) -> str:
    options = (wanted,) if wanted else defaults
    for key in options:
        if key in keys:
            return key
    names = " or ".join(repr(k) for k in options)
    raise InputError(f"{path}: no {what} array named {names}; it holds {sorted(keys)}.")


def load_npz(path: Path, score_col: str | None, label_col: str | None) -> tuple[Tensor, Tensor]:
    """Scores and labels from a NumPy ``.npz`` archive (``scores`` and ``labels`` or ``targets``)."""
    try:
        import numpy as np
    except ImportError as exc:  # pragma: no cover - numpy ships with torch in practice
        raise InputError(f"{path}: reading .npz files needs numpy: {_EXTRA}.") from exc
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.files)
            s_key = _pick(keys, score_col, _SCORE_KEYS, "scores", path)
            l_key = _pick(keys, label_col, _LABEL_KEYS, "labels", path)
            s_arr, l_arr = np.array(data[s_key]), np.array(data[l_key])
    except InputError:
        raise
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot be read as a .npz archive ({exc}).") from exc
    return _as_scores(s_arr, f"{path}: {s_key!r}"), _as_labels(l_arr, f"{path}: {l_key!r}")


def load_pt(path: Path, score_col: str | None, label_col: str | None) -> tuple[Tensor, Tensor]:
    """Scores and labels from ``torch.save`` of a dict (``scores``, ``labels``/``targets``) or a pair."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling raises many types
        raise InputError(f"{path}: cannot be read by torch.load(weights_only=True) ({exc}).") from exc
    if isinstance(obj, dict):
        keys = [k for k in obj if isinstance(k, str)]
        s_key = _pick(keys, score_col, _SCORE_KEYS, "scores", path)
        l_key = _pick(keys, label_col, _LABEL_KEYS, "labels", path)
        return _as_scores(obj[s_key], f"{path}: {s_key!r}"), _as_labels(obj[l_key], f"{path}: {l_key!r}")
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return _as_scores(obj[0], f"{path}: item 0"), _as_labels(obj[1], f"{path}: item 1")
    raise InputError(
        f"{path}: expected a dict with 'scores' and 'labels' (or 'targets'), or a (scores, labels) pair, "
        f"got {type(obj).__name__}."
    )


def load(path: str | Path, score_col: str | None = None, label_col: str | None = None) -> tuple[Tensor, Tensor]:
    """Scores and labels from a ``.csv``, ``.npz`` or ``.pt``/``.pth`` file; :class:`InputError` if unusable."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file.")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        try:
            return load_csv(p, score_col, label_col)
        except UnicodeDecodeError as exc:
            raise InputError(f"{p}: not a UTF-8 text file ({exc}).") from exc
    if suffix == ".npz":
        return load_npz(p, score_col, label_col)
    if suffix in (".pt", ".pth"):
        return load_pt(p, score_col, label_col)
    raise InputError(f"{p}: unsupported file type {suffix or '(none)'!r}; expected .csv, .npz or .pt.")


# ----------------------------------------------------------------------------------------------
# Plot


def _require_matplotlib() -> None:
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError as exc:
        raise InputError(f"--plot needs matplotlib, which is not installed: {_EXTRA}.") from exc


def plot_capture(an: _Analysis, path: str | Path, max_classes: int = 6) -> None:
    """Draw the expected capture curve of each class (up to ``max_classes`` with positives) to ``path``."""
    from matplotlib.figure import Figure

    st = an.stats
    classes = [c for c in range(st.k.shape[1]) if int(st.positives[0, c]) > 0][:max_classes]
    if not classes:
        raise InputError("--plot: no class has a positive; there is no capture curve to draw.")
    fig = Figure(figsize=(7.0, 3.2 * len(classes)), layout="constrained")
    axes = fig.subplots(len(classes), 1, squeeze=False)[:, 0]
    n_all = an.curve.n[0].round().long()  # [C]
    for ax, c in zip(axes, classes, strict=True):
        n, k, m = int(n_all[c]), int(st.k[0, c]), int(st.near_k[0, c])
        p = int(st.positives[0, c])
        upto = min(n, max(4 * m, 20))
        ranks = torch.arange(upto + 1)
        r_all = torch.zeros(1, st.k.shape[1], upto + 1, dtype=torch.long, device=an.curve.cw.device)
        r_all[0, c] = ranks.to(r_all.device)
        t = an.curve.hits(r_all)[0, c].cpu()  # T(r), r = 0..upto
        ax.plot(ranks.tolist(), t.tolist(), color="C0", label="positives caught (expected)")
        ax.plot(ranks.tolist(), ranks.clamp_max(p).tolist(), "--", color="0.6", label="perfect ranking")
        ax.axvline(k, color="C3", label=f"k = {k}")
        ax.axvline(m, color="C1", linestyle=":", label=f"near_k = {m}")
        fa, h_count = float(st.false_alerts[0, c]), float(torch.minimum(st.false_alerts, st.near_misses)[0, c])
        if h_count > 0 and not math.isnan(float(st.fpr_lo[0, c])):
            f = ranks.to(torch.float64) - t  # F(r)
            r_lo = int((f <= fa - h_count + 1e-9).nonzero().max())  # last rank before the evictable false alerts
            at_m = t[m]
            r_star = int(((ranks >= k) & (t >= at_m - 1e-9)).nonzero().min())  # lowest near miss
            ax.axvspan(r_lo, r_star, color="C2", alpha=0.15, label="contested window")
        title = f"budget {an.mass.budget:g}: headroom {float(st.headroom[0, c]):.3g}"
        ax.set_title(title if st.k.shape[1] == 1 else f"class {c}, {title}")
        ax.set_xlabel("rank (descending score)")
        ax.set_ylabel("positives caught")
        ax.set_xlim(0, upto)
        ax.legend(loc="lower right", fontsize="small")
    fig.savefig(path, dpi=110)


# ----------------------------------------------------------------------------------------------
# Entry point


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Contestable mass of a baseline's held-out scores at an alert budget, and the loss it suggests "
            "(thresholds provisional: see benchmarks/EFFECTIVENESS.md)."
        ),
    )
    ap.add_argument("file", help=".csv (columns score,label), .npz or .pt (scores, labels/targets)")
    ap.add_argument("--budget", type=float, required=True, help="alert budget in (0, 1), e.g. 0.001")
    ap.add_argument("--near", type=float, default=2.0, help="near-miss factor >= 1 (default 2)")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (default 1000; 0: none)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    ap.add_argument("--ignore-index", type=int, default=-100, help="label of rows to leave out (default -100)")
    ap.add_argument(
        "--score-col", default=None, help="score column(s), comma-separated for [N, C]; .npz/.pt: key (default scores)"
    )
    ap.add_argument("--label-col", default=None, help="label column (default label); .npz/.pt: key")
    ap.add_argument("--plot", default=None, metavar="PNG", help="draw the capture curve to this image file")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Run the advisor's command line; returns the exit code (``2`` on an unusable file or option).

    Args:
        argv: Arguments without the program name (``None``: ``sys.argv[1:]``).

    Returns:
        ``0`` on success, ``2`` on a bad file, column, key or option (message on stderr).
    """
    args = _parser().parse_args(argv)
    try:
        try:
            _check_options(args.budget, args.near, args.n_boot, None)
        except (ValueError, TypeError) as exc:
            raise InputError(str(exc)) from exc
        if args.plot:
            _require_matplotlib()
        scores, labels = load(args.file, args.score_col, args.label_col)
        gen = torch.Generator().manual_seed(args.seed)
        try:
            an = _analyse(
                scores,
                labels,
                budget=args.budget,
                near=args.near,
                ignore_index=args.ignore_index,
                n_boot=args.n_boot,
                generator=gen,
            )
        except (ValueError, TypeError) as exc:
            raise InputError(f"{args.file}: {exc}") from exc
        print(_advice(an))
        if args.plot:
            plot_capture(an, args.plot)
            print(f"\nCapture curve written to {args.plot}")
    except InputError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return 0
