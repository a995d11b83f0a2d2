"""The Task protocol: the one interface probes, training and the CLI depend on, and the check
of a task factory's integer options (:func:`check_int`: typed values, never strings; the
command line converts ``--task-option`` strings by the factory's annotations)."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import InputTypeError, ParamCorruptError
from ..groups import ParameterGroup
from ..losses import LossFn, Metric

__all__ = ["Task", "check_int"]


def check_int(value: Any, what: str, minimum: int = 1) -> int:
    """``value``, an integer (a bool or a string is not one), checked to be ``>= minimum``.

    Raises:
        TypeError: (:class:`~paramcorrupt.errors.InputTypeError`) for a value that is no integer.
        ValueError: for one below ``minimum``.

    Example:
        >>> check_int(3, "batch_size")
        3
    """
    if isinstance(value, bool):
        raise InputTypeError(f"{what} must be an integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise InputTypeError(f"{what} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ParamCorruptError(f"{what} must be >= {minimum}, got {number}")
    return number

Grouping = Callable[[nn.Module], "dict[str, ParameterGroup]"]


@dataclass
class Task:
    """A model with its data, loss, metrics and the parameter groups worth probing.

    Attributes:
        name: the task's name ("digits", "cifar10", ...).
        model: the network (trained, or to be trained).
        gradient_loader: the data the dataset gradient is taken on (the paper: the training
            set, without augmentation).
        eval_loader: the data metrics are reported on (a test or validation set).
        loss_fn: ``loss_fn(model, batch)`` -> :class:`~paramcorrupt.BatchLoss`.
        metrics: name -> ``metric(output, batch)`` -> ``(total, count)``.
        primary_metric: the metric tables lead with; its direction and display are the
            metric's own (:func:`paramcorrupt.losses.metric_info`; ``"loss"``: lower is better).
        groupings: name -> function model -> {group label: ParameterGroup}, e.g. "type",
            "position" (see :mod:`paramcorrupt.groups`).
        train_loader: the data to train on (with augmentation), when the task can train.
        info: anything else (sizes, seeds, the training recipe).
        chance: the value of ``primary_metric`` that guessing gets (a k-class classifier's
            accuracy: 1 / k), in the metric's own units; None when it has none or is unknown.
            Written into a probe's results header, drawn in the report's curves.
    """

    name: str
    model: nn.Module
    gradient_loader: Iterable[Any]
    eval_loader: Iterable[Any]
    loss_fn: LossFn
    metrics: Mapping[str, Metric] = field(default_factory=dict)
    primary_metric: str = "loss"
    groupings: Mapping[str, Grouping] = field(default_factory=dict)
    train_loader: Iterable[Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    chance: float | None = None
