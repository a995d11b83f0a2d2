"""paramcorrupt: parameter corruption of neural networks (Sun et al., AAAI 2021).

How far can a small corruption of a network's parameters push its loss, in the worst case
and at random; which parameters are the most vulnerable; and how to train so that the
network resists it.

The root imports only the core (constraint, groups, losses, theory, corruption, gradient,
evaluate, indicator, curvature, formats: ``quantize``) and exports their public names. The
packages above it — ``tasks``, ``train`` (:class:`~paramcorrupt.train.CorruptionResistant`, :func:`~paramcorrupt.train.fit`),
``faults``, ``probe``, ``experiments``, ``parallel`` — are reached as attributes
(``paramcorrupt.tasks.get_task``), loaded on first use: the core never imports them.
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
    iterative_relative_corruption,
    random_corruption,
    random_values,
    relative_gradient_corruption,
    relative_random_corruption,
)
from .curvature import Curvature, curvature, hessian_vector_product, quadratic_form
from .errors import InputTypeError, MissingFileError, ParamCorruptError
from .evaluate import evaluate
from .formats import StoredTensor, quantize_tensor
from .formats.model import Quantized, quantize, quantized
from .gradient import dataset_gradient
from .groups import PARAMETER_TYPES, ParameterGroup, parameter_types, select
from .indicator import IndicatorResult, RandomStats, indicator
from .losses import BatchLoss, accuracy, classification_loss, sequence_loss

#: packages above the core, imported on first use (``paramcorrupt.tasks``, ...)
_PACKAGES = ("experiments", "faults", "parallel", "probe", "tasks", "train")

__version__ = "0.1.0"

__all__ = [
    "MODES",
    "PARAMETER_TYPES",
    "Quantized",
    "StoredTensor",
    "BatchLoss",
    "Constraint",
    "Corruption",
    "Curvature",
    "IndicatorResult",
    "InputTypeError",
    "MissingFileError",
    "ParamCorruptError",
    "ParameterGroup",
    "RandomStats",
    "ZeroVectorWarning",
    "accuracy",
    "classification_loss",
    "closed_form",
    "corrupted",
    "curvature",
    "dataset_gradient",
    "dual_norm",
    "evaluate",
    "frozen_norm_stats",
    "global_top_n",
    "gradient_corruption",
    "hessian_vector_product",
    "indicator",
    "iterative_corruption",
    "iterative_relative_corruption",
    "losses",
    "lp_norm",
    "parameter_types",
    "quantize",
    "quantize_tensor",
    "quadratic_form",
    "quantized",
    "random_corruption",
    "random_values",
    "relative_gradient_corruption",
    "relative_random_corruption",
    "select",
    "sequence_loss",
    "tasks",
    "theory",
]


def __getattr__(name: str) -> Any:
    if name in _PACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_PACKAGES})
