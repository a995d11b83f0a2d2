"""The exact gradient of the mean loss over a whole data set (Algorithm 2, step 1).

    g = dL(w; D)/dw,  L(w; D) = sum_b W_b L_b(w) / sum_b W_b

with L_b the mean loss of batch b and W_b its weight (examples or tokens), so that the result
equals the full-batch gradient whatever the batch sizes. This is the one reduction point of
the library: a distributed run sums ``W_b * dL_b`` and ``W_b`` across processes here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ._progress import progress_bar
from ._state import frozen_norm_stats, mode
from .errors import ParamCorruptError
from .evaluate import nonfinite_tensors
from .formats.torchao import refuse_torchao
from .groups import ParameterGroup, as_group
from .losses import LossFn, as_batch_loss
from .parallel.comm import all_reduce_sums, use_distributed

__all__ = ["dataset_gradient"]


def dataset_gradient(
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: LossFn,
    group: ParameterGroup | str | Iterable[str] | None = None,
    *,
    train_mode: bool = False,
    accumulate_dtype: torch.dtype | None = torch.float64,
    return_loss: bool = False,
    progress: bool = False,
    distributed: bool | None = None,
) -> dict[str, Tensor] | tuple[dict[str, Tensor], float]:
    """The gradient of the mean loss over a whole loader (Algorithm 2, step 1).

    Each batch's mean-loss gradient is weighted by the batch's weight (from ``loss_fn``), so
    an uneven last batch counts exactly. The model is run in evaluation mode by default
    (dropout off, batch-norm running statistics used — the deployed model's loss); its modes,
    its running statistics and every parameter's ``.grad`` are left as they were.

    Args:
        model: the network.
        loader: any iterable of batches (a DataLoader, a list, ...).
        loss_fn: ``loss_fn(model, batch)`` -> :class:`~paramcorrupt.BatchLoss` (see
            :mod:`paramcorrupt.losses`).
        group: the parameters to differentiate (default: every trainable one).
        train_mode: run the model in training mode instead (running statistics are still
            left unchanged).
        accumulate_dtype: dtype of the running sum (float64 by default, so that summing many
            batches loses nothing); ``None`` keeps each parameter's dtype.
        return_loss: also return the data set's mean loss.
        progress: show a progress bar.
        distributed: all-reduce the float64 sums and the weights over the processes of
            ``torch.distributed`` (each summing its own shard of the data, see
            :func:`paramcorrupt.parallel.shard`); ``None``: when a process group is
            initialised. Every rank then returns the same gradient.

    Returns:
        name -> gradient (in each parameter's dtype), and the mean loss if asked for.

    Raises:
        ValueError: for an empty loader, or a NaN/Inf loss or gradient.

    Example:
        >>> from paramcorrupt.losses import classification_loss
        >>> model = nn.Linear(2, 2)
        >>> data = [(torch.randn(3, 2), torch.tensor([0, 1, 1])), (torch.randn(1, 2), torch.tensor([0]))]
        >>> sorted(dataset_gradient(model, data, classification_loss))
        ['bias', 'weight']
    """
    group = as_group(model, group)
    params = group.tensors(model)
    refuse_torchao(params, "the data set gradient")  # torchao's tensors have no gradient here: one clear line
    names = list(params)
    tensors = [params[n] for n in names]
    sums: list[Tensor] | None = None
    total_weight = 0.0
    loss_sum = torch.zeros((), dtype=torch.float64)
    grad_enabled = [t.requires_grad for t in tensors]
    try:
        for t in tensors:
            t.requires_grad_(True)
        with mode(model, train_mode), frozen_norm_stats(model), torch.enable_grad():
            for batch in progress_bar(loader, enabled=progress, desc="gradient"):
                result = as_batch_loss(loss_fn(model, batch), batch)
                if not torch.isfinite(result.loss):
                    raise ParamCorruptError(_nonfinite_loss(model, float(result.loss.detach())))
                grads = torch.autograd.grad(result.loss, tensors, allow_unused=True)
                weight = result.weight
                grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, tensors)]
                if sums is None:
                    dtype_of = [accumulate_dtype or t.dtype for t in tensors]
                    sums = [torch.zeros_like(t, dtype=d) for t, d in zip(tensors, dtype_of)]
                for s, g in zip(sums, grads):
                    s.add_(g.to(s.dtype), alpha=weight)
                loss_sum += result.loss.detach().double() * weight
                total_weight += weight
    finally:
        for t, flag in zip(tensors, grad_enabled):
            t.requires_grad_(flag)
    if use_distributed(distributed):  # sum the shards: an empty one adds zeros
        if sums is None:
            sums = [torch.zeros_like(t, dtype=accumulate_dtype or t.dtype) for t in tensors]
        sums, (total_weight, loss_total) = all_reduce_sums(sums, [total_weight, float(loss_sum)])
        loss_sum = torch.tensor(loss_total, dtype=torch.float64)
    if sums is None or total_weight == 0:
        raise ParamCorruptError("the loader yielded no batch: cannot compute a data set gradient")
    gradient = {}
    for name, s, t in zip(names, sums, tensors):
        g = (s / total_weight).to(t.dtype)
        if not torch.isfinite(g).all():
            raise ParamCorruptError(f"the gradient of {name!r} contains NaN or Inf")
        gradient[name] = g
    if return_loss:
        return gradient, float(loss_sum / total_weight)
    return gradient


def _nonfinite_loss(model: nn.Module, loss: float) -> str:
    """Why a data set gradient cannot be taken: the loss, and the tensors holding NaN/Inf."""
    where = nonfinite_tensors(model)
    cause = (f": the model's {'; '.join(where[:3])}{'; ...' if len(where) > 3 else ''}" if where
             else " (every parameter and buffer is finite: the loss itself overflows or divides by zero)")
    return f"the loss of a batch is {loss}; cannot take its gradient{cause}"
