"""Random corruption (Definition 3, Algorithm 1) and random values written (as pytorchfi)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from ..constraint import Constraint
from ..errors import InputTypeError, ParamCorruptError
from ..groups import ParameterGroup, as_group
from .base import Corruption, _build, split_flat


def random_corruption(
    model: nn.Module,
    constraint: Constraint,
    group: ParameterGroup | str | Iterable[str] | None = None,
    *,
    generator: torch.Generator,
) -> Corruption:
    """Random corruption (Definition 3, Algorithm 1): Proposition 1 applied to r ~ N(0, I_k).

    With p = 2 and n = None this is the uniform distribution on the sphere of radius eps
    (Theorem 1's premise).

    Args:
        model: the network (only shapes, dtypes and devices are read).
        constraint: the set S.
        group: the parameters to corrupt (default: every trainable one).
        generator: the source of randomness; required, so runs are reproducible.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> a = random_corruption(nn.Linear(3, 2), Constraint(p=2, eps=0.1), generator=g)
        >>> round(a.norm(), 6)
        0.1
    """
    if not isinstance(generator, torch.Generator):
        raise InputTypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    group = as_group(model, group)
    params = group.tensors(model)
    draws = [
        torch.randn(p.shape, generator=generator, dtype=p.dtype, device=generator.device).to(p.device)
        for p in params.values()
    ]
    return _build(group, params, draws, constraint, "random")


def random_values(
    model: nn.Module,
    count: int,
    group: ParameterGroup | str | Iterable[str] | None = None,
    *,
    low: float = -1.0,
    high: float = 1.0,
    generator: torch.Generator,
) -> Corruption:
    """Set ``count`` coordinates of the group, drawn uniformly without replacement, to values
    drawn uniformly from [low, high) (pytorchfi's random weight injection, with a count).

    The values are written exactly (``mode="set"``), not added as a delta.

    Raises:
        ValueError: for count < 1, count larger than the group, or low >= high.

    Example:
        >>> fault = random_values(nn.Linear(3, 2), 2, generator=torch.Generator().manual_seed(0))
        >>> fault.mode, fault.nnz()
        ('set', 2)
    """
    if not isinstance(generator, torch.Generator):
        raise InputTypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if not (isinstance(low, (int, float)) and isinstance(high, (int, float)) and math.isfinite(low) and math.isfinite(high) and low < high):
        raise ParamCorruptError(f"low and high must be finite numbers with low < high, got low={low!r}, high={high!r}")
    group = as_group(model, group)
    params = group.tensors(model)
    sizes = [p.numel() for p in params.values()]
    k = sum(sizes)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= k:
        raise ParamCorruptError(f"count must be an integer in [1, {k}] (the group's size), got count={count!r}")
    flat = torch.randperm(k, generator=generator)[:count].sort().values
    draws = torch.rand(count, generator=generator, dtype=torch.float64) * (high - low) + low
    indices, values = {}, {}
    names = list(params)
    for t, part, local in split_flat(flat, sizes):
        param = params[names[t]]
        indices[names[t]] = local.to(param.device)
        values[names[t]] = draws[part].to(param.dtype).to(param.device)
    return Corruption.from_values(
        values, indices, method="random-values", group=group, low=low, high=high,
        distinct_indices_of={name: params[name].numel() for name in indices},
    )
