"""Loss and metrics over a whole loader."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ._progress import progress_bar
from ._state import frozen_norm_stats, mode
from .errors import InputTypeError, ParamCorruptError
from .losses import LossFn, Metric, as_batch_loss
from .parallel.comm import all_gather_objects, all_reduce_scalars, use_distributed

__all__ = ["check_clean_loss", "evaluate", "nonfinite_tensors", "nonfinite_text"]


def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: LossFn,
    metrics: Mapping[str, Metric] | None = None,
    *,
    progress: bool = False,
    distributed: bool | None = None,
) -> dict[str, float]:
    """The weight-averaged loss and every metric of ``model`` over ``loader``.

    Runs in evaluation mode without gradients; the model's modes and running statistics are
    left as they were.

    Args:
        model: the network.
        loader: any iterable of batches.
        loss_fn: ``loss_fn(model, batch)`` -> :class:`~paramcorrupt.BatchLoss`; it must return
            the model output when metrics are asked for.
        metrics: name -> ``metric(output, batch)`` returning ``(total, count)``; the value is
            ``sum(total) / sum(count)``, or ``metric.finalize(sum(total) / sum(count))`` for a
            metric with a ``finalize`` attribute (a metric derived after aggregation, such as
            perplexity = exp of the mean log-likelihood; see
            :class:`paramcorrupt.tasks.ptb_lm.Perplexity`). ``total`` may also be a 1-D vector
            of sufficient statistics, summed element-wise over the batches (and the processes),
            for a metric that is not a mean: its value is ``metric.finalize(summed vector)``
            (corpus BLEU from n-gram counts: :class:`paramcorrupt.tasks.translation.BLEU`).
        progress: show a progress bar.
        distributed: all-reduce the sums and counts (float64) over the processes of
            ``torch.distributed``, each evaluating its own shard (see
            :func:`paramcorrupt.parallel.shard`); ``None``: when a process group is
            initialised. Every rank then returns the same numbers.

    Returns:
        ``{"loss": ..., name: ... for each metric}``.

    Example:
        >>> from paramcorrupt.losses import accuracy, classification_loss
        >>> model = nn.Linear(2, 2)
        >>> data = [(torch.randn(5, 2), torch.randint(0, 2, (5,)))]
        >>> sorted(evaluate(model, data, classification_loss, {"accuracy": accuracy}))
        ['accuracy', 'loss']
    """
    metrics = dict(metrics or {})
    if "loss" in metrics:
        raise ParamCorruptError("'loss' is always measured; give the metric another name")
    loss_sum = 0.0
    weight_sum = 0.0
    totals: dict[str, Any] = {name: None for name in metrics}  # a float, or a float64 vector
    counts = {name: 0.0 for name in metrics}
    with mode(model, False), frozen_norm_stats(model), torch.no_grad():
        for batch in progress_bar(loader, enabled=progress, desc="evaluate"):
            result = as_batch_loss(loss_fn(model, batch), batch)
            loss_sum += float(result.loss) * result.weight
            weight_sum += result.weight
            if metrics and result.output is None:
                raise ParamCorruptError("metrics need the model output: make loss_fn return BatchLoss(loss, weight, output)")
            for name, metric in metrics.items():
                total, count = metric(result.output, batch)
                totals[name] = _accumulate(name, totals[name], total)
                counts[name] += float(count)
    vectors = {name for name, total in totals.items() if isinstance(total, torch.Tensor)}
    for name in vectors:
        if getattr(metrics[name], "finalize", None) is None:
            raise InputTypeError(f"metric {name!r} returns a vector of statistics: give it a finalize(stats) method")
    if use_distributed(distributed):  # sum the shards: an empty one adds zeros
        names = list(metrics)
        scalars = [0.0 if n in vectors or totals[n] is None else totals[n] for n in names]
        reduced = all_reduce_scalars([loss_sum, weight_sum, *scalars, *(counts[n] for n in names)])
        loss_sum, weight_sum = reduced[0], reduced[1]
        counts = dict(zip(names, reduced[2 + len(names) :]))
        # vectors (e.g. BLEU's n-gram counts): gathered, since an empty shard has none
        shards = all_gather_objects({n: totals[n].tolist() for n in vectors})
        vectors |= {n for shard in shards for n in shard}
        for n, value in zip(names, reduced[2 : 2 + len(names)]):
            if n in vectors:
                parts = [torch.tensor(shard[n], dtype=torch.float64) for shard in shards if n in shard]
                totals[n] = torch.stack(parts).sum(0)
            else:
                totals[n] = value
    if weight_sum == 0:
        raise ParamCorruptError("the loader yielded no batch: nothing to evaluate")
    out = {"loss": loss_sum / weight_sum}
    for name, metric in metrics.items():
        finalize = getattr(metric, "finalize", None)  # a derived metric, e.g. perplexity = exp
        if name in vectors:  # finalize(summed statistics), e.g. corpus BLEU
            out[name] = float(finalize(totals[name].tolist()))
            continue
        total = totals[name] or 0.0
        out[name] = total / counts[name] if counts[name] else float("nan")
        if finalize is not None:
            out[name] = float(finalize(out[name]))
    return out


def _accumulate(name: str, running: Any, total: Any) -> Any:
    """Add one batch's ``total`` (a number, or a 1-D vector of statistics) to the running sum."""
    if isinstance(total, torch.Tensor) and total.dim() == 0:
        total = float(total)
    if isinstance(total, (int, float)):
        if isinstance(running, torch.Tensor):
            raise InputTypeError(f"metric {name!r} returned a number after returning vectors")
        return (running or 0.0) + float(total)
    vector = torch.as_tensor(total, dtype=torch.float64).detach().cpu()
    if vector.dim() != 1:
        raise InputTypeError(f"metric {name!r} must return a number or a 1-D vector as its total, got shape {tuple(vector.shape)}")
    if running is None:
        return vector.clone()
    if not isinstance(running, torch.Tensor) or running.shape != vector.shape:
        raise InputTypeError(f"metric {name!r} returned totals of different shapes across batches")
    return running + vector


