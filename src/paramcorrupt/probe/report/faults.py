"""The report's section on fault models outside the L_p grid (bit flips, stuck-at bits, the
bit search, values written): the metric against each fault model's own axis (the bit error
rate, the number of flipped or stuck bits), one panel per group, and a heatmap group x axis
value.

Which setting is the axis comes from the fault model (:attr:`FaultModel.axes`, the first one
its rows set); the other settings (format, bits, ...) split the rows into one series each.
Rows of fault models unknown to this process are drawn along the first of ``ber``,
``flips`` and ``count`` they set. Random bit flips and the bit search counted in flips, in one
format and bit class, share one figure (one run of ``--fault bitflip,bit-search`` asks for
that comparison). Random faults are drawn as the mean over trials with the band of the
middle trials (:mod:`.trials`), the number of trials in the legend; every fault heatmap of a
task shares one colour scale, its range stated.

Rows of a quantised model (``quantized``: the format the model was stored in, as a whole)
are split by it too; the section says what the results header records of the stored model
(format, options, scope, size), their tables add the float model's clean metric, the
quantised one and the faults that hit codes, scales and zero points; where rows of several
formats (and float rows) share a fault setting, one more figure draws the metric against the
axis, one line per format.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ...faults import FAULTS
from ..sweep import ROW_FIELDS
from .display import MetricDisplay, _mean_std, _ordered, _slug, metric_display, short_name
from .fault_figures import FaultFigures, Series
from .rows import _Notes, _num
from .trials import BAND_TEXT, axis_label

__all__ = ["FaultSection", "is_fault_row"]

#: fields of a fault row that are not its setting
_NOT_SETTING = frozenset(
    {
        "bit_errors",
        "changed",
        "search_loss",
        "loss_nonfinite",
        "_source",
        "_metric_info",
        "higher_is_better",
        "quantized",
        "loss_float",
        "metric_float",
        "code_faults",
        "scale_faults",
        "zero_point_faults",
        "_quantized",
        "_chance",
        "_display",
        "_data",
    }
)
#: the row fields of a quantised model's fault rows counted in its tables
_STORED_COUNTS = ("code_faults", "scale_faults", "zero_point_faults")
_FALLBACK_AXES = ("ber", "flips", "count")
#: fault models counted in flipped bits that one figure compares (random flips vs the search)
_FLIP_METHODS = ("bitflip", "bit-search")


def is_fault_row(row: dict[str, Any]) -> bool:
    """A row of a fault model off the L_p grid: it has no eps."""
    return isinstance(row.get("method"), str) and _num(row.get("eps")) is None


def _axis(method: str, row: dict[str, Any]) -> str | None:
    """The setting ``row`` is drawn along: the first of its fault model's axes it sets (a
    bitflip row sets ``ber`` or ``flips``: two kinds of table, never pooled)."""
    cls = FAULTS.get(method)
    for name in cls.axes if cls is not None and cls.axes else _FALLBACK_AXES:
        if _num(row.get(name)) is not None:
            return name
    return None


def _setting_names(method: str, row: dict[str, Any]) -> list[str]:
    cls = FAULTS.get(method)
    if cls is not None:
        return list(cls.parameters)
    return [k for k in row if k not in ROW_FIELDS and k not in _NOT_SETTING]


def _text(fixed) -> str:
    return ", ".join(f"{n}={v}" for n, v in fixed if v is not None)


class FaultSection:
    """Curves, heatmaps and a table for the fault rows of a report."""

    def __init__(
        self, rows: list[dict[str, Any]], out_dir: Path, notes: _Notes, figure, save, link
    ) -> None:
        self.rows, self.out, self.notes = rows, out_dir, notes
        self._link = link
        self.displays: dict[str, MetricDisplay] = {}
        self.names: dict[str, str] = {}  # a task's short name for titles and file names
        #: rows drawn, and (method, why) -> rows left out, for the report's header and notes
        self.shown = 0
        self.left_out: dict[tuple[str, str], int] = defaultdict(int)
        for task in _ordered(str(r.get("task") or "") for r in rows):
            sel = [r for r in rows if str(r.get("task") or "") == task]
            self.names[task] = next(
                (r["_display"] for r in sel if isinstance(r.get("_display"), str)), None
            ) or short_name(task)
            names = _ordered(r.get("metric") for r in sel if r.get("metric"))
            values = [
                v
                for r in sel
                for v in (_num(r.get("metric_before")), _num(r.get("metric_after")))
                if v is not None
            ]
            directions = [
                r["higher_is_better"] for r in sel if isinstance(r.get("higher_is_better"), bool)
            ]
            infos = [
                r["_metric_info"]
                for r in sel
                if r.get("_metric_info") is not None
                and r.get("metric") == (names[0] if names else None)
            ]
            self.displays[task] = metric_display(
                names[0] if names else None,
                values,
                directions[0] if directions else None,
                infos[0] if infos else None,
            )
        self.figures = FaultFigures(figure, save, notes)
        #: a task's largest drop from the original to its chance level (the heatmaps' scale)
        self.to_chance: dict[str, float] = {}

    def section(self) -> list[str]:
        lines = ["## Hardware faults: the metric against the fault rate", ""]
        lines.append(
            "Fault models off the L_p grid (bit flips and stuck-at bits in a stored format, the "
            "progressive bit search, values written). Random faults: the mean over trials (the legend "
            f"and the tables give the number of trials); {BAND_TEXT}. The bit search: one line. Random "
            "flips and the bit search of one format and bit class share a figure. Dashed: the original "
            "value. Rows whose loss became Inf or NaN are drawn by their metric and counted in the table. "
            "Weights changed: the weights whose value the faults changed (a stuck bit that already held "
            "its value changes nothing)."
        )
        if any(r.get("quantized") for r in self.rows):
            lines[-1] += (
                " Rows marked `quantized=FORMAT` probe the model stored in that format (every "
                "weight its decoded code; biases and norms float): their original value is the quantised "
                "model's, the float model's is beside it, and the bit faults hit codes, scales and zero points "
                "(a flipped scale changes its whole group or block)."
            )
        lines.append("")
        lines += self._stored_models()
        buckets: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
        for r in self.rows:
            method = r["method"]
            axis = _axis(method, r)
            if axis is None:
                self._leave_out(r, f"sets none of {', '.join(_FALLBACK_AXES)}")
                continue
            if _num(r.get("metric_after")) is None:
                self._leave_out(r, "has no `metric_after`")
                continue
            buckets[(str(r.get("task") or ""), str(r.get("grouping") or ""), method, axis)].append(
                r
            )
        plots: dict[tuple, list[Series]] = defaultdict(list)  # one figure each, its series in order
        for (task, grouping, method, axis), sel in buckets.items():
            names = [n for n in _setting_names(method, sel[0]) if n != axis]
            if any(r.get("quantized") for r in sel):  # each stored format its own figure
                names = ["quantized", *names]
            for fixed in _ordered(tuple((n, r.get(n)) for n in names) for r in sel):
                part = [r for r in sel if tuple((n, r.get(n)) for n in names) == fixed]
                self.shown += len(part)
                values = dict(fixed)
                # random flips beside the bit search
                if axis == "flips" and method in _FLIP_METHODS:
                    shared = tuple(
                        (n, values.get(n))
                        for n in ("quantized", "format", "bits")
                        if n != "format" or not values.get("quantized")
                    )
                    own = tuple(x for x in fixed if x[0] not in dict(shared) and x[0] != "format")
                    plots[(task, grouping, axis, "flips", shared)].append(
                        Series(method, axis, own, part)
                    )
                else:
                    plots[(task, grouping, axis, method, fixed)].append(
                        Series(method, axis, (), part, fixed)
                    )
        scale = self._family_scales(plots)
        for key, series in plots.items():
            task, grouping, axis = key[:3]
            shared = key[4] if key[3] == "flips" else series[0].fixed
            label = _text(shared)
            ordered = _ordered(s.method for s in series)
            title = (
                f"{' and '.join(ordered)} by {axis_label(axis, ordered)}"
                + (f" ({label})" if label else "")
                + (f"; grouping `{grouping}`" if grouping else "")
            )
            if task:
                title = f"task `{self.names[task]}`, " + title
            lines += self._one(task, grouping, axis, series, title, label, scale.get(task, 1.0))
        for (task, grouping, method, axis), sel in buckets.items():
            lines += self.figures.formats(
                self.displays[task],
                self._formats_title(task, method, axis),
                grouping,
                method,
                axis,
                sel,
                [n for n in _setting_names(method, sel[0]) if n not in (axis, "format")],
                self._link,
                self.names[task],
            )
        for (method, reason), count in self.left_out.items():
            self.notes.add(f"{count} fault row(s) of `{method}` not shown: each {reason}.")
        return lines

    def _formats_title(self, task: str, method: str, axis: str) -> str:
        return f"task `{self.names[task]}`, {method} by {axis_label(axis, [method])} in each stored format"

    def _leave_out(self, row: dict[str, Any], reason: str) -> None:
        self.left_out[(str(row.get("method")), reason)] += 1

    def _stored_models(self) -> list[str]:
        """What each results header records of a quantised model: format, options, scope,
        size, the float and quantised clean metrics."""
        seen: dict[str, dict[str, Any]] = {}
        for r in self.rows:
            if r.get("quantized") and str(r["quantized"]) not in seen:
                seen[str(r["quantized"])] = r
        if not seen:
            return []
        lines = [
            "**Models as stored**",
            "",
            "| format | options | quantised | weights (parameters) | stored bits | "
            "float metric | quantised metric | cost |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for fmt, r in seen.items():
            disp = self.displays[str(r.get("task") or "")]
            head = r.get("_quantized") if isinstance(r.get("_quantized"), dict) else {}
            options = (
                ", ".join(f"{k}={v}" for k, v in (head.get("options") or {}).items()) or "defaults"
            )
            scope = {"model": "as a whole (every default weight)"}.get(
                head.get("scope"), head.get("scope") or "?"
            )
            size = (
                f"{head['weights']} ({head['parameters']:,})"
                if "weights" in head and "parameters" in head
                else "?"
            )
            bits = f"{head['stored_bits']:,}" if isinstance(head.get("stored_bits"), int) else "?"
            before, floated = _num(r.get("metric_before")), _num(r.get("metric_float"))
            cells = [
                "–" if v is None else f"{disp.fmt(disp.show(v))}{disp.symbol}"
                for v in (floated, before)
            ]
            cost = (
                "–"
                if None in (before, floated)
                else f"{disp.damage(floated, before):+.3g}{disp.points}"
            )
            lines.append(
                f"| {fmt} | {options} | {scope} | {size} | {bits} | {cells[0]} | {cells[1]} | {cost} |"
            )
        lines += [
            "",
            f"Cost: the {next(iter(self.displays.values())).damage_label} from the float model to the stored one.",
            "",
        ]
        return lines

    def _family_scales(self, plots: dict[tuple, list[Series]]) -> dict[str, float]:
        """One colour scale per task for all its fault heatmaps: the drop from the original to
        the chance level where the results header gives it (the darkest red: a model reduced
        to guessing), or the largest |mean damage| of any cell of any heatmap drawn (a series
        of two or more groups) where that is larger or the chance level unknown."""
        top: dict[str, float] = defaultdict(float)
        for key, series in plots.items():
            disp = self.displays[key[0]]
            for s in series:
                if len(s.groups) > 1:
                    finite = [abs(v) for v in s.damage(disp).values() if np.isfinite(v)]
                    top[key[0]] = max(top[key[0]], *finite, 0.0)
                    self.to_chance[key[0]] = max(
                        [self.to_chance.get(key[0], 0.0)]
                        + [
                            disp.damage(_num(r["metric_before"]), _num(r["_chance"]))
                            for r in s.rows
                            if _num(r.get("_chance")) is not None
                            and _num(r.get("metric_before")) is not None
                        ]
                    )
        return {
            task: max(m, self.to_chance.get(task, 0.0))
            if max(m, self.to_chance.get(task, 0.0)) > 1e-12
            else 1.0
            for task, m in top.items()
        }

    def _one(
        self, task, grouping, axis, series: list[Series], title, label, vmax: float
    ) -> list[str]:
        disp = self.displays[task]
        lines = [f"**{title}**", ""]
        lines += self._table(series, axis, disp)
        lines.append("")
        slug = _slug(
            "faults",
            self.names[task],
            grouping or "nogrouping",
            "-".join(s.method for s in series),
            axis,
            label,
            *[_text(s.own) for s in series],
        )
        path = self.figures.curves(series, axis, disp, title, slug)
        lines.append(self._link(path, f"curves: {title}"))
        lines.append("")
        for s in series:
            if len(s.groups) > 1:
                heading = title if len(series) == 1 else f"{title}: {s.name}"
                path = self.figures.heatmap(
                    s, disp, heading, _slug(slug, s.method) if len(series) > 1 else slug, vmax
                )
                chance = self.to_chance.get(task, 0.0)
                why = (
                    "the drop from the original to the chance level"
                    if chance >= vmax and chance > 0
                    else "the largest mean damage of any cell"
                )
                lines.append(
                    f"Heatmap{'' if len(series) == 1 else ' of ' + s.name}: colour scale {-vmax:.3g} to {vmax:.3g} "
                    f"({disp.damage_label}; {why}), the same for every fault heatmap of task `{self.names[task]}`."
                )
                lines.append("")
                lines.append(self._link(path, f"heatmap: {heading}"))
                lines.append("")
        return lines

    def _table(self, series: list[Series], axis: str, disp: MetricDisplay) -> list[str]:
        rows = [r for s in series for r in s.rows]
        methods = [s.method for s in series]
        stored = any(r.get("quantized") for r in rows)
        counted = "values" if all(m.startswith("activation") for m in methods) else "weights"
        header = (
            ("| fault " if len(series) > 1 else "")
            + f"| group | {axis_label(axis, methods)} | {disp.name}{disp.unit} after (mean ± std) | trials |"
        )
        if axis != "flips":  # along flips the count is the axis
            header += f" {axis_label('flips', methods)} (mean) |"
        header += f" {counted} changed (mean) | loss Inf/NaN |"
        if stored:  # the model as stored: its clean metric, the float one, where the faults hit
            header += f" float {disp.name} | quantised {disp.name} | in codes / scales / zero points (mean) |"
        lines = [header, "|" + "---|" * header.count(" |")]
        for s in series:
            for (g, v), members in s.cells().items():
                after = [disp.show(_num(r["metric_after"])) for r in members]
                mu, sd = _mean_std(after)
                bad = sum(1 for r in members if r.get("loss_nonfinite"))
                spread = f" ± {disp.fmt(sd)}" if len(members) > 1 else " (one run: no std)"
                line = (
                    f"| {s.name} " if len(series) > 1 else ""
                ) + f"| {g} | {v:g} | {disp.fmt(mu)}{spread} | {len(members)} |"
                if axis != "flips":
                    line += f" {_mean(members, 'bit_errors')} |"
                line += f" {_mean(members, 'changed')} | {bad} |"
                if stored:
                    line += _stored_cells(members, disp)
                lines.append(line)
        return lines


def _mean(members: list[dict[str, Any]], name: str) -> str:
    values = [_num(r.get(name)) for r in members if _num(r.get(name)) is not None]
    return f"{np.mean(values):.3g}" if values else "–"


def _stored_cells(members: list[dict[str, Any]], disp: MetricDisplay) -> str:
    """The quantised model's table cells: float and quantised clean metric, the mean faults
    in codes / scales / zero points."""
    clean = [_num(r.get(n)) for n in ("metric_float", "metric_before") for r in members[:1]]
    shown = " | ".join("–" if v is None else disp.fmt(disp.show(v)) for v in clean)
    return f" {shown} | {' / '.join(_mean(members, n) for n in _STORED_COUNTS)} |"
