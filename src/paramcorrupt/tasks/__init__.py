"""Tasks: a model with its data, loss, metrics and parameter groups (see :class:`Task`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ParamCorruptError
from .base import Task

__all__ = ["TASKS", "Task", "get_task"]


def _digits(**options: Any) -> Task:
    from .digits import digits_task

    return digits_task(**options)


def _cifar10(**options: Any) -> Task:
    from .cifar10 import cifar10_task

    return cifar10_task(**options)


def _ptb_lm(**options: Any) -> Task:
    from .ptb_lm import ptb_lm_task

    return ptb_lm_task(**options)


def _ptb_dep(**options: Any) -> Task:
    from .parser import ptb_dep_task

    return ptb_dep_task(**options)


def _ud_ewt(**options: Any) -> Task:
    from .parser import ud_ewt_task

    return ud_ewt_task(**options)


def _multi30k(**options: Any) -> Task:
    from .translation import multi30k_task

    return multi30k_task(**options)


def _hf(head: str | None) -> Callable[..., Task]:
    def factory(**options: Any) -> Task:
        from .hf import hf_task

        if head is not None:
            options.setdefault("head", head)
        return hf_task(**options)

    return factory


#: name -> factory(**options) -> Task. Factories import their dependencies lazily.
TASKS: dict[str, Callable[..., Task]] = {
    "digits": _digits,
    "cifar10": _cifar10,
    "ptb-lm": _ptb_lm,
    "ptb-dep": _ptb_dep,
    "ud-ewt": _ud_ewt,
    "multi30k": _multi30k,
    "hf": _hf(None),
    "hf-causal-lm": _hf("causal-lm"),
    "hf-seq-cls": _hf("sequence-classification"),
}


def get_task(name: str, **options: Any) -> Task:
    """Build a registered task by name.

    Raises:
        ValueError: for an unknown name.
    """
    if name not in TASKS:
        raise ParamCorruptError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}")
    return TASKS[name](**options)
