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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BatchLoss",
    "LossFn",
    "Metric",
    "accuracy",
    "as_batch_loss",
    "batch_size",
    "classification_loss",
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


def batch_size(batch: Any) -> int:
    """The number of examples in a batch: ``len`` of its first tensor."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        return batch_size(next(iter(batch.values())))
    if isinstance(batch, (tuple, list)) and batch:
        return batch_size(batch[0])
    raise TypeError(f"cannot infer the size of a batch of type {type(batch).__name__}; return a BatchLoss with its weight")


def as_batch_loss(result: Any, batch: Any) -> BatchLoss:
    """Normalise what a loss function returned to a :class:`BatchLoss`, checking it."""
    if isinstance(result, BatchLoss):
        out = result
    elif isinstance(result, Tensor):
        out = BatchLoss(result, batch_size(batch))
    elif isinstance(result, tuple) and len(result) in (2, 3):
        out = BatchLoss(*result)
    else:
        raise TypeError(
            f"a loss function must return a BatchLoss, a scalar tensor or (loss, weight); got {type(result).__name__}"
        )
    if not isinstance(out.loss, Tensor) or out.loss.dim() != 0:
        raise TypeError(f"the batch loss must be a scalar tensor, got {out.loss!r:.80}")
    weight = float(out.weight)
    if not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"a batch's weight must be a finite number > 0, got {out.weight!r}")
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
    """Top-1 accuracy of logits against the batch's labels (``batch[1]``)."""
    target = batch["target"] if isinstance(batch, Mapping) else batch[1]
    predicted = _logits(output).argmax(dim=-1)
    return (predicted == target).sum(), target.numel()


def token_accuracy(ignore_index: int = -100) -> Metric:
    """Accuracy over non-padding tokens."""

    def metric(output: Any, batch: Any) -> tuple[Tensor, Tensor]:
        target = batch["target"] if isinstance(batch, Mapping) else batch[1]
        keep = target != ignore_index
        predicted = _logits(output).argmax(dim=-1)
        return ((predicted == target) & keep).sum(), keep.sum()

    return metric

