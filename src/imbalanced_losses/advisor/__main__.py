"""``python -m imbalanced_losses.advisor``: see :func:`imbalanced_losses.advisor.main`."""

from __future__ import annotations

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
