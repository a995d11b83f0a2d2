"""Corruptions: random (Definition 3) and gradient-based (Definition 4); the multi-step one
is in :mod:`paramcorrupt.iterative`.

A :class:`Corruption` is a value: the change a to a group of parameters, with the group, p,
eps and n it was drawn under. Sparse corruptions store only the flat indices they touch and
the values there, so their memory grows with n, not with the model.

A corruption either *adds* a delta (``mode="add"``: w + a, the paper's corruptions) or
*sets* values (``mode="set"``: w_i := v_i, the faults of hardware: random values, stuck-at
bits, bit flips). A set-value fault is never expressed as the delta v - w, because
fl(w + fl(v - w)) is not v in general (1e-9 would become 0.0): it writes v itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .constraint import Constraint, _check_tensors, _lp_norm, sparse_closed_form
from .groups import ParameterGroup, as_group

__all__ = [
    "MODES",
    "Corruption",
    "gradient_corruption",
    "random_corruption",
    "relative_gradient_corruption",
    "relative_random_corruption",
    "relative_scale",
    "split_flat",
    "times_scale",
    "random_values",
]

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
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got mode={self.mode!r}")

    @classmethod
    def from_deltas(cls, deltas: Mapping[str, Tensor], method: str = "custom") -> Corruption:
        """Wrap a plain mapping name -> dense delta tensor."""
        if not isinstance(deltas, Mapping) or not deltas:
            raise ValueError("a corruption given as a mapping must map at least one parameter name to a delta tensor")
        for name, d in deltas.items():
            if not isinstance(d, Tensor):
                raise TypeError(f"the delta for {name!r} is a {type(d).__name__}, expected a Tensor")
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
            raise ValueError("a set-values corruption must map at least one parameter name to its values")
        indices = dict(indices or {})
        unknown = [name for name in indices if name not in values]
        if unknown:
            raise ValueError(f"indices are given for {unknown[0]!r}, which has no values")
        for name, v in values.items():
            if not isinstance(v, Tensor):
                raise TypeError(f"the values for {name!r} are a {type(v).__name__}, expected a Tensor")
            idx = indices.get(name)
            if idx is not None and not isinstance(idx, Tensor):
                raise TypeError(f"the indices for {name!r} are a {type(idx).__name__}, expected a Tensor")
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
            raise ValueError(f"{what} needs a delta; this corruption sets values (mode='set'), it does not add a delta")

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
                raise ValueError("this corruption has no constraint: pass p explicitly")
            p = self.constraint.p
        return _lp_norm(list(self.values.values()), p)

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
                raise ValueError(f"pass the model to densify the sparse entry {name!r}")
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
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    group = as_group(model, group)
    params = group.tensors(model)
    draws = [
        torch.randn(p.shape, generator=generator, dtype=p.dtype, device=generator.device).to(p.device)
        for p in params.values()
    ]
    return _build(group, params, draws, constraint, "random")


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
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if not (isinstance(low, (int, float)) and isinstance(high, (int, float)) and math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"low and high must be finite numbers with low < high, got low={low!r}, high={high!r}")
    group = as_group(model, group)
    params = group.tensors(model)
    sizes = [p.numel() for p in params.values()]
    k = sum(sizes)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= k:
        raise ValueError(f"count must be an integer in [1, {k}] (the group's size), got count={count!r}")
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


def _group_gradient(gradient: Mapping[str, Tensor], group: ParameterGroup | None) -> tuple[ParameterGroup, dict[str, Tensor]]:
    """The group (default: every entry of ``gradient``) and its slice of the gradient, checked.

    Raises:
        ValueError: for a name missing from ``gradient``, or NaN/Inf in it.
    """
    if group is None:
        group = ParameterGroup("all", tuple(gradient))
    missing = [n for n in group.names if n not in gradient]
    if missing:
        raise ValueError(f"the gradient has no entry for parameter {missing[0]!r} of group {group.name!r}")
    g = {name: gradient[name] for name in group.names}
    _check_tensors(list(g.values()), list(g))
    return group, g


def gradient_corruption(
    gradient: Mapping[str, Tensor],
    constraint: Constraint,
    group: ParameterGroup | None = None,
) -> Corruption:
    """Gradient-based corruption (Definition 4): a_hat = argmax_{a in S} a.g, in closed form.

    Args:
        gradient: name -> the data set gradient of each parameter of the group (see
            :func:`~paramcorrupt.dataset_gradient`); a larger mapping is sliced by ``group``.
        constraint: the set S.
        group: which entries of ``gradient`` form the group (default: all of them).

    Returns:
        The corruption; ``info["first_order"]`` holds a_hat.g = eps * ||top_n(g)||_q, the
        first-order estimate of the loss change, and ``info["G"]`` holds ||g||_2 on the group.

    Raises:
        ValueError: for a name missing from ``gradient``, NaN/Inf in it, or n > k.

    Example:
        >>> a = gradient_corruption({"w": torch.tensor([1.0, -2.0])}, Constraint(p=float("inf"), eps=0.1))
        >>> a.values["w"], round(a.info["first_order"], 6)
        (tensor([ 0.1000, -0.1000]), 0.3)
    """
    group, g = _group_gradient(gradient, group)
    corruption = _build(group, g, list(g.values()), constraint, "gradient")
    corruption.info["first_order"] = corruption.dot(g)
    corruption.info["G"] = _lp_norm(list(g.values()), 2)
    return corruption


# --------------------------------------------------------------------------------------
# Relative (multiplicative) corruption: ||a / T||_p = eps, T = |w| + eta (analog memory)
# --------------------------------------------------------------------------------------


def relative_scale(model: nn.Module, group: ParameterGroup, eta: float = 0.0) -> dict[str, Tensor]:
    """T = |w| + eta per coordinate of the group (detached copies).

    Raises:
        ValueError: for eta < 0 or not finite.
    """
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got eta={eta!r}")
    return {name: p.detach().abs() + eta for name, p in group.tensors(model).items()}


def times_scale(value: Tensor, scale: Tensor, idx: Tensor | None) -> Tensor:
    """T b at the entry's coordinates: ``value * scale`` (the flat ``idx`` of ``scale`` for a
    sparse entry), computed in ``value``'s dtype and returned in ``scale``'s."""
    at = scale if idx is None else scale.reshape(-1)[idx]
    return (value * at.to(value.dtype)).to(scale.dtype)


def _relative(b: Corruption, scale: dict[str, Tensor], method: str, eta: float) -> Corruption:
    """a = T b: the change of variables that maps S = {||b||_p = eps, ||b||_0 <= n} onto the
    relative set {||a / T||_p = eps, ||a||_0 <= n}."""
    values = {name: times_scale(b.values[name], scale[name], idx) for name, idx in b.indices.items()}
    return Corruption(b.group, b.constraint, method, dict(b.indices), values, {"relative": True, "eta": float(eta)})


def relative_gradient_corruption(
    model: nn.Module,
    gradient: Mapping[str, Tensor],
    constraint: Constraint,
    group: ParameterGroup | None = None,
    *,
    eta: float = 0.0,
) -> Corruption:
    """The worst relative corruption to first order: argmax a.g over
    {||a / T||_p = eps, ||a||_0 <= n}, T = |w| + eta (ASAM's set, multiplicative noise of
    analog memory), in closed form by a = T b: b is Definition 4's a_hat for the gradient T g.

    Coordinates with T = 0 (w = 0 and eta = 0) cannot change. ``info["first_order"]`` is
    a.g = eps ||top_n(T g)||_q; ``constraint`` bounds a / T, not a.

    Example:
        >>> model = nn.Linear(2, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[2.0, -0.5]]))
        >>> a = relative_gradient_corruption(model, {"weight": torch.ones(1, 2)}, Constraint(float("inf"), 0.1))
        >>> a.values["weight"]
        tensor([[0.2000, 0.0500]])
    """
    group, g = _group_gradient(gradient, group)
    scale = relative_scale(model, group, eta)
    # b = Definition 4's a_hat for the gradient T g; a = T b
    b = _build(group, g, [g[name] * scale[name].to(g[name].dtype) for name in g], constraint, "relative-gradient")
    corruption = _relative(b, scale, "relative-gradient", eta)
    corruption.info["first_order"] = corruption.dot(g)
    return corruption


def relative_random_corruption(
    model: nn.Module,
    constraint: Constraint,
    group: ParameterGroup | str | Iterable[str] | None = None,
    *,
    eta: float = 0.0,
    generator: torch.Generator,
) -> Corruption:
    """A random relative corruption: a = T b with b Definition 3's random corruption of
    radius eps (||a / T||_p = eps), T = |w| + eta."""
    b = random_corruption(model, constraint, group, generator=generator)
    return _relative(b, relative_scale(model, b.group, eta), "relative-random", eta)
