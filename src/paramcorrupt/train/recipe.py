"""Training recipes: the optimiser, schedule, clipping and precision a task trains with.

A :class:`Recipe` is a typed, frozen record, as a task gives it in ``task.info["recipe"]``;
:func:`as_recipe` reads one from a mapping with the same keys (as the reproduction scripts in
``benchmarks/`` and a user's ``info["recipe"]`` give them), refusing unknown keys. Its fields:

- ``optimizer``: ``"sgd"`` (``momentum``, ``nesterov``), ``"adam"`` or ``"adamw"``
  (decoupled weight decay; both Adams take ``betas``); all take ``lr`` and ``weight_decay``;
- ``schedule``: ``"onecycle"`` (``pct_start``, default 0.25; ``cycle_momentum``, default: for
  SGD), ``"cosine"`` (to zero over the run), ``"inverse_sqrt"`` (``warmup`` steps, default
  4000, as fairseq), ``"exponential"`` (the rate times ``decay`` after every epoch) or ``None``
  (constant; "none" and "constant" are read as ``None``). The schedule is always named:
  ``warmup`` without ``"inverse_sqrt"``, or ``decay`` without ``"exponential"``, is a
  ``ValueError``. Every scheduler steps after every optimiser step (as
  :func:`~paramcorrupt.train.fit` steps it), except with ``scheduler_interval="epoch"``:
  then fit steps it after every epoch, and ``"exponential"`` is ``ExponentialLR`` (the rate
  multiplied by ``decay`` at each epoch's end, as the parser's recipe trains);
- ``max_grad_norm``: clip the gradient norm (``None``: no clipping);
- ``bf16``: forward under ``torch.autocast(dtype=torch.bfloat16)``;
- ``epochs``, ``batch_size``: read by the callers (the train CLI, the tasks' own training).

:func:`fit_recipe` is the one way a recipe trains: the optimiser, the schedule and
:func:`~paramcorrupt.train.fit`'s options, all from the recipe. The tasks train through it
when they are asked to (``epochs > 0``); :mod:`paramcorrupt.experiments` through it for the
train CLI and the reproductions.

Example:
    >>> model = torch.nn.Linear(2, 2)
    >>> rec = Recipe(optimizer="sgd", lr=0.1, momentum=0.9, schedule="onecycle")
    >>> opt = build_optimizer(model, rec)
    >>> type(build_scheduler(opt, rec, steps_per_epoch=10, epochs=2)).__name__
    'OneCycleLR'
    >>> as_recipe({"lr": 0.1, "label_smoothing": 0.1})
    Traceback (most recent call last):
    ...
    paramcorrupt.errors.ParamCorruptError: unknown recipe key 'label_smoothing'; the keys are optimizer, lr, momentum, nesterov, weight_decay, betas, schedule, pct_start, cycle_momentum, warmup, decay, scheduler_interval, max_grad_norm, bf16, epochs, batch_size
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InputTypeError, ParamCorruptError
from .loop import fit
from .optimizer import CorruptionResistant

__all__ = [
    "Recipe",
    "as_recipe",
    "build_optimizer",
    "build_scheduler",
    "fit_options",
    "fit_recipe",
    "inverse_sqrt",
    "schedule_name",
]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "inverse_sqrt", "exponential", None)
DEFAULT_PCT_START = 0.25


@dataclass(frozen=True)
class Recipe:
    """How a model trains (see the module's docstring for each field).

    Frozen: derive another with :meth:`replace`. Built from a mapping with :func:`as_recipe`.

    Raises:
        ValueError: for an unknown optimiser, schedule or scheduler interval, or a ``warmup``
            (``decay``) without the schedule that reads it.
    """

    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] | None = None
    schedule: str | None = None
    pct_start: float = DEFAULT_PCT_START
    cycle_momentum: bool | None = None
    warmup: int | None = None
    decay: float | None = None
    scheduler_interval: str = "step"
    max_grad_norm: float | None = None
    bf16: bool = False
    epochs: int | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        optimizer = str(self.optimizer).lower()
        if optimizer not in OPTIMIZERS:
            raise ParamCorruptError(
                f"unknown optimizer {self.optimizer!r} in the recipe; expected one of {', '.join(OPTIMIZERS)}"
            )
        schedule = self.schedule
        schedule = None if schedule in (None, "none", "constant") else str(schedule).lower()
        if schedule not in SCHEDULES:
            raise ParamCorruptError(
                f"unknown schedule {self.schedule!r} in the recipe; expected one of {', '.join(map(str, SCHEDULES))}"
            )
        if self.scheduler_interval not in ("step", "epoch"):
            raise ParamCorruptError(
                f"scheduler_interval must be 'step' or 'epoch' in the recipe, got {self.scheduler_interval!r}"
            )
        if self.warmup is not None and schedule != "inverse_sqrt":
            raise ParamCorruptError(f"the recipe gives warmup={self.warmup} but schedule={schedule!r}: warmup is read by schedule='inverse_sqrt' only")
        if self.decay is not None and schedule != "exponential":
            raise ParamCorruptError(f"the recipe gives decay={self.decay} but schedule={schedule!r}: decay is read by schedule='exponential' only")
        object.__setattr__(self, "optimizer", optimizer)
        object.__setattr__(self, "schedule", schedule)
        if self.betas is not None:
            object.__setattr__(self, "betas", tuple(self.betas))

    def replace(self, **changes: Any) -> Recipe:
        """A copy with ``changes`` (recipe keys).

        Raises:
            ValueError: for an unknown key.
        """
        _check_keys(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields that differ from the defaults, as a plain dict (JSON values)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        }


#: the keys a recipe has, in order
RECIPE_KEYS = tuple(f.name for f in dataclasses.fields(Recipe))


def _check_keys(keys: Any) -> None:
    for key in keys:
        if key not in RECIPE_KEYS:
            raise ParamCorruptError(f"unknown recipe key {key!r}; the keys are {', '.join(RECIPE_KEYS)}")


def as_recipe(recipe: Recipe | Mapping[str, Any]) -> Recipe:
    """``recipe`` as a :class:`Recipe`: itself, or one built from a mapping of its keys.

    Raises:
        ValueError: for a key that is not a recipe field (naming it and the valid ones), or a
            value the recipe refuses.
    """
    if isinstance(recipe, Recipe):
        return recipe
    if not isinstance(recipe, Mapping):
        raise InputTypeError(f"a recipe is a Recipe or a mapping of its keys, got {type(recipe).__name__}")
    _check_keys(recipe)
    return Recipe(**recipe)


def _base(recipe: Recipe) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    name = recipe.optimizer
    if recipe.lr is None:
        raise ParamCorruptError("the recipe has no learning rate (lr)")
    kwargs: dict[str, Any] = {
        "lr": float(recipe.lr),
        "weight_decay": float(recipe.weight_decay),
    }
    if name == "sgd":
        kwargs.update(momentum=float(recipe.momentum), nesterov=bool(recipe.nesterov))
        return torch.optim.SGD, kwargs
    if recipe.betas is not None:
        kwargs["betas"] = tuple(float(b) for b in recipe.betas)
    return (torch.optim.AdamW if name == "adamw" else torch.optim.Adam), kwargs


def build_optimizer(
    model: nn.Module, recipe: Recipe | Mapping[str, Any], *, resistant: Mapping[str, Any] | None = None
) -> torch.optim.Optimizer:
    """The recipe's optimiser over ``model``'s parameters; wrapped in
    :class:`~paramcorrupt.train.CorruptionResistant` when ``resistant`` gives its settings
    (``eps``, ``p``, ``n``, ``alpha``, optionally ``interval``, ``relative`` and ``eta``), which then clips the combined
    gradient at the recipe's ``max_grad_norm`` itself.

    Raises:
        ValueError: for an unknown optimiser or a recipe without ``lr``.
    """
    recipe = as_recipe(recipe)
    base, kwargs = _base(recipe)
    if resistant is not None:
        return CorruptionResistant(
            model.parameters(),
            base,
            eps=resistant["eps"],
            p=resistant.get("p", 2.0),
            n=resistant.get("n"),
            alpha=resistant.get("alpha", 0.5),
            interval=resistant.get("interval", 1),
            relative=resistant.get("relative", False),
            eta=resistant.get("eta", 0.01) if resistant.get("relative") else 0.0,
            model=model,
            max_grad_norm=recipe.max_grad_norm,
            **kwargs,
        )
    return base(model.parameters(), **kwargs)


def schedule_name(recipe: Recipe | Mapping[str, Any]) -> str | None:
    """The recipe's schedule (``None``: a constant rate)."""
    return as_recipe(recipe).schedule


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    recipe: Recipe | Mapping[str, Any],
    *,
    steps_per_epoch: int,
    epochs: int,
) -> Any:
    """The recipe's learning-rate schedule over ``epochs * steps_per_epoch`` optimiser steps
    (``None`` for a constant rate)."""
    recipe = as_recipe(recipe)
    name = recipe.schedule
    total = max(1, int(epochs) * int(steps_per_epoch))
    if name == "onecycle":
        cycle_momentum = recipe.cycle_momentum
        if cycle_momentum is None:
            cycle_momentum = recipe.optimizer == "sgd"
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=float(recipe.lr),  # type: ignore[arg-type]
            total_steps=total,
            pct_start=_pct_start(float(recipe.pct_start), total),
            cycle_momentum=bool(cycle_momentum),
        )
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if name == "inverse_sqrt":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, inverse_sqrt(int(4000 if recipe.warmup is None else recipe.warmup)))
    decay = float(1.0 if recipe.decay is None else recipe.decay)
    if name == "exponential" and recipe.scheduler_interval == "epoch":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, decay)
    if name == "exponential":
        per_epoch = max(1, int(steps_per_epoch))
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: decay ** (step // per_epoch)
        )
    return None


