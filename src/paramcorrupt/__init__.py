"""paramcorrupt: parameter corruption of neural networks (Sun et al., AAAI 2021).

How far can a small corruption of a network's parameters push its loss, in the worst case
and at random; which parameters are the most vulnerable; and how to train so that the
network resists it.
"""

from . import losses, tasks, theory
from ._state import frozen_norm_stats
from .apply import corrupted
from .constraint import Constraint, ZeroVectorWarning, closed_form, dual_norm, global_top_n, lp_norm
from .corruption import (
    MODES,
    Corruption,
    gradient_corruption,
    random_corruption,
    random_values,
    relative_gradient_corruption,
    relative_random_corruption,
)
from .evaluate import evaluate
from .gradient import dataset_gradient
from .groups import PARAMETER_TYPES, ParameterGroup, parameter_types, select
from .indicator import IndicatorResult, RandomStats, indicator
from .iterative import iterative_corruption
from .losses import BatchLoss, accuracy, classification_loss, sequence_loss
from .train import (
    CorruptionResistant,
    RegularizedLoss,
    finite_difference_gradient,
    fit,
    gradient_norm,
    regularized_loss,
)

__version__ = "0.1.0"

__all__ = [
    "MODES",
    "PARAMETER_TYPES",
    "BatchLoss",
    "Constraint",
    "Corruption",
    "CorruptionResistant",
    "IndicatorResult",
    "ParameterGroup",
    "RandomStats",
    "RegularizedLoss",
    "ZeroVectorWarning",
    "accuracy",
    "classification_loss",
    "closed_form",
    "corrupted",
    "dataset_gradient",
    "dual_norm",
    "evaluate",
    "finite_difference_gradient",
    "fit",
    "frozen_norm_stats",
    "global_top_n",
    "gradient_corruption",
    "gradient_norm",
    "indicator",
    "iterative_corruption",
    "losses",
    "lp_norm",
    "parameter_types",
    "random_corruption",
    "random_values",
    "relative_gradient_corruption",
    "relative_random_corruption",
    "regularized_loss",
    "select",
    "sequence_loss",
    "tasks",
    "theory",
]
