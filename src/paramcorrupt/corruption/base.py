"""A :class:`Corruption` is a value: the change a to a group of parameters, with the group, p,
eps and n it was drawn under. Sparse corruptions store only the flat indices they touch and
the values there, so their memory grows with n, not with the model.

A corruption either *adds* a delta (``mode="add"``: w + a, the paper's corruptions) or
*sets* values (``mode="set"``: w_i := v_i, the faults of hardware: random values, stuck-at
bits, bit flips). A set-value fault is never expressed as the delta v - w, because
fl(w + fl(v - w)) is not v in general (1e-9 would become 0.0): it writes v itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..constraint import Constraint, sparse_closed_form, tensors_lp_norm
from ..errors import InputTypeError, ParamCorruptError
from ..groups import ParameterGroup

#: How a corruption changes a parameter: "add" its values (w + a) or "set" them (w_i := v_i).
MODES = ("add", "set")


@dataclass(frozen=True, eq=False)
class Corruption:
    """A change to a group of parameters.

    Attributes:
        group: the parameter names it lives on (a :class:`ParameterGroup`).
        constraint: p, eps and n it satisfies (``None`` for a user-given delta or a fault
            that sets values).
        method: "random", "gradient", "iterative", "custom", or a fault's name.
        indices: name -> flat indices touched, or ``None`` for a dense entry of that tensor.
        values: name -> the delta (``mode="add"``) or the values written (``mode="set"``):
            at ``indices`` (1-D), or the full shape.
        info: anything else worth keeping (the first-order estimate, steps taken, ...);
            ``info["distinct_indices_of"] = {name: numel}`` says the builder drew distinct
            indices inside a tensor of ``numel`` coordinates, and spares
            :func:`~paramcorrupt.corrupted` the range and repeat checks on a parameter of that
            size.
        mode: "add" (w + a) or "set" (w_i := v_i, written exactly, Inf and NaN allowed).
    """

    group: ParameterGroup
    constraint: Constraint | None
    method: str
    indices: dict[str, Tensor | None]
    values: dict[str, Tensor]
    info: dict[str, Any] = field(default_factory=dict)
    mode: str = "add"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ParamCorruptError(f"mode must be one of {', '.join(map(repr, MODES))}, got mode={self.mode!r}")

    @classmethod
    def from_deltas(cls, deltas: Mapping[str, Tensor], method: str = "custom") -> Corruption:
        """Wrap a plain mapping name -> dense delta tensor."""
        if not isinstance(deltas, Mapping) or not deltas:
            raise ParamCorruptError("a corruption given as a mapping must map at least one parameter name to a delta tensor")
        for name, d in deltas.items():
            if not isinstance(d, Tensor):
                raise InputTypeError(f"the delta for {name!r} is a {type(d).__name__}, expected a Tensor")
        return cls(
            ParameterGroup(method, tuple(deltas)),
            None,
            method,
            {name: None for name in deltas},
            {name: d.detach() for name, d in deltas.items()},
        )

    @classmethod
    def from_values(
        cls,
        values: Mapping[str, Tensor],
        indices: Mapping[str, Tensor | None] | None = None,
        method: str = "custom",
        group: ParameterGroup | None = None,
        **info: Any,
    ) -> Corruption:
        """A fault that sets parameters to given values (``mode="set"``).

        Args:
            values: name -> the values to write: the parameter's full shape, or 1-D at
                ``indices[name]``. They are written as they are (cast to the parameter's
                dtype), Inf and NaN included; the originals come back bit for bit.
            indices: name -> flat indices (row-major) of the coordinates to write, or
                ``None`` (or a missing name) for a whole tensor.
            method: a name for the rows and reports ("stuck-at", "bitflip", ...).
            group: the group the fault was drawn on (default: the names in ``values``).
            **info: kept in ``info``.

        Example:
            >>> model = nn.Linear(2, 1, bias=False)
            >>> fault = Corruption.from_values({"weight": torch.tensor([1e-9])}, {"weight": torch.tensor([1])})
            >>> from paramcorrupt import corrupted
            >>> with corrupted(model, fault):
            ...     model.weight[0, 1].item() == torch.tensor(1e-9).item()
            True
        """
        if not isinstance(values, Mapping) or not values:
            raise ParamCorruptError("a set-values corruption must map at least one parameter name to its values")
        indices = dict(indices or {})
        unknown = [name for name in indices if name not in values]
        if unknown:
            raise ParamCorruptError(f"indices are given for {unknown[0]!r}, which has no values")
        for name, v in values.items():
            if not isinstance(v, Tensor):
                raise InputTypeError(f"the values for {name!r} are a {type(v).__name__}, expected a Tensor")
            idx = indices.get(name)
            if idx is not None and not isinstance(idx, Tensor):
                raise InputTypeError(f"the indices for {name!r} are a {type(idx).__name__}, expected a Tensor")
        return cls(
            group if group is not None else ParameterGroup(method, tuple(values)),
            None,
            method,
            {name: None if indices.get(name) is None else indices[name].detach().long() for name in values},
            {name: v.detach() for name, v in values.items()},
            dict(info),
            mode="set",
        )

    def _delta_only(self, what: str) -> None:
        if self.mode != "add":
            raise ParamCorruptError(f"{what} needs a delta; this corruption sets values (mode='set'), it does not add a delta")

    @property
    def p(self) -> float | None:
        return None if self.constraint is None else self.constraint.p

    @property
    def eps(self) -> float | None:
        return None if self.constraint is None else self.constraint.eps

    @property
    def n(self) -> int | None:
        return None if self.constraint is None else self.constraint.n

    @property
    def is_sparse(self) -> bool:
        return any(idx is not None for idx in self.indices.values())

    def nnz(self) -> int:
        """The number of non-zero coordinates of a; for a fault that sets values, the number
        of coordinates it writes."""
        if self.mode == "set":
            return int(sum(v.numel() for v in self.values.values()))
        return int(sum(int((v != 0).sum()) for v in self.values.values()))

    def norm(self, p: float | None = None) -> float:
        """||a||_p (by default with the constraint's p)."""
        self._delta_only("norm()")
        if p is None:
            if self.constraint is None:
                raise ParamCorruptError("this corruption has no constraint: pass p explicitly")
            p = self.constraint.p
        return tensors_lp_norm(list(self.values.values()), p)

    def dot(self, vector: Mapping[str, Tensor]) -> float:
        """a.v for a mapping name -> tensor shaped like the parameters (in float64)."""
        self._delta_only("dot()")
        total = 0.0
        for name, value in self.values.items():
            idx = self.indices[name]
            v = vector[name].detach().reshape(-1)
            v = v if idx is None else v[idx]
            total += float((v.double() * value.double().reshape(-1)).sum())
        return total

    def dense(self, model: nn.Module | None = None) -> dict[str, Tensor]:
        """name -> dense delta tensor (needs ``model`` for the shapes of sparse entries)."""
        self._delta_only("dense()")
        out = {}
        params = self.group.tensors(model) if model is not None else {}
        for name, value in self.values.items():
            idx = self.indices[name]
            if idx is None:
                out[name] = value
                continue
            if name not in params:
                raise ParamCorruptError(f"pass the model to densify the sparse entry {name!r}")
            d = torch.zeros_like(params[name].detach(), memory_format=torch.contiguous_format)
            d.view(-1)[idx] = value.to(d.dtype)
            out[name] = d
        return out

    def scaled(self, factor: float) -> Corruption:
        """The corruption factor * a (its constraint's eps scaled alike)."""
        self._delta_only("scaled()")
        constraint = None if self.constraint is None else self.constraint.with_eps(self.constraint.eps * abs(factor))
        return Corruption(
            self.group,
            constraint,
            self.method,
            dict(self.indices),
            {k: v * factor for k, v in self.values.items()},
            dict(self.info),
        )


def _build(
    group: ParameterGroup,
    tensors: dict[str, Tensor],
    direction: list[Tensor],
    constraint: Constraint,
    method: str,
    **info: Any,
) -> Corruption:
    indices, values = sparse_closed_form(direction, constraint)
    names = list(tensors)
    return Corruption(
        group,
        constraint,
        method,
        dict(zip(names, indices)),
        {name: v.to(tensors[name].dtype) for name, v in zip(names, values)},
        info,
    )


def split_flat(coords: Tensor, sizes: Sequence[int]) -> list[tuple[int, slice, Tensor]]:
    """Sorted flat coordinates over a group's tensors (in order, of ``sizes`` elements) as
    (tensor number, the slice of ``coords`` inside it, flat indices inside the tensor), for
    the tensors that hold any.

    Example:
        >>> split_flat(torch.tensor([1, 4, 5]), [3, 4])
        [(0, slice(0, 1, None), tensor([1])), (1, slice(1, 3, None), tensor([1, 2]))]
    """
    offsets = torch.tensor([0, *sizes]).cumsum(0)
    owner = torch.searchsorted(offsets, coords, right=True) - 1  # the tensor of each coordinate
    local = coords - offsets[owner]
    out, start = [], 0
    for t, count in zip(*(x.tolist() for x in owner.unique_consecutive(return_counts=True))):
        out.append((t, slice(start, start + count), local[start : start + count]))
        start += count
    return out
