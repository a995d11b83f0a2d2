"""Section 4 of the report: Theorem 1 (Table 3), random |loss change| quantiles vs first-order theory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import ReportBase
from .display import _median, _n_label, _n_sort, _ordered, _p_label, _sci, _slug

__all__ = ["MIN_THEOREM1_TRIALS", "PROBS"]

#: probabilities of the Theorem 1 panel (Table 3 uses 0.9, 0.95, 0.995)
PROBS = (0.5, 0.9, 0.95, 0.995)
#: random trials a setting needs before its quantiles are reported
MIN_THEOREM1_TRIALS = 10
#: settings shown in the Theorem 1 figure
_THEOREM1_FIGURE_MAX = 30


class Theorem1Section(ReportBase):

    def theorem1(self) -> list[str]:
        from ...theory import eta_pdf, eta_quantile

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
