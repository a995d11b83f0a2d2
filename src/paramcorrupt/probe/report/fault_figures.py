"""The fault section's figures: curves of one or more series (random flips beside the bit
search) against the fault model's axis, a heatmap group x axis value on the task's one colour
scale, and the metric against the axis for several stored formats in one figure."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...faults import FAULTS
from .base import figure_legend, grid_shape
from .display import MetricDisplay, _mean_std, _median, _ordered, _slug
from .rows import _Notes, _num
from .trials import axis_label, trial_band, trials_text

__all__ = ["FaultFigures", "Series", "stored_format"]

_PANELS_PER_FIGURE = 12
#: how legends name the fault models
_NAMES = {
    "bitflip": "random bit flips",
    "bit-search": "bit search",
    "stuck-at": "random stuck-at bits",
    "random-values": "random values",
    "activation-bitflip": "activation bit flips",
    "activation-stuck-at": "activation stuck-at bits",
}
_COLOURS = ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown")


def _text(fixed) -> str:
    return ", ".join(f"{n}={v}" for n, v in fixed if v is not None)


@dataclass
class Series:
    """The rows of one fault model at one setting, drawn along ``axis``: ``own`` the settings
    its legend names (those it does not share with the figure's other series), ``fixed``
    every setting of a figure of one series."""

    method: str
    axis: str
    own: tuple
    rows: list[dict[str, Any]]
    fixed: tuple = ()

    @property
    def name(self) -> str:
        own = _text(self.own)
        return _NAMES.get(self.method, self.method) + (f" ({own})" if own else "")

    @property
    def stochastic(self) -> bool:
        cls = FAULTS.get(self.method)
        return cls.stochastic if cls is not None else any(r.get("trial", 0) for r in self.rows)

    @property
    def groups(self) -> list[str]:
        return _ordered(str(r.get("group")) for r in self.rows)

    def cells(self) -> dict[tuple[str, float], list[dict[str, Any]]]:
        """(group, axis value) -> rows, groups in order of appearance, values ascending."""
        out: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
        for r in sorted(
            self.rows,
            key=lambda r: (self.groups.index(str(r.get("group"))), _num(r.get(self.axis))),
        ):
            out[(str(r.get("group")), _num(r.get(self.axis)))].append(r)
        return out

    def damage(self, disp: MetricDisplay) -> dict[tuple[str, float], float]:
        """(group, axis value) -> the mean damage over its trials, in display units."""
        out = {}
        for key, members in self.cells().items():
            damage = [
                disp.damage(_num(r["metric_before"]), _num(r["metric_after"]))
                for r in members
                if _num(r.get("metric_before")) is not None
            ]
            if damage:
                out[key] = float(np.mean(damage))
        return out


def stored_format(row: dict[str, Any]) -> str:
    """The format a fault row's model was stored in: the quantised model's, else the bit
    fault's per-weight ``format`` setting (float32 by default)."""
    return str(row.get("quantized") or row.get("format") or "float32")


def _wrapped(title: str, inches: float) -> str:
    """A figure title broken into lines that fit ``inches`` (about 11 characters an inch at 9-10 pt)."""
    import textwrap

    return "\n".join(
        textwrap.wrap(title.replace("`", ""), max(24, int(inches * 11)), break_on_hyphens=False)
    )


def _draw(
    ax,
    rows: list[dict[str, Any]],
    axis: str,
    disp: MetricDisplay,
    stochastic: bool,
    colour: str,
    name: str,
    band_label: bool = True,
) -> None:
    """One series on ``ax``: the mean over trials at each axis value; for random faults the
    band of the middle trials and the number of trials in the legend."""
    xs = sorted({_num(r.get(axis)) for r in rows})
    trials = [
        [disp.show(_num(r["metric_after"])) for r in rows if _num(r.get(axis)) == x] for x in xs
    ]
    mu = [_mean_std(t)[0] for t in trials]
    if not stochastic:
        ax.plot(
            xs,
            mu,
            marker="o",
            ms=3,
            color=colour,
            label=name + ("" if max(map(len, trials)) == 1 else " (mean)"),
        )
        return
    ax.plot(
        xs,
        mu,
        marker="o",
        ms=3,
        color=colour,
        label=f"{name}: mean of {trials_text(map(len, trials))}",
    )
    band = np.array([trial_band(t) for t in trials])
    ax.fill_between(
        xs,
        band[:, 0],
        band[:, 1],
        color=colour,
        alpha=0.22,
        lw=0,
        label=f"{name}: 10th-90th percentile of trials" if band_label else "_band",
    )


class FaultFigures:
    """Draws the fault section's figures through the report's figure and save functions."""

    def __init__(self, figure, save, notes: _Notes) -> None:
        self._figure, self._save, self.notes = figure, save, notes

    def curves(
        self, series: list[Series], axis: str, disp: MetricDisplay, title: str, slug: str
    ) -> Path:
        """One panel per group, every series on the same axes."""
        from matplotlib.ticker import NullLocator

        groups = _ordered(g for s in series for g in s.groups)
        values = sorted({_num(r.get(axis)) for s in series for r in s.rows})
        chunk = groups[:_PANELS_PER_FIGURE]
        if len(groups) > _PANELS_PER_FIGURE:
            self.notes.add(
                f"{title}: curves drawn for the first {_PANELS_PER_FIGURE} of {len(groups)} groups."
            )
        nrows, cols = grid_shape(len(chunk))
        spare = nrows * cols - len(chunk)
        width = max(5.0, 3.4 * cols)
        fig = self._figure(width, 2.6 * nrows + (0.9 + 0.3 * len(series) if not spare else 0.4))
        axes = fig.subplots(nrows, cols, squeeze=False, sharex=True, sharey=True)
        for ax in axes.flat[len(chunk) :]:
            fig.delaxes(ax)
        log = all(v > 0 for v in values) and (max(values) / min(values) >= 10 or len(series) > 1)
        xlabel = axis_label(axis, [s.method for s in series])
        for ax, g in zip(axes.flat, chunk):
            sel = []
            for i, s in enumerate(series):
                rows = [r for r in s.rows if str(r.get("group")) == g]
                if rows:
                    _draw(ax, rows, axis, disp, s.stochastic, _COLOURS[i % len(_COLOURS)], s.name)
                sel += rows
            original = _median(_num(r.get("metric_before")) for r in sel)
            if original is not None:
                ax.axhline(disp.show(original), color="grey", ls="--", lw=0.8, label="original")
            chance = next(
                (_num(r.get("_chance")) for r in sel if _num(r.get("_chance")) is not None), None
            )
            if chance is not None:  # the metric's chance level, where the results header gives it
                ax.axhline(disp.show(chance), color="black", ls=":", lw=1.2, label="chance")
            if log:
                ax.set_xscale("log")
                ax.xaxis.set_minor_locator(NullLocator())
            ax.set_title(g, fontsize=9)
            ax.set_ylabel(f"{disp.name}{disp.unit}")
            ax.grid(alpha=0.3)
        for i, ax in enumerate(axes.flat[: len(chunk)]):
            ax.label_outer()
            if i + cols >= len(chunk):  # nothing below it: keep its axis labels
                ax.tick_params(labelbottom=True)
                ax.set_xlabel(xlabel)
        panels = list(axes.flat[: len(chunk)])
        labels = {
            x for ax in panels for x in ax.get_legend_handles_labels()[1] if not x.startswith("_")
        }
        # as many columns as fit the width (a label is up to about 2.8 inches at 8 pt)
        ncol = max(1, min(len(labels), 5, int(width // 2.8)))
        figure_legend(fig, panels, spare, loc="outside lower center", ncol=ncol)
        fig.suptitle(_wrapped(title, width), fontsize=10)
        return self._save(fig, slug + "_curves")

    def heatmap(
        self, series: Series, disp: MetricDisplay, title: str, slug: str, vmax: float
    ) -> Path:
        """Group x axis value, the mean damage over trials, on the colour scale -vmax..vmax."""
        groups, values = series.groups, sorted({_num(r.get(series.axis)) for r in series.rows})
        mat = np.full((len(groups), len(values)), np.nan)
        for (g, v), damage in series.damage(disp).items():
            mat[groups.index(g), values.index(v)] = damage
        fig = self._figure(2.6 + 0.9 * len(values), max(2.4, 1.4 + 0.42 * len(groups)))
        ax = fig.add_subplot()
        # diverging, centred on 0 as the L_p heatmaps: red = damage, blue = an improvement
        im = ax.imshow(
            np.ma.masked_invalid(mat), cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto"
        )
        ax.set_xticks(range(len(values)), [f"{v:g}" for v in values])
        ax.set_yticks(range(len(groups)), groups)
        ax.set_xlabel(axis_label(series.axis, [series.method]))
        ax.set_title(_wrapped(title, 2.6 + 0.9 * len(values)), fontsize=9)
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                if np.isfinite(mat[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{mat[i, j]:.3g}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if abs(mat[i, j]) > 0.6 * vmax else "black",
                    )
        bar = fig.colorbar(im, ax=ax)
        bar.set_label(f"{disp.damage_label}\n(one scale for the task's fault heatmaps)", fontsize=8)
        return self._save(fig, slug + "_heatmap")

    def formats(
        self, disp, title_base, grouping, method, axis, rows, names, link, task_name
    ) -> list[str]:
        """One figure, one line per stored format (a float model's rows: their ``format``
        setting), where rows of two or more formats share every other setting: which format
        survives best."""
        from matplotlib.ticker import NullLocator

        out: list[str] = []
        for fixed in _ordered(tuple((n, r.get(n)) for n in names) for r in rows):
            part = [r for r in rows if tuple((n, r.get(n)) for n in names) == fixed]
            formats = _ordered(stored_format(r) for r in part)
            if len(formats) < 2:
                continue
            label = _text(fixed)
            title = title_base + (f" ({label})" if label else "")
            fig = self._figure(6.0, 4.2)
            ax = fig.add_subplot()
            stochastic = Series(method, axis, (), part).stochastic
            for i, fmt in enumerate(formats):
                sel = [r for r in part if stored_format(r) == fmt]
                clean = _median(_num(r.get("metric_before")) for r in sel)
                name = fmt + (
                    "" if clean is None else f" (clean {disp.fmt(disp.show(clean))}{disp.symbol})"
                )
                # every group's rows pooled at each value: the model's curve in that format
                # many formats: the band's meaning in the title, not once per format
                _draw(
                    ax,
                    sel,
                    axis,
                    disp,
                    stochastic,
                    _COLOURS[i % len(_COLOURS)],
                    name,
                    band_label=False,
                )
            chance = next(
                (_num(r.get("_chance")) for r in part if _num(r.get("_chance")) is not None), None
            )
            if chance is not None:
                ax.axhline(disp.show(chance), color="black", ls=":", lw=1.2, label="chance")
            values = [_num(r.get(axis)) for r in part]
            if all(v > 0 for v in values):
                ax.set_xscale("log")
                ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xlabel(axis_label(axis, [method]))
            ax.set_ylabel(f"{disp.name}{disp.unit}")
            ax.grid(alpha=0.3)
            fig.legend(loc="outside lower center", ncol=2, fontsize=7, frameon=False)
            band = "; band: 10th-90th percentile of the trials" if stochastic else ""
            ax.set_title(_wrapped(title + band, 6.0), fontsize=9)
            slug = _slug(
                "faults", task_name, grouping or "nogrouping", method, axis, "formats", label
            )
            out += [
                f"**{title}** (mean over trials and groups; {'band: 10th-90th percentile of the trials' if stochastic else 'one run each'})",
                "",
                link(self._save(fig, slug + "_formats"), f"formats: {title}"),
                "",
            ]
        return out
