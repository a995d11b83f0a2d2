"""Reading task options (as ``--task-option KEY=VALUE`` passes them: often strings) and
loading weights without unpickling code; shared by every task."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["as_bool", "as_int", "int_tuple", "load_into", "load_weights", "resolve_device"]


def int_tuple(value: Any, what: str) -> tuple[int, ...]:
    """``"3,3,3"``, ``"3x3x3"``, ``[3, 3, 3]`` -> ``(3, 3, 3)`` (options may come from a CLI).

    Example:
        >>> int_tuple("16,32,64", "widths")
        (16, 32, 64)
    """
    if isinstance(value, str):
        parts = [p for p in value.replace("x", ",").replace(" ", ",").split(",") if p]
    elif isinstance(value, Sequence):
        parts = list(value)
    else:
        parts = [value]
    try:
        out = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(
            f"{what} must be a list of integers such as 3,3,3; got {value!r}"
        ) from None
    if not out:
        raise ValueError(f"{what} must hold at least one integer, got {value!r}")
    return out


def as_int(value: Any, what: str, *, minimum: int = 1, optional: bool = False) -> int | None:
    """An integer option (a CLI may pass strings); ``None``/"none" allowed when ``optional``."""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "all", "")):
        if optional:
            return None
        raise ValueError(f"{what} is required")
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {number}")
    return number


def as_bool(value: Any, what: str) -> bool:
    """A boolean option: True/False or the strings 1/0, true/false, yes/no, on/off."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{what} must be true or false, got {value!r}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def load_weights(checkpoint: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The model weights in a file, never unpickling code: ``.safetensors``, or
    ``torch.load(weights_only=True)`` of a plain state dict or of a wrapper holding one under
    ``"state_dict"`` or ``"model"`` (a training checkpoint, as
    :func:`paramcorrupt.train.save_checkpoint` writes). The one loader of the tasks'
    ``checkpoint`` option and of ``paramcorrupt probe --checkpoint``.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when it cannot be read (corrupt, truncated, an unsafe pickle) or holds no
            mapping of parameter names to tensors.
    """
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise ValueError(f"checkpoint {path}: reading .safetensors needs the safetensors package") from None
    except Exception as error:  # any reader failure: corrupt, truncated, not a checkpoint, unsafe pickle
        raise ValueError(f"cannot read checkpoint {path}: {_first_line(error)}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not state or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise ValueError(f"checkpoint {path} does not hold a state dict (a mapping of parameter names to tensors)")
    return dict(state)


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")


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
        raise ValueError(f"{start}: {'; '.join(problems)}")
    model.load_state_dict(state_dict)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"cpu" -> CPU; "auto" -> CUDA when available; anything else as torch reads it."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