def inverse_sqrt(warmup: int, init_ratio: float = 1e-4) -> Any:
    """fairseq's ``inverse_sqrt`` schedule as a ``LambdaLR`` factor of the base rate: a linear
    warm-up from ``init_ratio`` over ``warmup`` steps, then ``sqrt(warmup / step)``. Step 0
    (the scheduler's construction) counts as step 1, as the Multi30k runs trained.

    Example:
        >>> f = inverse_sqrt(4)
        >>> [round(f(s), 4) for s in (0, 1, 4, 16)]
        [0.2501, 0.2501, 1.0, 0.5]
    """
    warmup = max(1, int(warmup))

    def factor(step: int) -> float:
        step = max(step, 1)
        if step < warmup:
            return init_ratio + (1 - init_ratio) * step / warmup
        return math.sqrt(warmup / step)

    return factor


def _pct_start(pct: float, total: int) -> float:
    """``pct`` unless ``pct * total`` is exactly 1, where torch's OneCycleLR divides by zero (a
    warm-up phase of zero steps): then a hair less, a one-step warm-up."""
    return pct * (1 - 1e-6) if math.isclose(pct * total, 1.0) else pct


def fit_options(recipe: Recipe | Mapping[str, Any], *, resistant: bool = False) -> dict[str, Any]:
    """The recipe's keyword arguments for :func:`~paramcorrupt.train.fit`: ``autocast_dtype``,
    ``max_grad_norm`` (``None`` for a resistant optimiser, which clips itself) and
    ``scheduler_interval``."""
    recipe = as_recipe(recipe)
    return {
        "autocast_dtype": torch.bfloat16 if recipe.bf16 else None,
        "max_grad_norm": None if resistant else recipe.max_grad_norm,
        "scheduler_interval": recipe.scheduler_interval,
    }


