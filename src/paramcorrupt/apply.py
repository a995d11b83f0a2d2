"""Apply a corruption in place and restore the parameters bit-exactly."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ._state import frozen_norm_stats
from .corruption import Corruption

__all__ = ["corrupted", "frozen_norm_stats"]


def _as_corruption(corruption: Corruption | Mapping[str, Tensor]) -> Corruption:
    if isinstance(corruption, Corruption):
        return corruption
    if isinstance(corruption, Mapping):
        return Corruption.from_deltas(corruption)
    raise TypeError(f"expected a Corruption or a mapping name -> delta tensor, got {type(corruption).__name__}")


def _validate(model: nn.Module, corruption: Corruption) -> list[tuple[nn.Parameter, Tensor | None, Tensor]]:
    lookup = dict(model.named_parameters(remove_duplicate=False))
    plan = []
    seen: dict[int, str] = {}
    for name, value in corruption.values.items():
        if name not in lookup:
            raise ValueError(f"the model has no parameter named {name!r}")
        param = lookup[name]
        if id(param) in seen:
            raise ValueError(f"{name!r} and {seen[id(param)]!r} are the same (tied) parameter; corrupt it once")
        seen[id(param)] = name
        if not param.is_floating_point():
            raise TypeError(f"parameter {name!r} has dtype {param.dtype}; only floating-point parameters can be corrupted")
        idx = corruption.indices.get(name)
        if idx is None:
            if value.shape != param.shape:
                raise ValueError(f"the delta for {name!r} has shape {tuple(value.shape)}, the parameter {tuple(param.shape)}")
        else:
            if idx.dim() != 1 or value.shape != idx.shape:
                raise ValueError(f"the sparse delta for {name!r} needs 1-D indices and values of one length")
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= param.numel()):
                raise ValueError(f"an index of the sparse delta for {name!r} is outside [0, {param.numel()})")
        if not torch.isfinite(value).all():
            raise ValueError(f"the delta for {name!r} contains NaN or Inf")
        plan.append((param, idx, value))
    return plan


@contextmanager
def corrupted(model: nn.Module, corruption: Corruption | Mapping[str, Tensor]) -> Iterator[nn.Module]:
    """Evaluate ``model`` at w + a: change the parameters in place, restore them on exit.

    No copy of the model is made: a dense entry saves a copy of its parameter, a sparse entry
    only the n values it overwrites. On exit — normal, by exception or by KeyboardInterrupt —
    every coordinate the corruption changed is restored bit-exactly (``torch.equal`` on every
    parameter, as long as the code inside the block does not write to the parameters itself),
    and the running statistics of batch-norm layers are as they were, whatever mode the model
    ran in meanwhile.

    Everything is validated before the first parameter changes.

    Args:
        model: the network.
        corruption: a :class:`Corruption`, or a mapping name -> dense delta tensor.

    Raises:
        ValueError: for an unknown parameter name, a shape mismatch, an index out of range,
            NaN/Inf in the delta, or a tied parameter named twice.
        TypeError: for a non-floating parameter or a delta that is not a tensor.

    Example:
        >>> model = nn.Linear(2, 1)
        >>> before = model.weight.clone()
        >>> with corrupted(model, {"weight": torch.ones(1, 2)}):
        ...     torch.equal(model.weight, before + 1)
        True
        >>> torch.equal(model.weight, before)
        True
    """
    corruption = _as_corruption(corruption)
    plan = _validate(model, corruption)
    saved: list[tuple[nn.Parameter, Tensor | None, Tensor]] = []
    with frozen_norm_stats(model):
        try:
            with torch.no_grad():
                for param, idx, value in plan:
                    flat = param.view(-1) if param.is_contiguous() else None
                    if idx is None:
                        saved.append((param, None, param.detach().clone()))
                        param.add_(value.to(param.dtype))
                    elif flat is not None:
                        saved.append((param, idx, flat[idx].clone()))
                        flat.index_add_(0, idx, value.to(param.dtype))
                    else:
                        saved.append((param, None, param.detach().clone()))
                        delta = torch.zeros_like(param).reshape(-1)
                        delta[idx] = value.to(param.dtype)
                        param.add_(delta.view_as(param))
            yield model
        finally:
            with torch.no_grad():
                for param, idx, original in reversed(saved):
                    if idx is None:
                        param.copy_(original)
                    else:
                        param.view(-1).index_copy_(0, idx, original)
