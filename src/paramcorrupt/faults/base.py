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
from ..errors import InputTypeError, ParamCorruptError
from ..groups import ParameterGroup

__all__ = ["FAULTS", "FaultContext", "FaultModel", "get_fault", "register_fault"]


@dataclass
class FaultContext:
    """What a fault model may read to build one corruption: what every fault model may need,
    nothing of one family's grid (a fault model reads its own setting, ``self.setting``).

    Attributes:
        model: the network (read only: shapes, dtypes, values).
        group: the parameters to corrupt.
        k: the group's number of scalar parameters.
        gradient: name -> the data set gradient on the group (``None`` when the sweep has
            none because no fault model of it needs one).
        generator: the row's own generator (stochastic fault models), else ``None``.
        loader: the gradient's data (for fault models that evaluate, as the iterative one).
        loss_fn: the batch loss.
        cache: a per-group dict a fault model may keep derived values in (the dual norm of
            the gradient per (p, n), say) across the rows of one group.
        trial: the row's trial (0 for deterministic fault models).
        seed: the sweep's seed, the root of every stochastic row's draws. ``generator`` is
            all a fault model that draws per row needs; one that draws from a single stream
            across rows (Table 2's legacy ``random-sequential``) seeds that stream with it.
        trials: the sweep's draws per setting of a stochastic fault model: with ``trial``
            and the setting's place in its grid, the place of a row's draws in such a stream.
        stored: name -> :class:`~paramcorrupt.formats.StoredTensor` when the model is
            quantised (a sweep with ``quantize``): the stored image the bit faults act on
            (``faults/stored.py``); ``None`` for a float model.
    """

    model: nn.Module
    group: ParameterGroup
    k: int
    gradient: Mapping[str, Tensor] | None = None
    generator: torch.Generator | None = None
    loader: Iterable[Any] | None = None
    loss_fn: Any = None
    cache: dict[Any, Any] = field(default_factory=dict)
    trial: int = 0
    seed: int = 0
    trials: int = 1
    stored: Mapping[str, Any] | None = None


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
    else. An instance holds one validated setting (``fault.setting``, a dict: ``parameters``
    then ``fixed``, in order); invalid settings raise when the instance is made, before any
    parameter changes.

    Class attributes:
        name: the registry name, also the rows' ``method``.
        parameters: the settings a sweep may vary, in row-key order.
        fixed: settings that take one value per sweep (the iterative ascent's ``steps``):
            not part of a row's key, so the sweep's configuration (and its sweep_id) holds
            them; a sweep given two values of one refuses.
        defaults: values for settings a sweep does not list.
        stochastic: whether it draws from the row's generator (then a sweep runs ``trials``
            of it, each with its own seed; reports show its rows as mean ± std over trials).
        uses_gradient: whether :meth:`corrupt` or :meth:`first_order` reads
            ``ctx.gradient`` (the sweep computes the data set gradient only when one does).
        family: fault models of one family share one grid of settings and are interleaved
            in a sweep (random and gradient L_p corruptions are compared at each (p, n, eps)).
        axes: the settings a report may plot along, in order of preference (``eps``;
            ``ber`` or ``flips``); a report takes the first one its rows set.

    What reports show (a report asks the registry by a row's ``method``; a method it does not
    know gets these defaults):
        label: the name in legends (default: ``name``).
        colour: a matplotlib colour for its curves (default: the colour cycle's next).
        order: its place among the methods of a table or legend (lower first, then by name).
        theorem1_trials: its rows are the random trials Theorem 1 describes (uniform
            directions of the L_p set): the report's Theorem 1 section takes their quantiles.
        worst_case: its rows are the worst case the first-order estimate eps ||top_n(g)||_q
            describes: the report's first-order columns and Theorem 1's comparison take them.
    """

    name: ClassVar[str] = ""
    parameters: ClassVar[tuple[str, ...]] = ()
    fixed: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[Mapping[str, Any]] = {}
    stochastic: ClassVar[bool] = False
    uses_gradient: ClassVar[bool] = False
    family: ClassVar[str | None] = None
    axes: ClassVar[tuple[str, ...]] = ()
    label: ClassVar[str] = ""
    colour: ClassVar[str | None] = None
    order: ClassVar[int] = 100
    theorem1_trials: ClassVar[bool] = False
    worst_case: ClassVar[bool] = False

    def __init__(self, **setting: Any) -> None:
        names = self.setting_names()
        unknown = [name for name in setting if name not in names]
        if unknown:
            raise ParamCorruptError(
                f"fault model {self.name!r} has no setting {unknown[0]!r}; its settings: {', '.join(names) or 'none'}"
            )
        full = {name: setting.get(name, self.defaults.get(name, _MISSING)) for name in names}
        missing = [name for name, value in full.items() if value is _MISSING]
        if missing:
            raise ParamCorruptError(f"fault model {self.name!r} needs a value for {missing[0]!r}")
        self.setting: dict[str, Any] = self.check(full)

    def check(self, setting: dict[str, Any]) -> dict[str, Any]:
        """Validate and normalise a full setting; raise ValueError/TypeError naming the bad
        value. The default accepts it as it is."""
        return setting

    @classmethod
    def setting_names(cls) -> tuple[str, ...]:
        """Every setting: ``parameters``, then ``fixed``."""
        return (*cls.parameters, *cls.fixed)

    @classmethod
    def family_name(cls) -> str:
        return cls.family or cls.name

    @classmethod
    def grid(cls, values: Mapping[str, Sequence[Any]]) -> list[FaultModel]:
        """Every setting of the product of ``values`` (name -> the values to sweep), in
        ``parameters`` order (the last varies fastest); settings not named take their
        default, and a ``fixed`` setting takes one value."""
        names = cls.setting_names()
        unknown = [name for name in values if name not in names]
        if unknown:
            raise ParamCorruptError(
                f"fault model {cls.name!r} has no setting {unknown[0]!r}; its settings: {', '.join(names) or 'none'}"
            )
        axes = []
        for name in names:
            if name in values:
                seq = values[name]
                seq = [seq] if isinstance(seq, (str, bytes)) or not isinstance(seq, Iterable) else list(seq)
                if not seq:
                    raise ParamCorruptError(f"the values of {cls.name!r} setting {name!r} are empty")
                axes.append(list(dict.fromkeys(seq)))
                if name in cls.fixed and len(axes[-1]) > 1:
                    raise ParamCorruptError(
                        f"the {cls.name!r} setting {name!r} takes one value per sweep (it is no part of a row's key), "
                        f"got {axes[-1]}"
                    )
            elif name in cls.defaults:
                axes.append([cls.defaults[name]])
            else:
                raise ParamCorruptError(f"fault model {cls.name!r} needs values for its setting {name!r}")
        return [cls(**dict(zip(names, combo))) for combo in itertools.product(*axes)]

    def key(self) -> str:
        """The setting's part of a row key: ``name=value|...`` in ``parameters`` order (the
        ``fixed`` settings are the sweep's, not the row's)."""
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
        ValueError: for an empty name, a name with ``|`` or one taken by another class, or a
            setting named with ``|`` or ``=`` or both a parameter and a fixed setting.
    """
    if not (isinstance(cls, type) and issubclass(cls, FaultModel)):
        raise InputTypeError(f"register_fault takes a FaultModel subclass, got {cls!r}")
    name = cls.name
    if not isinstance(name, str) or not name or "|" in name:
        raise ParamCorruptError(f"a fault model needs a non-empty name without '|', got {name!r}")
    if name in FAULTS and FAULTS[name] is not cls:
        raise ParamCorruptError(f"the fault model name {name!r} is taken by {FAULTS[name].__qualname__}")
    for parameter in cls.setting_names():
        if "|" in parameter or "=" in parameter:
            raise ParamCorruptError(f"setting names may not contain '|' or '=', got {parameter!r}")
    both = [parameter for parameter in cls.fixed if parameter in cls.parameters]
    if both:
        raise ParamCorruptError(f"the setting {both[0]!r} of {name!r} is among both its parameters and its fixed settings")
    FAULTS[name] = cls
    return cls


def get_fault(name: str) -> type[FaultModel]:
    """The fault model class registered as ``name``.

    Raises:
        ValueError: for an unknown name, listing the registered ones.
    """
    if name not in FAULTS:
        raise ParamCorruptError(f"unknown fault model {name!r}; available: {', '.join(FAULTS)}")
    return FAULTS[name]
