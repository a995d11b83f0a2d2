"""The report's Theorem 2 section (issue 24, point 2): the second-order term beside the
measurements, for rows of a second-order sweep (``probe --second-order``).

- the gradient-based corruption's measured ratio ΔL / (eps ‖h‖_q) against eps, with the first
  order (1) and the second-order prediction 1 + ½ âᵀHâ / (eps ‖h‖_q) (the row's
  ``predicted_ratio``) drawn, per (group, p, n);
- the random corruptions' mean loss change against its prediction tr(H)/k · E‖a‖₂² / 2
  (``predicted_mean``), with the mean of the drawn corruptions' own ½ aᵀHa beside it;
- λ_max and tr(H)/k per group beside the loss change the sweep measured, and Spearman's rank
  correlation of each with it over the groups of a grouping: does curvature rank the groups
  the way the corruption does?

Loss changes are on the gradient's data (where H and the ratio are taken) when the rows have
it, else on the evaluation data (said so).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import figure_legend, grid_shape
from .display import _n_label, _ordered, _p_label, _sci
from .rows import _n_key, _Notes, _num

__all__ = ["Theorem2Section", "has_second_order", "spearman", "theorem2_lines"]

#: (group, p, n) panels of the ratio figure
_MAX_PANELS = 9


def theorem2_lines(rows: list[dict[str, Any]], report: Any, notes: _Notes) -> list[str]:
    """The section's Markdown lines for a report (its figures saved by the report's ``_save``);
    empty when no row has the second-order columns."""
    return Theorem2Section(
        rows, notes, report._figure, report._save, report._link, report.names
    ).section()


def has_second_order(rows: Iterable[dict[str, Any]]) -> bool:
    """Whether any row carries the second-order columns with a value."""
    return any(_num(r.get("second_order")) is not None for r in rows)


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); ``None`` for fewer than 3 pairs
    or a constant side.

    >>> spearman([1, 2, 3, 4], [10, 20, 30, 40]), spearman([1, 2, 3], [3, 2, 1])
    (1.0, -1.0)
    """
    if len(x) != len(y) or len(x) < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    order = np.argsort(arr, kind="stable")
    ranks = np.empty(len(arr))
    i = 0
    while i < len(arr):
        j = i
        while j + 1 < len(arr) and arr[order[j + 1]] == arr[order[i]]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


