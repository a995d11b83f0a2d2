"""The console / Markdown summary of a probe's rows (what ``paramcorrupt probe`` prints at
the end): per group and setting, the metric before and after each fault model."""

from __future__ import annotations

import math
from typing import Any

from ...faults import FAULTS
from .display import metric_display

__all__ = ["fault_summary", "summary"]


def fault_summary(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the rows off the L_p grid: per group, fault model and setting, the
    metric after the fault (mean over trials) and how many faulty bits were drawn."""
    metric = rows[0]["metric"]
    lines = [
        f"| group | fault | setting | {metric} before (eval) | {metric} after (eval, mean of R trials) | R (trials) | faulty bits (mean) | loss Inf/NaN |",
        "|---|---|---|---|---|---|---|---|",
    ]
    settings: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        names = FAULTS[row["method"]].parameters if row["method"] in FAULTS else ()
        text = ", ".join(f"{n}={row[n]}" for n in names if row.get(n) is not None)
        settings.setdefault((row["group"], row["method"], text), []).append(row)
    for (group, method, text), members in settings.items():
        after = sum(r["metric_after"] for r in members) / len(members)
        bits = [r["bit_errors"] for r in members if r.get("bit_errors") is not None]
        bits_text = f"{sum(bits) / len(bits):.3g}" if bits else "–"
        bad = sum(1 for r in members if r.get("loss_nonfinite"))
        lines.append(
            f"| {group} | {method} | {text} | {members[0]['metric_before']:.4g} | {after:.4g} | {len(members)} | {bits_text} | {bad} |"
        )
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: per group, p, n and eps, the metric after gradient-based corruption
    and the mean after random corruption (Figure 4 / Table 1 at a glance); rows of other
    fault models in a second table (:func:`fault_summary`)."""
    if not rows:
        return "(no rows)"
    others = [r for r in rows if r.get("eps") is None]
    rows = [r for r in rows if r.get("eps") is not None]
    if not rows:
        return fault_summary(others)
    if others:
        return summary(rows) + "\n\n" + fault_summary(others)
    metric = rows[0]["metric"]
    disp = metric_display(metric, [r["metric_before"] for r in rows if r.get("metric_before") is not None])
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
