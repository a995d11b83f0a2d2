"""What a results file guarantees, checked on every resume and by the report.

A results file (:class:`~paramcorrupt.probe.store.ResultsStore`) is read in bounded pieces:
a line longer than :data:`MAX_LINE_BYTES` is refused (no line of ours comes near it), and
only a regular file (or a path that does not exist yet) is opened, so a named pipe or a
device (``/dev/zero``) is refused at once instead of blocking or filling memory.

Every row of a sweep's file (a header with ``config`` and ``groups``) is checked against
the schema of the sweep (:class:`RowSchema`):

- its ``key`` is one of the sweep's keys (:func:`~paramcorrupt.probe.plan.row_settings`),
  its ``sweep_id`` the file's, and no key appears twice;
- every field of :data:`FIELD_KINDS` is present with a value of its kind (text, integer,
  number, number or null; ``"inf"``/``"nan"`` strings are numbers);
- ``group``, ``method`` and ``trial`` are the key's, ``task`` and ``grouping`` the sweep's;
- in a sweep with outcome classes (``config.outcomes``), ``masked``, ``sdc``, ``due`` and
  ``examples`` are integers >= 0 with ``masked + sdc + due == examples``
  (:mod:`paramcorrupt.probe.outcome_rows`);
- the fields its fault model declares for the row's setting
  (:meth:`~paramcorrupt.faults.FaultModel.row_fields`: the L_p models' ``p``, ``eps``,
  ``n``, ``n_requested``; a bit fault's ``format``, ``bits``, ...) hold that setting's values.

The header itself must describe its rows: its ``sweep_id`` is the hash of its ``config`` and
``groups`` (:func:`header_problems`), so a header edited by hand is found. A row that fails
any check is never counted as done: the store refuses the file naming the line (see
:class:`~paramcorrupt.probe.store.ResultsStore`), and ``paramcorrupt report`` refuses it too.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import FileAccessError, ParamCorruptError, os_error_text
from ..files import check_regular

__all__ = [
    "FIELD_KINDS",
    "check_resumed",
    "MAX_LINE_BYTES",
    "RowSchema",
    "SECOND_ORDER_KINDS",
    "chance_metadata",
    "config_differences",
    "extension_problems",
    "header_problems",
    "lock_file",
    "open_regular",
    "same_sweep",
    "schema_of",
    "verified_rows",
]

#: the longest line a results file may hold (a row is about 1 KB; a header lists the groups'
#: parameter names): a longer one is refused, never read into memory whole
MAX_LINE_BYTES = 16 << 20

#: each row field of :data:`paramcorrupt.probe.sweep.ROW_FIELDS` and the kind of its value
FIELD_KINDS: dict[str, str] = {
    "sweep_id": "text", "key": "text", "task": "text", "grouping": "text", "group": "text", "method": "text",
    "p": "number?", "eps": "number?", "n": "int?", "n_requested": "int?", "k": "int", "trial": "int",
    "loss_before": "number", "loss_after": "number", "loss_change": "number", "metric": "text",
    "metric_before": "number", "metric_after": "number", "grad_loss_before": "number?",
    "grad_loss_after": "number?", "first_order": "number?", "G": "number?", "ratio": "number?",
    "seconds": "number?",
}

#: the fields a second-order sweep (``config.second_order``) adds to every row
#: (:mod:`paramcorrupt.probe.second_order`)
SECOND_ORDER_KINDS: dict[str, str] = {
    "second_order": "number?", "predicted_ratio": "number?", "predicted_mean": "number?",
    "predicted_mean_stderr": "number?", "trace_per_k": "number?", "trace_per_k_stderr": "number?",
    "lambda_max": "number?",
}

_KIND_TEXT = {"text": "a string", "int": "an integer", "number": "a number", "int?": "an integer or null",
              "number?": "a number or null"}


def open_regular(path: Path, what: str) -> Any:
    """``path`` opened for reading, refused unless it is a regular file (a named pipe would
    block, a device never end); an OS error is one line with the path."""
    check_regular(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise
    except OSError as error:
        raise FileAccessError(f"cannot read {what} {os_error_text(error, path)}") from None
    handle = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced by something else since the check
        handle.close()
        check_regular(path, what)
        raise ParamCorruptError(f"{what} {path} is not a regular file")
    return handle


def lock_file(handle: Any, path: Path) -> None:
    """An exclusive advisory lock, so two sweeps never append to one file at once."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ParamCorruptError(f"{path} is being written by another process") from None


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _of_kind(value: Any, kind: str) -> bool:
    if kind.endswith("?") and value is None:
        return True
    base = kind.rstrip("?")
    if base == "text":
        return isinstance(value, str)
    if base == "int":
        return _number(value) and isinstance(value, int)
    return _number(value)


