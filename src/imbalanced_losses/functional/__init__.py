"""Pure, stateless ranking losses: tensors in, tensors out.

No queue, no all-gather, no random subsampling: the modules in :mod:`imbalanced_losses` add
those and call these functions on the resulting pool. Hyperparameters are keyword-only.
"""

from .asymmetric import asymmetric_loss
from .class_weights import class_balanced_weights
from .focal import sigmoid_focal_loss, softmax_focal_loss
from .ldam import ldam_loss
from .logit_adjusted import adjust_logits, logit_adjusted_loss
from .pauc_at_budget import pauc_at_budget_loss
from .poly import poly_loss
from .recall_at_quantile import recall_at_quantile_loss
from .seesaw import seesaw_loss
from .smooth_ap import smooth_ap_loss

__all__ = [
    "adjust_logits",
    "asymmetric_loss",
    "class_balanced_weights",
    "ldam_loss",
    "logit_adjusted_loss",
    "pauc_at_budget_loss",
    "poly_loss",
    "recall_at_quantile_loss",
    "seesaw_loss",
    "sigmoid_focal_loss",
    "smooth_ap_loss",
    "softmax_focal_loss",
]
