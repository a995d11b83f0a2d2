"""Make it robust: adversarial corruption-resistant training (Eq. 13-16).

- :class:`CorruptionResistant` — an optimiser wrapper minimising
  L* = (1 - alpha) L(w) + alpha L(w + a_hat) (Eq. 13) with any base optimiser;
- :func:`regularized_loss` / :class:`RegularizedLoss` — the regulariser L + lambda ||g||_q
  (Eq. 16), exact by double back-propagation; :func:`finite_difference_gradient` — the same by
  finite differences on the two-pass machinery (lambda = alpha * eps);
- :func:`fit` — a small training loop with micro-batches, autocast, GradScaler and
  resumable checkpoints.
"""

from .loop import fit, load_checkpoint, save_checkpoint, split_batch, training_closure
from .optimizer import CorruptionResistant
from .regularizer import (
    RegularizedLoss,
    finite_difference_gradient,
    gradient_norm,
    regularized_loss,
)

__all__ = [
    "CorruptionResistant",
    "RegularizedLoss",
    "finite_difference_gradient",
    "fit",
    "gradient_norm",
    "load_checkpoint",
    "regularized_loss",
    "save_checkpoint",
    "split_batch",
    "training_closure",
]
