"""paramcorrupt: parameter corruption of neural networks (Sun et al., AAAI 2021).

How far can a small corruption of a network's parameters push its loss, in the worst case
and at random; which parameters are the most vulnerable; and how to train so that the
network resists it.

The root imports only the core (constraint, groups, losses, theory, corruption, gradient,
evaluate, indicator). The packages above it — ``tasks``, ``train``, ``faults``, ``probe``,
``experiments``, ``parallel`` — and the training names re-exported here
(:class:`CorruptionResistant`, :func:`fit`, ...) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import losses, theory
from ._state import frozen_norm_stats
from .constraint import Constraint, ZeroVectorWarning, closed_form, dual_norm, global_top_n, lp_norm
from .corruption import (
    MODES,
    Corruption,
    corrupted,
    gradient_corruption,
    iterative_corruption,
    random_corruption,
    random_values,
    relative_gradient_corruption,
    relative_random_corruption,
)
from .errors import InputTypeError, MissingFileError, ParamCorruptError
from .evaluate import evaluate
from .gradient import dataset_gradient
from .groups import PARAMETER_TYPES, ParameterGroup, parameter_types, select
from .indicator import IndicatorResult, RandomStats, indicator
from .losses import BatchLoss, accuracy, classification_loss, sequence_loss

#: packages above the core, imported on first use (``paramcorrupt.tasks``, ...)
_PACKAGES = ("experiments", "faults", "parallel", "probe", "tasks", "train")
#: names of the ``train`` package re-exported here, imported on first use
_TRAIN_NAMES = (
    "CorruptionResistant",
    "RegularizedLoss",
    "finite_difference_gradient",
    "fit",
    "gradient_norm",
    "regularized_loss",
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
    "InputTypeError",
    "MissingFileError",
    "ParamCorruptError",
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


def __getattr__(name: str) -> Any:
    if name in _PACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _TRAIN_NAMES:
        return getattr(importlib.import_module(f"{__name__}.train"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_PACKAGES, *_TRAIN_NAMES})