def _same(a: Any, b: Any) -> bool:
    if _number(a) and _number(b):
        return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    return type(a) is type(b) and a == b


def _encoded(value: Any) -> Any:
    """A decoded header value as it was written (non-finite floats back to their strings)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {k: _encoded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encoded(v) for v in value]
    return value


def header_problems(header: Mapping[str, Any]) -> list[str]:
    """Why a sweep's header does not describe its rows: its ``sweep_id`` is not the hash of
    its ``config`` and ``groups`` (:func:`~paramcorrupt.probe.plan.sweep_id`'s payload), as
    when a header is edited by hand. Empty for a header without ``config`` and ``groups``
    (not a sweep's: nothing to check)."""
    config, groups = header.get("config"), header.get("groups")
    if not isinstance(config, Mapping) or not isinstance(groups, Mapping):
        return []
    payload = {"config": _encoded(dict(config)), "groups": [[label, _encoded(names)] for label, names in groups.items()]}
    try:
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True, allow_nan=False).encode()).hexdigest()[:16]
    except (TypeError, ValueError):
        return ["its config cannot be hashed"]
    if digest != header.get("sweep_id"):
        return [f"its sweep_id {header.get('sweep_id')!r} is not the one of its config and groups ({digest}): "
                "the header was changed after the rows were written"]
    return []


class RowSchema:
    """The rows one sweep may hold: their keys, and for each the fields and values it must have.

    Args:
        sweep_id: the sweep's id (every row carries it).
        config: the sweep's configuration (:meth:`~paramcorrupt.probe.plan.SweepConfig.as_dict`).
        labels: the probed groups' labels, in order.
        earlier: the ids of the sweeps the file's sweep extends (their rows are kept as written).
    """

    def __init__(self, sweep_id: str, config: Mapping[str, Any], labels: list[str], earlier: Iterable[str] = ()) -> None:
        # here: reading a file that is no sweep's needs no torch
        from .plan import SweepConfig, row_settings

        self.sweep_id = sweep_id
        self.sweep_ids = {sweep_id, *earlier}
        self.config = SweepConfig.from_dict(config)
        self.rows = {key: (label, fault, trial) for label in labels for fault, trial, key in row_settings(self.config, label)}

    def problems(self, row: Any) -> list[str]:
        """What is wrong with one row (empty when nothing is)."""
        if not isinstance(row, Mapping):
            return [f"it is a JSON {type(row).__name__}, not an object"]
        key = row.get("key")
        if not isinstance(key, str):
            return ["it has no key" if key is None else f"its key is {key!r}, not a string"]
        if key not in self.rows:
            return [f"its key {key!r} is not a row of this sweep (a row of another sweep or file)"]
        if row.get("sweep_id") not in self.sweep_ids:
            return [f"its sweep_id is {row.get('sweep_id')!r}, not this file's {self.sweep_id!r}"]
        out = []
        kinds = {**FIELD_KINDS, **(SECOND_ORDER_KINDS if self.config.second_order is not None else {})}
        for name, kind in kinds.items():
            if name not in row:
                out.append(f"field {name!r} is missing")
            elif not _of_kind(row[name], kind):
                out.append(f"field {name!r} is {row[name]!r}, not {_KIND_TEXT[kind]}")
        if self.config.outcomes:  # outcome counts (paramcorrupt.probe.outcome_rows): integers that add up
            counts = [row.get(name) for name in ("masked", "sdc", "due", "examples")]
            if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts) or sum(counts[:3]) != counts[3]:
                out.append(f"its outcome counts masked, sdc, due, examples are {counts}, not integers >= 0 adding up to examples")
        if out:
            return out
        label, fault, trial = self.rows[key]
        expected = {"group": label, "method": fault.name, "trial": trial, "task": self.config.task,
                    "grouping": self.config.grouping, **self._declared(fault, label, row["k"])}
        return [f"field {name!r} is {row.get(name)!r}, but its key says {value!r}"
                for name, value in expected.items() if name not in row or not _same(row[name], value)]

    @staticmethod
    def _declared(fault: Any, label: str, k: int) -> dict[str, Any]:
        """The fields the fault model declares for a row of its setting (no corruption drawn)."""
        from ..faults import FaultContext
        from ..groups import ParameterGroup

        try:
            return dict(fault.row_fields(FaultContext(None, ParameterGroup(label, ()), k)))  # type: ignore[arg-type]
        except Exception:  # a fault model whose fields need the model itself: not checked
            return {}


