"""Where the offline data and the decoded caches live."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from ..errors import MissingFileError
from ..files import check_regular

__all__ = ["DATA_ENV", "CACHE_ENV", "resolve_cache_dir", "resolve_data_file", "save_tensors_atomic"]

#: Environment variable naming the folder that holds ``cifar10_jpg/``, ``ptb_lm/``, ...
DATA_ENV = "PARAMCORRUPT_DATA"
#: Environment variable naming the cache folder (default ``~/.cache/paramcorrupt``).
CACHE_ENV = "PARAMCORRUPT_CACHE"


def resolve_data_file(data_dir: str | os.PathLike[str] | None, subdir: str, filename: str) -> Path:
    """The path of ``subdir/filename`` under the data folder.

    ``data_dir`` is the folder holding ``subdir`` (or ``subdir`` itself); when None, the
    environment variable ``PARAMCORRUPT_DATA`` is used. Nothing else is guessed.

    Raises:
        FileNotFoundError: when no folder is given or the file is not there.
    """
    if data_dir is None:
        env = os.environ.get(DATA_ENV)
        if not env:
            raise MissingFileError(
                f"no data folder given: pass data_dir or set {DATA_ENV} to the folder that "
                f"contains {subdir}/{filename}"
            )
        data_dir = env
    base = Path(data_dir).expanduser()
    for candidate in (base / subdir / filename, base / filename):
        check_regular(candidate, "data file")  # a pipe or a device is never read
        if candidate.is_file():
            return candidate
    raise MissingFileError(
        f"{base / subdir / filename} not found: pass data_dir or set {DATA_ENV} to the folder "
        f"that contains {subdir}/{filename}"
    )


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    """``cache_dir``, else ``$PARAMCORRUPT_CACHE``, else ``~/.cache/paramcorrupt`` (created)."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "paramcorrupt"
    path = Path(cache_dir).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_tensors_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """``torch.save`` a dict of tensors via a temporary file and an atomic rename."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(tensors, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
