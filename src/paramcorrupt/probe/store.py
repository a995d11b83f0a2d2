"""A JSONL results file that survives interruption.

The file's first line is a header naming the sweep (its ``sweep_id`` and configuration);
every further line is one finished row. Rows are appended, flushed and ``fsync``-ed one by
one as they finish, so a process killed at any moment (SIGKILL included) loses at most the
row in progress. On reopening, a torn last line (a row cut mid-write) is cut away, finished
rows are read back and verified (every row against the sweep's schema and keys, the header
against its id: :mod:`paramcorrupt.probe.schema`; a damaged, foreign or repeated row is refused,
naming its line), and the sweep skips their keys. A file that belongs to another sweep is
refused and never written to (the error names the settings that differ) — unless the store
*extends* it (``extend=True``, ``paramcorrupt probe --extend``): a sweep whose configuration
only adds values (eps, p, n, methods, groups, more trials) to the file's, everything else
equal, keeps the file's rows byte for byte, gets a new header (naming the sweeps it extends
in ``"extends"``) and appends only the rows that are new.

Non-finite floats are not valid JSON: they are written as the strings ``"inf"``, ``"-inf"``
and ``"nan"`` (``p = inf`` is ``"p": "inf"``) and read back as floats by
:func:`read_results`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import FileAccessError, ParamCorruptError, os_error_text
from ..files import check_regular
from .schema import (
    MAX_LINE_BYTES,
    chance_metadata,
    config_differences,
    extension_problems,
    header_problems,
    lock_file,
    open_regular,
    same_sweep,
    verified_rows,
)

__all__ = [
    "FORMAT",
    "ResultsStore",
    "chance_metadata",
    "config_differences",
    "decode_row",
    "encode_row",
    "extension_problems",
    "read_jsonl",
    "read_results",
    "verify_results",
]

logger = logging.getLogger(__name__)

#: the header's ``format`` value; a first line without it is not a results file of ours
FORMAT = "paramcorrupt-probe-results/1"

_HEADER_START = b'{"format": "' + FORMAT.encode()

#: row fields that hold text; every other string "inf", "-inf" or "nan" is a float
_TEXT_FIELDS = frozenset({"sweep_id", "key", "task", "grouping", "group", "method", "metric"})
_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
#: header entries the store and the sweep write themselves
_HEADER_KEYS = frozenset({"format", "sweep_id", "config", "groups", "extends"})


def _encode_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {k: _encode_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode_value(v) for v in value]
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, str) and value in _NON_FINITE:
        return _NON_FINITE[value]
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _decode_value(v) for k, v in value.items()}
    return value


def encode_row(row: Mapping[str, Any]) -> str:
    """One row as a JSON line (no newline); non-finite floats become strings."""
    return json.dumps({k: _encode_value(v) for k, v in row.items()}, allow_nan=False, separators=(", ", ": "))


def decode_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A parsed row with "inf"/"-inf"/"nan" turned back into floats (text fields kept)."""
    return {k: (v if k in _TEXT_FIELDS else _decode_value(v)) for k, v in row.items()}