class Theorem2Section:
    """The section, over the raw rows of the L_p sweeps (dicts as :func:`load_rows` gives).

    Args:
        rows: the rows; those without the second-order columns are ignored.
        notes: the report's notes.
        figure, save, link: the report's figure factory, saver and Markdown link maker.
        names: task identity -> its short name.
    """

    def __init__(
        self,
        rows: list[dict[str, Any]],
        notes: _Notes,
        figure: Callable[..., Any],
        save: Callable[..., Path],
        link: Callable[[Path, str], str],
        names: dict[str, str],
    ) -> None:
        self.rows = [
            _entry(r)
            for r in rows
            if _num(r.get("second_order")) is not None or _num(r.get("trace_per_k")) is not None
        ]
        self.notes, self._figure, self._save, self._link, self.names = (
            notes,
            figure,
            save,
            link,
            names,
        )
        self.on_grad_data = all(r["grad"] for r in self.rows)

    def section(self) -> list[str]:
        if not self.rows:
            return []
        data = (
            "the gradient's data"
            if self.on_grad_data
            else "the evaluation data where the gradient's is missing"
        )
        lines = ["## Theorem 2 and the second-order term (Eq. 4)", ""]
        lines.append(
            "Eq. 4: ΔL(a) = aᵀg + ½ aᵀHa + o(eps²). For the gradient-based corruption â, aᵀg = eps‖h‖_q, so "
            "the ratio ΔL / (eps‖h‖_q) is 1 to first order (Theorem 2) and 1 + ½ âᵀHâ / (eps‖h‖_q) to second "
            "order. A random corruption has E[aᵀg] = 0 and E[½ aᵀHa] = tr(H)/k · E‖a‖₂² / 2 (E‖a‖₂² = eps² for "
            "L_2 and L_1, n·eps² for L_inf; Monte Carlo for other p). H is the Hessian of the loss on the "
            f"gradient's data; loss changes are on {data}."
        )
        lines.append("")
        lines += self._ratios()
        lines += self._random_means()
        lines += self._curvature_table()
        return lines

    # -- the ratio ---------------------------------------------------------------------

    def _ratios(self) -> list[str]:
        grad = [
            r
            for r in self.rows
            if r["method"] == "gradient"
            and r["ratio"] is not None
            and r["predicted_ratio"] is not None
        ]
        lines = ["### The gradient-based ratio against eps", ""]
        if not grad:
            lines += ["_No gradient-based row with a measured and a predicted ratio._", ""]
            return lines
        lines.append(
            "| group | p | n | eps | ratio measured | first order | second order | (measured − 1) / (predicted − 1) |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        panels: dict[tuple, list[dict[str, Any]]] = {}
        for r in sorted(grad, key=lambda r: (self._where(r), r["p"], r["nk"], r["eps"])):
            panels.setdefault((r["task"], r["grouping"], r["group"], r["p"], r["nk"]), []).append(r)
            share = (
                (r["ratio"] - 1) / (r["predicted_ratio"] - 1) if r["predicted_ratio"] != 1 else None
            )
            lines.append(
                f"| {self._where(r)} | {_p_label(r['p'])} | {r['nk']} | {r['eps']:g} | {r['ratio']:.4f} | 1 | "
                f"{r['predicted_ratio']:.4f} | {'–' if share is None else f'{share:.3f}'} |"
            )
        lines.append("")
        shown = list(panels.items())
        if len(shown) > _MAX_PANELS:
            lines += [
                f"The figure shows the first {_MAX_PANELS} of {len(shown)} (group, p, n) settings.",
                "",
            ]
            shown = shown[:_MAX_PANELS]
        lines += [
            self._link(
                self._ratio_figure(shown),
                "Theorem 2: measured ratio and its predictions against eps",
            ),
            "",
        ]
        return lines

    def _ratio_figure(self, panels: list[tuple[tuple, list[dict[str, Any]]]]) -> Path:
        rows, cols = grid_shape(len(panels))
        spare = rows * cols - len(panels)
        fig = self._figure(max(4.2 * cols, 7.0), 3.3 * rows + (0.6 if spare else 1.2))
        grid = fig.subplots(rows, cols, squeeze=False)
        for ax in grid.flat[len(panels) :]:
            ax.remove()
        for ax, ((task, _, _, p, nk), entries) in zip(grid.flat, panels):
            eps = [e["eps"] for e in entries]
            measured = [e["ratio"] for e in entries]
            predicted = [e["predicted_ratio"] for e in entries]
            ax.plot(
                eps,
                predicted,
                color="tab:orange",
                lw=1.5,
                marker=".",
                label="second order: 1 + ½âᵀHâ/(eps‖h‖_q)",
            )
            ax.axhline(1.0, color="black", ls="--", lw=1.0, label="first order: 1")
            ax.scatter(
                eps,
                measured,
                color="tab:red",
                marker="o",
                s=30,
                zorder=3,
                label="measured ΔL/(eps‖h‖_q)",
            )
            ax.set_xscale("log")
            values = [v for v in measured + predicted if v is not None]
            if values and min(values) > 0 and max(values) / min(values) > 20:
                ax.set_yscale("log")
            ax.set_xlabel("eps")
            ax.set_ylabel("ratio")
            head = (
                f"{self.names.get(task, task)}: " if len({r["task"] for r in self.rows}) > 1 else ""
            )
            ax.set_title(
                f"{head}{self._where(entries[0])}, {_p_label(p)}, {_n_label(nk)}", fontsize=9
            )
            ax.grid(alpha=0.3, which="both")
        figure_legend(
            fig, list(grid.flat[: len(panels)]), spare, ncol=3, loc="outside lower center"
        )
        fig.suptitle("Theorem 2: the gradient-based ratio, first and second order", fontsize=10)
        return self._save(fig, "theorem2-ratio")

    # -- the random mean --------------------------------------------------------------------

    def _random_means(self) -> list[str]:
        lines = ["### The random corruptions' mean loss change against tr(H)/k", ""]
        settings: dict[tuple, list[dict[str, Any]]] = {}
        for r in self.rows:
            if (
                r["method"] == "random"
                and r["predicted_mean"] is not None
                and r["dloss"] is not None
            ):
                key = (r["task"], r["grouping"], r["group"], r["p"], r["nk"], r["eps"])
                settings.setdefault(key, []).append(r)
        if not settings:
            lines += ["_No random row with a predicted mean._", ""]
            return lines
        lines.append(
            "Mean ± standard error over the trials. 'mean ΔL − aᵀg' takes each draw's own first-order term "
            "out (its mean is 0, but its spread usually hides the second-order mean); 'mean ½aᵀHa' is the "
            "average of the drawn corruptions' own second-order terms; 'predicted' is tr(H)/k · E‖a‖₂²/2 from "
            "Hutchinson's trace (± its standard error); the last column is mean (ΔL − aᵀg) / predicted."
        )
        lines.append("")
        lines.append(
            "| group | p | n | eps | trials | mean ΔL measured | mean ΔL − aᵀg | mean ½aᵀHa | predicted "
            "| (ΔL − aᵀg) / predicted |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        points = []
        for key, entries in sorted(
            settings.items(), key=lambda kv: (self._where(kv[1][0]), *kv[0][3:])
        ):
            p, nk, eps = key[3:]
            mean, se = _mean_se([e["dloss"] for e in entries])
            beyond, beyond_se = _mean_se(
                [e["dloss"] - e["linear"] for e in entries if e["linear"] is not None]
            )
            quad, _ = _mean_se(
                [e["second_order"] for e in entries if e["second_order"] is not None]
            )
            pred, pred_se = entries[0]["predicted_mean"], entries[0]["predicted_mean_stderr"] or 0.0
            rel = beyond / pred if pred and math.isfinite(beyond) else None
            lines.append(
                f"| {self._where(entries[0])} | {_p_label(p)} | {nk} | {eps:g} | {len(entries)} "
                f"| {_sci(mean)} ± {_sci(se)} | {_sci(beyond)} ± {_sci(beyond_se)} | {_sci(quad)} "
                f"| {_sci(pred)} ± {_sci(pred_se)} | {'–' if rel is None else f'{rel:.3f}'} |"
            )
            points.append((self._where(entries[0]), pred, pred_se, mean, se, beyond, beyond_se))
        lines.append("")
        path = self._mean_figure(points)
        if path is not None:
            lines += [self._link(path, "random mean loss change against tr(H)/k prediction"), ""]
        return lines

    def _mean_figure(self, points: list[tuple[Any, ...]]) -> Path | None:
        """Measured means (filled: ΔL − aᵀg; open: ΔL) against the prediction, log-log; only
        positive values can be drawn (the rest are in the table, said in the notes)."""
        drawn = [
            (pt[0], pt[1], pt[2], pt[m], pt[m + 1], m == 5)
            for pt in points
            for m in (5, 3)
            if pt[1] > 0 and math.isfinite(pt[m]) and pt[m] > 0
        ]
        left = 2 * len(points) - len(drawn)
        if left:
            self.notes.add(
                f"Theorem 2 section: {left} random mean(s) (ΔL or ΔL − aᵀg) with a value or prediction <= 0 are in "
                "the table but not on the log-log figure."
            )
        if not drawn:
            return None
        fig = self._figure(6.4, 5.4)
        ax = fig.add_subplot()
        colours = {g: f"C{i % 10}" for i, g in enumerate(_ordered(pt[0] for pt in drawn))}
        for where, pred, pred_se, mean, se, beyond in drawn:
            ax.errorbar(
                pred,
                mean,
                xerr=pred_se,
                yerr=None if math.isnan(se) else se,
                fmt="o",
                ms=6,
                capsize=2,
                color=colours[where],
                mfc=colours[where] if beyond else "none",
                label=f"{where}: mean ΔL − aᵀg" if beyond else f"{where}: mean ΔL",
            )
        low = min(min(pt[1], pt[3]) for pt in drawn) / 2
        high = max(max(pt[1], pt[3]) for pt in drawn) * 2
        ax.plot(
            [low, high], [low, high], color="black", ls="--", lw=1.0, label="measured = predicted"
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("predicted mean ΔL: tr(H)/k · E‖a‖₂² / 2")
        ax.set_ylabel("measured mean over the random corruptions")
        ax.grid(alpha=0.3, which="both")
        figure_legend(fig, [ax], 0, ncol=2, loc="outside lower center")
        fig.suptitle(
            "Random corruption: mean loss change against its second-order prediction", fontsize=10
        )
        return self._save(fig, "theorem2-random-mean")

    # -- curvature per group -------------------------------------------------------------

    def _curvature_table(self) -> list[str]:
        lines = ["### Curvature per group beside the measured vulnerability", ""]
        lines.append(
            "λ_max: Lanczos' top eigenvalue of the group's Hessian; tr(H)/k: Hutchinson's trace per parameter. "
            "ΔL: the gradient-based corruption's loss change at the setting named (the largest eps that every "
            "group of the grouping has). ρ: Spearman's rank correlation over the groups (1: curvature ranks "
            "them as the corruption does)."
        )
        lines.append("")
        for task in _ordered(r["task"] for r in self.rows):
            for grouping in _ordered(r["grouping"] for r in self.rows if r["task"] == task):
                lines += self._grouping_table(task, grouping)
        return lines

    def _grouping_table(self, task: str, grouping: str) -> list[str]:
        mine = [r for r in self.rows if r["task"] == task and r["grouping"] == grouping]
        groups = _ordered(r["group"] for r in mine)
        grad = [r for r in mine if r["method"] == "gradient" and r["dloss"] is not None]
        common = None
        per_group = [{(r["p"], r["nk"], r["eps"]) for r in grad if r["group"] == g} for g in groups]
        shared = set.intersection(*per_group) if per_group else set()
        if shared:
            common = max(shared, key=lambda s: (s[2], -s[0] if math.isfinite(s[0]) else -1e300))
        head = f"task `{self.names.get(task, task)}`, " if task else ""
        setting = (
            ""
            if common is None
            else f"; ΔL at {_p_label(common[0])}, n = {common[1]}, eps = {common[2]:g}"
        )
        lines = [f"**{head}grouping `{grouping or '-'}`**{setting}", ""]
        lines.append("| group | k | λ_max | tr(H)/k | ΔL (gradient-based) |")
        lines.append("|---|---|---|---|---|")
        lam, mean, vuln = [], [], []
        for g in groups:
            first = next(r for r in mine if r["group"] == g)
            d = None
            if common is not None:
                d = next(
                    (
                        r["dloss"]
                        for r in grad
                        if r["group"] == g and (r["p"], r["nk"], r["eps"]) == common
                    ),
                    None,
                )
            k = f"{int(first['k']):,}" if first["k"] is not None else "?"
            tr = (
                "–"
                if first["trace_per_k"] is None
                else f"{_sci(first['trace_per_k'])} ± {_sci(first['trace_per_k_stderr'])}"
            )
            lines.append(f"| {g} | {k} | {_sci(first['lambda_max'])} | {tr} | {_sci(d)} |")
            if (
                d is not None
                and first["lambda_max"] is not None
                and first["trace_per_k"] is not None
            ):
                lam.append(first["lambda_max"])
                mean.append(first["trace_per_k"])
                vuln.append(d)
        lines.append("")
        rho_l, rho_t = spearman(lam, vuln), spearman(mean, vuln)
        if rho_l is None:
            lines += [
                f"Rank correlation: needs at least 3 groups with both values (here {len(vuln)}).",
                "",
            ]
        else:
            lines += [
                f"Spearman ρ over {len(vuln)} groups: λ_max vs ΔL {rho_l:+.2f}; tr(H)/k vs ΔL {rho_t:+.2f}.",
                "",
            ]
        return lines

    def _where(self, r: dict[str, Any]) -> str:
        return (
            r["group"] if r["grouping"] in ("", r["group"]) else f"{r['group']} ({r['grouping']})"
        )


def _mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (NaN where there are too few values)."""
    if not values:
        return math.nan, math.nan
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (
        float(arr.std(ddof=1)) / math.sqrt(arr.size) if arr.size > 1 else math.nan
    )


def _entry(r: dict[str, Any]) -> dict[str, Any]:
    """The fields this section reads, as numbers (None where unusable)."""
    after, before = _num(r.get("grad_loss_after")), _num(r.get("grad_loss_before"))
    grad = after is not None and before is not None
    out = {
        "task": str(r.get("task") or ""),
        "grouping": str(r.get("grouping") or ""),
        "group": str(r.get("group") if r.get("group") is not None else "all"),
        "method": r.get("method"),
        "p": _num(r.get("p")) if _num(r.get("p")) is not None else math.nan,
        "eps": _num(r.get("eps")) or math.nan,
        "k": _num(r.get("k")),
        "grad": grad,
        "dloss": after - before if grad else _num(r.get("loss_change")),
    }
    out["nk"] = _n_key(_num(r.get("n")), out["k"])
    for name in (
        "ratio",
        "second_order",
        "predicted_ratio",
        "predicted_mean",
        "predicted_mean_stderr",
        "trace_per_k",
        "trace_per_k_stderr",
        "lambda_max",
    ):
        out[name] = _num(r.get(name))
    # aᵀg of the row's own corruption, from its predicted ratio (aᵀg + ½aᵀHa)/(eps‖h‖_q): ΔL − aᵀg is the
    # measured change beyond first order, without the spread of the first-order term over random draws
    first = _num(r.get("first_order"))
    known = (
        first is not None and out["predicted_ratio"] is not None and out["second_order"] is not None
    )
    out["linear"] = out["predicted_ratio"] * first - out["second_order"] if known else None
    return out
