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

__all__ = ["InputTypeError", "MissingFileError", "ParamCorruptError"]


class ParamCorruptError(ValueError):
    """A user error: bad input, a setting out of range, a file or model that cannot be used."""


class InputTypeError(ParamCorruptError, TypeError):
    """An argument of the wrong type (also a ``TypeError``)."""


class MissingFileError(ParamCorruptError, FileNotFoundError):
    """A file or folder the user named does not exist (also a ``FileNotFoundError``)."""
