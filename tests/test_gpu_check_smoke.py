"""``benchmarks/gpu_check.py --smoke`` runs on the CPU, writes its JSON and markdown, and fails on a wrong result.

The GPU check is one command meant for a machine with CUDA (see ``benchmarks/GPU.md``); here it
runs at tiny sizes on the CPU, in this process, without 0.6 (that arm must say it was skipped),
so a change that breaks the script is caught before a GPU session is spent on it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def smoke(gpu_check: ModuleType, out: Path) -> tuple[int, dict[str, Any], str]:
    code = gpu_check.main(["--smoke", "--device", "cpu", "--in-process", "--peer", "none", "--out", str(out)])
    return code, json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def test_smoke_run_on_the_cpu(gpu_check: ModuleType, tmp_path: Path) -> None:
    code, report, md = smoke(gpu_check, tmp_path)
    assert code == 0, md
    stages = {(e["stage"], e["lib"], e.get("case")): e for e in report["results"]}
    correct = stages["correct", "ours", None]["result"]
    roads = {(r["loss"], r["road"]) for r in correct}
    for loss in ("smooth_ap", "pauc_pairwise"):  # every road of the pair kernel
        assert {(loss, road) for road in ("default", "dense", "windowed", "chunks")} <= roads
    losses = {r["loss"] for r in correct}
    assert losses == {*gpu_check.RANKING, "recall_detached", *gpu_check.FOCAL}
    assert {"multilabel", "class_weight", "sample_weight+ignore"} <= {r["case"] for r in correct}
    assert all(r["ok"] for r in correct), [r for r in correct if not r["ok"]]
    forced = {r["taken"] for r in correct if r["road"] in ("windowed", "chunks")}
    assert forced == {"windowed"}, forced  # the forced road is the road taken
    for case in ("T1", "binary", "T4", "s2s_1Mx5_cw"):
        rows = stages["time", "ours", case]["result"]
        assert rows, case
        assert all("median_ms" in r for r in rows), rows
        assert stages["time", "peer", case]["skipped"] == "0.6 not installed"
    syncs = stages["syncs", "ours", None]["result"]  # the calls run; counting needs CUDA
    assert {(r["regime"], r["loss"]) for r in syncs} == {
        (regime, loss) for regime in ("binary", "multi") for loss in (*gpu_check.RANKING, *gpu_check.FOCAL)
    }
    assert all(r["syncs"] == "n/a (CPU)" for r in syncs), syncs
    for loss in (*gpu_check.FOCAL, *gpu_check.RANKING):
        assert stages["graph", "ours", loss]["skipped"] == "CUDA only"
    assert "skipped (0.6 not installed)" in md
    assert f"{len(correct)}/{len(correct)} cases within tolerance" in md


def test_a_wrong_result_is_a_failure(gpu_check: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no tolerance at all, the float32 arm cannot pass: the table says FAIL, the exit code is 1."""
    cases = gpu_check.correctness_cases
    monkeypatch.setattr(gpu_check, "correctness_cases", lambda torch, smoke: cases(torch, smoke)[:2])
    monkeypatch.setattr(gpu_check, "TOLERANCE", {"f64": (1e-9, 1e-8), "f32": (0.0, 0.0)})
    monkeypatch.setattr(gpu_check, "time_cases", lambda smoke: {})
    code, _, md = smoke(gpu_check, tmp_path)
    assert code == 1
    assert "0/2 cases within tolerance" in md
    assert "**FAIL**" in md