def nonfinite_tensors(model: nn.Module, *, buffers: bool = True) -> list[str]:
    """Each parameter (and buffer) of ``model`` holding NaN or Inf, described: Inf called Inf,
    NaN called NaN, with their counts. Tensors without values (the meta device) and integer
    tensors are skipped.

    >>> model = nn.Linear(2, 2)
    >>> with torch.no_grad():
    ...     model.weight[0, 0] = float("inf")
    >>> nonfinite_tensors(model)
    ["parameter 'weight' holds 1 Inf (of 4 values)"]
    """
    tensors = [("parameter", n, t) for n, t in model.named_parameters()]
    if buffers:
        tensors += [("buffer", n, t) for n, t in model.named_buffers()]
    out = []
    for what, name, tensor in tensors:
        if tensor.is_meta or not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        data = tensor.detach()
        if bool(torch.isfinite(data).all()):
            continue
        nan, inf = int(torch.isnan(data).sum()), int(torch.isinf(data).sum())
        held = " and ".join(f"{count} {kind}" for count, kind in ((nan, "NaN"), (inf, "Inf")) if count)
        out.append(f"{what} {name!r} holds {held} (of {data.numel()} values)")
    return out


def nonfinite_text(value: float) -> str:
    """A non-finite number as a person says it: NaN, Inf or -Inf."""
    return "NaN" if value != value else ("Inf" if value > 0 else "-Inf")


def check_clean_loss(clean: Mapping[str, float], model: nn.Module, *, allow_nonfinite: bool = False) -> None:
    """Refuse a model whose clean loss (``clean["loss"]``, from :func:`evaluate`) is NaN or Inf
    before any corruption is measured against it, naming the tensors holding NaN/Inf.

    Raises:
        ParamCorruptError: unless ``allow_nonfinite``.
    """
    loss = clean["loss"]
    if allow_nonfinite or math.isfinite(loss):
        return
    where = nonfinite_tensors(model)
    cause = f" ({'; '.join(where[:3])}{'; ...' if len(where) > 3 else ''})" if where else ""
    raise ParamCorruptError(
        f"the clean model's loss is {nonfinite_text(loss)}{cause}: every row would compare against a "
        f"{nonfinite_text(loss)} loss; fix the model or its weights, or probe it anyway with "
        "allow_nonfinite=True (paramcorrupt probe --allow-nonfinite)"
    )
