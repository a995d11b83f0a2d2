"""The ``paramcorrupt`` command line: it only wires options to library calls.

Each subcommand lives in its own module of this package with ``register(subparsers)``.

How a command ends when something goes wrong:

- a user error — a :class:`~paramcorrupt.errors.ParamCorruptError`, which the library raises
  for every bad input (:class:`CLIError` is one), or a file the system cannot find: one line,
  exit code 2;
- an exception raised in the user's own code (``--model``/``--data``: their forward, loss or
  factory): "error in your code (FILE:LINE, in FUNCTION)", one line, exit code 2; the
  traceback with ``-v``;
- anything else (``ValueError`` from torch, ``KeyError``, ``AttributeError``, ...): an internal
  error, one line naming the exception and "(run with -v for the traceback)", exit code 1;
  the traceback with ``-v``;
- Ctrl-C: "interrupted", exit code 130.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence

from ..errors import ParamCorruptError, os_error_text

__all__ = ["CLIError", "EXIT_INTERNAL", "EXIT_USAGE", "main"]

#: exit codes: bad input (argparse's too), and an internal error (a bug)
EXIT_USAGE = 2
EXIT_INTERNAL = 1
#: what a library call raises for bad input: the project's user errors, and a missing file
USER_ERRORS = (ParamCorruptError, FileNotFoundError)
_HINT = "(run with -v for the traceback)"

#: the subcommand modules, in the order ``--help`` lists them
COMMANDS = ("demo", "probe", "landscape", "report", "train")


class CLIError(ParamCorruptError):
    """A user error found by the command line itself: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paramcorrupt",
        description="Parameter corruption of neural networks: worst-case and random indicators, "
        "vulnerability probes, corruption-resistant training.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    for command in sub.choices.values():  # -v after the subcommand too, as the error hint says
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="log progress messages; the traceback of an internal error")
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, an unknown option reported by its subcommand's parser (its usage,
    and the closest option it has)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        command = _subparsers(parser).get(args.command, parser)
        unknown = next((e for e in extra if e.startswith("-")), extra[0])
        options = [o for action in command._actions for o in action.option_strings]
        close = difflib.get_close_matches(unknown.split("=", 1)[0], options, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else f"; see paramcorrupt {args.command} --help"
        command.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    return args


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for "the same command resumes: ..."
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    prefix = f"paramcorrupt {args.command}"
    try:
        return int(args.run(args) or 0)
    except USER_ERRORS as error:
        cause = error.__cause__
        if args.verbose and cause is not None and not isinstance(cause, ParamCorruptError):
            traceback.print_exception(cause, file=sys.stderr)  # what the user's code raised (first-batch check)
        print(f"{prefix}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        if not _is_file_error(error):
            _fail(f"{prefix}: internal error: {type(error).__name__}: {error}", args.verbose)
            return EXIT_INTERNAL
        # no space, a read-only file system, no permission, a parent that is a file: the
        # user's to fix, one line with the path and the cause
        print(f"{prefix}: error: {os_error_text(error)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        where = _user_code(error)
        if where is not None:  # raised in the user's own model, loss or factory: theirs to fix
            text = (str(error).splitlines() or [""])[0]
            _fail(f"{prefix}: error in your code ({where}): {type(error).__name__}: {text}", args.verbose)
            return EXIT_USAGE
        _fail(f"{prefix}: internal error: {type(error).__name__}: {error}", args.verbose)
        return EXIT_INTERNAL


def _user_code(error: BaseException) -> str | None:
    """Where in the user's own files (``--model``/``--data``) ``error`` was raised, if there."""
    user = sys.modules.get("paramcorrupt.tasks.user")  # loaded when the command loaded user code
    return None if user is None else user.user_code_location(error)


#: what the system says of a file a user named that cannot be written or read (errno names)
_FILE_ERRNOS = ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "ENOTDIR", "EISDIR", "EEXIST", "EFBIG",
                "ENAMETOOLONG", "ELOOP", "ENXIO", "ETXTBSY")


def _is_file_error(error: OSError) -> bool:
    """Whether an ``OSError`` is about a file or folder (a user error), not a broken connection."""
    import errno

    return error.filename is not None or error.errno in {getattr(errno, name, None) for name in _FILE_ERRNOS} - {None}


def _fail(line: str, verbose: bool) -> None:
    """The one line; with ``verbose`` the traceback before it, else a hint where to find it."""
    if verbose:
        traceback.print_exc(file=sys.stderr)
        print(line, file=sys.stderr)
    else:
        print(f"{line} {_HINT}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
