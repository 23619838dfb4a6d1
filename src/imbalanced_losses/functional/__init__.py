"""Pure, stateless ranking losses: tensors in, tensors out.

No queue, no all-gather, no random subsampling: the modules in :mod:`imbalanced_losses` add
those and call these functions on the resulting pool. Hyperparameters are keyword-only.
"""

from .focal import sigmoid_focal_loss, softmax_focal_loss
from .pauc_at_budget import pauc_at_budget_loss
from .recall_at_quantile import recall_at_quantile_loss
from .smooth_ap import smooth_ap_loss

__all__ = [
    "pauc_at_budget_loss",
    "recall_at_quantile_loss",
    "sigmoid_focal_loss",
    "smooth_ap_loss",
    "softmax_focal_loss",
]
