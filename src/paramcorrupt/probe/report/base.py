"""What every section of the report shares: the rows, their index, figures and labels."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from ...errors import ParamCorruptError
from .display import MetricDisplay, _n_sort, _ordered, metric_display, short_name
from .rows import _Notes, _Row


class ReportBase:
    def __init__(self, rows: list[_Row], out_dir: Path, notes: _Notes) -> None:
        self.rows = rows
        self.out = out_dir
        self.fig_dir = out_dir / "figures"
        self.notes = notes
        self.figures: list[Path] = []
        self.tasks = _ordered(r.task for r in rows)
        self.displays = {t: self._display(t) for t in self.tasks}
        self.chance = {t: self._chance(t) for t in self.tasks}
        #: a task's short name for titles and file names (the header shows the identity)
        self.names = {t: next((r.display for r in rows if r.task == t and r.display), None) or short_name(t) for t in self.tasks}
        self._index: dict[tuple[str, str, str, float, str], list[_Row]] = defaultdict(list)
        for r in rows:
            self._index[(r.task, r.grouping, r.group, r.p, r.n_key)].append(r)
        self.k_of: dict[tuple[str, str, str], float | None] = {}
        for r in rows:
            key = (r.task, r.grouping, r.group)
            if self.k_of.get(key) is None:
                self.k_of[key] = r.k

    # -- helpers ------------------------------------------------------------------

    def _display(self, task: str) -> MetricDisplay:
        """The task's metric display: its first metric's name and values, and its direction
        where the rows carry one (``higher_is_better``)."""
        rows = [r for r in self.rows if r.task == task]
        names = _ordered(r.metric for r in rows if r.metric)
        directions = [r.higher_is_better for r in rows if r.higher_is_better is not None]
        infos = [r.info for r in rows if r.info is not None and r.metric == (names[0] if names else None)]
        return metric_display(
            names[0] if names else None,
            [v for r in rows for v in (r.before, r.after) if v is not None],
            directions[0] if directions else None,
            infos[0] if infos else None,  # the results header's record of the metric
        )

    def _chance(self, task: str) -> float | None:
        """The chance level of the task's metric, where its results headers give one (one value)."""
        name = self.displays[task].name
        levels = _ordered(r.chance for r in self.rows if r.task == task and r.metric == name and r.chance is not None)
        if len(levels) > 1:
            self.notes.add(f"Task `{task}`: the results files give {len(levels)} chance levels; none is drawn.")
            return None
        return levels[0] if levels else None

    def _figure(self, width: float, height: float, layout: str | None = "constrained"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        # constrained layout: one layout pass at draw time, no extra draw for a tight bbox
        fig = Figure(figsize=(width, height), dpi=100, layout=layout)
        FigureCanvasAgg(fig)
        return fig

    def _save(self, fig, name: str, tight: bool = False) -> Path:
        path = self.fig_dir / f"{name}.png"
        i = 2
        while path in self.figures:
            path = self.fig_dir / f"{name}-{i}.png"
            i += 1
        fig.savefig(path, bbox_inches="tight" if tight else None)
        self.figures.append(path)
        return path

    def _link(self, path: Path, caption: str) -> str:
        return f"![{caption}]({path.relative_to(self.out).as_posix()})"

    def _title(self, task: str, grouping: str, group: str | None = None) -> str:
        parts = []
        if len(self.tasks) > 1 or task:
            parts.append(f"task `{self.names.get(task, task) or '?'}`")
        parts.append(f"grouping `{grouping}`" if grouping else "no grouping")
        if group is not None:
            k = self.k_of.get((task, grouping, group))
            parts.append(f"group `{group}`" + (f" (k = {int(k):,})" if k is not None else ""))
        return ", ".join(parts)

    def _group_label(self, task: str, grouping: str, group: str) -> str:
        k = self.k_of.get((task, grouping, group))
        return f"{group} (k={int(k):,})" if k is not None else f"{group} (k=?)"

    def _settings(self) -> list[tuple[str, str, str, float, str]]:
        """(task, grouping, group, p, n_key) in report order."""
        groupings = {t: _ordered(r.grouping for r in self.rows if r.task == t) for t in self.tasks}
        groups = _ordered((r.task, r.grouping, r.group) for r in self.rows)
        out = []
        for t in self.tasks:
            for g in groupings[t]:
                for _, _, grp in [x for x in groups if x[0] == t and x[1] == g]:
                    sel = [r for r in self.rows if (r.task, r.grouping, r.group) == (t, g, grp)]
                    for p in sorted({r.p for r in sel}):
                        for nk in sorted({r.n_key for r in sel if r.p == p}, key=_n_sort):
                            out.append((t, g, grp, p, nk))
        return out

    def _select(
        self, task, grouping, group=None, p=None, n_key=None, method=None, eps=None
    ) -> list[_Row]:
        out: list[_Row] = []
        for (t, g, grp, pp, nk), bucket in self._index.items():
            if (
                t != task
                or g != grouping
                or (group is not None and grp != group)
                or (p is not None and pp != p)
                or (n_key is not None and nk != n_key)
            ):
                continue
            out += [
                r
                for r in bucket
                if (method is None or r.method == method) and (eps is None or r.eps == eps)
            ]
        return out


def grid_shape(panels: int, max_cols: int = 3) -> tuple[int, int]:
    """(rows, columns) of a grid of ``panels`` panels: at most ``max_cols`` columns, and no row
    of holes (4 panels: 2 x 2, not 3 + 1); a grid with a spare slot puts the legend there."""
    if panels < 1:
        raise ParamCorruptError(f"a grid needs at least one panel, got {panels}")
    cols = 2 if panels == 4 and max_cols >= 2 else min(max_cols, panels)
    return math.ceil(panels / cols), cols


def figure_legend(fig, axes, spare_slots: int = 0, *, fontsize: float = 8, ncol: int | None = None,
                  loc: str = "lower center"):
    """One legend for the whole figure: every label of every panel in ``axes``, once (in order
    of first appearance). With ``spare_slots`` > 0 the grid's last ``spare_slots`` slots (empty:
    removed beforehand) hold it; otherwise it sits at ``loc`` (below the panels: the caller
    leaves room, or a constrained layout's "outside lower center" makes it).
    Returns the legend, or None when no panel has a label."""
    handles: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if not label.startswith("_"):
                handles.setdefault(label, handle)
    if not handles:
        return None
    if spare_slots > 0:
        spec = axes[0].get_subplotspec().get_gridspec()
        slot = fig.add_subplot(spec[spec.nrows - 1, spec.ncols - spare_slots:])
        slot.axis("off")
        return slot.legend(list(handles.values()), list(handles), loc="center", fontsize=fontsize, frameon=False)
    return fig.legend(
        list(handles.values()), list(handles), loc=loc, ncol=ncol or min(len(handles), 5),
        fontsize=fontsize, frameon=False,
    )