def _is_header(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def _lines(handle: Any, path: Path) -> Iterator[tuple[int, bytes]]:
    """(number, line with its newline) of an open binary file, each read with a bound: a line
    longer than :data:`~paramcorrupt.probe.schema.MAX_LINE_BYTES` is refused, never held whole."""
    number = 0
    while True:
        line = handle.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE_BYTES:
            raise ParamCorruptError(
                f"{path}: line {number} is longer than {MAX_LINE_BYTES >> 20} MiB: not a probe results file"
            )
        yield number, line


def _scan(handle: Any, path: Path) -> tuple[dict[str, Any] | None, list[tuple[int, dict[str, Any]]], int]:
    """Read a results file from the start: (header, (line number, row) pairs, length of the
    intact prefix).

    Only the last line may be torn (a row cut mid-write, or garbage after it); a bad line
    anywhere else means the file is not one we wrote, and is an error.
    """
    handle.seek(0)
    header = None
    rows: list[tuple[int, dict[str, Any]]] = []
    good = 0
    bad: tuple[int, bytes] | None = None
    for number, line in _lines(handle, path):
        if bad is not None:  # a bad line with another after it
            raise ParamCorruptError(f"{path} is not a probe results file: line {bad[0]} is not a JSON object")
        if not line.endswith(b"\n"):  # the piece after the last newline: torn
            logger.warning("%s: ignoring a torn last line (%d bytes)", path, len(line))
            break
        try:
            obj = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            obj = None
        if not isinstance(obj, dict):
            bad = (number, line)
            continue
        if number == 1:
            if not _is_header(obj):
                raise ParamCorruptError(
                    f"{path} is not a probe results file (its first line has no "
                    f'"format": "{FORMAT}" header); choose another output path'
                )
            header = _decode_value(obj)
        else:
            rows.append((number, decode_row(obj)))
        good += len(line)
    if bad is not None:
        logger.warning("%s: ignoring a torn last line (%d bytes)", path, len(bad[1]) - 1)
    return header, rows, good


def read_jsonl(path: str | os.PathLike[str]) -> list[Any]:
    """Every JSON value of a JSON-lines file, in file order: the one reader of results files
    (:func:`read_results` for a file without a header, and the report's rows).

    Blank lines are skipped and a last line that does not parse (a torn write) is ignored;
    values are returned as parsed (``"inf"`` stays a string: :func:`decode_row` turns it into
    a float).

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when it is not UTF-8 text, cannot be read, or a line before the last one
            is not JSON.
    """
    path = Path(path)
    out: list[Any] = []
    pending: tuple[int, int] | None = None  # a line that did not parse: an error unless it is the last
    with open_regular(path, "results file") as handle:
        for number, raw in _lines(handle, path):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ParamCorruptError(f"{path} is not a UTF-8 text (JSONL) file: {error.reason}") from None
            if not line.strip():
                continue
            if pending is not None:
                raise ParamCorruptError(f"{path}:{pending[0]}: not a JSON line")
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pending = (number, len(line.rstrip("\n")))
    if pending is not None:
        logger.warning("%s: ignoring a torn last line (%d characters)", path, pending[1])
    return out


def read_results(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read a results file without changing it: ``(header, rows)``.

    A torn last line is ignored. A file without a header (lines of rows only) is read too
    (by :func:`read_jsonl`), with an empty header.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when a line other than the last is not a JSON object.
    """
    path = Path(path)
    with open_regular(path, "results file") as handle:
        first = next(_lines(handle, path), (0, b""))[1]
        try:
            headerless = not _is_header(json.loads(first)) if first.strip() else False
        except ValueError:
            headerless = False
        if not headerless:
            header, rows, _ = _scan(handle, path)
            return header or {}, [row for _, row in rows]
    out = []
    for number, obj in enumerate(read_jsonl(path), start=1):
        if not isinstance(obj, dict):
            raise ParamCorruptError(f"{path}: value {number} is not a JSON object")
        out.append(decode_row(obj))
    return {}, out


def verify_results(path: str | os.PathLike[str]) -> list[str]:
    """What is wrong with a sweep's results file, read without changing it: a header whose
    ``sweep_id`` is not the one of its config and groups, and every row that :meth:`ResultsStore.open`
    would refuse (damaged, foreign or repeated), as "line N: ..." texts; empty for an intact
    file and for a file that is no sweep's (a headerless one, the demo's)."""
    path = Path(path)
    with open_regular(path, "results file") as handle:
        first = next(_lines(handle, path), (0, b""))[1]
        try:
            ours = _is_header(json.loads(first))
        except ValueError:
            ours = False
        if not ours:
            return []
        header, numbered, _ = _scan(handle, path)
    assert header is not None
    problems = header_problems(header)
    if problems:
        return [f"line 1 (the header): {problems[0]}"]
    try:
        verified_rows(header, header, numbered, path)
    except ParamCorruptError as error:
        return [str(error).removeprefix(f"{path}: ")]
    return []


class ResultsStore:
    """The results file of one sweep: resumable, append-only, flushed row by row.

    Args:
        path: the JSONL file (created with its folder when missing).
        resume: reopen a file holding finished rows of the same sweep and skip them; with
            ``False`` such a file is an error instead.
        extend: accept a file of another sweep whose configuration this one extends
            (:func:`extension_problems` finds nothing): its rows are kept byte for byte and
            the header is replaced by this sweep's.
        metadata: entries a new header gets beside the sweep's (JSON values), for readers of
            the file such as the report: ``{"chance": {"accuracy": 0.1}}``, the chance level
            of a metric, and ``"metrics"``, each metric's direction and display (see
            :func:`chance_metadata`). They are no part of the sweep_id and never compared on resume or
            extension; a resumed file keeps the header it has.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "results.jsonl"
        >>> with ResultsStore(path) as store:
        ...     store.open("abc123", {"trials": 1})
        ...     store.append({"key": "g|random|0", "loss_after": float("inf")})
        []
        >>> with ResultsStore(path) as store:
        ...     store.open("abc123", {"trials": 1})
        [{'key': 'g|random|0', 'loss_after': inf}]
    """

    def __init__(
        self, path: str | os.PathLike[str], *, resume: bool = True, extend: bool = False,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.resume = resume
        self.extend = extend
        self.metadata = metadata
        self.header: dict[str, Any] | None = None
        self._file: Any = None
        self._held: Any = None  # the file, locked by lock() before open()
        self._created = False  # whether lock() created it

    def open(self, sweep_id: str, config: Mapping[str, Any], **extra: Any) -> list[dict[str, Any]]:
        """Open the file for the sweep ``sweep_id``; return the rows it already holds.

        A new (or empty) file gets the header ``{"format", "sweep_id", "config", **extra}``
        and the store's ``metadata``.
        An existing one must carry the same ``sweep_id``; its torn last line, if any, is cut
        away before anything is appended.

        Raises:
            ValueError: when the file belongs to another sweep, is not a results file, is
                in use by another process, or holds rows while ``resume`` is False.
        """
        if self._file is not None:
            raise ParamCorruptError(f"{self.path} is already open")
        extra = self._with_metadata(extra)
        new_header = {"format": FORMAT, "sweep_id": sweep_id, "config": dict(config), **extra}
        handle, self._held = self._held or self._open_locked(), None
        try:
            header, numbered, good = _scan(handle, self.path)
            if _header_only_of_another(header, numbered, sweep_id):  # a run that stopped before its first row
                logger.warning("%s holds only the header of another sweep, no row: this sweep takes it over", self.path)
                handle.truncate(0)
                header, good = None, 0
            rows = verified_rows(header, new_header, numbered, self.path, extend=self.extend)
            if header is not None and header.get("sweep_id") != sweep_id:
                header = _rewrite_header(handle, header, new_header, good, self.path)
                good = handle.seek(0, os.SEEK_END)
            if rows and not self.resume:
                raise ParamCorruptError(f"{self.path} already holds {len(rows)} rows of this sweep and resume is off")
            handle.seek(0, os.SEEK_END)
            if header is None and good == 0 and handle.tell() and not _torn_header(handle):
                raise ParamCorruptError(f"{self.path} is not a probe results file; choose another output path")
            if handle.tell() != good:
                # cut the torn last line away so the next row starts on a fresh line
                handle.truncate(good)
                handle.flush()
                os.fsync(handle.fileno())
            if header is None:
                header = new_header
                self._write(handle, json.dumps(_encode_value(header), allow_nan=False))
        except OSError as error:
            handle.close()
            raise FileAccessError(f"cannot write the results file {os_error_text(error, self.path)}") from None
        except BaseException:
            handle.close()
            raise
        self._file = handle
        self.header = header
        if rows:
            logger.info("%s: resuming after %d finished rows", self.path, len(rows))
        return rows

    def lock(self) -> None:
        """Take the file's lock now (creating the file and its folder when missing), before any
        long work: a file another process writes, a path that cannot be written, or one that
        is no regular file is refused at once. :meth:`open` then uses the file as locked."""
        if self._held is None and self._file is None:
            created = not self.path.exists()
            self._held = self._open_locked()
            self._created = created

    def _open_locked(self) -> Any:
        """The file opened for reading and appending, locked; only a regular file or a new one."""
        check_regular(self.path, "results file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NONBLOCK", 0), 0o666)
        except OSError as error:
            raise FileAccessError(f"cannot write the results file {os_error_text(error, self.path)}") from None
        handle = os.fdopen(fd, "a+b")
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced by something else since the check
                raise ParamCorruptError(f"results file {self.path} is not a regular file")
            lock_file(handle, self.path)
        except BaseException:
            handle.close()
            raise
        return handle

    def check(self, sweep_id: str, config: Mapping[str, Any] | None = None, **extra: Any) -> None:
        """Refuse early, without writing anything, a file that :meth:`open` would refuse
        (given ``config`` and ``extra`` as :meth:`open` gets them, the error names the
        settings that differ, and an extension is accepted when ``extend`` is on; with
        ``config`` its rows are verified as :meth:`open` verifies them).

        Raises:
            ValueError: when the file belongs to another sweep, is not a results file, or
                holds a damaged, foreign or repeated row.
        """
        check_regular(self.path, "results file")
        if not self.path.exists():
            return
        extra = self._with_metadata(extra)
        new_header = None if config is None else {"format": FORMAT, "sweep_id": sweep_id, "config": dict(config), **extra}
        with open_regular(self.path, "results file") as handle:
            header, numbered, good = _scan(handle, self.path)
            torn = header is None and _torn_header(handle)
            size = handle.seek(0, os.SEEK_END)
        header = None if _header_only_of_another(header, numbered, sweep_id) else header  # open() takes it over
        if header is not None and header.get("sweep_id") != sweep_id and new_header is None:
            same_sweep(header, sweep_id, self.path, None, extend=self.extend)
        elif header is not None and new_header is not None:
            verified_rows(header, new_header, numbered, self.path, extend=self.extend)
        elif size and good == 0 and not torn:
            raise ParamCorruptError(f"{self.path} is not a probe results file; choose another output path")

    def _with_metadata(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        """The header's extra entries: the sweep's own, then ``metadata``."""
        metadata = dict(self.metadata or {})
        taken = [k for k in metadata if k in _HEADER_KEYS or k in extra]
        if taken:
            raise ParamCorruptError(f"metadata may not set the header entry {taken[0]!r} (the sweep writes it)")
        return {**extra, **metadata}

    @staticmethod
    def _write(handle: Any, line: str) -> None:
        handle.seek(0, os.SEEK_END)
        handle.write(line.encode() + b"\n")
        handle.flush()
        os.fsync(handle.fileno())

    def append(self, row: Mapping[str, Any]) -> None:
        """Append one finished row, flushed and synced to disk before returning."""
        if self._file is None:
            raise ParamCorruptError("the results store is not open: call open() first")
        self._write(self._file, encode_row(row))

    def close(self) -> None:
        """Close the file (and release its lock); safe to call twice."""
        if self._held is not None and self._created and os.fstat(self._held.fileno()).st_size == 0:
            self.path.unlink(missing_ok=True)  # locked early, never opened: leave no empty file behind
        for handle in (self._file, self._held):
            if handle is not None:
                handle.close()
        self._file = self._held = None

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(read_results(self.path)[1])


def _header_only_of_another(header: Mapping[str, Any] | None, numbered: list[Any], sweep_id: str) -> bool:
    """Another sweep's header and no row (a run that failed before its first row): taken over."""
    return header is not None and not numbered and header.get("sweep_id") != sweep_id


