"""Apply a corruption in place and restore the parameters bit-exactly."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .._state import frozen_norm_stats
from ..errors import InputTypeError, ParamCorruptError
from ..formats.torchao import is_torchao_tensor, stored_writes
from ..groups import find_parameter
from .base import Corruption

__all__ = ["corrupted", "frozen_norm_stats", "restore_in_place", "write_in_place"]

#: what :func:`write_in_place` saves per tensor: (parameter, flat indices or None, originals)
Saved = tuple[Tensor, "Tensor | None", Tensor]


def _as_corruption(corruption: Corruption | Mapping[str, Tensor]) -> Corruption:
    if isinstance(corruption, Corruption):
        return corruption
    if isinstance(corruption, Mapping):
        return Corruption.from_deltas(corruption)
    raise InputTypeError(
        f"expected a Corruption or a mapping name -> delta tensor, got {type(corruption).__name__}"
    )


def _validate(
    model: nn.Module, corruption: Corruption
) -> list[tuple[nn.Parameter, Tensor | None, Tensor]]:
    plan = []
    seen: dict[int, str] = {}
    what = "values" if corruption.mode == "set" else "delta"
    for name, value in corruption.values.items():
        param = find_parameter(model, name)
        if param is None:
            raise ParamCorruptError(f"the model has no parameter named {name!r}")
        if id(param) in seen:
            raise ParamCorruptError(
                f"{name!r} and {seen[id(param)]!r} are the same (tied) parameter; corrupt it once"
            )
        seen[id(param)] = name
        plain = type(param) is nn.Parameter or type(param) is Tensor  # no walk of its classes
        # a torchao weight: its stored fields, written as integers (formats/torchao.py)
        if not plain and is_torchao_tensor(param):
            plan.extend(
                stored_writes(
                    name,
                    param,
                    corruption.indices.get(name),
                    value,
                    mode=corruption.mode,
                    method=corruption.method,
                    layout=corruption.info.get("stored_fields", {}).get(name),
                )
            )
            continue
        if not param.is_floating_point():
            raise InputTypeError(
                f"parameter {name!r} has dtype {param.dtype}; only floating-point parameters can be corrupted"
            )
        if not isinstance(value, Tensor):
            raise InputTypeError(
                f"the {what} for {name!r} is a {type(value).__name__}, expected a Tensor"
            )
        idx = corruption.indices.get(name)
        if idx is None:
            if value.shape != param.shape:
                raise ParamCorruptError(
                    f"the {what} for {name!r} has shape {tuple(value.shape)}, the parameter {tuple(param.shape)}"
                )
        else:
            if idx.dim() != 1 or value.shape != idx.shape:
                raise ParamCorruptError(
                    f"the sparse {what} for {name!r} needs 1-D indices and values of one length"
                )
            # a builder that drew distinct indices inside a tensor of this size says so (the
            # faults of paramcorrupt.faults): the checks below would only repeat its own
            drawn = corruption.info.get("distinct_indices_of", {}).get(name) == param.numel()
            low, high = torch.aminmax(idx) if idx.numel() and not drawn else (0, 0)
            if idx.numel() and (int(low) < 0 or int(high) >= param.numel()):
                raise ParamCorruptError(
                    f"an index of the sparse {what} for {name!r} is outside [0, {param.numel()})"
                )
            if corruption.mode == "set" and not drawn and idx.unique().numel() != idx.numel():
                raise ParamCorruptError(
                    f"the values for {name!r} write one index twice; which value wins would be undefined"
                )
        # a fault that sets values may write Inf or NaN (a flipped exponent bit); a delta may not
        if corruption.mode == "add" and not torch.isfinite(value).all():
            raise ParamCorruptError(f"the delta for {name!r} contains NaN or Inf")
        plan.append((param, idx, value))
    return plan


def _write(
    param: Tensor, idx: Tensor | None, value: Tensor, mode: str
) -> tuple[Tensor | None, Tensor]:
    """Change ``param`` in place; return (indices, saved originals) to restore it from.

    "add" adds the delta, "set" copies the values themselves (never w + (v - w), which is
    not v in floating point).
    """
    if value.dtype != param.dtype:
        value = value.to(param.dtype)
    if idx is None:
        saved = param.detach().clone()
        if mode == "set":
            param.copy_(value)
        else:
            param.add_(value)
        return None, saved
    # take/put_ read and write flat (logical) indices of any layout, one call each
    if mode == "set":
        saved = torch.take(param, idx)
        param.put_(idx, value)
        return idx, saved
    contiguous = param.is_contiguous()
    # take copies: the n overwritten values, saved
    saved = torch.take(param, idx) if contiguous else param.detach().clone()
    # a non-contiguous parameter is changed through a flat copy, then written back whole
    flat = param.view(-1) if contiguous else param.detach().reshape(-1).clone()
    flat.index_add_(0, idx, value)
    if not contiguous:
        param.copy_(flat.view_as(param))
    return (idx if contiguous else None), saved


@contextmanager
def corrupted(
    model: nn.Module, corruption: Corruption | Mapping[str, Tensor]
) -> Iterator[nn.Module]:
    """Evaluate ``model`` at w + a: change the parameters in place, restore them on exit.

    A corruption adds its delta (``mode="add"``, w + a) or writes its values
    (``mode="set"``: w_i := v_i exactly, Inf and NaN allowed; see
    :meth:`Corruption.from_values`). No copy of the model is made: a dense entry saves a copy
    of its parameter, a sparse entry only the n values it overwrites. On exit — normal, by exception or by KeyboardInterrupt —
    every coordinate the corruption changed is restored bit-exactly (the same bits, NaN
    payloads included, as long as the code inside the block does not write to the parameters itself),
    and the running statistics of batch-norm layers are as they were, whatever mode the model
    ran in meanwhile.

    Everything is validated before the first parameter changes.

    Args:
        model: the network.
        corruption: a :class:`Corruption`, or a mapping name -> dense delta tensor.

    Raises:
        ValueError: for an unknown parameter name, a shape mismatch, an index out of range,
            NaN/Inf in a delta, an index written twice by a set-values fault, or a tied
            parameter named twice.
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
    with frozen_norm_stats(model):
        saved = write_in_place(
            [param for param, _, _ in plan],
            [idx for _, idx, _ in plan],
            [value for _, _, value in plan],
            corruption.mode,
        )
        try:
            yield model
        finally:
            restore_in_place(saved)


@torch.no_grad()
def write_in_place(
    params: Sequence[Tensor],
    indices: Sequence[Tensor | None],
    values: Sequence[Tensor],
    mode: str = "add",
) -> list[Saved]:
    """Change each parameter in place — add ``values`` (``mode="add"``) or write them
    (``mode="set"``) at the flat ``indices`` (``None``: the whole tensor) — and return what
    :func:`restore_in_place` needs to come back bit-exactly: the n overwritten values of a
    sparse entry, a copy of the tensor for a dense (or non-contiguous) one.

    Nothing is validated here (see :func:`corrupted`). If a write fails part-way (or is
    interrupted), what was written is restored before the error propagates.
    """
    saved: list[Saved] = []
    try:
        for param, idx, value in zip(params, indices, values):
            saved.append((param, *_write(param, idx, value, mode)))
    except BaseException:
        restore_in_place(saved)
        raise
    return saved


@torch.no_grad()
def restore_in_place(saved: Sequence[Saved]) -> None:
    """Undo :func:`write_in_place`: copy the saved originals back, last write first."""
    for param, idx, original in reversed(saved):
        if idx is None:
            param.copy_(original)
        else:  # put_ writes flat indices of any layout; an index written twice gets its one saved value
            param.put_(idx, original)
