"""How the report shows values: the metric's display, the ``*`` convention, labels and formats."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...losses import MetricInfo, metric_info_by_name

__all__ = ["STAR_THRESHOLD", "MetricDisplay", "metric_display", "short_name", "star"]

#: the ``*`` convention's threshold, in display units (percentage points for accuracy)
STAR_THRESHOLD = 0.1


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
    def symbol(self) -> str:
        """The unit after a shown value: "%" for a fraction shown in percent, else none."""
        return "%" if self.scale == 100.0 else ""

    @property
    def points(self) -> str:
        """The unit of a difference of shown values: " points" (percentage points) or none."""
        return " points" if self.scale == 100.0 else ""

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


def metric_display(
    name: str | None,
    values: Iterable[float],
    higher_is_better: bool | None = None,
    info: MetricInfo | None = None,
) -> MetricDisplay:
    """The display of a metric known from a results file: ``info``, its
    :class:`~paramcorrupt.losses.MetricInfo` as the file's header records it (its scale and
    direction), and ``higher_is_better`` where the rows carry it. A file written before its
    header recorded the info falls back on the name and values
    (:func:`paramcorrupt.losses.metric_info_by_name`).

    >>> metric_display("accuracy", [0.5, 0.99]).scale
    100.0
    >>> metric_display("log_ppl", [4.2]).higher_is_better
    False
    >>> metric_display("accuracy", [0.5], info=MetricInfo(False, scale=1.0)).damage_label
    'accuracy rise'
    """
    if info is None or info.higher_is_better is None:
        guessed = metric_info_by_name(name, values)
        info = (
            guessed
            if info is None
            else MetricInfo(guessed.higher_is_better, info.display_name, info.scale, info.unit)
        )
    higher = info.higher_is_better if higher_is_better is None else bool(higher_is_better)
    return MetricDisplay(str(name) if name else "metric", info.scale, bool(higher))


def star(value: float, original: float, threshold: float = STAR_THRESHOLD) -> bool:
    """The paper's ``*``: |value - original| < threshold, both in display units.

    >>> star(99.15, 99.17), star(87.1, 87.3), star(35.25, 35.33)
    (True, False, True)
    """
    return abs(value - original) < threshold


def _p_label(p: float) -> str:
    if math.isinf(p):
        return "L_inf"
    return f"L_{int(p)}" if float(p).is_integer() else f"L_{p:g}"


def _n_label(n_key: str, k: float | None = None) -> str:
    if n_key == "k":
        return "n = k" + (f" = {int(k):,}" if k is not None else "")
    return f"n = {n_key}"


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


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


#: a display name longer than this keeps the task's name alone
_SHORT_MAX = 40


def short_name(identity: str | None) -> str:
    """A task's display name for titles and file names, from its identity (the full identity
    stays in the report's header): a user's task ``model=PATH:factory;data=...;checkpoint=...``
    is its model factory's name, a built-in task keeps its settings with paths cut to their
    file names, and only its name when that is still long.

    >>> short_name("model=/tmp/a/bc.py:make_model;data=/tmp/a/bc.py:make_data;checkpoint=sha256:0123456789abcdef")
    'make_model'
    >>> short_name("digits(seed=0,epochs=30)")
    'digits(seed=0,epochs=30)'
    >>> short_name("hf(path=/home/me/models/gpt2-tiny,seed=0)")
    'hf(path=gpt2-tiny,seed=0)'
    """
    text = str(identity or "")
    parts = (
        dict(part.partition("=")[::2] for part in text.split(";"))
        if text.startswith("model=")
        else {}
    )
    if parts:
        spec = parts.get("model") or parts.get("data") or text
        return re.split(r"[:/\\]", spec.rstrip(":"))[-1] or spec
    text = re.sub(r"(?<==)[^,()]*[/\\]([^,()/\\]+)", r"\1", text)  # a path setting: its file name
    if len(text) > _SHORT_MAX and "(" in text:
        text = text.split("(", 1)[0]
    return text


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
