"""Small context managers that put a model's state back exactly as it was."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.modules.module import register_module_forward_pre_hook

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

    Inside the block the model may run forward passes in any mode (and switch modes); on exit
    (normal, exception or KeyboardInterrupt) ``running_mean``, ``running_var`` and
    ``num_batches_tracked`` are as they were on entry, bit for bit. Use it for any pass whose
    statistics must not count — a corrupted model's, or the perturbed pass of
    corruption-resistant training.

    The statistics are saved lazily: a forward pre-hook (global, for the block's duration)
    saves a norm layer's buffers the first time the layer runs in training mode — the only
    forward that changes them — and a DistributedDataParallel wrapper's forward (which
    broadcasts buffers before any layer runs) saves every layer's first. A block whose
    passes all run in evaluation mode copies nothing and walks no module tree. Not covered:
    statistics written other than by a module's forward (by hand, ``reset_running_stats``,
    a direct ``.forward()`` call).

    Example:
        >>> bn = nn.BatchNorm1d(2)
        >>> with frozen_norm_stats(bn):
        ...     _ = bn(torch.randn(8, 2))
        >>> bn.running_mean
        tensor([0., 0.])
    """
    guard = _NormGuard(model)
    handle = register_module_forward_pre_hook(guard.before_forward)
    try:
        yield model
    finally:
        handle.remove()
        guard.restore()


class _NormGuard:
    """What :func:`frozen_norm_stats` saved: a norm layer's buffers before their first change."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.norms: set[nn.Module] | None = None  # the model's norm layers, found on first need
        self.buffers: list[Tensor] = []
        self.saved: list[Tensor] = []
        self.done: set[nn.Module] = set()

    def before_forward(self, module: nn.Module, args: object) -> None:
        if isinstance(module, _STAT_MODULES):
            if module.training and module not in self.done and module in self._norms():
                self._save(module)
        elif type(module).__name__ == "DistributedDataParallel" and module not in self.done:
            self.done.add(module)  # its forward may broadcast rank 0's buffers into ours
            for norm in self._norms():
                self._save(norm)

    def _norms(self) -> set[nn.Module]:
        if self.norms is None:
            self.norms = {m for m in self.model.modules() if isinstance(m, _STAT_MODULES)}
        return self.norms

    def _save(self, module: nn.Module) -> None:
        if module in self.done:
            return
        self.done.add(module)
        for buffer in module._buffers.values():  # the module's own buffers, without a generator
            if buffer is not None:
                self.buffers.append(buffer)
                self.saved.append(buffer.detach().clone())

    def restore(self) -> None:
        if self.buffers:
            with torch.no_grad():
                torch._foreach_copy_(self.buffers, self.saved)  # one call for every buffer
