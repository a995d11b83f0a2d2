"""The console / Markdown summary of a probe's rows (what ``paramcorrupt probe`` prints at
the end): per group and setting, the metric before and after each fault model."""

from __future__ import annotations

import math
from typing import Any

from ...faults import FAULTS
from ...losses import MetricInfo
from .display import MetricDisplay, metric_display

__all__ = ["fault_summary", "summary"]


def fault_summary(rows: list[dict[str, Any]], info: MetricInfo | None = None) -> str:
    """A Markdown table of the rows off the L_p grid: per group, fault model and setting, the
    metric before and after the fault (mean over trials) in the metric's display (``info``, its
    :class:`~paramcorrupt.losses.MetricInfo`; guessed from the name where absent: accuracy in
    percent, as the L_p table shows it), the faulty bits drawn and the weights they changed."""
    metric = rows[0]["metric"]
    disp = _display(rows, info)
    name = f"{metric}{disp.unit}"
    lines = [
        f"| group | fault | setting | {name} before (eval) | {name} after (eval, mean of R trials) | R (trials) "
        "| faulty bits (mean) | weights changed (mean) | loss Inf/NaN |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    settings: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        names = FAULTS[row["method"]].parameters if row["method"] in FAULTS else ()
        text = ", ".join(f"{n}={row[n]}" for n in names if row.get(n) is not None)
        settings.setdefault((row["group"], row["method"], text), []).append(row)
    for (group, method, text), members in settings.items():
        after = sum(r["metric_after"] for r in members) / len(members)
        counts = []
        for field in ("bit_errors", "changed"):
            values = [r[field] for r in members if r.get(field) is not None]
            counts.append(f"{sum(values) / len(values):.3g}" if values else "–")
        bad = sum(1 for r in members if r.get("loss_nonfinite"))
        before = disp.fmt(disp.show(members[0]["metric_before"]))
        lines.append(
            f"| {group} | {method} | {text} | {before} | {disp.fmt(disp.show(after))} | {len(members)} | "
            f"{counts[0]} | {counts[1]} | {bad} |"
        )
    return "\n".join(lines)


def _display(rows: list[dict[str, Any]], info: MetricInfo | None) -> MetricDisplay:
    """The display of the rows' metric: ``info`` where given, else guessed from the name and
    every value of the rows (so the L_p and the fault tables agree)."""
    values = [
        r[k]
        for r in rows
        for k in ("metric_before", "metric_after")
        if isinstance(r.get(k), int | float)
    ]
    return metric_display(rows[0]["metric"], values, info=info)


def summary(rows: list[dict[str, Any]], info: MetricInfo | None = None) -> str:
    """A Markdown table: per group, p, n and eps, the metric after gradient-based corruption
    and the mean after random corruption (Figure 4 / Table 1 at a glance); rows of other
    fault models in a second table (:func:`fault_summary`). Both show the metric in one
    display: ``info`` (the metric's :class:`~paramcorrupt.losses.MetricInfo`) where given,
    else the one guessed from its name and every row's values."""
    if not rows:
        return "(no rows)"
    disp = _display(rows, info)
    info = MetricInfo(disp.higher_is_better, None, disp.scale)
    others = [r for r in rows if r.get("eps") is None]
    rows = [r for r in rows if r.get("eps") is not None]
    if not rows:
        return fault_summary(others, info)
    if others:
        return summary(rows, info) + "\n\n" + fault_summary(others, info)
    metric = rows[0]["metric"]
    name = f"{metric}{disp.unit}"
    lines = [
        f"Eval data: {name} and Δloss (loss after - loss before); R: random trials per setting; "
        "first-order: eps·‖top_n(g)‖_q, g the gradient on the gradient's data (train).",
        "",
        f"| group | p | n | eps | {name} before (eval) | {name} after gradient (eval) | {name} after random "
        "(eval, mean of R) | R | gradient Δloss (eval) | first-order (train) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    settings: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        settings.setdefault((row["group"], row["p"], row["n"], row["eps"]), []).append(row)
    for (group, p, n, eps), members in settings.items():
        grad = next((r for r in members if r["method"] == "gradient"), None)
        rand = [r["metric_after"] for r in members if r["method"] == "random"]
        p_text = "inf" if p == math.inf else f"{p:g}"
        grad_metric = "" if grad is None else disp.fmt(disp.show(grad["metric_after"]))
        grad_loss = "" if grad is None else f"{grad['loss_change']:+.3g}"
        rand_metric = "" if not rand else disp.fmt(disp.show(sum(rand) / len(rand)))
        lines.append(
            f"| {group} | {p_text} | {n} | {eps:g} | {disp.fmt(disp.show(members[0]['metric_before']))} | {grad_metric} "
            f"| {rand_metric} | {len(rand) or ''} | {grad_loss} | {members[0]['first_order']:.3g} |"
        )
    return "\n".join(lines)
