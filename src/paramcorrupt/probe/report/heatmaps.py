"""Section 2 of the report: heatmaps of the metric's damage by group (type, position, ...) and eps."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from .base import ReportBase
from .display import _n_label, _n_sort, _ordered, _p_label, _slug
from .methods import method_sort

#: rows per heatmap figure
_HEATMAP_ROWS = 40


class HeatmapSection(ReportBase):
    def heatmaps(self) -> list[str]:
        lines = ["## Heatmaps: damage by group and eps", ""]
        lines.append(
            "Colour: the metric's damage (its drop, or its rise for lower-is-better metrics) in "
            "display units, mean over trials, on a diverging scale centred on 0: red = damage, as in "
            "the paper's Figures 4, 5 and 7, blue = the corruption improved the metric, white = no "
            "change. Rows are the groups with their size k. One colour scale for each family of "
            "maps (the methods of one grouping, norm and n, so random and gradient-based maps "
            "compare), its range stated under the family's title."
        )
        lines.append("")
        groupings = _ordered((r.task, r.grouping) for r in self.rows)
        keys = _ordered((r.task, r.grouping, r.method, r.p, r.n_key) for r in self.rows)
        keys.sort(key=lambda x: (groupings.index(x[:2]), method_sort(x[2]), x[3], _n_sort(x[4])))
        drawn = 0
        # one group: its curves show the same
        single: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
        for task, grouping, method, p, nk in keys:
            disp = self.displays[task]
            sel = [
                r
                for r in self._select(task, grouping, p=p, n_key=nk, method=method)
                if r.before is not None and r.after is not None
            ]
            title = f"{self._title(task, grouping)}; {method}, {_p_label(p)}, {_n_label(nk)}"
            if not sel:
                self.notes.add(f"Heatmap {title}: no `metric_before`/`metric_after`, not drawn.")
                continue
            groups = _ordered(r.group for r in sel)
            if len(groups) == 1:
                single[self._group_label(task, grouping, groups[0])].append(
                    (method, _p_label(p), _n_label(nk))
                )
                continue
            eps_values = sorted({r.eps for r in sel})
            cells: dict[tuple[str, float], list[float]] = defaultdict(list)
            for r in sel:
                cells[(r.group, r.eps)].append(disp.damage(r.before, r.after))
            mat = np.full((len(groups), len(eps_values)), np.nan)
            for i, g in enumerate(groups):
                for j, e in enumerate(eps_values):
                    if cells.get((g, e)):
                        mat[i, j] = float(np.mean(cells[(g, e)]))
            vmin, vmax = self._damage_range(task, grouping, p, nk)
            lines.append(f"**{title}**")
            lines.append("")
            lines.append(
                f"Colour scale {vmin:.3g} to {vmax:.3g} ({disp.damage_label}), the same for every method "
                f"of grouping `{grouping}` at {_p_label(p)}, {_n_label(nk)}."
            )
            lines.append("")
            for start in range(0, len(groups), _HEATMAP_ROWS):
                part = "" if len(groups) <= _HEATMAP_ROWS else f"part{start // _HEATMAP_ROWS + 1}"
                rows_ = slice(start, start + _HEATMAP_ROWS)
                path = self._heatmap(
                    mat[rows_],
                    [self._group_label(task, grouping, g) for g in groups[rows_]],
                    eps_values,
                    (vmin, vmax),
                    (f"{self.names[task]}: " if task else "")
                    + f"{method}, {_p_label(p)}, {_n_label(nk)}",
                    disp.damage_label,
                    _slug(
                        "heatmap",
                        self.names[task],
                        grouping or "nogrouping",
                        method,
                        _p_label(p),
                        "n",
                        nk,
                        part,
                    ),
                )
                lines.append(self._link(path, f"heatmap: {title} {part}".strip()))
                lines.append("")
            drawn += 1
        if single:
            listed = [
                f"{label} ({len(maps)} map{'s' if len(maps) > 1 else ''}: "
                + "; ".join(", ".join(_ordered(m[i] for m in maps)) for i in range(3))
                + ")"
                for label, maps in single.items()
            ]
            lines.append(
                f"_No heatmap of a single group, its curves (next section) show the same values: {'; '.join(listed)}._"
            )
            lines.append("")
        elif not drawn:
            lines.append("_No heatmap could be drawn (see Notes)._")
            lines.append("")
        return lines

    def _heatmap(self, mat, labels, eps_values, limits, title, cbar_label, name) -> Path:
        from matplotlib.colors import Normalize

        vmin, vmax = limits
        # tall enough for the colour bar's label, also with one row; wide enough for the
        # title (10 pt: about 0.075 in a character), also with one eps column
        width = max(
            2.2 + 0.9 * len(eps_values),
            0.8 + 0.075 * len(title) + 0.07 * max(map(len, labels), default=0),
        )
        fig = self._figure(width, max(2.8, 1.3 + 0.42 * len(labels)))
        ax = fig.add_subplot()
        norm = Normalize(vmin=vmin, vmax=vmax)
        im = ax.imshow(np.ma.masked_invalid(mat), cmap="RdBu_r", norm=norm, aspect="auto")
        ax.set_xticks(range(len(eps_values)), [f"{e:g}" for e in eps_values])
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("eps")
        ax.set_title(title, fontsize=10)
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                if np.isfinite(mat[i, j]):
                    colour = (
                        "white" if mat[i, j] > 0.6 * vmax or mat[i, j] < 0.6 * vmin else "black"
                    )
                    ax.text(
                        j, i, f"{mat[i, j]:.3g}", ha="center", va="center", fontsize=7, color=colour
                    )
        bar = fig.colorbar(im, ax=ax)
        bar.set_label(cbar_label, fontsize=8)
        return self._save(fig, name)

    def _damage_range(self, task: str, grouping: str, p: float, nk: str) -> tuple[float, float]:
        """The colour scale's (-M, M) around 0, shared by every method of one (grouping, p, n)
        so that they compare; M the largest |damage|."""
        disp = self.displays[task]
        vals = [
            disp.damage(r.before, r.after)
            for r in self._select(task, grouping, p=p, n_key=nk)
            if r.before is not None and r.after is not None
        ]
        top = self._damage_max(task, grouping, p, nk)
        bottom = min((v for v in vals if math.isfinite(v)), default=0.0)
        # symmetric, so that a colour's depth means the same size of change on both sides
        top = max(top, -bottom)
        return -top, top

    def _damage_max(self, task: str, grouping: str, p: float, nk: str) -> float:
        """The colour scale's top, shared by every method of one (grouping, p, n): comparable."""
        disp = self.displays[task]
        vals = [
            disp.damage(r.before, r.after)
            for r in self._select(task, grouping, p=p, n_key=nk)
            if r.before is not None and r.after is not None
        ]
        top = max((v for v in vals if math.isfinite(v)), default=1.0)
        return max(top, 1e-12)
