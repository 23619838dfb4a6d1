r"""Should a ranking loss replace cross-entropy here? A diagnostic on a baseline's held-out scores.

:func:`contestable_mass` measures, per class, how much coverage at an alert budget a
re-ordering near the cut could still gain (the *headroom*), how many of the missed positives
sit just below the cut (the *contestedness*) and the false-positive-rate window where false
alerts and near misses meet. :func:`advise` turns these into a recommendation
(``PAUCAtBudgetLoss``, ``RecallAtQuantileLoss`` or cross-entropy) with constructor arguments.
Its decision thresholds are **provisional**. The meta-benchmark ``benchmarks/effectiveness.py``
found the headroom a reliable upper bound on the coverage a ranking loss gains, but no
thresholds of the decision rule predicted which models gain (``benchmarks/EFFECTIVENESS.md``):
a small headroom is a reliable "no"; anything else is a lead to test.

Command line (``.csv`` with columns ``score``/``label``, ``.npz`` or ``.pt`` files)::

    python -m imbalanced_losses.advisor scores.csv --budget 0.001 [--near 2] [--n-boot 1000] [--plot out.png]

Not imported by ``import imbalanced_losses``: import ``imbalanced_losses.advisor`` itself.
"""

from __future__ import annotations

from ._advise import (
    CONTESTEDNESS_MIN,
    DEFAULT_TEMPERATURE,
    HEADROOM_MIN,
    KEEP_CROSS_ENTROPY,
    MDE_Z,
    TEMPERATURE_BOUNDS,
    TEMPERATURE_SPREAD_FACTOR,
    Advice,
    advise,
)
from ._cli import main
from ._mass import ContestableMass, contestable_mass

__all__ = [
    "CONTESTEDNESS_MIN",
    "DEFAULT_TEMPERATURE",
    "HEADROOM_MIN",
    "KEEP_CROSS_ENTROPY",
    "MDE_Z",
    "TEMPERATURE_BOUNDS",
    "TEMPERATURE_SPREAD_FACTOR",
    "Advice",
    "ContestableMass",
    "advise",
    "contestable_mass",
    "main",
]
