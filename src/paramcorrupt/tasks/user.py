"""A user's own model and data as a :class:`~paramcorrupt.tasks.Task` (the user protocol of
``paramcorrupt probe`` and ``train``: ``--model SPEC --data SPEC [--checkpoint PATH]``), and
the one place a task's identity (what results and finished runs are matched by) is built.

- ``--model SPEC``: ``SPEC`` is ``package.module:factory`` or ``path/to/file.py:factory``;
  ``factory()`` (no arguments) returns the ``nn.Module``.
- ``--checkpoint PATH``: weights to load into it: a state dict saved with
  ``torch.save(model.state_dict(), PATH)`` (read with ``torch.load(weights_only=True)``, so no
  code is unpickled; a ``{"state_dict": ...}`` wrapper is accepted) or a ``.safetensors`` file.
  Its keys and shapes must match the model's exactly.
- ``--data SPEC``: ``factory()`` returns either a Task-like object with the attributes
  ``gradient_loader``, ``eval_loader``, ``loss_fn`` and optionally ``metrics``,
  ``primary_metric``, ``model`` (used when ``--model`` is not given), ``name``,
  ``groupings``, ``train_loader``, ``info`` and ``chance``; or a tuple
  ``(gradient_loader, eval_loader, loss_fn[, metrics])``.

A metric's direction and display are its own (:func:`paramcorrupt.losses.describe_metric`,
read with :func:`~paramcorrupt.losses.metric_info`). A Task-like object that also says
``higher_is_better`` gives that direction to its primary metric when the metric does not
declare one (the metric is wrapped, not changed).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import operator
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputTypeError, MissingFileError, ParamCorruptError
from ..losses import describe_metric, metric_info
from .base import Task
from .user_checks import check_first_batch, remember_user_module, user_code_location
from .weights import load_into, load_weights

__all__ = [
    "USER_RECIPE", "load_checkpoint_into", "resolve", "task_identity", "user_code_location", "user_identity", "user_task",
]

#: the training recipe of a user's task whose data gives none (``info["recipe"]``)
USER_RECIPE = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": "cosine", "epochs": 10}


def _load_file(path: Path) -> Any:
    path = path.resolve()
    name = "_paramcorrupt_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ParamCorruptError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    # the file may import its neighbours while it is imported: its folder goes at the *end*
    # of sys.path (a neighbour never shadows an installed package, safetensors.py say) and
    # is taken off again right after, so nothing beside the file is found later
    folder = str(path.parent)
    added = folder not in sys.path
    if added:
        sys.path.append(folder)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)
    return module


def _is_file_spec(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def resolve(spec: str, option: str = "spec") -> Any:
    """The object named by ``package.module:attribute`` or ``path/to/file.py:attribute`` (a
    file is imported once, its folder at the end of ``sys.path`` while it is imported, so it
    can import its neighbours but none of them shadows an installed package).

    Raises:
        ValueError: for a malformed spec, a module that cannot be imported or a missing
            attribute.
        FileNotFoundError: for a file path that does not exist.

    Example:
        >>> resolve("paramcorrupt.losses:accuracy").__name__
        'accuracy'
    """
    target, sep, attribute = spec.rpartition(":")
    if not sep or not target or not attribute:
        raise ParamCorruptError(f"{option} {spec!r}: expected package.module:attribute or path/to/file.py:attribute")
    if _is_file_spec(target):
        path = Path(target)
        if path.is_dir():
            raise ParamCorruptError(f"{option} {spec!r}: {target} is a folder; give a Python file (path/to/file.py:factory)")
        if path.exists() and not path.is_file():
            raise ParamCorruptError(f"{option} {spec!r}: {target} is not a regular file")
        if not path.is_file():
            raise MissingFileError(f"{option} {spec!r}: no file {target}")
        module = _load_file(path)
        remember_user_module(module)
    else:
        try:
            module = importlib.import_module(target)
            remember_user_module(module)
        except ImportError as error:
            raise ParamCorruptError(f"{option} {spec!r}: cannot import {target!r}: {error}") from None
    try:
        return operator.attrgetter(attribute)(module)
    except AttributeError:
        raise ParamCorruptError(f"{option} {spec!r}: {target!r} has no attribute {attribute!r}") from None


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _spec_identity(spec: str | None) -> str:
    """A spec with its file made absolute (the same file from another folder is the same)."""
    if spec is None:
        return "-"
    target, _, attribute = spec.rpartition(":")
    if _is_file_spec(target):
        return f"{Path(target).resolve()}:{attribute}"
    return spec


def task_identity(
    name: str | None,
    settings: Iterable[tuple[str, Any]],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_key: str | None = None,
) -> str:
    """What identifies a task in results (a probe's ``SweepConfig.task``, a training run's
    ``"task"``): the settings that fix its weights and data, in the order given, then the
    checkpoint's SHA-256 (its first 16 hex digits) and key. A registered task reads
    ``name(key=value,...)`` (``name`` alone without settings); a user's task (``name`` None)
    ``model=...;data=...;checkpoint=sha256:...``.

    Example:
        >>> task_identity("digits", [("seed", 0), ("epochs", 30)])
        'digits(seed=0,epochs=30)'
        >>> task_identity("ptb-lm", [])
        'ptb-lm'
    """
    parts = [f"{key}={value}" for key, value in settings]
    if checkpoint is not None:
        path = Path(checkpoint)
        if path.is_file():
            parts.append(f"checkpoint=sha256:{_file_digest(path)}")
        if checkpoint_key is not None:
            parts[-1] += f"[{checkpoint_key}]"
    if name is None:
        return ";".join(parts)
    return f"{name}({','.join(parts)})" if parts else name


def user_identity(
    model_spec: str | None,
    data_spec: str,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_key: str | None = None,
) -> str:
    """The identity of :func:`user_task`'s task (:func:`task_identity` of its specs)."""
    settings = [("model", _spec_identity(model_spec)), ("data", _spec_identity(data_spec))]
    return task_identity(None, settings, checkpoint=checkpoint, checkpoint_key=checkpoint_key)