def _torn_header(handle: Any) -> bool:
    """Whether the file is nothing but a torn header (its first line, read with a bound, is
    all of it)."""
    handle.seek(0)
    first = handle.readline(MAX_LINE_BYTES + 1)
    whole = handle.read(1) == b""
    handle.seek(0, os.SEEK_END)
    return whole and _only_torn_header(first)


def _only_torn_header(data: bytes) -> bool:
    """Whether ``data`` is nothing but the beginning of one of our headers (cut mid-write)."""
    data = data.rstrip(b"\n")
    start = _HEADER_START
    return b"\n" not in data and (data.startswith(start) or start.startswith(data))


def _rewrite_header(handle: Any, old: Mapping[str, Any], new: dict[str, Any], good: int, path: Path) -> dict[str, Any]:
    """Replace the header of an extended file, every row line kept byte for byte: written to a
    temporary file, synced, then renamed over the old one (atomic), and ``handle`` reopened."""
    new = {**new, "extends": [*(old.get("extends") or []), old.get("sweep_id")]}
    handle.seek(0)
    left = good - len(handle.readline(MAX_LINE_BYTES + 1))  # the rows after the old header
    tmp = path.with_name(path.name + ".extend.tmp")
    try:
        with open(tmp, "wb") as out:
            out.write(json.dumps(_encode_value(new), allow_nan=False).encode() + b"\n")
            while left > 0:  # copied in bounded chunks
                chunk = handle.read(min(left, 1 << 20))
                out.write(chunk)
                left -= len(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk: no half-written copy left behind
        raise
    # the open handle (and its lock) still points at the old inode: move both to the new file
    fresh = open(path, "a+b")  # noqa: SIM115
    lock_file(fresh, path)
    os.dup2(fresh.fileno(), handle.fileno())
    fresh.close()
    handle.seek(0, os.SEEK_END)
    logger.info("%s: extending sweep %s with %s", path, old.get("sweep_id"), new["sweep_id"])
    return new
