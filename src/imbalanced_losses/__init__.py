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
from .asymmetric_loss import AsymmetricLoss
from .distributed import all_gather_no_grad, all_gather_with_grad
from .drw import DeferredReweighting
from .focal_loss import SigmoidFocalLoss, SoftmaxFocalLoss
from .functional.class_weights import class_balanced_weights
from .functional.logit_adjusted import adjust_logits
from .ldam_loss import LDAMLoss
from .logit_adjusted_loss import BalancedSoftmaxLoss, LogitAdjustedLoss
from .pauc_loss import PAUCAtBudgetLoss
from .poly_loss import PolyLoss
from .recall_loss import RecallAtQuantileLoss
from .seesaw_loss import SeesawLoss
from .warmup_wrapper import LossWarmupWrapper

__all__ = [
    "AsymmetricLoss",
    "BalancedSoftmaxLoss",
    "DeferredReweighting",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "LossWarmupWrapper",
    "PAUCAtBudgetLoss",
    "PolyLoss",
    "RecallAtQuantileLoss",
    "SeesawLoss",
    "SigmoidFocalLoss",
    "SmoothAPLoss",
    "SoftmaxFocalLoss",
    "__version__",
    "adjust_logits",
    "all_gather_no_grad",
    "all_gather_with_grad",
    "class_balanced_weights",
    "functional",
    "metrics",
]
