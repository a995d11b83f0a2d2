"""Reading results files and normalising their rows for the report (see the package's docstring).

Rows are read tolerantly by :func:`paramcorrupt.probe.store.read_jsonl` (the one JSONL reader):
a header line (no ``"method"`` key) is skipped, a torn last line is ignored, and a field that is
missing only drops what needs it, with a note in the report.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from ...errors import MissingFileError, ParamCorruptError
from ...losses import MetricInfo
from ..store import read_jsonl

__all__ = ["PathArg", "load_rows"]

PathArg = str | PathLike | Path


def _as_paths(results: PathArg | Sequence[PathArg]) -> list[Path]:
    if isinstance(results, str | PathLike):
        paths = [Path(results)]
    else:
        paths = [Path(p) for p in results]
    if not paths:
        raise ParamCorruptError("no results file given")
    out = []
    for path in paths:
        if path.is_dir():
            if (path / "results.jsonl").is_file():
                path = path / "results.jsonl"
            else:
                raise MissingFileError(f"{path} is a folder without results.jsonl")
        if not path.is_file():
            raise MissingFileError(f"results file not found: {path}")
        out.append(path)
    return out


def _num(value: Any) -> float | None:
    """A finite-or-infinite float from a JSON value (``"inf"`` accepted); None if unusable."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _chance_levels(value: Any) -> dict[str, float]:
    """A header's ``"chance"`` entry (metric name -> chance level), its unusable values left out."""
    if not isinstance(value, dict):
        return {}
    out = {}
    for metric, level in value.items():
        number = _num(level)
        if number is not None and math.isfinite(number):
            out[str(metric)] = number
    return out


def _metric_infos(value: Any) -> dict[str, MetricInfo]:
    """A header's ``"metrics"`` entry (metric name -> :class:`MetricInfo`), unusable ones left out."""
    if not isinstance(value, dict):
        return {}
    infos = {str(name): MetricInfo.from_dict(info) for name, info in value.items()}
    return {name: info for name, info in infos.items() if info is not None}


def load_rows(paths: PathArg | Sequence[PathArg]) -> list[dict[str, Any]]:
    """Result rows of one or more JSONL files, in file order.

    Header lines (objects without a ``"method"`` key) are skipped and a torn last line is
    ignored. ``p`` is returned as a float (``"inf"`` -> ``math.inf``); every other field is
    left as stored, ``"_source"`` names the file, ``"_chance"`` is the row's metric's chance
    level where the file's header gives one (``"chance": {metric: value}``) and
    ``"_metric_info"`` its :class:`~paramcorrupt.losses.MetricInfo` where the header records
    it (``"metrics"``; files written before it did have none); ``"_display"`` and ``"_data"``
    the task's short name and data source where the header gives them (``task_display``,
    ``task_data``); ``"_quantized"`` the header's record of a quantised model (format,
    options, scope, size). A row repeated
    with the same (``sweep_id``, ``key``) keeps its last copy.

    Raises:
        FileNotFoundError: if a file does not exist.
        ValueError: if a file cannot be read, holds a broken line before its last one, or no
            file holds any result row.
    """
    rows: list[dict[str, Any]] = []
    index: dict[tuple[Any, Any], int] = {}
    files = _as_paths(paths)
    for path in files:
        chance: dict[str, float] = {}
        infos: dict[str, MetricInfo] = {}
        described: dict[str, Any] = {}  # the header's task_display / task_data -> _display / _data
        for obj in read_jsonl(path):
            if isinstance(obj, dict) and "method" not in obj:
                chance = _chance_levels(obj.get("chance")) or chance  # a header's chance levels
                infos = _metric_infos(obj.get("metrics")) or infos  # and its metrics' infos
                # the task's short name, where its data came from
                for entry in ("task_display", "task_data"):
                    if isinstance(obj.get(entry), str):
                        described["_" + entry[5:]] = obj[entry]
                # a quantised sweep: what its model stores
                if isinstance(obj.get("quantized"), dict):
                    described["_quantized"] = obj["quantized"]
                continue
            if not isinstance(obj, dict):
                continue
            row = dict(obj)
            row["_source"] = str(path)
            row.update(described)
            if isinstance(row.get("metric"), str) and row["metric"] in chance:
                row["_chance"] = chance[row["metric"]]
            if isinstance(row.get("metric"), str) and row["metric"] in infos:
                row["_metric_info"] = infos[row["metric"]]
            p = _num(row.get("p"))
            row["p"] = p
            ident = (row.get("sweep_id"), row.get("key"))
            if ident[1] is not None and ident in index:
                rows[index[ident]] = row
                continue
            if ident[1] is not None:
                index[ident] = len(rows)
            rows.append(row)
    if not rows:
        raise ParamCorruptError("no result rows in " + ", ".join(str(p) for p in files))
    return rows


