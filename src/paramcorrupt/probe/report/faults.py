"""The report's section on fault models outside the L_p grid (bit flips, stuck-at bits, the
bit search, values written): the metric against each fault model's own axis (the bit error
rate, the number of flips), one panel per group, and a heatmap group x axis value.

Which setting is the axis comes from the fault model (:attr:`FaultModel.axes`, the first one
its rows set); the other settings (format, bits, ...) split the rows into one figure each.
Rows of fault models unknown to this process are drawn along the first of ``ber``,
``flips`` and ``count`` they set.

Rows of a quantised model (``quantized``: the format the model was stored in, as a whole)
are split by it too; their tables add the float model's clean metric, the quantised one and
the faults that hit codes, scales and zero points; where rows of several formats (and float
rows) share a fault setting, one more figure draws the metric against the axis, one line per
format.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ...faults import FAULTS
from ..sweep import ROW_FIELDS
from .base import figure_legend, grid_shape
from .display import MetricDisplay, _mean_std, _median, _ordered, _slug, metric_display, short_name
from .rows import _Notes, _num

__all__ = ["FaultSection", "is_fault_row"]

#: fields of a fault row that are not its setting
_NOT_SETTING = frozenset({"bit_errors", "changed", "search_loss", "loss_nonfinite", "_source", "_metric_info", "higher_is_better",
                          "quantized", "loss_float", "metric_float", "code_faults", "scale_faults", "zero_point_faults"})
#: the row fields of a quantised model's fault rows counted in its tables
_STORED_COUNTS = ("code_faults", "scale_faults", "zero_point_faults")
_FALLBACK_AXES = ("ber", "flips", "count")
_PANELS_PER_FIGURE = 12


def is_fault_row(row: dict[str, Any]) -> bool:
    """A row of a fault model off the L_p grid: it has no eps."""
    return isinstance(row.get("method"), str) and _num(row.get("eps")) is None


def _axis(method: str, row: dict[str, Any]) -> str | None:
    """The setting ``row`` is drawn along: the first of its fault model's axes it sets (a
    bitflip row sets ``ber`` or ``flips``: two kinds of table, never pooled)."""
    cls = FAULTS.get(method)
    for name in (cls.axes if cls is not None and cls.axes else _FALLBACK_AXES):
        if _num(row.get(name)) is not None:
            return name
    return None


def _setting_names(method: str, row: dict[str, Any]) -> list[str]:
    cls = FAULTS.get(method)
    if cls is not None:
        return list(cls.parameters)
    return [k for k in row if k not in ROW_FIELDS and k not in _NOT_SETTING]


def _wrapped(title: str, inches: float) -> str:
    """A figure title broken into lines that fit ``inches`` (about 11 characters an inch at 9-10 pt)."""
    import textwrap

    return "\n".join(textwrap.wrap(title.replace("`", ""), max(24, int(inches * 11)), break_on_hyphens=False))


class FaultSection:
    """Curves, heatmaps and a table for the fault rows of a report."""

    def __init__(self, rows: list[dict[str, Any]], out_dir: Path, notes: _Notes, figure, save, link) -> None:
        self.rows, self.out, self.notes = rows, out_dir, notes
        self._figure, self._save, self._link = figure, save, link
        self.displays: dict[str, MetricDisplay] = {}
        self.names: dict[str, str] = {}  # a task's short name for titles and file names
        #: rows drawn, and (method, why) -> rows left out, for the report's header and notes
        self.shown = 0
        self.left_out: dict[tuple[str, str], int] = defaultdict(int)
        for task in _ordered(str(r.get("task") or "") for r in rows):
            sel = [r for r in rows if str(r.get("task") or "") == task]
            self.names[task] = next((r["_display"] for r in sel if isinstance(r.get("_display"), str)), None) or short_name(task)
            names = _ordered(r.get("metric") for r in sel if r.get("metric"))
            values = [v for r in sel for v in (_num(r.get("metric_before")), _num(r.get("metric_after"))) if v is not None]
            directions = [r["higher_is_better"] for r in sel if isinstance(r.get("higher_is_better"), bool)]
            infos = [r["_metric_info"] for r in sel if r.get("_metric_info") is not None and r.get("metric") == (names[0] if names else None)]
            self.displays[task] = metric_display(
                names[0] if names else None, values, directions[0] if directions else None, infos[0] if infos else None
            )

    def section(self) -> list[str]:
        lines = ["## Hardware faults: the metric against the fault rate", ""]
        lines.append(
            "Fault models off the L_p grid (bit flips and stuck-at bits in a stored format, the "
            "progressive bit search, values written). Random faults: the mean over trials with a "
            "±1 std band; the bit search: one line. Dashed: the original value. Rows whose loss "
            "became Inf or NaN are drawn by their metric and counted in the table."
        )
        if any(r.get("quantized") for r in self.rows):
            lines[-1] += (
                " Rows marked `quantized=FORMAT` probe the model stored in that format as a whole (every "
                "weight its decoded code; biases and norms float): their original value is the quantised "
                "model's, the float model's is beside it, and the bit faults hit codes, scales and zero points "
                "(a flipped scale changes its whole group or block)."
            )
        lines.append("")
        figures: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
        for r in self.rows:
            method = r["method"]
            axis = _axis(method, r)
            if axis is None:
                self._leave_out(r, f"sets none of {', '.join(_FALLBACK_AXES)}")
                continue
            if _num(r.get("metric_after")) is None:
                self._leave_out(r, "has no `metric_after`")
                continue
            figures[(str(r.get("task") or ""), str(r.get("grouping") or ""), method, axis)].append(r)
        for (task, grouping, method, axis), sel in figures.items():
            names = [n for n in _setting_names(method, sel[0]) if n != axis]
            if any(r.get("quantized") for r in sel):  # each stored format its own figure
                names = ["quantized", *names]
            # the settings other than the axis (and other than what varies with it) split the figures
            splits = _ordered(tuple((n, sel_r.get(n)) for n in names) for sel_r in sel)
            for fixed in splits:
                part = [r for r in sel if tuple((n, r.get(n)) for n in names) == fixed]
                label = ", ".join(f"{n}={v}" for n, v in fixed if v is not None)
                title = f"{method} by {axis}" + (f" ({label})" if label else "") + (f"; grouping `{grouping}`" if grouping else "")
                if task:
                    title = f"task `{self.names[task]}`, " + title
                self.shown += len(part)
                lines += self._one(task, grouping, method, axis, part, title, label)
        for (task, grouping, method, axis), sel in figures.items():
            lines += self._formats(task, grouping, method, axis, sel)
        for (method, reason), count in self.left_out.items():
            self.notes.add(f"{count} fault row(s) of `{method}` not shown: each {reason}.")
        return lines

    def _leave_out(self, row: dict[str, Any], reason: str) -> None:
        self.left_out[(str(row.get("method")), reason)] += 1

    def _one(self, task, grouping, method, axis, rows, title, label) -> list[str]:
        disp = self.displays[task]
        groups = _ordered(str(r.get("group")) for r in rows)
        values = sorted({_num(r.get(axis)) for r in rows})
        lines = [f"**{title}**", ""]
        header = f"| group | {axis} | {disp.name}{disp.unit} after (mean ± std) | trials | faulty bits (mean) | loss Inf/NaN |"
        stored = any(r.get("quantized") for r in rows)
        if stored:  # the model as stored: its clean metric, the float one, where the faults hit
            header += f" float {disp.name} | quantised {disp.name} | in codes / scales / zero points (mean) | weights changed (mean) |"
        lines += [header, "|---|---|---|---|---|---|" + ("---|---|---|---|" if stored else "")]
        cells: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            cells[(str(r.get("group")), _num(r.get(axis)))].append(r)
        for g in groups:
            for v in values:
                members = cells.get((g, v), [])
                if not members:
                    continue
                after = [disp.show(_num(r["metric_after"])) for r in members]
                mu, sd = _mean_std(after)
                bits = [_num(r.get("bit_errors")) for r in members if _num(r.get("bit_errors")) is not None]
                bits_text = f"{np.mean(bits):.3g}" if bits else "–"
                bad = sum(1 for r in members if r.get("loss_nonfinite"))
                spread = f" ± {disp.fmt(sd)}" if len(members) > 1 else " (one run: no std)"
                line = f"| {g} | {v:g} | {disp.fmt(mu)}{spread} | {len(members)} | {bits_text} | {bad} |"
                if stored:
                    line += _stored_cells(members, disp)
                lines.append(line)
        lines.append("")
        slug = _slug("faults", self.names[task], grouping or "nogrouping", method, axis, label)
        lines.append(self._link(self._curves(rows, groups, values, axis, disp, title, slug), f"curves: {title}"))
        lines.append("")
        if len(groups) > 1:
            lines.append(self._link(self._heatmap(cells, groups, values, axis, disp, title, slug), f"heatmap: {title}"))
            lines.append("")
        return lines

    def _formats(self, task, grouping, method, axis, rows) -> list[str]:
        """One figure, one line per stored format (a float model's rows: their ``format``
        setting), where rows of two
        or more formats share every other setting: which format survives best."""
        names = [n for n in _setting_names(method, rows[0]) if n != axis and n != "format"]
        out: list[str] = []
        for fixed in _ordered(tuple((n, r.get(n)) for n in names) for r in rows):
            part = [r for r in rows if tuple((n, r.get(n)) for n in names) == fixed]
            formats = _ordered(_stored_format(r) for r in part)
            if len(formats) < 2:
                continue
            disp = self.displays[task]
            label = ", ".join(f"{n}={v}" for n, v in fixed if v is not None)
            title = f"task `{self.names[task]}`, {method} by {axis} in each stored format" + (f" ({label})" if label else "")
            fig = self._figure(6.0, 4.0)
            ax = fig.add_subplot()
            for fmt in formats:
                sel = [r for r in part if _stored_format(r) == fmt]
                xs = sorted({_num(r.get(axis)) for r in sel})
                # every group's rows pooled at each value: the model's curve in that format
                mu = [_mean_std([disp.show(_num(r["metric_after"])) for r in sel if _num(r.get(axis)) == x])[0] for x in xs]
                ax.plot(xs, mu, marker="o", ms=3, label=fmt)
            if all(_num(r.get(axis)) > 0 for r in part):
                ax.set_xscale("log")
            ax.set_xlabel(axis)
            ax.set_ylabel(f"{disp.name}{disp.unit}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            ax.set_title(_wrapped(title, 6.0), fontsize=9)
            slug = _slug("faults", self.names[task], grouping or "nogrouping", method, axis, "formats", label)
            out += [f"**{title}** (mean over trials and groups)", "", self._link(self._save(fig, slug + "_formats"), f"formats: {title}"), ""]
        return out

    def _curves(self, rows, groups, values, axis, disp, title, slug) -> Path:
        from matplotlib.ticker import NullLocator

        chunk = groups[:_PANELS_PER_FIGURE]
        if len(groups) > _PANELS_PER_FIGURE:
            self.notes.add(f"{title}: curves drawn for the first {_PANELS_PER_FIGURE} of {len(groups)} groups.")
        nrows, cols = grid_shape(len(chunk))
        spare = nrows * cols - len(chunk)
        fig = self._figure(max(5.0, 3.4 * cols), 2.6 * nrows + (0.9 if not spare else 0.4))
        axes = fig.subplots(nrows, cols, squeeze=False, sharex=True, sharey=True)
        for ax in axes.flat[len(chunk):]:
            fig.delaxes(ax)
        positive = all(v > 0 for v in values)
        label = "random faults (mean ± std)" if any(r.get("trial", 0) for r in rows) else str(rows[0]["method"])
        for ax, g in zip(axes.flat, chunk):
            sel = [r for r in rows if str(r.get("group")) == g]
            xs = sorted({_num(r.get(axis)) for r in sel})
            stats = [_mean_std([disp.show(_num(r["metric_after"])) for r in sel if _num(r.get(axis)) == x]) for x in xs]
            mu, sd = np.array([s[0] for s in stats]), np.array([s[1] for s in stats])
            ax.plot(xs, mu, marker="o", ms=3, color="tab:red", label=label)
            ax.fill_between(xs, mu - sd, mu + sd, color="tab:red", alpha=0.25, lw=0)
            original = _median(_num(r.get("metric_before")) for r in sel)
            if original is not None:
                ax.axhline(disp.show(original), color="grey", ls="--", lw=0.8, label="original")
            chance = next((_num(r.get("_chance")) for r in sel if _num(r.get("_chance")) is not None), None)
            if chance is not None:  # the metric's chance level, where the results header gives it
                ax.axhline(disp.show(chance), color="black", ls=":", lw=1.2, label="chance")
            if positive and max(values) / min(values) >= 10:
                ax.set_xscale("log")
                ax.xaxis.set_minor_locator(NullLocator())
            ax.set_title(g, fontsize=9)
            ax.set_ylabel(f"{disp.name}{disp.unit}")
            ax.grid(alpha=0.3)
        for i, ax in enumerate(axes.flat[: len(chunk)]):
            ax.label_outer()
            if i + cols >= len(chunk):  # nothing below it: keep its axis labels
                ax.tick_params(labelbottom=True)
                ax.set_xlabel(axis)
        figure_legend(fig, list(axes.flat[: len(chunk)]), spare, loc="outside lower center")
        fig.suptitle(_wrapped(title, max(5.0, 3.4 * cols)), fontsize=10)
        return self._save(fig, slug + "_curves")

    def _heatmap(self, cells, groups, values, axis, disp, title, slug) -> Path:
        mat = np.full((len(groups), len(values)), np.nan)
        for i, g in enumerate(groups):
            for j, v in enumerate(values):
                members = cells.get((g, v), [])
                damage = [disp.damage(_num(r["metric_before"]), _num(r["metric_after"])) for r in members if _num(r.get("metric_before")) is not None]
                if damage:
                    mat[i, j] = float(np.mean(damage))
        finite = mat[np.isfinite(mat)]
        # diverging, centred on 0 as the L_p heatmaps: red = damage, blue = an improvement
        vmax = float(np.abs(finite).max()) if finite.size else 0.0
        vmax = vmax if vmax > 1e-12 else 1.0  # no damage anywhere: a plain -1..1 bar, not ±1e-12
        fig = self._figure(2.2 + 0.9 * len(values), max(2.2, 1.4 + 0.42 * len(groups)))
        ax = fig.add_subplot()
        im = ax.imshow(np.ma.masked_invalid(mat), cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(values)), [f"{v:g}" for v in values])
        ax.set_yticks(range(len(groups)), groups)
        ax.set_xlabel(axis)
        ax.set_title(_wrapped(title, 2.2 + 0.9 * len(values)), fontsize=9)
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                if np.isfinite(mat[i, j]):
                    ax.text(j, i, f"{mat[i, j]:.3g}", ha="center", va="center", fontsize=7,
                            color="white" if abs(mat[i, j]) > 0.6 * vmax else "black")
        fig.colorbar(im, ax=ax, label=disp.damage_label)
        return self._save(fig, slug + "_heatmap")


def _stored_cells(members: list[dict[str, Any]], disp: MetricDisplay) -> str:
    """The quantised model's table cells: float and quantised clean metric, the mean faults
    in codes / scales / zero points, the mean number of weights changed."""
    def mean(name: str) -> str:
        values = [_num(r.get(name)) for r in members if _num(r.get(name)) is not None]
        return f"{np.mean(values):.3g}" if values else "–"

    clean = [_num(r.get(n)) for n in ("metric_float", "metric_before") for r in members[:1]]
    shown = " | ".join("–" if v is None else disp.fmt(disp.show(v)) for v in clean)
    return f" {shown} | {' / '.join(mean(n) for n in _STORED_COUNTS)} | {mean('changed')} |"


def _stored_format(row: dict[str, Any]) -> str:
    """The format a fault row's model was stored in: the quantised model's, else the bit
    fault's per-weight ``format`` setting (float32 by default)."""
    return str(row.get("quantized") or row.get("format") or "float32")
