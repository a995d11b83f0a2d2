"""The one loss interface every task uses: classification, language modelling, seq2seq.

A *loss function* is called as ``loss_fn(model, batch)`` and runs the model on the batch.
It returns a :class:`BatchLoss`: the batch's **mean** loss, the batch's **weight** (its number
of examples, or of tokens for sequence losses) and, optionally, the model output, which
metrics then read without a second forward pass. The loss over a data set is the
weight-averaged batch loss, so the last, smaller batch counts for exactly what it holds.

A plain scalar tensor or a ``(loss, weight)`` pair is accepted too; the weight of a bare
scalar is the batch size (``len`` of the batch's first tensor).

A *metric* is called as ``metric(output, batch)`` and returns ``(total, count)``; a data set's
value is sum(total) / sum(count). ``"loss"`` is always measured.

A metric carries its own direction and display (as torchmetrics' ``higher_is_better``): the
attributes ``higher_is_better``, ``display_name``, ``scale`` (the shown value is
``value * scale``: 100 for a fraction shown in percent) and ``unit`` ("%", "BLEU", ""), set
on a class or with :func:`describe_metric`, and read with :func:`metric_info`: a
:class:`MetricInfo`, the one home of a metric's direction and display. A plain callable
without them still works; its direction is then unknown (``None``). A probe writes every
metric's :class:`MetricInfo` (with the primary metric's chance level) into its results
header (:func:`metric_infos`, :meth:`MetricInfo.to_dict`), and reports read it from there
(:meth:`MetricInfo.from_dict`). Only for a results file written before the header held it
does :func:`metric_info_by_name` guess from the metric's name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, TypeVar

import torch.nn.functional as F
from torch import Tensor, nn

from .errors import InputTypeError, ParamCorruptError

__all__ = [
    "BatchLoss",
    "LossFn",
    "Metric",
    "MetricInfo",
    "accuracy",
    "as_batch_loss",
    "batch_size",
    "classification_loss",
    "describe_metric",
    "metric_info",
    "metric_info_by_name",
    "metric_infos",
    "sequence_loss",
    "token_accuracy",
]


class BatchLoss(NamedTuple):
    """What a loss function returns for one batch.

    Attributes:
        loss: the mean loss over the batch (a scalar tensor attached to the graph).
        weight: how many examples (or tokens) the mean is over.
        output: the model's output, handed to metrics (``None`` if not needed).
    """

    loss: Tensor
    weight: float
    output: Any = None


LossFn = Callable[[nn.Module, Any], "BatchLoss | Tensor | tuple[Tensor, float]"]
Metric = Callable[[Any, Any], "tuple[float | Tensor, float | Tensor]"]


_M = TypeVar("_M")


@dataclass(frozen=True)
class MetricInfo:
    """What a metric says about itself: its direction and display, the one place they live.

    Attributes:
        higher_is_better: its direction; ``None`` when unknown (a plain callable).
        display_name: what tables call it (``None``: its name where it is used).
        scale: the shown value is ``value * scale``; 100.0 for a fraction shown in percent.
        unit: the shown value's unit: "%", "BLEU", or "" (none).
        chance: the value guessing gets, in the metric's own units (a k-class accuracy:
            1 / k); ``None`` when unknown.

    Example:
        >>> info = MetricInfo(False, "Misses", unit="", chance=0.9)
        >>> MetricInfo.from_dict(info.to_dict()) == info
        True
    """

    higher_is_better: bool | None = None
    display_name: str | None = None
    scale: float = 1.0
    unit: str = ""
    chance: float | None = None

    @property
    def percent(self) -> bool:
        """Whether the metric is a fraction shown in percent."""
        return self.scale == 100.0

    def to_dict(self) -> dict[str, Any]:
        """The info as JSON values (a results header's ``"metrics"`` entry)."""
        return {
            "higher_is_better": self.higher_is_better,
            "display_name": self.display_name,
            "scale": self.scale,
            "unit": self.unit,
            "chance": self.chance,
        }

    @classmethod
    def from_dict(cls, value: Any) -> MetricInfo | None:
        """The info :meth:`to_dict` wrote; ``None`` for something else (a damaged header)."""
        if not isinstance(value, Mapping):
            return None
        higher, name = value.get("higher_is_better"), value.get("display_name")
        scale, unit, chance = value.get("scale", 1.0), value.get("unit", ""), value.get("chance")
        if not (
            (higher is None or isinstance(higher, bool))
            and (name is None or isinstance(name, str))
            and _finite(scale)
            and isinstance(unit, str)
            and (chance is None or _finite(chance))
        ):
            return None
        return cls(higher, name, float(scale), unit, None if chance is None else float(chance))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def describe_metric(
    metric: _M,
    *,
    higher_is_better: bool | None,
    display_name: str | None = None,
    scale: float = 1.0,
    unit: str | None = None,
) -> _M:
    """Give a metric its direction and display (attributes on the callable); returns it.
    ``unit`` defaults to "%" for ``scale=100`` and "" otherwise.

    Example:
        >>> def hits(output, batch):
        ...     return (output == batch[1]).sum(), len(batch[1])
        >>> metric_info(describe_metric(hits, higher_is_better=True, scale=100.0)).percent
        True
    """
    metric.higher_is_better = higher_is_better  # type: ignore[attr-defined]
    metric.display_name = display_name  # type: ignore[attr-defined]
    metric.scale = float(scale)  # type: ignore[attr-defined]
    metric.unit = ("%" if float(scale) == 100.0 else "") if unit is None else str(unit)  # type: ignore[attr-defined]
    return metric


def metric_info(metric: Any) -> MetricInfo:
    """Ask a metric for its direction and display (see :class:`MetricInfo`).

    A plain callable without the attributes has an unknown direction (``None``) and scale 1;
    without a ``unit`` its unit is "%" for scale 100, else "".

    Example:
        >>> metric_info(accuracy)
        MetricInfo(higher_is_better=True, display_name='Accuracy', scale=100.0, unit='%', chance=None)
        >>> metric_info(lambda output, batch: (0, 1)).higher_is_better is None
        True
    """
    higher = getattr(metric, "higher_is_better", None)
    scale = float(getattr(metric, "scale", 1.0))
    unit = getattr(metric, "unit", None)
    return MetricInfo(
        None if higher is None else bool(higher),
        getattr(metric, "display_name", None),
        scale,
        ("%" if scale == 100.0 else "") if unit is None else str(unit),
    )


#: the loss every evaluation measures (lower is better)
LOSS_INFO = MetricInfo(False, "Loss", 1.0, "")


def metric_infos(
    metrics: Mapping[str, Any], primary: str | None = None, chance: float | None = None
) -> dict[str, MetricInfo]:
    """name -> :class:`MetricInfo` of a task's metrics and of ``"loss"``, the ``primary``
    metric's carrying its ``chance`` level: what a results header records of its metrics.

    Example:
        >>> infos = metric_infos({"accuracy": accuracy}, "accuracy", 0.1)
        >>> infos["accuracy"].chance, infos["loss"].higher_is_better
        (0.1, False)
    """
    out = {"loss": LOSS_INFO}
    out.update({str(name): metric_info(metric) for name, metric in metrics.items()})
    if primary is not None and chance is not None:
        out[str(primary)] = replace(out.get(str(primary), MetricInfo()), chance=float(chance))
    return out


#: name tokens of fractions shown in percent, and of lower-is-better metrics (results files)
_PERCENT_NAMES = ("accuracy", "acc", "top1", "top5", "uas", "las", "f1", "precision", "recall")
_LOWER_BETTER = ("loss", "ppl", "perplexity", "error", "err", "nll", "mse", "mae", "rmse")


def metric_info_by_name(name: str | None, values: Iterable[float | None] = ()) -> MetricInfo:
    """The direction and display of a metric known only by its name and values.

    The reader's fallback for a results file written before its header recorded each
    metric's :class:`MetricInfo` (``"metrics"``): such a file stores the name (``"metric"``)
    and the values but no metric object. Everywhere else ask the metric (:func:`metric_info`)
    or the header (:meth:`MetricInfo.from_dict`). Percent for accuracy-like names (accuracy, acc, top1, top5, uas,
    las, f1, precision, recall) whose finite values all lie in [0, 1]; lower is better for
    loss-like names (loss, ppl, perplexity, error, err, nll, mse, mae, rmse); higher
    otherwise. Every built-in metric's own :class:`MetricInfo` agrees (direction and scale).

    Example:
        >>> metric_info_by_name("accuracy", [0.5, 0.99]).scale
        100.0
        >>> metric_info_by_name("log_ppl", [4.2]).higher_is_better
        False
    """
    low = str(name).lower() if name else "metric"
    tokens = re.split(r"[^a-z0-9]+", low)
    vals = [v for v in values if v is not None and math.isfinite(v)]
    percent = ("accuracy" in low or any(tok in _PERCENT_NAMES for tok in tokens)) and all(
        0.0 <= v <= 1.0 for v in vals
    )
    lower_better = any(tok in _LOWER_BETTER for tok in tokens) or "perplexity" in low
    return MetricInfo(not lower_better, None, 100.0 if percent else 1.0, "%" if percent else "")


def batch_size(batch: Any) -> int:
    """The number of examples in a batch: ``len`` of its first tensor."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        return batch_size(next(iter(batch.values())))
    if isinstance(batch, (tuple, list)) and batch:
        return batch_size(batch[0])
    raise InputTypeError(f"cannot infer the size of a batch of type {type(batch).__name__}; return a BatchLoss with its weight")


def as_batch_loss(result: Any, batch: Any) -> BatchLoss:
    """Normalise what a loss function returned to a :class:`BatchLoss`, checking it."""
    if isinstance(result, BatchLoss):
        out = result
    elif isinstance(result, Tensor):
        out = BatchLoss(result, batch_size(batch))
    elif isinstance(result, tuple) and len(result) in (2, 3):
        out = BatchLoss(*result)
    else:
        raise InputTypeError(
            f"a loss function must return a BatchLoss, a scalar tensor or (loss, weight); got {type(result).__name__}"
        )
    if not isinstance(out.loss, Tensor) or out.loss.dim() != 0:
        raise InputTypeError(f"the batch loss must be a scalar tensor, got {out.loss!r:.80}")
    weight = float(out.weight)
    if not math.isfinite(weight) or weight <= 0:
        raise ParamCorruptError(f"a batch's weight must be a finite number > 0, got {out.weight!r}")
    return BatchLoss(out.loss, weight, out.output)


def _logits(output: Any) -> Tensor:
    # models such as LSTMs return (logits, hidden); dict outputs carry "logits"
    if isinstance(output, Mapping):
        return output["logits"]
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


def classification_loss(model: nn.Module, batch: Any) -> BatchLoss:
    """Cross-entropy on an ``(inputs, labels)`` batch; the weight is the number of examples.

    Example:
        >>> model = nn.Linear(2, 3)
        >>> _ = nn.init.zeros_(model.bias)
        >>> out = classification_loss(model, (torch.zeros(4, 2), torch.tensor([0, 1, 2, 0])))
        >>> round(out.loss.item(), 4), out.weight
        (1.0986, 4.0)
    """
    inputs, target = batch[0], batch[1]
    output = model(inputs)
    loss = F.cross_entropy(_logits(output), target)
    return BatchLoss(loss, float(target.shape[0]), output)


def sequence_loss(ignore_index: int = -100) -> Callable[[nn.Module, Any], BatchLoss]:
    """Token-level cross-entropy for language models and seq2seq; the weight is the tokens.

    The batch is ``(inputs, targets)`` for a language model (``model(inputs)`` returns logits
    ``[..., V]`` or ``(logits, state)``) or a mapping with ``"target"`` and the model's keyword
    inputs for a seq2seq model (``model(**others)``). Targets equal to ``ignore_index``
    (padding) are not counted.
    """

    def loss_fn(model: nn.Module, batch: Any) -> BatchLoss:
        if isinstance(batch, Mapping):
            target = batch["target"]
            output = model(**{k: v for k, v in batch.items() if k != "target"})
        else:
            target = batch[1]
            output = model(batch[0])
        logits = _logits(output)
        flat_logits = logits.reshape(-1, logits.shape[-1])
        flat_target = target.reshape(-1)
        tokens = int((flat_target != ignore_index).sum())
        loss = F.cross_entropy(flat_logits, flat_target, ignore_index=ignore_index)
        return BatchLoss(loss, float(max(tokens, 1)), output)

    return loss_fn


def accuracy(output: Any, batch: Any) -> tuple[Tensor, int]:
    """Top-1 accuracy of logits against the batch's labels (``batch[1]``); shown in percent."""
    target = batch["target"] if isinstance(batch, Mapping) else batch[1]
    predicted = _logits(output).argmax(dim=-1)
    return (predicted == target).sum(), target.numel()


describe_metric(accuracy, higher_is_better=True, display_name="Accuracy", scale=100.0)


def token_accuracy(ignore_index: int = -100) -> Metric:
    """Accuracy over non-padding tokens; shown in percent."""

    def metric(output: Any, batch: Any) -> tuple[Tensor, Tensor]:
        target = batch["target"] if isinstance(batch, Mapping) else batch[1]
        keep = target != ignore_index
        predicted = _logits(output).argmax(dim=-1)
        return ((predicted == target) & keep).sum(), keep.sum()

    return describe_metric(metric, higher_is_better=True, display_name="Token accuracy", scale=100.0)

