"""Small context managers that put a model's state back exactly as it was."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["frozen_norm_stats", "mode"]

_STAT_MODULES: tuple[type, ...] = (nn.modules.batchnorm._NormBase,)


@contextmanager
def mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Put ``model`` in training or evaluation mode, and restore every module's own flag."""
    flags = {m: m.training for m in model.modules()}
    model.train(training)
    try:
        yield model
    finally:
        for m, flag in flags.items():
            m.training = flag


@contextmanager
def frozen_norm_stats(model: nn.Module) -> Iterator[nn.Module]:
    """Keep the running statistics of every batch/instance-norm layer unchanged.

    Inside the block the model may run forward passes in any mode; on exit (normal, exception
    or KeyboardInterrupt) ``running_mean``, ``running_var`` and ``num_batches_tracked`` are
    restored bit-exactly. Use it for any pass whose statistics must not count — a corrupted
    model's, or the perturbed pass of corruption-resistant training.

    Example:
        >>> bn = nn.BatchNorm1d(2)
        >>> with frozen_norm_stats(bn):
        ...     _ = bn(torch.randn(8, 2))
        >>> bn.running_mean
        tensor([0., 0.])
    """
    buffers = [
        buffer
        for module in model.modules()
        if isinstance(module, _STAT_MODULES)
        for buffer in module._buffers.values()  # the module's own buffers, without a generator per module
        if buffer is not None
    ]
    saved = [buffer.detach().clone() for buffer in buffers]
    try:
        yield model
    finally:
        if buffers:
            with torch.no_grad():
                torch._foreach_copy_(buffers, saved)  # one call for every buffer
