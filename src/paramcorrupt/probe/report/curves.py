"""Section 3 of the report: the metric against eps (log axis), one panel per group (Figure 3)."""

from __future__ import annotations

import math

import numpy as np

from .base import ReportBase, figure_legend, grid_shape
from .display import (
    MetricDisplay,
    _mean_std,
    _median,
    _n_label,
    _n_sort,
    _ordered,
    _p_label,
    _slug,
)
from .methods import method_display, method_sort
from .rows import _Row
from .trials import BAND_TEXT, trial_band, trials_text

#: groups per figure of curves
_CURVES_PER_FIGURE = 12


class CurvesSection(ReportBase):
    def curves(self) -> list[str]:
        lines = ["## Metric vs eps", ""]
        lines.append(
            f"Random corruption: the mean over trials (their number in the legend); {BAND_TEXT}. "
            "Gradient-based (and multi-step) corruption: lines. Dashed: the original value"
            + (
                "; dotted: the chance level"
                if any(c is not None for c in self.chance.values())
                else ""
            )
            + ". As in the paper's Figure 3."
        )
        lines.append("")
        groupings = _ordered((r.task, r.grouping) for r in self.rows)
        keys = _ordered((r.task, r.grouping, r.p, r.n_key) for r in self.rows)
        keys.sort(key=lambda x: (groupings.index(x[:2]), x[2], _n_sort(x[3])))
        drawn = 0
        for task, grouping, p, nk in keys:
            disp = self.displays[task]
            sel = [r for r in self._select(task, grouping, p=p, n_key=nk) if r.after is not None]
            title = f"{self._title(task, grouping)}; {_p_label(p)}, {_n_label(nk)}"
            if not sel:
                self.notes.add(f"Curves {title}: no `metric_after`, not drawn.")
                continue
            groups = _ordered(r.group for r in sel)
            chance = self.chance.get(task)
            for start in range(0, len(groups), _CURVES_PER_FIGURE):
                chunk = groups[start : start + _CURVES_PER_FIGURE]
                nrows, cols = grid_shape(len(chunk))
                spare = nrows * cols - len(chunk)  # the legend's slot; none: a row below
                # a fixed grid (no layout engine): the panels' labels are known in advance
                width = max(3.4 * cols, 5.0)
                below = 0.0 if spare else 0.45
                height = 2.5 * nrows + 1.25 + below
                fig = self._figure(width, height, layout=None)
                fig.subplots_adjust(
                    left=0.7 / width,
                    right=1 - 0.15 / width,
                    bottom=(0.55 + below) / height,
                    top=1 - 0.75 / height,
                    wspace=0.08,
                    hspace=0.3,
                )
                # shared axes: groups compare at a glance, and far fewer ticks to lay out
                axes = fig.subplots(nrows, cols, squeeze=False, sharex=True, sharey=True)
                for ax in axes.flat[len(chunk) :]:
                    fig.delaxes(ax)
                panels = list(axes.flat[: len(chunk)])
                for ax, g in zip(panels, chunk):
                    self._curve_panel(ax, [r for r in sel if r.group == g], disp, chance)
                    ax.set_title(self._group_label(task, grouping, g), fontsize=9)
                for i, ax in enumerate(panels):
                    ax.label_outer()
                    if i + cols >= len(chunk):  # nothing below it: keep its eps axis
                        ax.tick_params(labelbottom=True)
                        ax.set_xlabel("eps")
                _legend(fig, panels, spare, width, nrows)
                fig.suptitle(
                    (f"task {self.names[task]}\n" if task else "")
                    + f"{'grouping ' + grouping if grouping else 'no grouping'}: {_p_label(p)}, {_n_label(nk)}",
                    fontsize=10,
                )
                part = (
                    ""
                    if len(groups) <= _CURVES_PER_FIGURE
                    else f"part{start // _CURVES_PER_FIGURE + 1}"
                )
                path = self._save(
                    fig,
                    _slug(
                        "curves",
                        self.names[task],
                        grouping or "nogrouping",
                        _p_label(p),
                        "n",
                        nk,
                        part,
                    ),
                )
                lines.append(f"**{title}**" + (f" ({part})" if part else ""))
                lines.append("")
                lines.append(self._link(path, f"curves: {title}"))
                lines.append("")
                drawn += 1
        if not drawn:
            lines.append("_No curve could be drawn (see Notes)._")
            lines.append("")
        return lines

    @staticmethod
    def _curve_panel(
        ax, rows: list[_Row], disp: MetricDisplay, chance: float | None = None
    ) -> None:
        from matplotlib.ticker import NullLocator

        for m in sorted({r.method for r in rows}, key=method_sort):
            shown = method_display(m)
            eps_values = sorted({r.eps for r in rows if r.method == m})
            trials = [
                [disp.show(r.after) for r in rows if r.method == m and r.eps == e]
                for e in eps_values
            ]
            mu = np.array([_mean_std(t)[0] for t in trials])
            label = shown.label + (
                f": mean of {trials_text(map(len, trials))}" if shown.stochastic else ""
            )
            line = ax.plot(eps_values, mu, marker="o", ms=3, color=shown.colour, label=label)[0]
            # trials: the band of the middle trials (never outside the metric's range)
            if shown.stochastic:
                band = np.array([trial_band(t) for t in trials])
                ax.fill_between(
                    eps_values,
                    band[:, 0],
                    band[:, 1],
                    color=line.get_color(),
                    alpha=0.25,
                    lw=0,
                    label=f"{shown.label}: 10th-90th percentile of trials",
                )
        original = _median(r.before for r in rows)
        if original is not None:
            ax.axhline(disp.show(original), color="grey", ls="--", lw=0.8, label="original")
        if chance is not None:
            ax.axhline(disp.show(chance), color="black", ls=":", lw=1.2, label="chance")
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())  # minor log ticks cost most of the drawing
        ax.set_xlabel("eps")
        ax.set_ylabel(f"{disp.name}{disp.unit}")
        ax.grid(alpha=0.3)


def _legend(fig, panels, spare: int, width: float, nrows: int) -> None:
    """The figure's one legend: in the grid's spare slot, or below the panels in as many rows
    as its labels need at this width (the figure grows to hold them)."""
    ncol = None
    if not spare:
        labels = {
            x for ax in panels for x in ax.get_legend_handles_labels()[1] if not x.startswith("_")
        }
        ncol = max(1, min(len(labels), 5, int(width // 2.0)))
        below = 0.3 * math.ceil(len(labels) / ncol) + 0.15
        height = 2.5 * nrows + 1.25 + below
        fig.set_size_inches(width, height)
        fig.subplots_adjust(bottom=(0.55 + below) / height, top=1 - 0.75 / height)
    figure_legend(fig, panels, spare, ncol=ncol)
