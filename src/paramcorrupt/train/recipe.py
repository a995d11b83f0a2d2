"""Training recipes: the optimiser, schedule, clipping and precision a task trains with.

A recipe is a plain dict, as a task gives it in ``task.info["recipe"]`` (and as the
reproduction scripts in ``benchmarks/`` build them). The keys read here:

- ``optimizer``: ``"sgd"`` (``momentum``, ``nesterov``), ``"adam"`` or ``"adamw"``
  (decoupled weight decay; both Adams take ``betas``); all take ``lr`` and ``weight_decay``;
- ``schedule``: ``"onecycle"`` (``pct_start``, default 0.25; ``cycle_momentum``, default: for
  SGD), ``"cosine"`` (to zero over the run), ``"inverse_sqrt"`` (``warmup`` steps, as
  fairseq), ``"exponential"`` (the rate times ``decay`` after every epoch) or ``None``
  (constant). Without ``schedule``, a ``warmup`` key means ``"inverse_sqrt"`` and a ``decay``
  key ``"exponential"``. Every scheduler steps after every optimiser step (as
  :func:`~paramcorrupt.train.fit` steps it), except with ``scheduler_interval: "epoch"``:
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
    >>> rec = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "schedule": "onecycle"}
    >>> opt = build_optimizer(model, rec)
    >>> type(build_scheduler(opt, rec, steps_per_epoch=10, epochs=2)).__name__
    'OneCycleLR'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .loop import fit
from .optimizer import CorruptionResistant

__all__ = ["build_optimizer", "build_scheduler", "fit_options", "fit_recipe", "inverse_sqrt", "schedule_name"]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "inverse_sqrt", "exponential", None)
DEFAULT_PCT_START = 0.25


def _base(recipe: Mapping[str, Any]) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    name = str(recipe.get("optimizer", "sgd")).lower()
    if "lr" not in recipe:
        raise ValueError("the recipe has no learning rate (lr)")
    kwargs: dict[str, Any] = {
        "lr": float(recipe["lr"]),
        "weight_decay": float(recipe.get("weight_decay", 0.0)),
    }
    if name == "sgd":
        kwargs.update(
            momentum=float(recipe.get("momentum", 0.0)),
            nesterov=bool(recipe.get("nesterov", False)),
        )
        return torch.optim.SGD, kwargs
    if name in ("adam", "adamw"):
        if recipe.get("betas") is not None:
            kwargs["betas"] = tuple(float(b) for b in recipe["betas"])
        return (torch.optim.AdamW if name == "adamw" else torch.optim.Adam), kwargs
    raise ValueError(
        f"unknown optimizer {name!r} in the recipe; expected one of {', '.join(OPTIMIZERS)}"
    )


def build_optimizer(
    model: nn.Module, recipe: Mapping[str, Any], *, resistant: Mapping[str, Any] | None = None
) -> torch.optim.Optimizer:
    """The recipe's optimiser over ``model``'s parameters; wrapped in
    :class:`~paramcorrupt.train.CorruptionResistant` when ``resistant`` gives its settings
    (``eps``, ``p``, ``n``, ``alpha``, optionally ``interval``), which then clips the combined
    gradient at the recipe's ``max_grad_norm`` itself.

    Raises:
        ValueError: for an unknown optimiser or a recipe without ``lr``.
    """
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
            model=model,
            max_grad_norm=recipe.get("max_grad_norm"),
            **kwargs,
        )
    return base(model.parameters(), **kwargs)


def schedule_name(recipe: Mapping[str, Any]) -> str | None:
    """The recipe's schedule (``None``: a constant rate), with the implicit ones resolved."""
    if "schedule" in recipe:
        name = recipe["schedule"]
        name = None if name in (None, "none", "constant") else str(name).lower()
    elif recipe.get("warmup") is not None:
        name = "inverse_sqrt"
    elif recipe.get("decay") is not None:
        name = "exponential"
    else:
        name = None
    if name not in SCHEDULES:
        raise ValueError(
            f"unknown schedule {name!r} in the recipe; expected one of {', '.join(map(str, SCHEDULES))}"
        )
    return name


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    recipe: Mapping[str, Any],
    *,
    steps_per_epoch: int,
    epochs: int,
) -> Any:
    """The recipe's learning-rate schedule over ``epochs * steps_per_epoch`` optimiser steps
    (``None`` for a constant rate)."""
    name = schedule_name(recipe)
    total = max(1, int(epochs) * int(steps_per_epoch))
    if name == "onecycle":
        cycle_momentum = recipe.get(
            "cycle_momentum", str(recipe.get("optimizer", "sgd")).lower() == "sgd"
        )
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=float(recipe["lr"]),
            total_steps=total,
            pct_start=_pct_start(float(recipe.get("pct_start", DEFAULT_PCT_START)), total),
            cycle_momentum=bool(cycle_momentum),
        )
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if name == "inverse_sqrt":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, inverse_sqrt(int(recipe.get("warmup", 4000))))
    if name == "exponential" and _interval(recipe) == "epoch":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, float(recipe.get("decay", 1.0)))
    if name == "exponential":
        decay, per_epoch = float(recipe.get("decay", 1.0)), max(1, int(steps_per_epoch))
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


def _interval(recipe: Mapping[str, Any]) -> str:
    interval = str(recipe.get("scheduler_interval", "step"))
    if interval not in ("step", "epoch"):
        raise ValueError(f"scheduler_interval must be 'step' or 'epoch' in the recipe, got {interval!r}")
    return interval


def _pct_start(pct: float, total: int) -> float:
    """``pct`` unless ``pct * total`` is exactly 1, where torch's OneCycleLR divides by zero (a
    warm-up phase of zero steps): then a hair less, a one-step warm-up."""
    return pct * (1 - 1e-6) if math.isclose(pct * total, 1.0) else pct


def fit_options(recipe: Mapping[str, Any], *, resistant: bool = False) -> dict[str, Any]:
    """The recipe's keyword arguments for :func:`~paramcorrupt.train.fit`: ``autocast_dtype``,
    ``max_grad_norm`` (``None`` for a resistant optimiser, which clips itself) and
    ``scheduler_interval``."""
    return {
        "autocast_dtype": torch.bfloat16 if recipe.get("bf16") else None,
        "max_grad_norm": None if resistant else recipe.get("max_grad_norm"),
        "scheduler_interval": _interval(recipe),
    }


def fit_recipe(
    model: nn.Module,
    loader: Any,
    loss_fn: Any,
    recipe: Mapping[str, Any],
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
        >>> len(fit_recipe(model, data, classification_loss, {"lr": 0.1, "epochs": 2}))
        2
    """
    epochs = int(recipe["epochs"] if epochs is None else epochs)
    optimizer = build_optimizer(model, recipe, resistant=resistant)
    scheduler = build_scheduler(optimizer, recipe, steps_per_epoch=len(loader), epochs=epochs)
    options = {**fit_options(recipe, resistant=resistant is not None), **fit_kwargs}
    return fit(model, optimizer, loader, loss_fn, epochs=epochs, scheduler=scheduler, **options)
