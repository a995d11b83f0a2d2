"""Section 4 of the report: Theorem 1 (Table 3), random |loss change| quantiles vs first-order theory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import ReportBase, figure_legend, grid_shape
from .display import _median, _n_label, _n_sort, _ordered, _p_label, _sci, _slug
from .methods import method_display

__all__ = ["MIN_THEOREM1_TRIALS", "PROBS"]

#: probabilities of the Theorem 1 panel (Table 3 uses 0.9, 0.95, 0.995)
PROBS = (0.5, 0.9, 0.95, 0.995)
#: random trials a setting needs before its quantiles are reported
MIN_THEOREM1_TRIALS = 10
#: (group, p, n) panels shown in the Theorem 1 figure
_THEOREM1_FIGURE_MAX = 9


class Theorem1Section(ReportBase):

    def theorem1(self) -> list[str]:
        from ...theory import eta_pdf

        lines = ["## Theorem 1: random corruption vs first-order theory (Table 3)", ""]
        lines.append(
            "For settings with at least "
            f"{MIN_THEOREM1_TRIALS} random trials: empirical quantiles α(p) of |Δloss| over the "
            "random trials (linear interpolation between order statistics) beside Theorem 1's "
            "first-order quantiles eps·G·x_p, x_p = sqrt(I⁻¹_p(1/2, (k-1)/2)), the first-order "
            "worst case eps·G and the gradient-based corruption's Δloss, all on the gradient's "
            "data where the rows have it ('Δloss data'). Theorem 1 assumes L_2 and "
            "n = k (a uniform direction on the sphere; premise 'yes'). The first-order worst case "
            "is the largest first-order loss change in the row's set S: eps·G (G = ‖g‖_2) under the "
            "premise, eps·‖top_n(g)‖_q otherwise (for L_inf, n = k: eps·‖g‖_1). Settings off the "
            "premise are shown only when no group of the report has an L_2, n = k setting; then "
            "Theorem 1's quantiles do not apply to them and are left out ('–')."
        )
        lines.append("")
        entries, off_premise = self._theorem1_entries()
        if any(e["premise"] for e in entries):
            # Theorem 1 applies: the groups without an L_2, n = k setting are left out, said so
            entries = [e for e in entries if e["premise"]]
            if off_premise:
                lines.append(
                    f"Left out ({len(off_premise)} groups with no L_2, n = k setting, where Theorem 1 "
                    f"does not apply): {', '.join(off_premise)}."
                )
                lines.append("")
        if not entries:
            lines.append(
                f"_No setting has {MIN_THEOREM1_TRIALS} or more random trials with a loss change._"
            )
            lines.append("")
            self.notes.add(
                f"Theorem 1 panel: no setting with >= {MIN_THEOREM1_TRIALS} random trials."
            )
            return lines
        plotted = self._theorem1_table(entries, lines)
        lines.append("")
        panels: dict[tuple, list[dict[str, Any]]] = {}
        for e in plotted:
            panels.setdefault((e["task"], e["grouping"], e["group"], e["p"], e["nk"]), []).append(e)
        shown = list(panels.items())
        if len(shown) > _THEOREM1_FIGURE_MAX:
            lines.append(
                f"The figure shows the first {_THEOREM1_FIGURE_MAX} of {len(shown)} (group, p, n) "
                "settings; the table above has them all."
            )
            lines.append("")
            shown = shown[:_THEOREM1_FIGURE_MAX]
        path = self._theorem1_figure(shown)
        lines.append(self._link(path, "Theorem 1: quantiles of |loss change| against eps"))
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

    def _theorem1_entries(self) -> tuple[list[dict[str, Any]], list[str]]:
        """The settings with enough of Theorem 1's random trials, per group (its L_2, n = k
        ones where it has some), and the titles of the groups with none on the premise."""
        entries = []
        off_premise: list[str] = []
        for task, grouping, group in _ordered((r.task, r.grouping, r.group) for r in self.rows):
            cands = []
            for r in self._select(task, grouping, group):
                if method_display(r.method).theorem1_trials:
                    cands.append((r.p, r.n_key, r.eps))
            cands = _ordered(cands)
            good = []
            for p, nk, eps in cands:
                rand = [
                    r
                    for r in self._select(task, grouping, group, p, nk, eps=eps)
                    if method_display(r.method).theorem1_trials and r.dloss_theory is not None
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
            if not ideal:
                off_premise.append(self._title(task, grouping, group))
            for p, nk, eps, rand in sorted(
                ideal or good, key=lambda x: (x[0], _n_sort(x[1]), x[2])
            ):
                same = self._select(task, grouping, group)
                grad = [
                    r
                    for r in same
                    if method_display(r.method).worst_case and r.p == p and r.n_key == nk and r.eps == eps
                ]
                G = (
                    _median(r.G for r in grad)
                    or _median(r.G for r in rand)
                    or _median(r.G for r in same)
                )
                k = _median(r.k for r in rand)
                first_order = _median(r.first_order for r in grad) or _median(r.first_order for r in rand)
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
                        premise=p == 2.0 and nk == "k",
                        first_order=first_order,
                    )
                )
        return entries, off_premise

    def _theorem1_table(self, entries: list[dict[str, Any]], lines: list[str]) -> list[dict[str, Any]]:
        """Append the table of ``entries`` to ``lines`` (each entry gains its quantiles, its
        theory and its first-order worst case); return the entries to plot."""
        from ...theory import eta_quantile

        head = ["setting", "premise", "Δloss data", "trials", "k", "G"]
        for pr in PROBS:
            head += [f"α({pr:g}) empirical", f"α({pr:g}) theory"]
        head += ["first-order worst case", "gradient Δloss", "gradient / α(0.95) empirical"]
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
            elif not e["premise"]:
                pass  # off the premise: the theory's quantiles do not apply
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
                "yes" if e["premise"] else "no",
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
            worst = e["eps"] * G if e["premise"] and G is not None else e["first_order"]
            e["worst"] = worst
            cells += [
                _sci(worst),
                _sci(gdl, sign=True),
                f"{gdl / emp[PROBS.index(0.95)]:.1f}x"
                if gdl is not None and emp[PROBS.index(0.95)] > 0
                else "–",
            ]
            lines.append("| " + " | ".join(cells) + " |")
            plotted.append(e)
        return plotted

    def _theorem1_figure(self, panels: list[tuple[tuple, list[dict[str, Any]]]]) -> Path:
        """One panel per (group, p, n): |Δloss| against eps on log axes, the random trials'
        quantiles (points) beside Theorem 1's (lines, premise settings only), the first-order
        worst case and the gradient-based Δloss; off-premise panels say so in their title."""
        rows, cols = grid_shape(len(panels))
        spare = rows * cols - len(panels)  # the legend's slot; none: below the panels
        fig = self._figure(max(4.2 * cols, 7.0), 3.4 * rows + (0.6 if spare else 1.4))
        grid = fig.subplots(rows, cols, squeeze=False)
        shades = ("tab:blue", "tab:purple", "tab:orange", "tab:red")
        marks = ("o", "s", "^", "D")  # one shape per quantile: close quantiles stay told apart
        for ax in grid.flat[len(panels):]:
            ax.remove()
        for ax, ((task, grouping, group, p, nk), entries) in zip(grid.flat, panels):
            entries = sorted(entries, key=lambda e: e["eps"])
            eps = np.array([e["eps"] for e in entries])
            for i, pr in enumerate(PROBS):
                ax.scatter(eps, [max(e["emp"][i], 1e-300) for e in entries], s=26, marker=marks[i],
                           facecolors="none", edgecolors=shades[i], linewidths=1.2,
                           label=f"random α({pr:g}), measured", zorder=3)
                th = [(e["eps"], e["theory"][i]) for e in entries if e["theory"] is not None]
                if th:
                    ax.plot(*zip(*th), color=shades[i], lw=1.2, alpha=0.8, label=f"Theorem 1 α({pr:g})")
            worst = [(e["eps"], e["worst"]) for e in entries if e.get("worst")]
            if worst:
                ax.plot(*zip(*worst), color="black", ls="--", lw=1.0, label="first-order worst case")
            gd = [(e["eps"], abs(g)) for e in entries
                  if (g := _median(r.dloss_theory for r in e["grad"])) is not None and g != 0]
            if gd:
                ax.scatter(*zip(*gd), marker="*", s=90, color="tab:green", label="|gradient Δloss|", zorder=4)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("eps")
            ax.set_ylabel("|Δloss|")
            premise = p == 2.0 and nk == "k"
            head = f"{self.names[task]}: " if task and len(self.tasks) > 1 else ""
            where = group if grouping in ("", group) else f"{group} ({grouping})"
            ax.set_title(
                f"{head}{where}, {_p_label(p)}, {_n_label(nk)}"
                + ("" if premise else "\noff Theorem 1's premise: no theory"),
                fontsize=9, color="black" if premise else "tab:red",
            )
            ax.grid(alpha=0.3, which="both")
        figure_legend(fig, list(grid.flat[: len(panels)]), spare, ncol=3, loc="outside lower center")
        fig.suptitle("Theorem 1: random |Δloss| quantiles vs theory\n(Δloss on the gradient's data where measured)",
                     fontsize=10)
        return self._save(fig, "theorem1")

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
        ax.set_title((f"{self.names[e['task']]}: " if e.get("task") and len(self.tasks) > 1 else "") + e["label"], fontsize=9)
        ax.legend(fontsize=7)
        return self._save(fig, _slug("theorem1-eta", e["group"]))
