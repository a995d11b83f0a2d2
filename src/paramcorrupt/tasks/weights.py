"""Loading a task's weights without unpickling code (:func:`load_weights`), into a model
after checking keys and shapes (:func:`load_into`), and a task's ``device`` option
(:func:`resolve_device`); shared by every task and by ``paramcorrupt probe --checkpoint``."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import MissingFileError, ParamCorruptError
from ..files import check_regular

__all__ = ["load_into", "load_weights", "resolve_device"]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: modules whose pickled objects are plain data, not a model
_DATA_MODULES = ("builtins", "collections", "pathlib", "datetime", "numpy", "decimal", "fractions", "argparse")


def _first_line(error: BaseException) -> str:
    text = _ANSI.sub("", str(error)).strip() or type(error).__name__
    return text.splitlines()[0]


def _unpickling_error(path: Path, error: BaseException) -> str:
    """One line for a file that ``weights_only=True`` refuses: what it holds and what to save
    instead (never the advice to unpickle it)."""
    found = re.search(r"GLOBAL (\S+) was not an allowed global", _ANSI.sub("", str(error)))
    name = found.group(1) if found else None
    if name is not None and not name.startswith(_DATA_MODULES):
        what = f"a pickled model (class {name})"
    else:
        what = "a pickled Python object" + (f" (class {name})" if name else "")
    return (
        f"cannot read checkpoint {path}: this file holds {what}, not a state dict of tensors; "
        "save the weights with torch.save(model.state_dict(), PATH) (or safetensors) and give that file "
        "(paramcorrupt never unpickles code)"
    )


def load_weights(checkpoint: str | os.PathLike[str], key: str | None = None) -> dict[str, Tensor]:
    """The model weights in a file, never unpickling code: ``.safetensors``, or
    ``torch.load(weights_only=True)`` of a plain state dict or of a wrapper holding one under
    ``"state_dict"`` or ``"model"`` (a training checkpoint, as
    :func:`paramcorrupt.train.save_checkpoint` writes), or under ``key`` when given (a dict
    such as ``{"model_state_dict": ..., "epoch": 3}``; ``--checkpoint-key`` on the command
    line). The one loader of the tasks' ``checkpoint`` option and of ``paramcorrupt probe
    --checkpoint``.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when it cannot be read (corrupt, truncated, a pickled model or other
            object: the message says to save ``model.state_dict()``), ``key`` is not in it, or
            it holds no mapping of parameter names to tensors (the message names the keys that
            hold one, for ``--checkpoint-key``).
    """
    path = Path(checkpoint).expanduser()
    check_regular(path, "checkpoint")  # a folder, a pipe or a device is never read
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise ParamCorruptError(f"checkpoint {path}: reading .safetensors needs the safetensors package") from None
    except pickle.UnpicklingError as error:  # weights_only refused a class: a pickled model, or other object
        raise ParamCorruptError(_unpickling_error(path, error)) from None
    except Exception as error:  # any reader failure: corrupt, truncated, not a checkpoint
        raise ParamCorruptError(
            f"cannot read checkpoint {path} (not a file that torch.save or safetensors wrote, or a damaged one): "
            f"{type(error).__name__}: {_first_line(error)}"
        ) from None
    if key is not None:
        if not isinstance(state, Mapping) or key not in state:
            keys = ", ".join(repr(k) for k in state) if isinstance(state, Mapping) else f"a {type(state).__name__}"
            raise ParamCorruptError(f"--checkpoint-key {key!r} is not in checkpoint {path} (its keys: {keys})")
        state = state[key]
    else:
        for wrapper in ("state_dict", "model"):
            if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
                state = state[wrapper]
                break
    if not isinstance(state, Mapping) or not state or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        where = f" under key {key!r}" if key is not None else ""
        hint = ""
        if key is None and isinstance(state, Mapping):
            nested = [k for k, v in state.items() if isinstance(v, Mapping) and v and all(isinstance(t, Tensor) for t in v.values())]
            if nested:
                hint = f"; the tensors are under {', '.join(repr(k) for k in nested)}: give --checkpoint-key {nested[0]}"
        raise ParamCorruptError(
            f"checkpoint {path} does not hold a state dict{where} (a mapping of parameter names to tensors){hint}"
        )
    return dict(state)


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")


def load_given(
    model: nn.Module,
    checkpoint: str | os.PathLike[str] | None,
    state_dict: Mapping[str, Tensor] | None,
    what: str,
) -> bool:
    """Load the weights a task was given — a file (``checkpoint``, read by
    :func:`load_weights`) or ``state_dict`` — into ``model`` (:func:`load_into`); False when
    it was given neither (the model keeps its initialisation).

    Example:
        >>> net = nn.Linear(2, 1)
        >>> load_given(net, None, {"weight": torch.ones(1, 2), "bias": torch.zeros(1)}, "a linear model")
        True
        >>> net.weight.tolist(), load_given(net, None, None, "a linear model")
        ([[1.0, 1.0]], False)
    """
    if checkpoint is not None:
        state_dict = load_weights(checkpoint)
    if state_dict is None:
        return False
    load_into(model, state_dict, what)
    return True


def load_into(model: nn.Module, state_dict: Mapping[str, Tensor], what: str, *, source: str | None = None) -> None:
    """``model.load_state_dict`` after checking keys and shapes, with a one-sentence error
    naming the mismatch: "the weights do not fit {what}: ...", or with ``source`` "{source}
    does not match {what}: ..." (as ``paramcorrupt probe --checkpoint`` says it).

    Raises:
        ValueError: when keys are missing or unexpected, or a shape differs.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and state_dict[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listed(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches {_listed(shapes)}")
    if problems:
        start = f"the weights do not fit {what}" if source is None else f"{source} does not match {what}"
        raise ParamCorruptError(f"{start}: {'; '.join(problems)}")
    model.load_state_dict(state_dict)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"cpu" -> CPU; "auto" -> CUDA when available; anything else as torch reads it."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
