"""Files the user names: only a regular file (or a new path) is ever opened.

A named pipe would block the process in ``open``, a device such as ``/dev/zero`` would be
read forever and a folder is no file: results files, checkpoints and data files are all
checked here first (``docs/results-files.md``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import ParamCorruptError

__all__ = ["check_regular"]


def check_regular(path: Path, what: str) -> None:
    """Refuse a path that exists and is not a regular file (a folder, a named pipe, a device):
    opening one would block (a FIFO) or never end (``/dev/zero``). A missing path passes.

    Example:
        >>> check_regular(Path("/dev/null"), "data file")
        Traceback (most recent call last):
        ...
        paramcorrupt.errors.ParamCorruptError: data file /dev/null is a device; give a regular file path
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as error:
        raise ParamCorruptError(f"{what} {path}: {error.strerror or error}") from None
    if stat.S_ISDIR(mode):
        raise ParamCorruptError(f"{what} {path} is a folder; give a file path")
    if not stat.S_ISREG(mode):
        kind = "a named pipe" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else (
            "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise ParamCorruptError(f"{what} {path} is {kind}; give a regular file path")
