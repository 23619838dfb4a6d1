"""Optional integrations with training frameworks.

Each sub-module imports its framework only when it is itself imported, so
``import imbalanced_losses`` never needs them:

* :mod:`imbalanced_losses.integrations.lightning`: :class:`WarmupCallback`, which drives
  :class:`~imbalanced_losses.LossWarmupWrapper`'s hooks from a Lightning ``Trainer``
  (``pip install "imbalanced-losses[lightning]"``).
* :mod:`imbalanced_losses.integrations.torchmetrics`: :class:`torchmetrics.Metric` versions of
  the exact metrics, accumulated over an epoch and synchronised across ranks
  (``pip install "imbalanced-losses[torchmetrics]"``).
"""
