"""Data-parallel training: :func:`ddp` (DistributedDataParallel whose gradient sync sums),
:func:`no_sync`, :func:`grad_divisor`, :func:`unwrap`, :func:`broadcast_module`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .comm import collective, comm_device, get_world_size, is_distributed


def broadcast_module(model: nn.Module, src: int = 0) -> nn.Module:
    """Copy rank ``src``'s parameters and buffers into ``model`` on every rank (in place).

    For models built independently on each rank (trained from a seed, say), whose weights
    could differ in the last bit with the thread count: afterwards every rank probes the
    very same weights. Nothing happens when not distributed.
    """
    if not is_distributed():
        return model
    with torch.no_grad(), collective("broadcast of the model's weights"):
        for tensor in [*model.parameters(), *model.buffers()]:
            if comm_device().type == "cpu" and tensor.device.type != "cpu":
                buffer = tensor.detach().cpu()
                dist.broadcast(buffer, src=src)
                tensor.copy_(buffer)
            else:
                dist.broadcast(tensor.data, src=src)
    return model


def _sum_hook(state, bucket):  # no annotations: DDP checks them (none, or its own types)
    """DDP communication hook: all-reduce the bucket as a SUM (DDP's default divides by N)."""
    work = dist.all_reduce(bucket.buffer(), op=dist.ReduceOp.SUM, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def ddp(model: nn.Module, **kwargs: Any) -> nn.Module:
    """Wrap ``model`` in DistributedDataParallel whose gradient sync *sums* over the ranks.

    Each rank back-propagates ``W_r * L_r`` (its share of the global batch's weight times its
    mean loss); the summed gradient divided by the global weight ``sum_r W_r`` is then exactly
    the single-process gradient of the global batch, whatever the split — this is what
    ``paramcorrupt.train.training_closure`` does under torch.distributed. One all-reduce per
    backward pass (DDP's buckets, overlapped with the backward), none twice: the closure
    uses ``no_sync`` for every micro-batch but the last. Returns ``model`` itself when not
    distributed. ``kwargs`` go to DistributedDataParallel (``device_ids`` is set to
    ``LOCAL_RANK`` on CUDA).
    """
    if not is_distributed() or isinstance(model, DistributedDataParallel):
        return model
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type == "cuda":
        kwargs.setdefault("device_ids", [device.index])
    wrapped = DistributedDataParallel(model, **kwargs)
    wrapped.register_comm_hook(None, _sum_hook)
    wrapped._paramcorrupt_sums = True  # type: ignore[attr-defined]  # read by grad_divisor
    return wrapped


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (``model`` itself otherwise)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def grad_divisor(model: nn.Module, global_weight: float) -> float:
    """What to divide synchronised gradients of ``sum_b W_b L_b`` by to get the global mean.

    ``global_weight`` for a :func:`ddp` model (it sums), ``global_weight / N`` for a plain
    DistributedDataParallel (it averages), ``global_weight`` otherwise.
    """
    if isinstance(model, DistributedDataParallel) and not getattr(
        model, "_paramcorrupt_sums", False
    ):
        return global_weight / get_world_size()
    return global_weight


def no_sync(model: nn.Module, sync: bool) -> AbstractContextManager[Any]:
    """``model.no_sync()`` when ``sync`` is False and ``model`` is DistributedDataParallel.

    For gradient accumulation: wrap every micro-batch's backward but the last, so the
    accumulated gradient is synchronised once.
    """
    if not sync and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return nullcontext()
