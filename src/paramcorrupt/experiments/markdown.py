"""Markdown for the experiments: Table 2 as ``paramcorrupt compare`` writes it (mean ± std over
seeds, a column per method), its goal checks, and the small table and number helpers of the
reproduction scripts (``benchmarks/reproduce_*.py``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..losses import LOSS_INFO, MetricInfo, accuracy, metric_info, metric_info_by_name

__all__ = ["damage", "display", "fmt", "goal_check", "known_metric", "mean", "paper_cell", "table", "table2_markdown"]


#: what Table 2 shows another metric as: PTB's log-perplexity as perplexity (the paper's "PPL")
_SHOWN_AS: dict[str, tuple[str, Any]] = {"log_ppl": ("perplexity", math.exp)}


@functools.lru_cache(maxsize=1)
def _builtin_infos() -> dict[str, MetricInfo]:
    """name -> :class:`MetricInfo` of the built-in tasks' metrics, asked of the metrics
    themselves (:func:`paramcorrupt.losses.metric_info`): a training record holds the
    metric's name only."""
    from ..tasks.lm import LogPerplexity, Perplexity
    from ..tasks.parser import attachment_metric
    from ..tasks.translation import BLEU

    metrics = {"accuracy": accuracy, "uas": attachment_metric(False), "las": attachment_metric(True),
               "log_ppl": LogPerplexity(), "perplexity": Perplexity(), "bleu": BLEU()}
    return {"loss": LOSS_INFO, **{name: metric_info(metric) for name, metric in metrics.items()}}


def known_metric(metric: str) -> bool:
    """Whether :func:`display` knows ``metric`` by its name (a built-in task's metric)."""
    return metric in _builtin_infos()


def _title(info: MetricInfo) -> str:
    name = info.display_name or "metric"
    if info.unit == "%":
        return f"{name} (%)"
    if not info.higher_is_better:
        return f"{name} (lower is better)"
    return name if not info.unit or info.unit in name else f"{name} ({info.unit})"


def display(metric: str, higher_is_better: bool = True) -> tuple[str, Any, bool]:
    """How a metric is shown: (title, value -> shown value, higher is better), from the
    metric's own :class:`MetricInfo` for a built-in task's metric: accuracy in %, PTB's
    log-perplexity as perplexity; anything else as it is (with ``higher_is_better``)."""
    infos = _builtin_infos()
    if metric in infos:
        shown_name, convert = _SHOWN_AS.get(metric, (metric, None))
        info = infos[shown_name]
        if convert is None:
            convert = (lambda v: v * 100) if info.percent else (lambda v: v)
        return _title(info), convert, bool(infos[metric].higher_is_better)
    return (f"{metric} ({'higher' if higher_is_better else 'lower'} is better)", lambda v: v, higher_is_better)


def display_of(results: list[dict[str, Any]]) -> tuple[str, Any, bool]:
    """:func:`display` of the metric of these results (the first one's)."""
    first = results[0] if results else {}
    return display(first.get("metric", "accuracy"), first.get("higher_is_better", True))