def load_checkpoint_into(model: nn.Module, checkpoint: str | os.PathLike[str], key: str | None = None) -> None:
    """Load the weights of a file (``.safetensors`` or a state dict, never unpickling code;
    under ``key`` when given) into ``model`` after checking keys and shapes.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when it cannot be read, or does not match the model (one line naming
            the mismatch).
    """
    load_into(model, load_weights(checkpoint, key), "the model", source=f"checkpoint {checkpoint}")


def _check_materialised(model: nn.Module, source: str) -> None:
    """Refuse a model with tensors on the meta device (shapes without values), naming one."""
    meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        raise ParamCorruptError(
            f"{source}: the model's tensor {meta[0]!r} ({len(meta)} of them) is on the meta device (a shape without "
            "values): build it with real tensors in the factory (e.g. model.to_empty(device='cpu'), then load "
            "its weights)"
        )


def _called(factory: Any) -> Any:
    return factory() if callable(factory) else factory


def _fields(result: Any, spec: str) -> dict[str, Any]:
    """The Task fields that ``--data``'s factory returned (a tuple or a Task-like object)."""
    if isinstance(result, tuple):
        if len(result) not in (3, 4):
            raise InputTypeError(f"--data {spec!r} returned a tuple of {len(result)}; expected (gradient_loader, eval_loader, loss_fn[, metrics])")
        return {"gradient_loader": result[0], "eval_loader": result[1], "loss_fn": result[2],
                "metrics": result[3] if len(result) == 4 else {}}
    missing = [a for a in ("gradient_loader", "eval_loader", "loss_fn") if not hasattr(result, a)]
    if missing:
        raise InputTypeError(
            f"--data {spec!r} returned a {type(result).__name__} without {', '.join(missing)}; expected a "
            "Task-like object or (gradient_loader, eval_loader, loss_fn[, metrics])"
        )
    fields = {a: getattr(result, a) for a in ("gradient_loader", "eval_loader", "loss_fn")}
    for attribute in ("metrics", "primary_metric", "higher_is_better", "model", "name", "groupings",
                      "train_loader", "info", "chance"):
        fields[attribute] = getattr(result, attribute, None)
    return fields


class _DirectedMetric:
    """A user's metric with the direction its Task-like object declares (``higher_is_better``)
    when the metric itself declares none; everything else is the metric's."""

    def __init__(self, metric: Any, higher_is_better: bool) -> None:
        self.metric = metric
        describe_metric(self, higher_is_better=higher_is_better, display_name=getattr(metric, "display_name", None),
                        scale=getattr(metric, "scale", 1.0), unit=getattr(metric, "unit", None))

    def __call__(self, output: Any, batch: Any) -> Any:
        return self.metric(output, batch)

    def __getattr__(self, name: str) -> Any:  # finalize, ... (only called for what is not set here)
        if name == "metric":
            raise AttributeError(name)
        return getattr(self.metric, name)


