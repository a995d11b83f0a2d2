"""The outcome classes of a sweep with ``--outcomes``: SDC and DUE rates with intervals.

One table per group: per fault model and setting, the trials x examples observed, the SDC
and DUE rates per (trial, example) with their two-sided intervals, and the share of trials
with an SDC (or DUE) in some example, with theirs; the interval method and confidence are
named in the caption. Computed from the rows' counts alone
(:func:`paramcorrupt.probe.outcome_rows.outcome_table`), so a resumed, extended or pooled
results file gives the same table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..outcome_rows import outcome_table

__all__ = ["outcome_lines", "outcome_summary"]


def _rate(cell: Mapping[str, float]) -> str:
    """``7.33% [5.27, 10.1]``: the rate and its interval, in percent."""
    return f"{100 * cell['rate']:.3g}% [{100 * cell['low']:.3g}, {100 * cell['high']:.3g}]"


def _criterion(rows: Iterable[Mapping[str, Any]]) -> str:
    tolerances = sorted(
        {r.get("tolerance") for r in rows if "examples" in r}, key=lambda t: (t is not None, t or 0)
    )
    texts = [
        "top-1 (argmax over the output's last dimension) changed at some position"
        if t is None
        else f"an output element moved by more than {t:g}"
        for t in tolerances
    ]
    return "; ".join(texts) or "top-1 changed"


def _table(cells: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| fault | setting | trials × examples | SDC rate per example | DUE rate per example "
        "| trials, worst example SDC | trials, worst example DUE |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        per = c["examples"] // c["trials"] if c["examples"] % c["trials"] == 0 else None
        size = (
            f"{c['trials']} × {per}"
            if per is not None
            else f"{c['trials']} trials, {c['examples']} examples"
        )
        lines.append(
            f"| {c['method']} | {c['setting']} | {size} | {_rate(c['sdc'])} | {_rate(c['due'])} "
            f"| {_rate(c['sdc_trials'])} | {_rate(c['due_trials'])} |"
        )
    return lines


def outcome_lines(
    rows: Iterable[Mapping[str, Any]], *, confidence: float = 0.95, method: str = "wilson"
) -> list[str]:
    """The report's section (Markdown lines), or no lines when no row has outcome counts."""
    rows = list(rows)
    cells = outcome_table(rows, confidence=confidence, method=method)
    if not cells:
        return []
    interval = cells[0]["interval"]
    name = {"wilson": "Wilson score", "clopper-pearson": "Clopper–Pearson (exact)"}.get(
        interval, interval
    )
    lines = [
        "## Outcome classes: SDC and DUE rates",
        "",
        "Each trial's output on each evaluation example, against the fault-free (golden) run: **DUE** "
        "when it holds Inf or NaN, else **SDC** (silent data corruption) when "
        f"{_criterion(rows)}, else masked. Rates in percent with two-sided {confidence:.0%} "
        f"{name} intervals [low, high]. Per example: every (trial, example) is one observation; a "
        "weight fault is shared by the examples of its trial, so there the per-trial columns (each trial "
        "counted once, by its worst example: DUE over SDC) are the ones whose intervals hold; activation "
        "bit flips are drawn anew for every example, so their per-example observations are independent.",
        "",
    ]
    for group in dict.fromkeys(c["group"] for c in cells):
        lines += [f"### Group `{group}`", ""]
        lines += _table([c for c in cells if c["group"] == group])
        lines.append("")
    return lines


def outcome_summary(rows: Iterable[Mapping[str, Any]]) -> str:
    """The console's lines: one per group and setting with the SDC and DUE rates (95% Wilson
    intervals, per example); empty when no row has outcome counts."""
    cells = outcome_table(rows)
    if not cells:
        return ""
    out = ["", "Outcome classes (per trial x example, 95% Wilson intervals):"]
    for c in cells:
        out.append(
            f"  {c['group']} | {c['method']} {c['setting']}: SDC {_rate(c['sdc'])}, DUE {_rate(c['due'])} "
            f"({c['trials']} trials, {c['examples']} trial-examples)"
        )
    return "\n".join(out)
