"""The fault-model interface and its registry.

A *fault model* is one way of corrupting a group of parameters: the paper's random and
gradient-based L_p corruptions, the multi-step ascent, and the faults of hardware (values
written, bits flipped). Every fault model has one verb, :meth:`FaultModel.corrupt`, which
turns a *context* (the model, the group, the data set gradient, a generator) into a
:class:`~paramcorrupt.Corruption`; the sweep, the results store and the reports ask the
class for everything else: the names of its settings, the key of a row, the fields it
writes, whether it draws at random (trials), whether it needs the gradient.

Adding a fault model is one class, registered by name::

    @register_fault
    class StuckAtZero(FaultModel):
        name = "stuck-at-zero"
        parameters = ("count",)
        stochastic = True

        def corrupt(self, ctx):
            ...

after which ``SweepConfig(methods=["stuck-at-zero"], settings={"stuck-at-zero": {"count": [1, 10]}})``
sweeps it, its rows are keyed ``group|stuck-at-zero|count=1|trial=0`` and stored, resumed
and reported as any other.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..corruption.base import Corruption
from ..groups import ParameterGroup

__all__ = ["FAULTS", "FaultContext", "FaultModel", "get_fault", "register_fault"]


@dataclass
class FaultContext:
    """What a fault model may read to build one corruption.

    Attributes:
        model: the network (read only: shapes, dtypes, values).
        group: the parameters to corrupt.
        k: the group's number of scalar parameters.
        gradient: name -> the data set gradient on the group (``None`` when the sweep has
            none because no fault model of it needs one).
        generator: the row's own generator (stochastic fault models), else ``None``.
        loader: the gradient's data (for fault models that evaluate, as the iterative one).
        loss_fn: the batch loss.
        options: sweep-wide values: ``iterative_steps``, ``seed``, ``trials`` and the L_p
            grid ``p_values``, ``n_values``, ``eps_values``.
        cache: a per-group dict a fault model may keep derived values in (the dual norm of
            the gradient per (p, n), say) across the rows of one group.
        trial: the row's trial (0 for deterministic fault models).
    """

    model: nn.Module
    group: ParameterGroup
    k: int
    gradient: Mapping[str, Tensor] | None = None
    generator: torch.Generator | None = None
    loader: Iterable[Any] | None = None
    loss_fn: Any = None
    options: Mapping[str, Any] = field(default_factory=dict)
    cache: dict[Any, Any] = field(default_factory=dict)
    trial: int = 0


def key_text(value: Any) -> str:
    """A setting's value as it appears in row keys: ``inf``, ``all`` for None, repr of floats.

    Example:
        >>> [key_text(v) for v in (float("inf"), None, 1e-3, 4, "int8")]
        ['inf', 'all', '0.001', '4', 'int8']
    """
    if value is None:
        return "all"
    if isinstance(value, float):
        return "inf" if value == math.inf else repr(value)
    return str(value)


class FaultModel(ABC):
    """One setting of one way of corrupting parameters (an instance), and its kind (the class).

    Subclasses set the class attributes and implement :meth:`corrupt`; most need nothing
    else. An instance holds one validated setting (``fault.setting``, a dict in
    ``parameters`` order); invalid settings raise when the instance is made, before any
    parameter changes.

    Class attributes:
        name: the registry name, also the rows' ``method``.
        parameters: the setting names, in row-key order.
        defaults: values for settings a sweep does not list.
        stochastic: whether it draws from the row's generator (then a sweep runs ``trials``
            of it, each with its own seed).
        uses_gradient: whether :meth:`corrupt` or :meth:`first_order` reads
            ``ctx.gradient`` (the sweep computes the data set gradient only when one does).
        family: fault models of one family share one grid of settings and are interleaved
            in a sweep (random and gradient L_p corruptions are compared at each (p, n, eps)).
        axes: the settings a report may plot along, in order of preference (``eps``;
            ``ber`` or ``flips``); a report takes the first one its rows set.
    """

    name: ClassVar[str] = ""
    parameters: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[Mapping[str, Any]] = {}
    stochastic: ClassVar[bool] = False
    uses_gradient: ClassVar[bool] = False
    family: ClassVar[str | None] = None
    axes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **setting: Any) -> None:
        unknown = [name for name in setting if name not in self.parameters]
        if unknown:
            raise ValueError(
                f"fault model {self.name!r} has no setting {unknown[0]!r}; its settings: {', '.join(self.parameters) or 'none'}"
            )
        full = {name: setting.get(name, self.defaults.get(name, _MISSING)) for name in self.parameters}
        missing = [name for name, value in full.items() if value is _MISSING]
        if missing:
            raise ValueError(f"fault model {self.name!r} needs a value for {missing[0]!r}")
        self.setting: dict[str, Any] = self.check(full)

    def check(self, setting: dict[str, Any]) -> dict[str, Any]:
        """Validate and normalise a full setting; raise ValueError/TypeError naming the bad
        value. The default accepts it as it is."""
        return setting

    @classmethod
    def family_name(cls) -> str:
        return cls.family or cls.name

    @classmethod
    def grid(cls, values: Mapping[str, Sequence[Any]]) -> list[FaultModel]:
        """Every setting of the product of ``values`` (name -> the values to sweep), in
        ``parameters`` order (the last varies fastest); settings not named take their
        default."""
        unknown = [name for name in values if name not in cls.parameters]
        if unknown:
            raise ValueError(
                f"fault model {cls.name!r} has no setting {unknown[0]!r}; its settings: {', '.join(cls.parameters) or 'none'}"
            )
        axes = []
        for name in cls.parameters:
            if name in values:
                seq = values[name]
                seq = [seq] if isinstance(seq, (str, bytes)) or not isinstance(seq, Iterable) else list(seq)
                if not seq:
                    raise ValueError(f"the values of {cls.name!r} setting {name!r} are empty")
                axes.append(list(dict.fromkeys(seq)))
            elif name in cls.defaults:
                axes.append([cls.defaults[name]])
            else:
                raise ValueError(f"fault model {cls.name!r} needs values for its setting {name!r}")
        return [cls(**dict(zip(cls.parameters, combo))) for combo in itertools.product(*axes)]

    def key(self) -> str:
        """The setting's part of a row key: ``name=value|...`` in ``parameters`` order."""
        return "|".join(f"{name}={key_text(self.setting[name])}" for name in self.parameters)

    @abstractmethod
    def corrupt(self, ctx: FaultContext) -> Corruption:
        """The one verb: the corruption of ``ctx.group`` for this setting."""

    def row_fields(self, ctx: FaultContext, corruption: Corruption | None = None) -> dict[str, Any]:
        """The fields a row of this setting records about it (default: the setting); the
        corruption built for the row is passed too (a count of faults drawn, say)."""
        return dict(self.setting)

    def first_order(self, ctx: FaultContext) -> float | None:
        """The first-order estimate of the worst loss change at this setting, when the fault
        model has one (the L_p ones: eps ||top_n(g)||_q); else ``None``."""
        return None

    def __repr__(self) -> str:
        inside = ", ".join(f"{k}={v!r}" for k, v in self.setting.items())
        return f"{type(self).__name__}({inside})"