def schema_of(header: Mapping[str, Any]) -> RowSchema | None:
    """The :class:`RowSchema` of a sweep's header (``config`` and ``groups``), or ``None`` for
    a header that is no sweep's (a file written by :class:`ResultsStore` directly)."""
    config, groups, sweep_id = header.get("config"), header.get("groups"), header.get("sweep_id")
    if not isinstance(config, Mapping) or not isinstance(groups, Mapping) or not isinstance(sweep_id, str):
        return None
    try:
        earlier = [s for s in header.get("extends") or [] if isinstance(s, str)]
        return RowSchema(sweep_id, _decoded(config), list(groups), earlier)
    except ParamCorruptError as error:
        raise ParamCorruptError(f"its header's config is not a sweep's configuration: {error}") from None


def _decoded(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config as :meth:`SweepConfig.from_dict` takes it ("inf" stays text: parse_p reads it)."""
    return dict(_encoded(dict(config)))


#: configuration entries an extension may add values to (lists: a superset; trials: more)
_GROWING = ("methods", "p_values", "n_values", "eps_values", "groups")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(_encoded(value), allow_nan=False))


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The settings two headers differ in, as "name: file X, this sweep Y" texts (the config
    entries, then the groups' parameters)."""
    a, b = _jsonable(old.get("config") or {}), _jsonable(new.get("config") or {})
    out = [f"{key}: file {a.get(key)!r}, this sweep {b.get(key)!r}" for key in dict.fromkeys([*a, *b]) if a.get(key) != b.get(key)]
    groups_a, groups_b = _jsonable(old.get("groups") or {}), _jsonable(new.get("groups") or {})
    changed = [g for g in groups_a if g in groups_b and groups_a[g] != groups_b[g]]
    if changed:
        out.append(f"the parameters of group {changed[0]!r}")
    if not out and groups_a != groups_b:
        out.append(f"groups: file {list(groups_a)}, this sweep {list(groups_b)}")
    return out


def extension_problems(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Why the sweep of header ``new`` does not extend the one of header ``old`` (empty when
    it does): every setting equal, except that ``methods``, ``p_values``, ``n_values``,
    ``eps_values`` and ``groups`` may hold more values, ``trials`` may be larger and fault
    settings may hold more values; groups present in both have the same parameters. Then
    every row of the old file is a row the new sweep computes the same way (a row's key and
    seed depend on its own setting only), and the old rows can be kept as they are."""
    a, b = _jsonable(old.get("config") or {}), _jsonable(new.get("config") or {})
    problems = []
    for key in dict.fromkeys([*a, *b]):
        va, vb = a.get(key), b.get(key)
        if va == vb:
            continue
        if key in _GROWING and va is not None and isinstance(vb, list) and all(v in vb for v in va):
            continue
        if key == "groups" and vb is None:  # every group of the grouping
            continue
        if key == "trials" and isinstance(va, int) and isinstance(vb, int) and vb >= va:
            continue
        if key == "settings" and isinstance(va, dict) and isinstance(vb, dict) and all(
            m in vb and all(s in vb[m] and all(v in vb[m][s] for v in vs) for s, vs in d.items()) for m, d in va.items()
        ):
            continue
        problems.append(f"{key}: file {va!r}, this sweep {vb!r}")
    groups_a, groups_b = _jsonable(old.get("groups") or {}), _jsonable(new.get("groups") or {})
    for label, names in groups_a.items():
        if groups_b.get(label) != names:
            problems.append(f"group {label!r}: " + ("not in this sweep" if label not in groups_b else "other parameters"))
    return problems


def same_sweep(header: Mapping[str, Any], sweep_id: str, path: Path, new: Mapping[str, Any] | None = None,
                *, extend: bool = False) -> None:
    if header.get("sweep_id") != sweep_id:
        config = header.get("config") or {}
        what = (
            f"sweep_id {header.get('sweep_id')}, task {config.get('task')!r}, grouping {config.get('grouping')!r}"
        )
        advice = "choose another output file (the existing one is left untouched)"
        if new is not None:
            differences = config_differences(header, new)
            if differences:
                what = f"sweep_id {header.get('sweep_id')}; it differs in " + "; ".join(differences)
            problems = extension_problems(header, new)
            if not problems:
                advice = "add --extend to add this sweep's new rows to it (its rows are kept), or " + advice
            elif extend:
                advice = f"--extend cannot add to it ({problems[0]}): " + advice
        raise ParamCorruptError(f"{path} holds the results of another sweep ({what}); this sweep is {sweep_id}: {advice}")


def verified_rows(header: Mapping[str, Any] | None, new: Mapping[str, Any], numbered: list[tuple[int, dict[str, Any]]],
              path: Path, *, extend: bool = False) -> list[dict[str, Any]]:
    """The rows of a file this sweep may resume (or extend), each checked: a file of another
    sweep, a header edited since its rows were written, a row that is damaged, foreign or
    repeated are refused, naming the line, and the file is left untouched."""
    if header is None:
        return []
    if header.get("sweep_id") != new.get("sweep_id"):
        if not extend or extension_problems(header, new):
            same_sweep(header, str(new.get("sweep_id")), path, new, extend=extend)
        expected = {**new, "extends": [*(header.get("extends") or []), header.get("sweep_id")]}
    else:
        # a sweep's header (with its groups) must hold the settings its id stands for; a file
        # written by the store alone is matched by its id only
        edited = config_differences(header, new) if "groups" in new else []
        if edited:
            raise ParamCorruptError(
                f"{path}: its header carries this sweep's id {new.get('sweep_id')} but not its settings "
                f"({edited[0]}): the header was edited, so its rows cannot be trusted; write to another file"
            )
        expected = {**new, "extends": header.get("extends") or []}
    schema = schema_of(expected)
    seen: dict[str, int] = {}
    for number, row in numbered:
        problems = schema.problems(row) if schema is not None else _key_problems(row)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ParamCorruptError(
                f"{path}: line {number} is not a finished row of this sweep: {problems[0]}{more}; the file is left "
                "untouched: delete that line (its row is then computed again) or write to another file"
            )
        key = row["key"]
        if key in seen:
            raise ParamCorruptError(
                f"{path}: line {number} repeats the key {key!r} of line {seen[key]}; the file is left untouched: "
                "delete one of them or write to another file"
            )
        seen[key] = number
    return [row for _, row in numbered]


def _key_problems(row: Mapping[str, Any]) -> list[str]:
    """The check of a row of a file that is no sweep's (no schema): it has a string key."""
    key = row.get("key")
    return [] if isinstance(key, str) else ["it has no key" if key is None else f"its key is {key!r}, not a string"]


def chance_metadata(
    metric: str | None, chance: float | None, metrics: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The header entries of a probe's metrics, for :class:`ResultsStore`'s ``metadata``:
    ``{"chance": {metric: chance}}`` (``{}`` when either is unknown) and, given the task's
    ``metrics`` (name -> metric), ``"metrics"``: name -> :class:`~paramcorrupt.losses.MetricInfo`
    as a dict (direction, display name, scale, unit, chance; ``"loss"`` included), which
    reports read instead of guessing from a metric's name.

    >>> chance_metadata("accuracy", 0.1), chance_metadata("loss", None)
    ({'chance': {'accuracy': 0.1}}, {})
    >>> from paramcorrupt.losses import accuracy
    >>> chance_metadata("accuracy", 0.1, {"accuracy": accuracy})["metrics"]["accuracy"]["unit"]
    '%'
    """
    out: dict[str, Any] = {}
    if metric is not None and chance is not None:
        if isinstance(chance, bool) or not isinstance(chance, (int, float)) or not math.isfinite(chance):
            raise ParamCorruptError(f"a chance level must be a finite number, got {chance!r}")
        out["chance"] = {str(metric): float(chance)}
    if metrics is not None:
        from ..losses import metric_infos  # here: reading a results file needs no torch

        infos = metric_infos(metrics, metric, out.get("chance", {}).get(str(metric)))
        out["metrics"] = {name: info.to_dict() for name, info in infos.items()}
    return out


def check_resumed(finished: Mapping[str, Mapping[str, Any]], clean: Mapping[str, Mapping[str, float]]) -> None:
    """A resumed file must come from the same weights: the clean loss its rows recorded
    (``loss_before``) is the model's (``clean["eval"]["loss"]``; NaN matches NaN)."""
    if not finished:
        return
    row = next(iter(finished.values()))
    recorded = row.get("loss_before")
    loss = clean["eval"]["loss"]
    if isinstance(recorded, (int, float)) and not (
        math.isclose(recorded, loss, rel_tol=1e-6, abs_tol=1e-12) or (math.isnan(recorded) and math.isnan(loss))
    ):
        raise ParamCorruptError(
            f"the results file was written for a model whose clean loss is {recorded!r}, but this model's is "
            f"{loss!r}: not the same weights or data; write to another file"
        )