@dataclass
class _Row:
    task: str
    grouping: str
    group: str
    method: str
    p: float
    eps: float
    n: float | None
    k: float | None
    trial: int
    metric: str | None
    before: float | None
    after: float | None
    dloss: float | None  # loss change on the evaluation data
    dloss_g: float | None  # loss change on the gradient's data
    first_order: float | None
    G: float | None
    ratio: float | None
    higher_is_better: bool | None = None  # the metric's direction: the row's, else the header's
    chance: float | None = None  # the metric's chance level, where the file's header gives it
    info: MetricInfo | None = None  # the metric's direction and display, from the header
    display: str | None = None  # the task's short name, where the header gives one

    @property
    def dloss_theory(self) -> float | None:
        """The loss change that first-order theory predicts: on the gradient's data if known."""
        return self.dloss_g if self.dloss_g is not None else self.dloss

    @property
    def n_key(self) -> str:
        return _n_key(self.n, self.k)


def _n_key(n: float | None, k: float | None) -> str:
    if n is None:
        return "?"
    if k is not None and n == k:
        return "k"
    return str(int(n)) if float(n).is_integer() else f"{n:g}"


@dataclass
class _Notes:
    items: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        if text not in self.items:
            self.items.append(text)


def _diff(
    r: dict[str, Any], field_: str | None, after: str, before: str
) -> tuple[float | None, str]:
    """A loss change: the row's ``field_`` if present, else ``after - before``."""
    if field_ is not None and _num(r.get(field_)) is not None:
        return _num(r[field_]), f"`{field_}`"
    a, b = _num(r.get(after)), _num(r.get(before))
    if a is not None and b is not None:
        return a - b, f"`{after} - {before}`"
    return None, "nowhere"


def _normalise(raw: list[dict[str, Any]], notes: _Notes) -> tuple[list[_Row], str]:
    rows: list[_Row] = []
    sources: dict[str, int] = defaultdict(int)
    sources_g: dict[str, int] = defaultdict(int)
    dropped = 0
    for r in raw:
        eps, p = _num(r.get("eps")), r.get("p")
        method = r.get("method")
        if eps is None or eps <= 0 or p is None or not isinstance(method, str):
            dropped += 1
            continue
        dloss, src = _diff(r, "loss_change", "loss_after", "loss_before")
        sources[src] += 1
        dloss_g, src_g = _diff(r, None, "grad_loss_after", "grad_loss_before")
        sources_g[src_g] += 1
        info = r.get("_metric_info") if isinstance(r.get("_metric_info"), MetricInfo) else None
        higher = r.get("higher_is_better")
        if not isinstance(higher, bool):
            higher = None if info is None else info.higher_is_better
        trial = r.get("trial")
        rows.append(
            _Row(
                task=str(r.get("task") or ""),
                grouping=str(r.get("grouping") or ""),
                group=str(r.get("group") if r.get("group") is not None else "all"),
                method=method,
                p=float(p),
                eps=float(eps),
                n=_num(r.get("n")),
                k=_num(r.get("k")),
                trial=int(trial)
                if isinstance(trial, int | float) and not isinstance(trial, bool)
                else 0,
                metric=r.get("metric"),
                before=_num(r.get("metric_before")),
                after=_num(r.get("metric_after")),
                dloss=dloss,
                dloss_g=dloss_g,
                first_order=_num(r.get("first_order")),
                G=_num(r.get("G")),
                ratio=_num(r.get("ratio")),
                higher_is_better=higher,
                chance=_num(r.get("_chance")),
                info=info,
                display=r["_display"] if isinstance(r.get("_display"), str) else None,
            )
        )
    if dropped:
        notes.add(
            f"{dropped} row(s) without a usable `method`, `p` or positive `eps` were skipped."
        )
    used = (
        "Loss change on the evaluation data (Table 1's Δloss (eval) columns) from "
        + ", ".join(f"{s} ({c} rows)" for s, c in sources.items())
        + "; on the gradient's data (Theorem 1 panel, Δloss / first-order ratio) from "
        + ", ".join(f"{s} ({c} rows)" for s, c in sources_g.items())
        + ", falling back to the evaluation data where absent."
    )
    if not rows:
        raise ParamCorruptError("no usable result rows (each needs method, p and eps)")
    return rows, used