_MISSING = object()

#: name -> fault model class. Register with :func:`register_fault`.
FAULTS: dict[str, type[FaultModel]] = {}


def register_fault(cls: type[FaultModel]) -> type[FaultModel]:
    """Class decorator: make ``cls`` available to sweeps under ``cls.name``.

    Raises:
        TypeError: if ``cls`` is not a FaultModel subclass.
        ValueError: for an empty name, a name with ``|`` or one taken by another class.
    """
    if not (isinstance(cls, type) and issubclass(cls, FaultModel)):
        raise TypeError(f"register_fault takes a FaultModel subclass, got {cls!r}")
    name = cls.name
    if not isinstance(name, str) or not name or "|" in name:
        raise ValueError(f"a fault model needs a non-empty name without '|', got {name!r}")
    if name in FAULTS and FAULTS[name] is not cls:
        raise ValueError(f"the fault model name {name!r} is taken by {FAULTS[name].__qualname__}")
    for parameter in cls.parameters:
        if "|" in parameter or "=" in parameter:
            raise ValueError(f"setting names may not contain '|' or '=', got {parameter!r}")
    FAULTS[name] = cls
    return cls


def get_fault(name: str) -> type[FaultModel]:
    """The fault model class registered as ``name``.

    Raises:
        ValueError: for an unknown name, listing the registered ones.
    """
    if name not in FAULTS:
        raise ValueError(f"unknown fault model {name!r}; available: {', '.join(FAULTS)}")
    return FAULTS[name]
