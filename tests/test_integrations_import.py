"""Optional integrations stay optional: nothing imports a framework until asked, and a missing one is named."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_importing_the_package_imports_no_framework() -> None:
    result = _run(
        """
        import sys
        import imbalanced_losses, imbalanced_losses.functional, imbalanced_losses.metrics
        import imbalanced_losses.integrations
        optional = ("lightning", "pytorch_lightning", "torchmetrics", "torch._dynamo")
        loaded = sorted(m for m in optional if m in sys.modules)
        print(loaded)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_missing_lightning_raises_an_import_error_that_says_what_to_install() -> None:
    # `None` in sys.modules makes `import lightning.pytorch` / `import pytorch_lightning` fail,
    # as on a machine without the extra.
    result = _run(
        """
        import sys
        sys.modules["lightning"] = sys.modules["lightning.pytorch"] = sys.modules["pytorch_lightning"] = None
        try:
            import imbalanced_losses.integrations.lightning
        except ImportError as exc:
            print(type(exc).__name__, exc)
        else:
            print("imported")
        """
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout.strip()
    assert out.startswith("ImportError imbalanced_losses.integrations.lightning needs Lightning")
    assert 'pip install "imbalanced-losses[lightning]"' in out


def test_standalone_pytorch_lightning_is_the_fallback() -> None:
    pytest.importorskip("pytorch_lightning")
    result = _run(
        """
        import sys
        sys.modules["lightning"] = sys.modules["lightning.pytorch"] = None
        import pytorch_lightning
        from imbalanced_losses.integrations.lightning import WarmupCallback
        print(issubclass(WarmupCallback, pytorch_lightning.Callback))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_lightning_pytorch_is_preferred() -> None:
    pytest.importorskip("lightning.pytorch")
    result = _run(
        """
        import lightning.pytorch
        from imbalanced_losses.integrations.lightning import WarmupCallback
        print(issubclass(WarmupCallback, lightning.pytorch.Callback))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
