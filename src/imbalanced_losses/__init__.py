"""Training losses for class-imbalanced problems.

Losses that optimise what imbalanced problems are judged on: average precision
(:class:`SmoothAPLoss`), recall inside a top-``q`` alert budget
(:class:`RecallAtQuantileLoss`) and partial AUC inside a false-positive budget
(:class:`PAUCAtBudgetLoss`). Pure functions live in :mod:`imbalanced_losses.functional`, exact
evaluation metrics in :mod:`imbalanced_losses.metrics`.
"""

from . import functional, metrics
from ._version import __version__
from .ap_loss import SmoothAPLoss
from .distributed import all_gather_no_grad, all_gather_with_grad
from .focal_loss import SigmoidFocalLoss, SoftmaxFocalLoss
from .pauc_loss import PAUCAtBudgetLoss
from .recall_loss import RecallAtQuantileLoss
from .warmup_wrapper import LossWarmupWrapper

__all__ = [
    "LossWarmupWrapper",
    "PAUCAtBudgetLoss",
    "RecallAtQuantileLoss",
    "SigmoidFocalLoss",
    "SmoothAPLoss",
    "SoftmaxFocalLoss",
    "__version__",
    "all_gather_no_grad",
    "all_gather_with_grad",
    "functional",
    "metrics",
]
