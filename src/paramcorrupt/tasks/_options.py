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


def load_weights(checkpoint: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The model weights in a file: a plain state dict, or a training checkpoint holding one
    under ``"model"`` (as :func:`paramcorrupt.train.save_checkpoint` writes), loaded with
    ``weights_only=True``.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when it holds no state dict.
    """
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(blob, Mapping) and isinstance(blob.get("model"), Mapping):
        blob = blob["model"]
    if not isinstance(blob, Mapping) or not all(isinstance(v, Tensor) for v in blob.values()):
        raise ValueError(f"{path} holds no state dict (a mapping of tensors, or one under 'model')")
    return dict(blob)


def load_into(model: nn.Module, state_dict: Mapping[str, Tensor], what: str) -> None:
    """``model.load_state_dict`` with a one-sentence error naming the mismatch."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) if len(first) > 1 else first[0]
        raise ValueError(f"the weights do not fit {what}: {detail}") from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"cpu" -> CPU; "auto" -> CUDA when available; anything else as torch reads it."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