def stats(values: list[float], shown: Any = lambda v: v * 100) -> tuple[float, float]:
    """(mean, std with ddof=1; 0 for one value) of the shown values."""
    arr = np.asarray([shown(v) for v in values], dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def table2_markdown(results: list[dict[str, Any]], labels: list[str], eval_eps: tuple[float, ...]) -> str:
    """Table 2's layout: rows "w/o corruption" and each eps; a column per method, mean ± std
    over seeds (accuracy in %, log-perplexity as perplexity: see :func:`display`), the
    difference to the first column in brackets."""
    title, shown, _ = display_of(results)
    by_label = {label: [r for r in results if r["label"] == label] for label in labels}
    seeds = sorted({r["seed"] for r in results})
    one = len(seeds) == 1  # one seed: no standard deviation, none printed (not "± 0.00")
    header = "| | ε | " + " | ".join(labels) + " |"
    lines = [header, "|---|---|" + "---|" * len(labels)]

    def row(name: str, eps: str, pick) -> str:
        cells = []
        base_mean = None
        for i, label in enumerate(labels):
            mean, std = stats([pick(r) for r in by_label[label]], shown)
            cell = f"{mean:.2f}" if one else f"{mean:.2f} ± {std:.2f}"
            if i == 0:
                base_mean = mean
                cells.append(cell)
            else:
                cells.append(f"{cell} ({mean - base_mean:+.2f})")
        return f"| {name} | {eps} | " + " | ".join(cells) + " |"

    lines.append(row("w/o corruption", "-", lambda r: r["clean"]))
    for j, eps in enumerate(eval_eps):
        key = f"{eps:g}"
        lines.append(row("gradient corruption" if j == 0 else "", key, lambda r, key=key: r["gradient"][key]))
    if all(r.get("random") and all(v is not None for v in r["random"].values()) for r in results):
        for j, eps in enumerate(eval_eps):
            key = f"{eps:g}"
            lines.append(row("random corruption" if j == 0 else "", key, lambda r, key=key: r["random"][key]))
    times = [f"{label}: {np.mean([r['train_seconds'] for r in by_label[label]]):.1f} s" for label in labels]
    lines.append("")
    over = (f"one seed ({seeds[0]}): no standard deviation" if one
            else f"mean ± std (ddof=1) over seeds {', '.join(map(str, seeds))}")
    lines.append(
        f"{title} on the test set, {over}; "
        "corruption: L2, n = k (all parameters), gradient-based a_hat with the gradient of the "
        "training set (Definition 4), random = mean of the random draws. "
        f"Mean training time per model: {'; '.join(times)}."
    )
    return "\n".join(lines)


def goal_check(results: list[dict[str, Any]], baseline: str, candidate: str, eval_eps: tuple[float, ...]) -> list[str]:
    """Where the baseline loses >= 10 points: is the candidate better by more than one std
    (the larger of the two)? And is its clean value within 0.5 points? (Points of the shown
    metric: accuracy in %, perplexity; "better" follows the metric's direction.) With one
    seed of either method there is no standard deviation: the losses are listed, no
    "by more than one std" conclusion is drawn."""
    base = [r for r in results if r["label"] == baseline]
    cand = [r for r in results if r["label"] == candidate]
    _, shown, higher = display_of(base or cand)
    sign = 1.0 if higher else -1.0  # sign * (a - b) > 0: a is better than b
    better = "higher" if higher else "lower"
    lines = []
    clean_b, _ = stats([r["clean"] for r in base], shown)
    clean_c, _ = stats([r["clean"] for r in cand], shown)
    goal = ">= -0.50" if higher else "<= +0.50"
    one = min(len(base), len(cand)) < 2
    lines.append(f"clean: {clean_c:.2f} vs {clean_b:.2f} ({clean_c - clean_b:+.2f}; goal {goal}: {'met' if sign * (clean_c - clean_b) >= -0.5 else 'NOT met'})")
    met = 0
    for eps in eval_eps:
        key = f"{eps:g}"
        mb, sb = stats([r["gradient"][key] for r in base], shown)
        mc, sc = stats([r["gradient"][key] for r in cand], shown)
        if sign * (clean_b - mb) < 10:
            continue
        if one:
            lines.append(f"eps={key}: baseline loses {sign * (clean_b - mb):.1f} points; {mc:.2f} vs {mb:.2f} "
                         "(one seed: no standard deviation, no conclusion)")
            continue
        ok = sign * (mc - mb) > max(sb, sc)
        met += ok
        lines.append(f"eps={key}: baseline loses {sign * (clean_b - mb):.1f} points; {mc:.2f} ± {sc:.2f} vs {mb:.2f} ± {sb:.2f}: {f'{better} by more than one std' if ok else f'NOT {better} by more than one std'}")
    lines.append(f"eps values where the baseline loses >= 10 points and the candidate is {better} by > 1 std: "
                 + ("not assessed (one seed: no standard deviation; give --seeds 0,1,2)" if one else str(met)))
    return lines


def fmt(value: Any, metric: str | None = None, digits: int = 2) -> str:
    """A metric as the paper prints it: accuracy in percent, others as they are."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, str):
        return value
    if metric is not None and metric_info_by_name(metric, [value]).scale == 100.0:  # a fraction, in percent
        return f"{100 * value:.{digits - 1}f}"
    return f"{value:.{digits}f}"


def paper_cell(value: Any) -> str:
    """A number of the paper, or a dash."""
    return "—" if value is None else str(value)


def mean(values: Iterable[float]) -> float | None:
    """The mean of the values that are not None or NaN (None when none is left)."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


def damage(metric: str, before: float, after: float) -> float:
    """How much worse ``after`` is than ``before`` (positive = worse), by the metric's direction."""
    return (before - after) if metric_info_by_name(metric).higher_is_better else (after - before)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A Markdown table's lines (header, rule, rows), then an empty line."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + [""]