def _directed(metrics: Mapping[str, Any], primary: str, higher: Any) -> dict[str, Any]:
    """The metrics, the primary one given the declared direction when it has none of its own."""
    out = dict(metrics)
    if higher is not None and primary in out and metric_info(out[primary]).higher_is_better is None:
        out[primary] = _DirectedMetric(out[primary], bool(higher))
    return out


def user_task(
    model_spec: str | None,
    data_spec: str,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_key: str | None = None,
    seed: int | None = None,
) -> Task:
    """The Task of a user's model and data (see the module's docstring for what the
    factories return).

    Args:
        model_spec: names ``factory()`` -> the ``nn.Module``; None: the model of ``--data``'s
            Task-like object.
        data_spec: names ``factory()`` -> a Task-like object or a tuple ``(gradient_loader,
            eval_loader, loss_fn[, metrics])``.
        checkpoint: weights loaded into the model (:func:`load_checkpoint_into`); None keeps
            the factory's.
        checkpoint_key: the key of a dict checkpoint holding the state dict.
        seed: seeds torch's generator before the factories run (None: left as it is).

    The Task's ``primary_metric`` is the one declared when it is among the metrics, else the
    first metric, else "loss"; ``info["declared_metric"]`` says whether it was declared, and
    ``info["identity"]`` holds :func:`user_identity`; ``info["recipe"]`` defaults to
    :data:`USER_RECIPE` and ``train_loader`` to the gradient loader.

    Raises:
        ValueError, TypeError, FileNotFoundError: for a spec that names nothing, a factory
            that returns something else, a checkpoint that does not fit.
    """
    model_factory = resolve(model_spec, "--model") if model_spec is not None else None
    data_factory = resolve(data_spec, "--data")
    if seed is not None:
        torch.manual_seed(seed)  # a factory that does not seed itself initialises from the seed
    model = None
    if model_factory is not None:
        model = _called(model_factory)
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"--model {model_spec!r} gave a {type(model).__name__}, expected a torch.nn.Module")
    fields = _fields(_called(data_factory), data_spec)
    model = model if model is not None else fields.get("model")
    if model is None:
        raise ParamCorruptError(f"no model: give --model, or make --data {data_spec!r} return a Task-like object with a model")
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"the model is a {type(model).__name__}, expected a torch.nn.Module")
    metrics = fields.get("metrics") or {}
    if not callable(fields["loss_fn"]):
        raise InputTypeError(f"--data {data_spec!r}: loss_fn is a {type(fields['loss_fn']).__name__}, expected a callable")
    if not isinstance(metrics, Mapping):
        raise InputTypeError(f"--data {data_spec!r}: metrics is a {type(metrics).__name__}, expected a mapping name -> metric")
    _check_materialised(model, f"--model {model_spec!r}" if model_spec is not None else f"--data {data_spec!r}")
    if checkpoint is not None:
        load_checkpoint_into(model, checkpoint, checkpoint_key)
    check_first_batch(model, fields["loss_fn"], metrics, fields["gradient_loader"], data_spec, fields["eval_loader"])
    declared = fields.get("primary_metric")
    metric = declared if declared in metrics else next(iter(metrics), "loss")
    info = dict(fields.get("info") or {})
    recipe = info.get("recipe") or USER_RECIPE  # a Recipe or a mapping of its keys
    info.update(
        recipe=dict(recipe) if isinstance(recipe, Mapping) else recipe,
        identity=user_identity(model_spec, data_spec, checkpoint=checkpoint, checkpoint_key=checkpoint_key),
        declared_metric=declared in metrics,
    )
    return Task(
        name=fields.get("name") or "custom",
        model=model,
        gradient_loader=fields["gradient_loader"],
        eval_loader=fields["eval_loader"],
        loss_fn=fields["loss_fn"],
        metrics=_directed(metrics, metric, fields.get("higher_is_better")),
        primary_metric=metric,
        groupings=dict(fields.get("groupings") or {}),
        train_loader=fields.get("train_loader") or fields["gradient_loader"],
        info=info,
        chance=fields.get("chance"),
    )