def fit_recipe(
    model: nn.Module,
    loader: Any,
    loss_fn: Any,
    recipe: Recipe | Mapping[str, Any],
    *,
    epochs: int | None = None,
    resistant: Mapping[str, Any] | None = None,
    **fit_kwargs: Any,
) -> list[dict[str, float]]:
    """Train ``model`` with ``recipe`` through :func:`~paramcorrupt.train.fit`: the recipe's
    optimiser (wrapped in CorruptionResistant when ``resistant`` gives its settings), its
    schedule over ``epochs`` (default: the recipe's) x ``len(loader)`` steps, its precision,
    clipping and scheduler interval. ``fit_kwargs`` go to fit as they are (``penalty``,
    ``checkpoint``, ``identity``, ``progress``, ``on_epoch_end``...). Returns fit's history;
    the model's modes are restored (call ``model.eval()`` to evaluate).

    Example:
        >>> from paramcorrupt.losses import classification_loss
        >>> model = nn.Linear(2, 2)
        >>> data = [(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))]
        >>> len(fit_recipe(model, data, classification_loss, Recipe(lr=0.1, epochs=2)))
        2
    """
    recipe = as_recipe(recipe)
    if epochs is None and recipe.epochs is None:
        raise ParamCorruptError("the recipe gives no epochs: give epochs")
    epochs = int(recipe.epochs if epochs is None else epochs)  # type: ignore[arg-type]
    optimizer = build_optimizer(model, recipe, resistant=resistant)
    scheduler = build_scheduler(optimizer, recipe, steps_per_epoch=len(loader), epochs=epochs)
    options = {**fit_options(recipe, resistant=resistant is not None), **fit_kwargs}
    return fit(model, optimizer, loader, loss_fn, epochs=epochs, scheduler=scheduler, **options)
