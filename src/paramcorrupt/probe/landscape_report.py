"""The files of ``paramcorrupt landscape``: one CSV of every point, a PNG of the 1-D curves and
one of the 2-D slice per group, and a Markdown summary (see :mod:`paramcorrupt.probe.landscape`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ParamCorruptError
from ..groups import ParameterGroup
from ..losses import LossFn, Metric, MetricInfo, metric_info
from .landscape import Landscape, landscape, write_csv

__all__ = ["along_a_hat", "curve_figure", "landscape_files", "slice_figure", "summary_markdown"]

#: how each direction is drawn: label, colour, line style
STYLE = {
    "gradient": ("a_hat (gradient-based, t = eps)", "tab:red", "-"),
    "iterative": ("iterative corruption's ray (t = eps)", "tab:purple", "--"),
    "random": ("random corruption (Def. 3, t = eps)", "tab:blue", "-"),
    "filter": ("random, filter-normalised (Li et al.; u)", "tab:green", "-."),
}


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "group"


def _shown(info: MetricInfo | None) -> tuple[float, str]:
    """(scale, unit) of a metric as every report shows it (accuracy in %, as MetricInfo says)."""
    return (1.0, "") if info is None else (info.scale, info.unit)


def curve_figure(
    result: Landscape, path: Path, *, title: str, metric: str | None = None, info: MetricInfo | None = None
) -> Path:
    """The 1-D curves in one figure: the loss (and ``metric`` below it, in its display unit:
    ``info``) against t for the L_p directions, and against u for the filter-normalised one
    (its own axis: another scale)."""
    scale, unit = _shown(info)
    lp = [name for name in result.curves if name != "filter"]
    panels = [names for names in (lp, ["filter"] if "filter" in result.curves else []) if names]
    rows = 2 if metric else 1
    fig = _figure(5.0 * len(panels), 3.4 * rows)
    axes = fig.subplots(rows, len(panels), squeeze=False, sharex="col")
    for column, names in enumerate(panels):
        for row, key in enumerate(["loss", metric][:rows]):
            ax = axes[row][column]
            for name in names:
                label, colour, style = STYLE[name]
                ax.plot(
                    result.steps(name),
                    [v[key] * (scale if key == metric else 1.0) for v in result.curves[name]],
                    style,
                    color=colour,
                    marker=".",
                    label=label,
                )
            shown = result.clean[key] * (scale if key == metric else 1.0)
            ax.axhline(shown, color="0.5", lw=0.8, ls=":", label="w (clean)")
            ax.axvline(0.0, color="0.8", lw=0.8)
            ax.set_ylabel(f"{key} ({unit})" if key == metric and unit else key)
            if row == rows - 1:
                ax.set_xlabel(
                    "t = eps (the L_p radius)"
                    if names != ["filter"]
                    else "u (steps of each filter's norm)"
                )
            if row == 0:
                ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path)
    return path


def slice_figure(result: Landscape, path: Path, *, title: str) -> Path:
    """The 2-D slice's loss as filled contours over (t along a_hat, u along the filter-normalised
    direction), the a_hat axis (u = 0) drawn and marked, w marked."""
    import numpy as np

    loss = np.array([[v["loss"] for v in line] for line in result.grid])  # [i over t][j over u]
    fig = _figure(5.6, 4.6)
    ax = fig.subplots()
    finite = loss[np.isfinite(loss)]
    levels, norm, label = 10, None, "loss"
    if finite.size and finite.max() > finite.min():
        levels = np.linspace(finite.min(), finite.max(), 21)
        if (
            finite.min() > 0 and finite.max() / finite.min() > 100
        ):  # a basin beside steep walls: log levels
            from matplotlib.colors import LogNorm

            levels, norm, label = (
                np.geomspace(finite.min(), finite.max(), 21),
                LogNorm(),
                "loss (log scale)",
            )
    filled = ax.contourf(
        result.grid_t, result.grid_u, loss.T, levels=levels, cmap="viridis", norm=norm
    )
    ax.contour(result.grid_t, result.grid_u, loss.T, levels=levels, colors="k", linewidths=0.3)
    ticks = levels[::4] if not isinstance(levels, int) else None
    fig.colorbar(filled, ax=ax, label=label, ticks=ticks, format="%.3g")
    ax.axhline(0.0, color="tab:red", lw=1.6, label="a_hat axis (u = 0)")
    ax.plot(
        [0.0],
        [0.0],
        marker="*",
        color="white",
        markeredgecolor="k",
        markersize=12,
        ls="",
        label="w",
    )
    ax.set_xlabel("t along a_hat (= eps, the L_p radius)")
    ax.set_ylabel("u along the filter-normalised direction")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(title, fontsize=10)
    fig.savefig(path)
    return path


def _value(result: Landscape, direction: str, step: float) -> dict[str, float] | None:
    steps = result.steps(direction)
    return result.curves[direction][steps.index(step)] if step in steps else None


def _axes_agree(result: Landscape) -> str:
    """Whether the 2-D slice's axes (u = 0, t = 0) hold the 1-D curves' losses where the steps meet."""
    pairs = []
    for i, t in enumerate(result.grid_t):
        for j, u in enumerate(result.grid_u):
            if u == 0.0 and _value(result, "gradient", t) is not None:
                pairs.append((result.grid[i][j]["loss"], _value(result, "gradient", t)["loss"]))
            if t == 0.0 and _value(result, "filter", u) is not None:
                pairs.append((result.grid[i][j]["loss"], _value(result, "filter", u)["loss"]))
    if not pairs:
        return "the grid shares no step with the 1-D curves (no 0 on an axis, or other steps)"
    worst = max(abs(a - b) for a, b in pairs)
    return f"{len(pairs)} shared points, the largest difference {worst:.3g}"


def _group_summary(
    result: Landscape, metric: str | None, figures: Sequence[str], info: MetricInfo | None = None
) -> list[str]:
    s = result.info["setting"]
    scale, unit = _shown(info)
    unit = "%" if unit == "%" else (f" {unit}" if unit else "")
    p = "inf" if s["p"] == math.inf else f"{s['p']:g}"
    lines = [
        f"## Group `{result.group}` (k = {result.k:,})",
        "",
        f"p = {p}, n = {'all' if s['n'] is None else s['n']}; the iterative corruption found at eps = {s['eps']:g} "
        f"({s['steps']} steps); seed {s['seed']}; filter normalisation: one-dimensional parameters "
        f"{'zeroed' if s['bias_bn'] == 'zero' else 'set to w'}. Clean loss {result.clean['loss']:.6g}"
        + (f", {metric} {result.clean[metric] * scale:.4g}{unit}" if metric else "")
        + ".",
        "",
        "| direction | ‖d‖_p | ‖d‖_2 | loss at the first step | loss at the last step | largest loss | "
        + (f"{metric} at the last step |" if metric else "|"),
        "|---|---|---|---|---|---|" + ("---|" if metric else ""),
    ]
    for name, values in result.curves.items():
        norms = result.info["norms"][name]
        first, last = values[0], values[-1]
        steps = result.steps(name)
        cells = [
            f"{name}" + (" (u)" if name == "filter" else ""),
            f"{norms['norm_p']:.4g}",
            f"{norms['norm_2']:.4g}",
            f"{first['loss']:.6g} (at {steps[0]:g})",
            f"{last['loss']:.6g} (at {steps[-1]:g})",
            f"{max(v['loss'] for v in values):.6g}",
        ]
        if metric:
            cells.append(f"{last[metric] * scale:.4g}{unit}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.extend(_first_and_second_order(result))
    if "iterative" in result.info:
        it = result.info["iterative"]
        lines.append(
            f"The iterative corruption at eps = {it['eps']:g}: loss {max(it['losses']):.6g} at step {it['best_step']} "
            f"of its ascent, against {it['losses'][0]:.6g} for eps a_hat (step 0) on the gradient's data."
        )
        lines.append("")
    if result.grid:
        flat = [v["loss"] for line in result.grid for v in line]
        lines.append(
            f"2-D slice: {len(result.grid_t)} x {len(result.grid_u)} points, loss from {min(flat):.6g} to {max(flat):.6g}; "
            f"its axes against the 1-D curves: {_axes_agree(result)}."
        )
        lines.append("")
    lines.extend(f"![{name}]({name})" for name in figures)
    lines.append("")
    return lines


def along_a_hat(result: Landscape) -> dict[str, Any] | None:
    """Along a_hat: the slope of the first-order estimate (||top_n(g)||_q), the measured rise
    L(w + t d) - L(w) at the smallest and the largest t > 0 whose -t is a step too, and the
    curvature d^T H d from the symmetric second difference at the smallest of them
    (``second``; None without symmetric steps). None without the gradient direction."""
    if "gradient" not in result.curves:
        return None
    slope, clean = result.info["first_order"], result.clean["loss"]
    positive = [t for t in result.t if t > 0 and _value(result, "gradient", -t) is not None]
    if not positive:
        return {"slope": slope, "rises": [], "second": None, "small": None}
    small = min(positive)
    rises = [
        (t, _value(result, "gradient", t)["loss"] - clean) for t in sorted({small, max(positive)})
    ]
    at = (_value(result, "gradient", small)["loss"], _value(result, "gradient", -small)["loss"])
    return {
        "slope": slope,
        "rises": rises,
        "second": (at[0] + at[1] - 2 * clean) / small**2,
        "small": small,
    }


def _first_and_second_order(result: Landscape) -> list[str]:
    """The Markdown of :func:`along_a_hat`."""
    found = along_a_hat(result)
    if found is None:
        return []
    slope, second, small = found["slope"], found["second"], found["small"]
    if second is None:
        return [
            f"First-order slope along a_hat: ‖top_n(g)‖_q = {slope:.6g} (no symmetric steps to compare with).",
            "",
        ]
    rows = [
        f"| {t:g} | {rise:.6g} | {t * slope:.6g} | {f'{rise / (t * slope):.4g}' if slope > 0 else 'n/a'} |"
        for t, rise in found["rises"]
    ]
    return [
        "Along a_hat, the loss change against the first-order estimate t ‖top_n(g)‖_q (g on the gradient's data: "
        "the two agree to first order only where the loss is measured on that data too, `--on gradient`):",
        "",
        "| t = eps | measured ΔL | first order | ratio |",
        "|---|---|---|---|",
        *rows,
        "",
        f"Curvature along a_hat from the second difference at t = ±{small:g}: dᵀHd ≈ {second:.6g} "
        f"(second-order term ½ t² dᵀHd = {0.5 * small**2 * second:.3g} at t = {small:g}).",
        "",
    ]


def summary_markdown(
    results: Sequence[Landscape],
    *,
    title: str,
    metric: str | None,
    figures: Mapping[str, Sequence[str]],
    data: str = "the eval loader",
    info: MetricInfo | None = None,
) -> str:
    """The Markdown summary: per group the setting, a table per direction, the first-order
    comparison and curvature along a_hat, the iterative corruption, the 2-D slice, the figures."""
    lines = [
        f"# {title}",
        "",
        f"Loss L(w + t d) on {data} (the exact data set loss, batch-weighted), each group moved alone. "
        "t is an L_p radius for a_hat, the iterative corruption's ray and the random corruption (‖t d‖_p = |t|); "
        "u multiplies the filter-normalised direction (each filter's own norm, Li et al. 2018). "
        "Every point's values are in landscape.csv.",
        "",
    ]
    for result in results:
        lines.extend(_group_summary(result, metric, figures.get(result.group, ()), info))
    return "\n".join(lines)


def landscape_files(
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: LossFn,
    metrics: Mapping[str, Metric] | None,
    groups: Mapping[str, ParameterGroup],
    out: str | Path,
    *,
    title: str = "Loss landscape",
    metric: str | None = None,
    data: str = "the eval loader",
    **options: Any,
) -> tuple[list[Landscape], list[Path]]:
    """:func:`~paramcorrupt.probe.landscape.landscape` for each group, then the files in
    ``out``: ``landscape.csv``, ``landscape.md``, and per group ``<group>-1d.png`` and (with a
    grid) ``<group>-2d.png``. ``options`` go to ``landscape``.

    Returns:
        (the landscapes, the paths written: the summary first).
    """
    if not groups:
        raise ParamCorruptError("no group to walk: the grouping gave none")
    if metric is not None and metric not in (metrics or {}):
        raise ParamCorruptError(
            f"metric {metric!r} is not measured; measured: {', '.join(metrics or {}) or 'none'}"
        )
    info = metric_info(metrics[metric]) if metric is not None and metrics else None  # the metric's display unit
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ParamCorruptError(f"--out {out} is a file; give a folder")
    results, written, figures = [], [], {}
    for label, group in groups.items():  # every landscape measured before any file is written
        result = landscape(model, loader, loss_fn, metrics, group=group, **options)
        result.group = label
        results.append(result)
    out.mkdir(parents=True, exist_ok=True)
    for result in results:
        label = result.group
        names = [
            curve_figure(
                result,
                out / f"{_slug(label)}-1d.png",
                title=f"{title}: group {label}",
                metric=metric,
                info=info,
            ).name
        ]
        if result.grid:
            names.append(
                slice_figure(
                    result, out / f"{_slug(label)}-2d.png", title=f"{title}: group {label}"
                ).name
            )
        figures[label] = names
        written.extend(out / name for name in names)
    csv_path = write_csv(results, out / "landscape.csv")
    md = out / "landscape.md"
    md.write_text(
        summary_markdown(results, title=title, metric=metric, figures=figures, data=data, info=info) + "\n"
    )
    return results, [md, csv_path, *written]
