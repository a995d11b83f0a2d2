"""The project's own error types: what a user did wrong, told apart from a bug.

Every check of a user's input (an argument, a file, a setting, a model that cannot be used)
raises a :class:`ParamCorruptError`. It subclasses ``ValueError``, so code that caught the
``ValueError`` the library raised before keeps working; :class:`InputTypeError` (an argument
of the wrong type) is also a ``TypeError`` and :class:`MissingFileError` also a
``FileNotFoundError``, for the same reason. The command line prints a ``ParamCorruptError``
as one line (exit code 2); anything else that escapes the library — a ``ValueError`` from
torch or from a bug of ours included — is an internal error, with its traceback under ``-v``.

Example:
    >>> from paramcorrupt import Constraint
    >>> try:
    ...     Constraint(p=2, eps=-1.0)
    ... except ParamCorruptError as error:
    ...     print(type(error).__name__, isinstance(error, ValueError))
    ParamCorruptError True
"""

from __future__ import annotations

__all__ = ["FileAccessError", "InputTypeError", "MissingFileError", "ParamCorruptError", "os_error_text"]


class ParamCorruptError(ValueError):
    """A user error: bad input, a setting out of range, a file or model that cannot be used."""


class InputTypeError(ParamCorruptError, TypeError):
    """An argument of the wrong type (also a ``TypeError``)."""


class MissingFileError(ParamCorruptError, FileNotFoundError):
    """A file or folder the user named does not exist (also a ``FileNotFoundError``)."""


class FileAccessError(ParamCorruptError):
    """A file the user named cannot be read or written: no space left, a read-only file
    system, no permission, a parent path that is a file (what the system said, and the path)."""


def os_error_text(error: OSError, path: object = None) -> str:
    """One line for an ``OSError``: the path and the system's cause.

    >>> import errno
    >>> os_error_text(OSError(errno.ENOSPC, "No space left on device", "out/results.jsonl"))
    'out/results.jsonl: No space left on device'
    """
    where = path if path is not None else error.filename
    cause = error.strerror or str(error) or type(error).__name__
    return f"{where}: {cause}" if where is not None else cause
