"""Finished runs: where a trained model and its results are kept, and reusing them instead of
training again. :func:`run_one` is one (method, seed) of ``paramcorrupt train`` / ``compare``
(``model.pt`` and ``results.json`` in a folder, reused when the settings match);
:func:`digest` names a model by what made it (task options and recipe), and
:func:`load_saved` / :func:`save_model` read and write such a model beside its metadata (the
reproduction scripts' ``models/`` folder).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .. import parallel as D
from ..errors import FileAccessError, os_error_text
from ..train.loop import save_atomically
from .table2 import table2_metrics
from .training import MethodConfig, TaskSetup, method_settings, train_model

__all__ = ["check_output_folder", "digest", "load_saved", "run_one", "save_model"]

logger = logging.getLogger(__name__)


def digest(obj: Any) -> str:
    """12 hex digits of the SHA-256 of ``obj`` as sorted JSON (``str`` for what JSON lacks):
    the identity a finished model is found by.

    Example:
        >>> digest({"b": 1, "a": [2]}) == digest({"a": [2], "b": 1})
        True
    """
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def load_saved(task: Any, weights: Path, meta_path: Path, model_id: str) -> dict[str, Any] | None:
    """Load ``weights`` (a state dict, ``torch.load(weights_only=True)``) into ``task.model``
    when both files exist and the metadata's ``id`` is ``model_id``; return the metadata (the
    model in evaluation mode, ``task.info["trained"]`` and ``["model_id"]`` set), else None."""
    if not (weights.exists() and meta_path.exists()):
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("id") != model_id:
        return None
    device = next(task.model.parameters()).device
    task.model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    task.model.eval()
    task.info["trained"] = True
    task.info["model_id"] = meta["id"]
    return meta


def save_model(task: Any, weights: Path, meta: dict[str, Any], meta_path: Path | None = None) -> dict[str, Any]:
    """Save ``task.model``'s state dict to ``weights`` and ``meta`` as JSON beside it
    (``meta_path``, default ``weights`` with ``.json``); ``task.info["model_id"]`` becomes
    ``meta["id"]``. Returns ``meta``."""
    save_atomically(task.model.state_dict(), weights)
    _write_text(meta_path or weights.with_suffix(".json"), json.dumps(meta, indent=1, default=str))
    task.info["model_id"] = meta["id"]
    return meta


def run_one(
    config: MethodConfig,
    seed: int,
    out: Path,
    *,
    eval_eps: tuple[float, ...],
    random_trials: int,
    task_name: str = "digits",
    progress: bool = False,
    reuse: bool = True,
    setup: TaskSetup | None = None,
) -> dict[str, Any]:
    """Train and evaluate one (recipe, seed), writing ``model.pt`` and ``results.json`` in
    ``out``; a finished run with the same recipe and evaluation is read back instead."""
    results_path = out / "results.json"
    setup = setup or TaskSetup(task_name, identity=task_name)
    settings = {"recipe": method_settings(config), "seed": seed, "task": setup.identity, "eval_eps": list(eval_eps), "random_trials": random_trials}
    # under torchrun rank 0 reads and writes the files; every rank trains and evaluates
    previous = D.on_main(lambda: json.loads(results_path.read_text()) if reuse and results_path.exists() else None)
    if previous is not None and {k: previous.get(k) for k in settings} == json.loads(json.dumps(settings)):
        return previous
    if D.is_main_process():
        out.mkdir(parents=True, exist_ok=True)
    task, record = train_model(config, seed, checkpoint=out / "checkpoint.pt", progress=progress, setup=setup)
    if D.is_main_process():
        save_atomically(task.model.state_dict(), out / "model.pt")  # a kill leaves no 0-byte model.pt
    metrics = table2_metrics(task, eval_eps, random_trials=random_trials, seed=seed)
    result = {**settings, "config": asdict(config), "label": config.label(), **metrics, **record}
    if D.is_main_process():
        _write_text(results_path, json.dumps(result, indent=1, default=float))
    return result


def check_output_folder(out: Path) -> None:
    """Refuse, before any training, an output folder that cannot be written: created when
    missing, a small file written and removed (a read-only file system, no permission, a
    parent that is a file, no space: a :class:`FileAccessError` naming the path)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileAccessError(f"{out} is not a folder; give a folder for the run's files")
    probe = out / ".paramcorrupt-write-check.tmp"
    try:
        out.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:
        raise FileAccessError(f"cannot write the output folder {os_error_text(error)}") from None
    finally:
        probe.unlink(missing_ok=True)


def _write_text(path: Path, text: str) -> None:
    """Write a text file atomically (a temporary file renamed over it), removed on failure."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise FileAccessError(f"cannot write {os_error_text(error, path)}") from None
