"""Tasks: a model with its data, loss, metrics and parameter groups (see :class:`Task`).

:data:`TASKS` maps each registered name to its factory, the real function with its typed
keyword options (``TASKS["cifar10"]`` is :func:`~paramcorrupt.tasks.cifar10.cifar10_task`;
``hf-causal-lm`` and ``hf-seq-cls`` are :func:`~paramcorrupt.tasks.hf.hf_task` with the head
fixed), so that ``inspect.signature`` and ``typing.get_type_hints`` read its options: the
command line converts ``--task-option KEY=VALUE`` strings by them. A factory's module is
imported when the factory is first looked up.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..errors import ParamCorruptError
from .base import Task

__all__ = ["TASKS", "Task", "get_task", "task_parameters"]


class _Registry(Mapping[str, Callable[..., Task]]):
    """name -> factory, each imported from its module on first lookup."""

    def __init__(self, entries: Mapping[str, tuple[str, str, Mapping[str, Any]]]) -> None:
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> Callable[..., Task]:
        module, attribute, fixed = self._entries[name]
        factory = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
        return functools.partial(factory, **fixed) if fixed else factory

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


#: name -> factory(**options) -> Task (the factory itself; see the module's docstring)
TASKS: Mapping[str, Callable[..., Task]] = _Registry(
    {
        "digits": ("digits", "digits_task", {}),
        "cifar10": ("cifar10", "cifar10_task", {}),
        "ptb-lm": ("ptb_lm", "ptb_lm_task", {}),
        "ptb-dep": ("parser", "ptb_dep_task", {}),
        "ud-ewt": ("parser", "ud_ewt_task", {}),
        "multi30k": ("translation", "multi30k_task", {}),
        "hf": ("hf", "hf_task", {}),
        "hf-causal-lm": ("hf", "hf_task", {"head": "causal-lm"}),
        "hf-seq-cls": ("hf", "hf_task", {"head": "sequence-classification"}),
    }
)


def task_parameters(factory: Callable[..., Any]) -> list[str]:
    """The keyword options ``factory`` takes (a ``functools.partial``'s fixed ones included:
    they may be given again).

    Example:
        >>> task_parameters(TASKS["digits"])[:3]
        ['seed', 'epochs', 'batch_size']
    """
    target = factory.func if isinstance(factory, functools.partial) else factory
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [name for name, p in inspect.signature(target).parameters.items() if p.kind in kinds]


def get_task(name: str, **options: Any) -> Task:
    """Build a registered task by name; its options are checked against the factory's
    signature before it is called.

    Raises:
        ValueError: (:class:`~paramcorrupt.errors.ParamCorruptError`) for an unknown name, or
            an option the factory does not take (naming the ones it does).
    """
    if name not in TASKS:
        raise ParamCorruptError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}")
    factory = TASKS[name]
    valid = task_parameters(factory)
    unknown = [key for key in options if key not in valid]
    if unknown:
        raise ParamCorruptError(f"unknown option {unknown[0]!r} for the {name} task; valid: {', '.join(sorted(valid))}")
    return factory(**options)
