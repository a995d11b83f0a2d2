"""Section 1 of the report: the paper's Table 1, random vs gradient-based corruption, per setting."""

from __future__ import annotations

from .base import ReportBase
from .display import (
    STAR_THRESHOLD,
    MetricDisplay,
    _mean_std,
    _median,
    _n_label,
    _p_label,
    _sci,
    star,
)
from .methods import method_display, method_sort


class Table1Section(ReportBase):

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
            methods = sorted({r.method for r in sel}, key=method_sort)
            trials = {m: method_display(m).stochastic for m in methods}  # shown as mean ± std
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
                    f"{m} {disp.name}{disp.unit}" + (" (mean ± std)" if trials[m] else "")
                )
            for m in methods:
                head.append(f"{m} Δloss (eval)" + (" (mean ± std)" if trials[m] else ""))
            has_fo = any(r.first_order is not None for r in sel if not trials[r.method])
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
                    cells.append(self._metric_cell(vals, original, disp, trials[m]))
                for m in methods:
                    vals = [
                        r.dloss
                        for r in sel
                        if r.method == m and r.eps == eps and r.dloss is not None
                    ]
                    if not vals:
                        cells.append("–")
                    elif trials[m] or len(vals) > 1:
                        mu, sd = _mean_std(vals)
                        cells.append(
                            f"{mu:+.3e} ± {sd:.1e} (R={len(vals)})"
                            if trials[m]
                            else f"{mu:+.3e}"
                        )
                    else:
                        cells.append(f"{vals[0]:+.3e}")
                if has_fo:
                    grad = [r for r in sel if method_display(r.method).worst_case and r.eps == eps]
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
