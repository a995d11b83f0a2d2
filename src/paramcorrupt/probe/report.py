"""Markdown reports with PNG figures from sweep results (JSONL), read from the files alone.

:func:`write_report` turns one or more results files into ``report.md`` and ``figures/*.png``:

1. **Table 1** (the paper's Table 1): one pivot per (grouping, group, p, n), rows eps, columns
   the metric after random corruption (mean ± std over trials), after gradient-based (and
   multi-step) corruption, and the loss changes; the ``*`` convention marks values close to
   the original (see below).
2. **Heatmaps** group × eps (the paper's Figures 4, 5 and 7), one per (grouping, method, p, n):
   the colour is the metric's damage (its drop, in display units), warmer = more damage.
3. **Curves** of the metric against eps on a log axis (the paper's Figure 3): random as the
   mean with a ±1 std band, gradient-based (and multi-step) as lines, one panel per group.
4. **Theorem 1** (the paper's Table 3): empirical quantiles of |loss change| over the random
   trials beside the first-order quantiles eps·G·x_p of Theorem 1, eps·G and the loss change
   of the gradient-based corruption; a table and a figure.

The ``*`` convention. The paper's Table 1 replaces a score by ``*`` when it is the original
score or "close to the original score (difference less than 0.1)", in the units the table
prints: accuracy and UAS in percent (so 0.1 *percentage points*: 87.1 (-0.2) is not starred),
log-perplexity and BLEU in their own units. We apply the same rule to the value as displayed
here — accuracy-like metrics stored as fractions in [0, 1] are shown in percent — with the
test ``|value - original| < 0.1`` on the unrounded numbers (strict, as "less than"); for the
random column the value is the mean over trials. Unlike the paper we keep the number and
append `` *`` (so nothing is hidden), and print the difference to the original, as the paper
does, on values that are not starred. (One entry of the paper's table, BLEU 35.25 (-0.08), is
unstarred although |-0.08| < 0.1; we read that as a slip and follow the stated rule.)

Rows are read tolerantly: a header line (no ``"method"`` key) is skipped, a torn last line
is ignored, and a field that is missing only drops what needs it, with a note in the report.
The loss change is the row's ``loss_change``; where absent, ``train_loss_after -
train_loss_before`` (the gradient's data, as in the demo's rows), else ``loss_after -
loss_before``; the report says which it used.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PROBS",
    "STAR_THRESHOLD",
    "MIN_THEOREM1_TRIALS",
    "load_rows",
    "write_report",
    "star",
    "metric_display",
]

#: probabilities of the Theorem 1 panel (Table 3 uses 0.9, 0.95, 0.995)
PROBS = (0.5, 0.9, 0.95, 0.995)
#: the ``*`` convention's threshold, in display units (percentage points for accuracy)
STAR_THRESHOLD = 0.1
#: random trials a setting needs before its quantiles are reported
MIN_THEOREM1_TRIALS = 10
#: groups per figure of curves, and rows per heatmap figure
_HEATMAP_ROWS = 40
_CURVES_PER_FIGURE = 12
#: settings shown in the Theorem 1 figure
_THEOREM1_FIGURE_MAX = 30

_METHOD_ORDER = ("random", "gradient", "iterative")
_PERCENT_NAMES = ("accuracy", "acc", "top1", "top5", "uas", "las", "f1", "precision", "recall")
_LOWER_BETTER = ("loss", "ppl", "perplexity", "error", "err", "nll", "mse", "mae", "rmse")

PathArg = str | PathLike | Path


# ----------------------------------------------------------------------------- loading


def _as_paths(results: PathArg | Sequence[PathArg]) -> list[Path]:
    if isinstance(results, str | PathLike):
        paths = [Path(results)]
    else:
        paths = [Path(p) for p in results]
    if not paths:
        raise ValueError("no results file given")
    out = []
    for path in paths:
        if path.is_dir():
            if (path / "results.jsonl").is_file():
                path = path / "results.jsonl"
            else:
                raise FileNotFoundError(f"{path} is a folder without results.jsonl")
        if not path.is_file():
            raise FileNotFoundError(f"results file not found: {path}")
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


def _read_lines(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not a UTF-8 text (JSONL) file: {error.reason}") from None
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}") from None
    lines = text.split("\n")
    # the last line is torn when the file does not end with a newline and it does not parse
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if i == last:
                continue  # torn last line (an interrupted write)
            raise ValueError(f"{path}:{i + 1}: not a JSON line") from None
        if isinstance(obj, dict) and "method" in obj:
            out.append(obj)
    return out


def load_rows(paths: PathArg | Sequence[PathArg]) -> list[dict[str, Any]]:
    """Result rows of one or more JSONL files, in file order.

    Header lines (objects without a ``"method"`` key) are skipped and a torn last line is
    ignored. ``p`` is returned as a float (``"inf"`` -> ``math.inf``); every other field is
    left as stored, and ``"_source"`` names the file. A row repeated with the same
    (``sweep_id``, ``key``) keeps its last copy.

    Raises:
        FileNotFoundError: if a file does not exist.
        ValueError: if a file cannot be read, holds a broken line before its last one, or no
            file holds any result row.
    """
    rows: list[dict[str, Any]] = []
    index: dict[tuple[Any, Any], int] = {}
    files = _as_paths(paths)
    for path in files:
        for obj in _read_lines(path):
            row = dict(obj)
            row["_source"] = str(path)
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
        raise ValueError("no result rows in " + ", ".join(str(p) for p in files))
    return rows


# ----------------------------------------------------------------------------- metric display


@dataclass(frozen=True)
class MetricDisplay:
    """How a metric is shown: its name, the display scale and direction."""

    name: str
    scale: float = 1.0
    higher_is_better: bool = True

    @property
    def unit(self) -> str:
        return " (%)" if self.scale == 100.0 else ""

    @property
    def damage_label(self) -> str:
        what = "drop" if self.higher_is_better else "rise"
        unit = " (points)" if self.scale == 100.0 else ""
        return f"{self.name} {what}{unit}"

    def show(self, value: float) -> float:
        return value * self.scale

    def damage(self, before: float, after: float) -> float:
        d = (before - after) if self.higher_is_better else (after - before)
        return d * self.scale

    def fmt(self, value: float) -> str:
        return f"{value:.2f}" if self.scale == 100.0 else f"{value:.4g}"


def metric_display(name: str | None, values: Iterable[float]) -> MetricDisplay:
    """The display of a metric: percent for accuracy-like names whose values lie in [0, 1].

    >>> metric_display("accuracy", [0.5, 0.99]).scale
    100.0
    >>> metric_display("log_ppl", [4.2]).higher_is_better
    False
    """
    label = str(name) if name else "metric"
    low = label.lower()
    vals = [v for v in values if v is not None and math.isfinite(v)]
    tokens = re.split(r"[^a-z0-9]+", low)
    percent = ("accuracy" in low or any(tok in _PERCENT_NAMES for tok in tokens)) and all(
        0.0 <= v <= 1.0 for v in vals
    )
    lower_better = any(tok in _LOWER_BETTER for tok in tokens) or "perplexity" in low
    return MetricDisplay(label, 100.0 if percent else 1.0, not lower_better)


def star(value: float, original: float, threshold: float = STAR_THRESHOLD) -> bool:
    """The paper's ``*``: |value - original| < threshold, both in display units.

    >>> star(99.15, 99.17), star(87.1, 87.3), star(35.25, 35.33)
    (True, False, True)
    """
    return abs(value - original) < threshold


# ----------------------------------------------------------------------------- normalising


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


def _p_label(p: float) -> str:
    if math.isinf(p):
        return "L_inf"
    return f"L_{int(p)}" if float(p).is_integer() else f"L_{p:g}"


def _n_label(n_key: str, k: float | None = None) -> str:
    if n_key == "k":
        return "n = k" + (f" = {int(k):,}" if k is not None else "")
    return f"n = {n_key}"


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
        if dloss_g is None:
            dloss_g, src_g = _diff(r, None, "train_loss_after", "train_loss_before")
        sources_g[src_g] += 1
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
        raise ValueError("no usable result rows (each needs method, p and eps)")
    return rows, used


def _ordered(values: Iterable[Any]) -> list[Any]:
    """Unique values in order of first appearance."""
    return list(dict.fromkeys(values))


def _n_sort(n_key: str) -> tuple[int, float]:
    if n_key == "k":
        return (0, 0.0)
    try:
        return (1, -float(n_key))
    except ValueError:
        return (2, 0.0)


def _method_sort(method: str) -> tuple[int, str]:
    return (_METHOD_ORDER.index(method) if method in _METHOD_ORDER else len(_METHOD_ORDER), method)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def _slug(*parts: Any) -> str:
    text = "_".join(str(p) for p in parts if p not in (None, ""))
    text = re.sub(r"[^A-Za-z0-9.=-]+", "-", text).strip("-")
    return text or "all"


def _median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.median(vals)) if vals else None


def _sci(value: float | None, sign: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:+.3e}" if sign else f"{value:.3e}"


# ----------------------------------------------------------------------------- the report


class _Report:
    def __init__(self, rows: list[_Row], out_dir: Path, notes: _Notes) -> None:
        self.rows = rows
        self.out = out_dir
        self.fig_dir = out_dir / "figures"
        self.notes = notes
        self.figures: list[Path] = []
        self.tasks = _ordered(r.task for r in rows)
        self.displays = {
            t: metric_display(
                _ordered(r.metric for r in rows if r.task == t and r.metric)[0]
                if any(r.metric for r in rows if r.task == t)
                else None,
                [v for r in rows if r.task == t for v in (r.before, r.after) if v is not None],
            )
            for t in self.tasks
        }
        self._index: dict[tuple[str, str, str, float, str], list[_Row]] = defaultdict(list)
        for r in rows:
            self._index[(r.task, r.grouping, r.group, r.p, r.n_key)].append(r)
        self.k_of: dict[tuple[str, str, str], float | None] = {}
        for r in rows:
            key = (r.task, r.grouping, r.group)
            if self.k_of.get(key) is None:
                self.k_of[key] = r.k

    # -- helpers ------------------------------------------------------------------

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
            parts.append(f"task `{task or '?'}`")
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

    # -- 1. Table 1 ----------------------------------------------------------------

    def table1(self) -> list[str]:
        lines = ["## Table 1: random vs gradient-based corruption", ""]
        lines.append(
            f"Metric after corruption (random: mean ± std over trials). `*` marks a value within "
            f"{STAR_THRESHOLD} of the original in the units shown (percentage points for "
            "accuracy), the paper's Table 1 convention; other values carry their difference to "
            "the original in parentheses. Δloss (eval): loss change on the evaluation data "
            "(mean ± std for random); the last column is Theorem 2's ratio on the gradient's data."
        )
        lines.append("")
        for task, grouping, group, p, nk in self._settings():
            sel = self._select(task, grouping, group, p, nk)
            disp = self.displays[task]
            methods = sorted({r.method for r in sel}, key=_method_sort)
            k = self.k_of.get((task, grouping, group))
            lines.append(
                f"### {self._title(task, grouping, group)}; {_p_label(p)}, {_n_label(nk, k)}"
            )
            lines.append("")
            original = _median(r.before for r in sel)
            if original is None:
                self.notes.add(
                    f"{self._title(task, grouping, group)}: no `metric_before`, so no `*` marks."
                )
            else:
                lines.append(
                    f"Without corruption: {disp.name}{disp.unit} = {disp.fmt(disp.show(original))} *"
                )
                lines.append("")
            head = ["eps"]
            for m in methods:
                head.append(
                    f"{m} {disp.name}{disp.unit}" + (" (mean ± std)" if m == "random" else "")
                )
            for m in methods:
                head.append(f"{m} Δloss (eval)" + (" (mean ± std)" if m == "random" else ""))
            has_fo = any(r.first_order is not None for r in sel if r.method != "random")
            if has_fo:
                head.append("gradient first-order")
                head.append("gradient Δloss / first-order (gradient data)")
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + "---|" * len(head))
            for eps in sorted({r.eps for r in sel}):
                cells = [f"{eps:g}"]
                for m in methods:
                    vals = [
                        r.after
                        for r in sel
                        if r.method == m and r.eps == eps and r.after is not None
                    ]
                    cells.append(self._metric_cell(vals, original, disp, m == "random"))
                for m in methods:
                    vals = [
                        r.dloss
                        for r in sel
                        if r.method == m and r.eps == eps and r.dloss is not None
                    ]
                    if not vals:
                        cells.append("–")
                    elif m == "random" or len(vals) > 1:
                        mu, sd = _mean_std(vals)
                        cells.append(
                            f"{mu:+.3e} ± {sd:.1e} (R={len(vals)})"
                            if m == "random"
                            else f"{mu:+.3e}"
                        )
                    else:
                        cells.append(f"{vals[0]:+.3e}")
                if has_fo:
                    grad = [r for r in sel if r.method == "gradient" and r.eps == eps]
                    fo = _median(r.first_order for r in grad)
                    ratio = _median(r.ratio for r in grad)
                    dl = _median(r.dloss_theory for r in grad)
                    if ratio is None and fo and dl is not None:
                        ratio = dl / fo
                    cells.append(_sci(fo))
                    cells.append(f"{ratio:.3f}" if ratio is not None else "–")
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        return lines

    @staticmethod
    def _metric_cell(
        vals: list[float], original: float | None, disp: MetricDisplay, spread: bool
    ) -> str:
        if not vals:
            return "–"
        shown = [disp.show(v) for v in vals]
        mu, sd = _mean_std(shown)
        text = disp.fmt(mu)
        if spread:
            text += f" ± {disp.fmt(sd)}"
        if original is None:
            return text
        orig = disp.show(original)
        if star(mu, orig):
            return text + " *"
        return text + f" ({mu - orig:+.{2 if disp.scale == 100.0 else 3}f})"

    # -- 2. heatmaps ---------------------------------------------------------------

    def heatmaps(self) -> list[str]:
        lines = ["## Heatmaps: damage by group and eps", ""]
        lines.append(
            "Colour: the metric's damage (its drop, or its rise for lower-is-better metrics) in "
            "display units, mean over trials; warmer = more damage, as in the paper's Figures 4, "
            "5 and 7. Rows are the groups with their size k. The colour scale is shared by the "
            "methods of one grouping, norm and n, so random and gradient-based maps compare."
        )
        lines.append("")
        groupings = _ordered((r.task, r.grouping) for r in self.rows)
        keys = _ordered((r.task, r.grouping, r.method, r.p, r.n_key) for r in self.rows)
        keys.sort(key=lambda x: (groupings.index(x[:2]), _method_sort(x[2]), x[3], _n_sort(x[4])))
        drawn = 0
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
            eps_values = sorted({r.eps for r in sel})
            cells: dict[tuple[str, float], list[float]] = defaultdict(list)
            for r in sel:
                cells[(r.group, r.eps)].append(disp.damage(r.before, r.after))
            mat = np.full((len(groups), len(eps_values)), np.nan)
            for i, g in enumerate(groups):
                for j, e in enumerate(eps_values):
                    if cells.get((g, e)):
                        mat[i, j] = float(np.mean(cells[(g, e)]))
            vmax = self._damage_max(task, grouping, p, nk)
            lines.append(f"**{title}**")
            lines.append("")
            for start in range(0, len(groups), _HEATMAP_ROWS):
                part = "" if len(groups) <= _HEATMAP_ROWS else f"part{start // _HEATMAP_ROWS + 1}"
                rows_ = slice(start, start + _HEATMAP_ROWS)
                path = self._heatmap(
                    mat[rows_],
                    [self._group_label(task, grouping, g) for g in groups[rows_]],
                    eps_values,
                    vmax,
                    f"{method}, {_p_label(p)}, {_n_label(nk)}",
                    disp.damage_label,
                    _slug(
                        "heatmap",
                        task,
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
        if not drawn:
            lines.append("_No heatmap could be drawn (see Notes)._")
            lines.append("")
        return lines

    def _heatmap(self, mat, labels, eps_values, vmax, title, cbar_label, name) -> Path:
        fig = self._figure(1.6 + 0.9 * len(eps_values), 1.2 + 0.42 * len(labels))
        ax = fig.add_subplot()
        im = ax.imshow(np.ma.masked_invalid(mat), cmap="YlOrRd", vmin=0.0, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(eps_values)), [f"{e:g}" for e in eps_values])
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("eps")
        ax.set_title(title, fontsize=10)
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                if np.isfinite(mat[i, j]):
                    colour = "white" if mat[i, j] > 0.6 * vmax else "black"
                    ax.text(
                        j, i, f"{mat[i, j]:.3g}", ha="center", va="center", fontsize=7, color=colour
                    )
        fig.colorbar(im, ax=ax, label=cbar_label)
        return self._save(fig, name)

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

    # -- 3. curves -----------------------------------------------------------------

    def curves(self) -> list[str]:
        lines = ["## Metric vs eps", ""]
        lines.append(
            "Random corruption: mean over trials with a ±1 std band; gradient-based (and "
            "multi-step) corruption: lines. Dashed: the original value. As in the paper's Figure 3."
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
            for start in range(0, len(groups), _CURVES_PER_FIGURE):
                chunk = groups[start : start + _CURVES_PER_FIGURE]
                cols = min(3, len(chunk))
                nrows = math.ceil(len(chunk) / cols)
                # a fixed grid (no layout engine): the panels' labels are known in advance
                fig = self._figure(3.4 * cols, 2.5 * nrows + 0.5, layout=None)
                fig.subplots_adjust(
                    left=0.65 / (3.4 * cols),
                    right=1 - 0.1 / (3.4 * cols),
                    bottom=0.5 / (2.5 * nrows + 0.5),
                    top=1 - 0.6 / (2.5 * nrows + 0.5),
                    wspace=0.08,
                    hspace=0.25,
                )
                # shared axes: groups compare at a glance, and far fewer ticks to lay out
                axes = fig.subplots(nrows, cols, squeeze=False, sharex=True, sharey=True)
                for ax in axes.flat[len(chunk) :]:
                    fig.delaxes(ax)
                for ax, g in zip(axes.flat, chunk):
                    self._curve_panel(ax, [r for r in sel if r.group == g], disp)
                    ax.set_title(self._group_label(task, grouping, g), fontsize=9)
                for i, ax in enumerate(axes.flat[: len(chunk)]):
                    ax.label_outer()
                    if i + cols >= len(chunk):  # nothing below it: keep its eps axis
                        ax.tick_params(labelbottom=True)
                        ax.set_xlabel("eps")
                axes.flat[0].legend(fontsize=7)
                fig.suptitle(f"{_p_label(p)}, {_n_label(nk)}", fontsize=10)
                part = (
                    ""
                    if len(groups) <= _CURVES_PER_FIGURE
                    else f"part{start // _CURVES_PER_FIGURE + 1}"
                )
                path = self._save(
                    fig, _slug("curves", task, grouping or "nogrouping", _p_label(p), "n", nk, part)
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
    def _curve_panel(ax, rows: list[_Row], disp: MetricDisplay) -> None:
        from matplotlib.ticker import NullLocator

        colours = {"random": "tab:blue", "gradient": "tab:red", "iterative": "tab:purple"}
        for m in sorted({r.method for r in rows}, key=_method_sort):
            eps_values = sorted({r.eps for r in rows if r.method == m})
            stats = [
                _mean_std([disp.show(r.after) for r in rows if r.method == m and r.eps == e])
                for e in eps_values
            ]
            mu = np.array([s[0] for s in stats])
            colour = colours.get(m)
            label = {"gradient": "gradient-based", "iterative": "multi-step"}.get(m, m)
            ax.plot(eps_values, mu, marker="o", ms=3, color=colour, label=label)
            if m == "random":
                sd = np.array([s[1] for s in stats])
                ax.fill_between(eps_values, mu - sd, mu + sd, color=colour, alpha=0.25, lw=0)
        original = _median(r.before for r in rows)
        if original is not None:
            ax.axhline(disp.show(original), color="grey", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())  # minor log ticks cost most of the drawing
        ax.set_xlabel("eps")
        ax.set_ylabel(f"{disp.name}{disp.unit}")
        ax.grid(alpha=0.3)

    # -- 4. Theorem 1 --------------------------------------------------------------

    def theorem1(self) -> list[str]:
        from ..theory import eta_pdf, eta_quantile

        lines = ["## Theorem 1: random corruption vs first-order theory (Table 3)", ""]
        lines.append(
            "For settings with at least "
            f"{MIN_THEOREM1_TRIALS} random trials: empirical quantiles α(p) of |Δloss| over the "
            "random trials (linear interpolation between order statistics) beside Theorem 1's "
            "first-order quantiles eps·G·x_p, x_p = sqrt(I⁻¹_p(1/2, (k-1)/2)), the first-order "
            "worst case eps·G and the gradient-based corruption's Δloss, all on the gradient's "
            "data where the rows have it ('Δloss data'). Theorem 1 assumes L_2 and "
            "n = k (a uniform direction on the sphere); other settings are shown only where a "
            "group has no L_2, n = k setting, marked 'no', and their theory is a reference only."
        )
        lines.append("")
        entries = []
        for task, grouping, group in _ordered((r.task, r.grouping, r.group) for r in self.rows):
            cands = []
            for r in self._select(task, grouping, group, method="random"):
                cands.append((r.p, r.n_key, r.eps))
            cands = _ordered(cands)
            good = []
            for p, nk, eps in cands:
                rand = [
                    r
                    for r in self._select(task, grouping, group, p, nk, "random", eps)
                    if r.dloss_theory is not None
                ]
                if len(rand) >= MIN_THEOREM1_TRIALS:
                    good.append((p, nk, eps, rand))
            if not good:
                if cands:
                    self.notes.add(
                        f"Theorem 1: {self._title(task, grouping, group)} has fewer than "
                        f"{MIN_THEOREM1_TRIALS} random trials with a loss change per setting; not shown."
                    )
                continue
            ideal = [x for x in good if x[0] == 2.0 and x[1] == "k"]
            for p, nk, eps, rand in sorted(
                ideal or good, key=lambda x: (x[0], _n_sort(x[1]), x[2])
            ):
                same = self._select(task, grouping, group)
                grad = [
                    r
                    for r in same
                    if r.method == "gradient" and r.p == p and r.n_key == nk and r.eps == eps
                ]
                G = (
                    _median(r.G for r in grad)
                    or _median(r.G for r in rand)
                    or _median(r.G for r in same)
                )
                k = _median(r.k for r in rand)
                entries.append(
                    dict(
                        task=task,
                        grouping=grouping,
                        group=group,
                        p=p,
                        nk=nk,
                        eps=eps,
                        rand=rand,
                        grad=grad,
                        G=G,
                        k=k,
                        ideal=bool(ideal),
                    )
                )
        if not entries:
            lines.append(
                f"_No setting has {MIN_THEOREM1_TRIALS} or more random trials with a loss change._"
            )
            lines.append("")
            self.notes.add(
                f"Theorem 1 panel: no setting with >= {MIN_THEOREM1_TRIALS} random trials."
            )
            return lines
        head = ["setting", "premise", "Δloss data", "trials", "k", "G"]
        for pr in PROBS:
            head += [f"α({pr:g}) empirical", f"α({pr:g}) theory"]
        head += ["eps·G", "gradient Δloss", "gradient / α(0.95) empirical"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        plotted = []
        for e in entries:
            absd = np.abs(np.array([r.dloss_theory for r in e["rand"]], dtype=float))
            on_grad = all(r.dloss_g is not None for r in e["rand"])
            emp = np.quantile(absd, PROBS)
            k, G = e["k"], e["G"]
            theory = None
            if G is None:
                self.notes.add(
                    f"Theorem 1: no `G` for {e['group']}; theoretical quantiles left out."
                )
            elif k is None or k < 2 or not float(k).is_integer():
                self.notes.add(
                    f"Theorem 1: no valid `k` for {e['group']}; theoretical quantiles left out."
                )
            else:
                theory = e["eps"] * G * np.asarray(eta_quantile(np.array(PROBS), int(k)))
            e.update(emp=emp, theory=theory, absd=absd)
            setting = (
                f"{self._title(e['task'], e['grouping'], e['group'])}; {_p_label(e['p'])}, "
                f"{_n_label(e['nk'])}, eps = {e['eps']:g}"
            )
            e["label"] = f"{e['group']} {_p_label(e['p'])} {_n_label(e['nk'])} eps={e['eps']:g}"
            gdl = _median(r.dloss_theory for r in e["grad"])
            cells = [
                setting,
                "yes" if e["p"] == 2.0 and e["nk"] == "k" else "no",
                "gradient" if on_grad else "evaluation",
                str(len(e["rand"])),
                f"{int(k):,}" if k is not None else "–",
                _sci(G),
            ]
            for i in range(len(PROBS)):
                cells += [
                    _sci(float(emp[i])),
                    _sci(float(theory[i])) if theory is not None else "–",
                ]
            cells += [
                _sci(e["eps"] * G) if G is not None else "–",
                _sci(gdl, sign=True),
                f"{gdl / emp[PROBS.index(0.95)]:.1f}x"
                if gdl is not None and emp[PROBS.index(0.95)] > 0
                else "–",
            ]
            lines.append("| " + " | ".join(cells) + " |")
            plotted.append(e)
        lines.append("")
        if len(plotted) > _THEOREM1_FIGURE_MAX:
            self.notes.add(
                f"Theorem 1 figure: showing the first {_THEOREM1_FIGURE_MAX} of {len(plotted)} settings."
            )
            plotted = plotted[:_THEOREM1_FIGURE_MAX]
        path = self._theorem1_figure(plotted)
        lines.append(self._link(path, "Theorem 1: quantiles of |loss change|"))
        lines.append("")
        best = max(
            (e for e in entries if e["theory"] is not None and e["p"] == 2.0 and e["nk"] == "k"),
            key=lambda e: len(e["rand"]),
            default=None,
        )
        if best is not None and best["G"] and best["G"] > 0:
            path = self._eta_histogram(best, eta_pdf)
            lines.append(
                f"Distribution of η = |Δloss| / (eps·G) over the {len(best['rand'])} random trials of "
                f"{best['label']} against Theorem 1's density of η (k = {int(best['k']):,}):"
            )
            lines.append("")
            lines.append(self._link(path, "Theorem 1: distribution of eta"))
            lines.append("")
        return lines

    def _theorem1_figure(self, entries: list[dict[str, Any]]) -> Path:
        fig = self._figure(max(4.5, 0.9 * len(entries) + 2.5), 4.0)
        ax = fig.add_subplot()
        x = np.arange(len(entries))
        markers = ("o", "s", "^", "D")
        for i, pr in enumerate(PROBS):
            ax.scatter(
                x - 0.15,
                [e["emp"][i] for e in entries],
                marker=markers[i % 4],
                s=18,
                color="tab:blue",
                alpha=0.4 + 0.6 * i / max(1, len(PROBS) - 1),
                label=f"empirical α({pr:g})",
            )
            th = [(j, e["theory"][i]) for j, e in enumerate(entries) if e["theory"] is not None]
            if th:
                ax.scatter(
                    [j + 0.15 for j, _ in th],
                    [v for _, v in th],
                    marker=markers[i % 4],
                    s=18,
                    facecolors="none",
                    edgecolors="tab:green",
                    label=f"theory α({pr:g})",
                )
        eg = [(j, e["eps"] * e["G"]) for j, e in enumerate(entries) if e["G"] is not None]
        if eg:
            ax.scatter(
                [j for j, _ in eg],
                [v for _, v in eg],
                marker="_",
                s=300,
                color="black",
                label="eps·G",
            )
        gd = [
            (j, abs(_median(r.dloss_theory for r in e["grad"])))
            for j, e in enumerate(entries)
            if _median(r.dloss_theory for r in e["grad"]) is not None
        ]
        if gd:
            ax.scatter(
                [j for j, _ in gd],
                [v for _, v in gd],
                marker="*",
                s=80,
                color="tab:red",
                label="|gradient Δloss|",
            )
        ax.set_yscale("log")
        ax.set_xticks(x, [e["label"] for e in entries], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("|loss change|")
        ax.set_title("Theorem 1: random |Δloss| quantiles vs theory", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return self._save(fig, "theorem1", tight=True)  # the legend sits outside the axes

    def _eta_histogram(self, e: dict[str, Any], eta_pdf) -> Path:
        eta = e["absd"] / (e["eps"] * e["G"])
        fig = self._figure(5.0, 3.2)
        ax = fig.add_subplot()
        ax.hist(
            eta,
            bins=max(5, min(40, len(eta) // 5)),
            density=True,
            color="tab:blue",
            alpha=0.5,
            label=f"empirical ({len(eta)} trials)",
        )
        top = max(float(eta.max()), float(e["theory"][-1] / (e["eps"] * e["G"]))) * 1.1
        xs = np.linspace(0.0, min(top, 1.0), 400)
        ax.plot(xs, eta_pdf(xs, int(e["k"])), color="tab:green", label="Theorem 1 density")
        ax.set_xlabel("η = |Δloss| / (eps·G)")
        ax.set_ylabel("density")
        ax.set_title(e["label"], fontsize=9)
        ax.legend(fontsize=7)
        return self._save(fig, _slug("theorem1-eta", e["group"]))


def write_report(
    results: PathArg | Sequence[PathArg],
    out_dir: PathArg | None = None,
    *,
    title: str | None = None,
) -> Path:
    """Write ``report.md`` and ``figures/*.png`` for the rows of one or more results files.

    Args:
        results: a results JSONL file, or several (their rows are pooled; a folder stands for
            its ``results.jsonl``).
        out_dir: where to write; default ``report/`` next to the first results file.
        title: the report's heading.

    Returns:
        The path of the Markdown file.

    Raises:
        FileNotFoundError: a results file does not exist.
        ValueError: a file cannot be read or no file has a usable row.
        ImportError: matplotlib is not installed (``pip install paramcorrupt[report]``).
    """
    paths = _as_paths(results)
    raw = load_rows(paths)
    notes = _Notes()
    rows, loss_source = _normalise(raw, notes)
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:  # pragma: no cover - matplotlib is in the test environment
        raise ImportError(
            "the report needs matplotlib: pip install 'paramcorrupt[report]'"
        ) from error
    out = Path(out_dir) if out_dir is not None else paths[0].parent / "report"
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    report = _Report(rows, out, notes)

    sweeps = _ordered(r.get("sweep_id") for r in raw if r.get("sweep_id"))
    lines = [f"# {title or 'Parameter corruption report'}", ""]
    lines.append("Results: " + ", ".join(f"`{p}`" for p in paths) + f" ({len(rows)} rows).")
    if sweeps:
        lines.append("Sweeps: " + ", ".join(f"`{s}`" for s in sweeps) + ".")
    for t in report.tasks:
        d = report.displays[t]
        sel = [r for r in rows if r.task == t]
        lines.append(
            (f"Task `{t}`: " if t else "")
            + f"metric **{d.name}**{' (shown in percent)' if d.scale == 100.0 else ''}, "
            + ("higher is better" if d.higher_is_better else "lower is better")
            + "; methods "
            + ", ".join(sorted({r.method for r in sel}, key=_method_sort))
            + "; norms "
            + ", ".join(_p_label(p) for p in sorted({r.p for r in sel}))
            + "; eps "
            + ", ".join(f"{e:g}" for e in sorted({r.eps for r in sel}))
            + "."
        )
    lines.append(loss_source)
    lines.append("")
    body: list[str] = []
    body += report.table1()
    body += report.heatmaps()
    body += report.curves()
    body += report.theorem1()
    lines += body
    lines.append("## Notes")
    lines.append("")
    if notes.items:
        lines += [f"- {n}" for n in notes.items]
    else:
        lines.append("- Every table and figure could be drawn from these results.")
    lines.append("")
    path = out / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)
    return path
