"""examples/token_tagging.py runs end to end in its quick mode (a few seconds on CPU)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "token_tagging.py"


@pytest.mark.parametrize("padding", ["drop", "keep"])
def test_token_tagging_quick(padding: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.argv", [str(SCRIPT), "--quick", "--padding", padding])
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    finally:
        torch.set_num_threads(threads)  # the script sets one thread for itself
    out = capsys.readouterr().out
    queue_size = int(re.search(r"queue_size=(\d+)", out)[1])  # type: ignore[index]
    fills = [int(f) for f in re.findall(r"real rows from the queue (\d+)/", out)]
    assert fills, out
    if padding == "drop":  # every slot holds a real token
        assert all(f == queue_size for f in fills), out
    else:  # padding rows hold about a third of the slots
        assert all(0.5 * queue_size < f < 0.8 * queue_size for f in fills), out
    aps = [float(v) for v in re.findall(r"^(?:PER|LOC|ORG)\s+\d+\s+([0-9.]+)", out, flags=re.M)]
    assert len(aps) == 3, out
    assert all(ap > 0.4 for ap in aps), out  # far above the tags' base rates (< 3 %)
