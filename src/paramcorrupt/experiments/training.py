"""Training a task from its recipe with one method (plain, corruption-resistant L*, or the
gradient regulariser): the methods' settings (:class:`MethodConfig`; the command line's
``NAME[:key=value]...`` specs: :func:`paramcorrupt.cli.values.parse_method`), the task a run
trains (:class:`TaskSetup`, :func:`task_setup`) and :func:`train_model`,
the one path from a task's recipe (``task.info["recipe"]``) to
:func:`paramcorrupt.train.recipe.fit_recipe` that ``paramcorrupt train`` / ``compare`` use.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..constraint import Constraint
from ..errors import MissingFileError, ParamCorruptError
from ..train import RegularizedLoss
from ..train.recipe import Recipe, as_recipe, fit_recipe

__all__ = [
    "DEFAULT_EPOCHS",
    "METHODS",
    "MethodConfig",
    "TaskSetup",
    "build_task",
    "method_settings",
    "task_setup",
    "train_model",
    "validate",
]

logger = logging.getLogger(__name__)

METHODS = ("plain", "resistant", "regularised")
#: epochs when neither the task's recipe nor the caller says
DEFAULT_EPOCHS = 10


@dataclass(frozen=True)
class MethodConfig:
    """One training recipe: the method and its hyperparameters."""

    method: str = "plain"
    eps: float = 0.5
    p: float = 2.0
    n: int | None = None
    alpha: float = 0.5
    interval: int = 1
    relative: bool = False
    eta: float = 0.01
    lam: float = 0.25
    epochs: int = 30
    lr: float = 0.1
    batch_size: int | None = 64

    def label(self) -> str:
        if self.method == "plain":
            return "plain"
        if self.method == "regularised":
            return f"regularised (λ={self.lam:g}, p={_p_text(self.p)})"
        extra = f", interval={self.interval}" if self.interval != 1 else ""
        n = "" if self.n is None else f", n={self.n}"
        if self.relative:
            return f"resistant relative (ε={self.eps:g}, α={self.alpha:g}, p={_p_text(self.p)}, η={self.eta:g}{n}{extra})"
        return f"resistant (ε={self.eps:g}, α={self.alpha:g}, p={_p_text(self.p)}{n}{extra})"

    def slug(self) -> str:
        if self.method == "plain":
            return f"plain-e{self.epochs}"
        if self.method == "regularised":
            return f"regularised-lam{self.lam:g}-p{_p_text(self.p)}-e{self.epochs}"
        n = "" if self.n is None else f"-n{self.n}"
        if self.relative:
            n += f"-rel{self.eta:g}"
        return f"resistant-eps{self.eps:g}-a{self.alpha:g}-p{_p_text(self.p)}{n}-i{self.interval}-e{self.epochs}"


def _p_text(p: float) -> str:
    return "inf" if p == math.inf else f"{p:g}"


def validate(config: MethodConfig) -> None:
    """Raise ``ValueError`` for settings the method cannot train with."""
    if config.method == "resistant":
        Constraint(config.p, config.eps, config.n)
        if not 0 <= config.alpha <= 1:
            raise ParamCorruptError(f"alpha must be in [0, 1], got {config.alpha}")
        if config.interval < 1:
            raise ParamCorruptError(f"interval must be >= 1, got {config.interval}")
        if not (isinstance(config.eta, (int, float)) and math.isfinite(config.eta) and config.eta >= 0):
            raise ParamCorruptError(f"eta must be a finite number >= 0, got {config.eta!r}")
        if not config.relative and config.eta != MethodConfig.eta:
            raise ParamCorruptError(f"eta={config.eta:g} is a setting of the relative set: give relative=true with it")
    if config.method == "regularised" and config.lam < 0:
        raise ParamCorruptError(f"lam must be >= 0, got {config.lam}")
    if config.epochs < 1:
        raise ParamCorruptError(f"epochs must be >= 1, got {config.epochs}")


@dataclass(frozen=True)
class TaskSetup:
    """The task a command trains: its name, factory options (typed values, as the factory's
    annotations say: the command line converts ``--task-option`` strings;
    ``data_dir`` included), its training recipe and the identity that finished runs are
    matched by (the name, plus the options as given but ``data_dir`` and ``cache_dir``)."""

    name: str = "digits"
    options: dict[str, Any] = field(default_factory=dict)
    recipe: Recipe | None = None
    identity: str = "digits"
    #: a user's task instead of a registered one: ``factory(seed)`` -> a Task, its model
    #: untrained (``paramcorrupt train --model/--data``)
    factory: Any = field(default=None, compare=False)


def build_task(setup: TaskSetup, seed: int, batch_size: int | None) -> Any:
    """The task for ``seed``, its model untrained.

    Raises:
        ValueError: for an option the task's factory does not take (checked before the
            call: :func:`paramcorrupt.tasks.get_task`).
        FileNotFoundError: when the task's data is not found (the message says where to give it).
    """
    if setup.factory is not None:
        return setup.factory(seed)
    options = dict(setup.options)
    if setup.name == "digits":
        from ..tasks.digits import DIGITS_RECIPE

        options.update(batch_size=DIGITS_RECIPE.batch_size if batch_size is None else batch_size, train=False)
    from ..tasks import get_task

    try:
        return get_task(setup.name, seed=seed, **options)
    except FileNotFoundError as error:
        text = error.args[-1] if error.args else str(error)
        raise MissingFileError(
            f"{text} (give --data-dir or set PARAMCORRUPT_DATA; without data, training is available for the digits task only)"
        ) from None


def task_setup(
    name: str,
    options: dict[str, Any] | None = None,
    *,
    given: Mapping[str, Any] | None = None,
    seed: int = 0,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    factory: Any = None,
    identity: str | None = None,
) -> tuple[TaskSetup, MethodConfig]:
    """Check the task and its options (building it once, untrained) and read its recipe:
    the setup and the base MethodConfig (epochs, lr, batch size: the arguments, else the
    recipe's). ``options`` are typed values (the factory's annotations); ``given``, the same
    options as the command line gave them (strings; default: ``options``), make the identity,
    byte for byte as before the options were typed, so that finished runs are found again.
    With ``factory`` (``factory(seed)`` -> a Task) the task is the user's own, named ``name``
    and matched by ``identity``."""
    from ..tasks import TASKS
    from ..tasks.user import task_identity

    if factory is not None:
        if batch_size is not None:
            raise ParamCorruptError("--batch-size: the batch size of --data is its loaders' own")
        setup = TaskSetup(name, {}, None, identity or name, factory)
        task = build_task(setup, seed, None)
        recipe = as_recipe(task.info.get("recipe") or {})
        config = MethodConfig(
            epochs=int(epochs if epochs is not None else _or(recipe.epochs, DEFAULT_EPOCHS)),
            lr=float(lr if lr is not None else _required_lr(recipe, name)),
            batch_size=None,
        )
        return replace(setup, recipe=recipe), config
    if name not in TASKS:
        raise ParamCorruptError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}")
    options = dict(options or {})
    given = dict(options if given is None else given)
    for key in ("seed", "train", "checkpoint", "state_dict", "epochs"):
        if key in options:
            raise ParamCorruptError(f"--task-option {key} is set by the train command; use its own options instead")
    if batch_size is not None and batch_size < 1:
        raise ParamCorruptError(f"--batch-size must be >= 1, got {batch_size}")
    if name != "digits" and batch_size is not None:
        if "batch_size" in options:
            raise ParamCorruptError("give the batch size once: --batch-size or --task-option batch_size")
        options["batch_size"] = batch_size
        given["batch_size"] = str(batch_size)
    identity = task_identity(name, [(k, v) for k, v in sorted(given.items()) if k not in ("data_dir", "cache_dir")])
    setup = TaskSetup(name, options, None, identity)
    task = build_task(setup, seed, batch_size)
    if task.train_loader is None:
        raise ParamCorruptError(f"the {name} task has no training data (train_loader)")
    recipe = as_recipe(task.info.get("recipe") or {})
    if batch_size is None:
        batch_size = _or(recipe.batch_size, getattr(task.train_loader, "batch_size", None))
    config = MethodConfig(
        epochs=int(epochs if epochs is not None else _or(recipe.epochs, DEFAULT_EPOCHS)),
        lr=float(lr if lr is not None else _required_lr(recipe, name)),
        batch_size=None if batch_size is None else int(batch_size),
    )
    return replace(setup, recipe=recipe), config


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _required_lr(recipe: Recipe, name: str) -> float:
    if recipe.lr is None:
        raise ParamCorruptError(f"the {name} task gives no training recipe with a learning rate; give --lr")
    return float(recipe.lr)


def train_model(
    config: MethodConfig,
    seed: int,
    *,
    task_name: str = "digits",
    checkpoint: Path | None = None,
    progress: bool = False,
    setup: TaskSetup | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train one model with one method and the task's recipe (for digits: SGD, Nesterov
    momentum 0.9, weight decay 5e-4, one-cycle schedule peaking at ``lr``), the recipe's
    ``lr`` and ``epochs`` replaced by the config's; return the task and a record."""
    validate(config)
    setup = setup or TaskSetup(task_name, identity=task_name)
    task = build_task(setup, seed, config.batch_size)
    model = task.model
    base = setup.recipe if setup.recipe is not None else as_recipe(task.info.get("recipe") or {})
    recipe = base.replace(lr=config.lr, epochs=config.epochs)
    settings = None
    if config.method == "resistant":
        settings = {"eps": config.eps, "p": config.p, "n": config.n, "alpha": config.alpha, "interval": config.interval}
        if config.relative:
            settings.update(relative=True, eta=config.eta)
    penalty = RegularizedLoss(config.lam, config.p) if config.method == "regularised" else None
    started = time.perf_counter()
    history = fit_recipe(
        model,
        task.train_loader,
        task.loss_fn,
        recipe,
        epochs=config.epochs,
        resistant=settings,
        penalty=penalty,
        checkpoint=checkpoint,
        # a checkpoint of another method, epoch count, seed or task is refused
        identity={"recipe": method_settings(config), "seed": seed, "task": setup.identity},
        progress=progress,
    )
    model.eval()
    # the epochs' own times: a fit resumed from a checkpoint counts the epochs run before too
    seconds = sum(r["seconds"] for r in history)
    logger.info("trained in %.1f s (this call: %.1f s)", seconds, time.perf_counter() - started)
    return task, {"train_seconds": seconds, "history": history}


def method_settings(config: MethodConfig) -> dict[str, Any]:
    """The settings that the method uses (what decides whether a finished run can be reused;
    ``relative`` and ``eta`` only when relative, so that the runs before them keep their ids)."""
    used: tuple[str, ...] = {"plain": (), "resistant": ("eps", "p", "n", "alpha", "interval"), "regularised": ("lam", "p")}[config.method]
    if config.method == "resistant" and config.relative:
        used = (*used, "relative", "eta")
    keys = ("method", "epochs", "lr", "batch_size", *used)
    return {k: v for k, v in asdict(config).items() if k in keys}
