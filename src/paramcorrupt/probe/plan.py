"""What a sweep runs, before it runs: its configuration, its rows' keys and seeds, its identity.

- :class:`SweepConfig`: groups x methods x their settings (x trials for stochastic ones).
  The sweep-wide grid ``p_values x n_values x eps_values`` gives the settings ``p``, ``n``
  and ``eps`` of every method that has them (:data:`GRID`); any other setting of a method
  comes from ``settings`` or its fault model's defaults.
- :func:`row_settings`: (fault model, trial, key) of every row of one group, in order.
- :func:`fault_key` and :func:`row_seed`: a row's key and the seed of its generator.
- :func:`sweep_id` and :func:`probed_groups`: the sweep's identity and the groups it probes.

:mod:`paramcorrupt.probe.sweep` runs what this module plans.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..constraint import parse_p
from ..errors import InputTypeError, ParamCorruptError
from ..faults import FAULTS, FaultModel, LpFault, get_fault
from ..formats import get_quantizer
from ..groups import ParameterGroup

__all__ = [
    "GRID",
    "SweepConfig",
    "fault_key",
    "grid_settings",
    "probed_groups",
    "row_seed",
    "row_settings",
    "sweep_id",
    "with_setting",
]

#: the sweep-wide grid: setting name -> the :class:`SweepConfig` field holding its values,
#: for every method that has the setting (the L_p fault models' p, n and eps)
GRID = {"p": "p_values", "n": "n_values", "eps": "eps_values"}

#: fault settings a configuration records as fields of its own, where results files written
#: before the fault model owned the setting recorded it: field -> (method, setting). Always
#: written (the setting's default when the sweep does not run the method), so that those
#: files keep their sweep_id and resume.
_LEGACY_FIELDS = {"iterative_steps": ("iterative", "steps")}


def _as_tuple(values: Any, what: str) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        values = (values,)
    out = tuple(dict.fromkeys(values))  # drop repeats, keep order
    if not out:
        raise ParamCorruptError(f"{what} must hold at least one value")
    return out


def grid_settings(cls: type[FaultModel]) -> tuple[str, ...]:
    """The settings of fault model ``cls`` that the sweep-wide grid gives (:data:`GRID`).

    Example:
        >>> from paramcorrupt.faults import get_fault
        >>> grid_settings(get_fault("iterative")), grid_settings(get_fault("bitflip"))
        (('p', 'n', 'eps'), ())
    """
    return tuple(name for name in cls.setting_names() if name in GRID)


@dataclass(frozen=True)
class SweepConfig:
    """What a sweep runs: groups x methods x their settings (x trials for random ones).

    A method is a fault model's registry name (:data:`paramcorrupt.faults.FAULTS`). Its
    settings named ``p``, ``n`` and ``eps`` (the L_p ones': "random", "gradient",
    "iterative", ...) run over the sweep-wide grid ``p_values x n_values x eps_values``
    unless ``settings`` gives them; its other settings come from ``settings`` (name ->
    setting -> values), else from its defaults.

    Args:
        groups: the labels of the groups to probe, in order (default: every group passed
            to :func:`~paramcorrupt.probe.sweep`).
        methods: fault model names: "random", "gradient", "iterative" (multi-step ascent),
            or any other registered one.
        trials: R, draws per setting of a stochastic fault model (random ones).
        p_values: the norms (``float("inf")`` or "inf" for L_inf).
        n_values: the largest numbers of changed coordinates; ``None`` for n = k. An n
            larger than a group's k is clamped to k (the row keeps ``n_requested``).
        eps_values: the radii.
        seed: the root of every random row's seed.
        task: the task's identity (its name and whatever fixes its weights and data); part
            of the sweep_id.
        grouping: the name of the grouping ("type", "position", ...), written on each row.
        metric: the metric rows report (default: the first metric, or "loss").
        measure_gradient_data: also measure the loss on the gradient's data for every row
            (``grad_loss_after`` and Theorem 2's ``ratio``); costs one more pass per row.
        settings: fault model name -> {setting: values}: ``{"random-values": {"count": [1,
            10]}}``, ``{"iterative": {"steps": 2}}`` (the ascent's steps after a_hat,
            default 5). A fixed setting given at its default is the same sweep as one not
            given (and is dropped).
        quantize: probe the model as stored in this format (a quantiser of
            :data:`paramcorrupt.formats.QUANTIZERS`: int8, int4, nf4, fp8-e4m3, mxfp4, ...):
            the sweep quantises it as a whole with :func:`paramcorrupt.quantize` (its
            clean rows are the quantised model's; the bit faults hit the stored codes,
            scales and zero points) and restores the float weights afterwards. Part of the
            sweep_id; left out of :meth:`as_dict` when None.
        quantize_options: the quantiser's options (``group_size``, ``pad``, ...).
        outcomes: class every example of every row as masked, SDC or DUE against the
            fault-free run and write the counts into the rows
            (:mod:`paramcorrupt.probe.outcome_rows`). Part of the sweep_id; left out of
            :meth:`as_dict` when False.
        tolerance: with ``outcomes``: ``None`` for the top-1 criterion, else the largest
            absolute change of an output element still masked (>= 0).
        second_order: Hutchinson probes per group (at least 2) for the second-order columns
            (``second_order``, ``predicted_ratio``, ``predicted_mean``, ...: see
            :mod:`paramcorrupt.probe.second_order`); ``None``: none. Part of the sweep_id;
            left out of :meth:`as_dict` when None.

    Raises:
        ValueError: for an unknown method, a bad p, n, eps, trials or setting.

    Example:
        >>> SweepConfig(methods=["gradient"], p_values=["inf", 2], eps_values=[1e-3]).p_values
        (inf, 2.0)
        >>> SweepConfig(methods=["iterative"], settings={"iterative": {"steps": 2}}).faults("iterative")
        [IterativeLp(p=inf, n=None, eps=0.001, steps=2)]
    """

    groups: tuple[str, ...] | None = None
    methods: tuple[str, ...] = ("random", "gradient")
    trials: int = 10
    p_values: tuple[float, ...] = (math.inf,)
    n_values: tuple[int | None, ...] = (None,)
    eps_values: tuple[float, ...] = (1e-3,)
    seed: int = 0
    task: str = "custom"
    grouping: str = "custom"
    metric: str | None = None
    measure_gradient_data: bool = True
    settings: Mapping[str, Mapping[str, Any]] | None = None
    quantize: str | None = None
    quantize_options: Mapping[str, Any] | None = None
    outcomes: bool = False
    tolerance: float | None = None
    second_order: int | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.groups is not None:
            groups = _as_tuple(self.groups, "groups")
            for g in groups:
                if not isinstance(g, str):
                    raise InputTypeError(f"group labels must be strings, got {g!r}")
            set_(self, "groups", groups)
        methods = _as_tuple(self.methods, "methods")
        unknown = [m for m in methods if m not in FAULTS]
        if unknown:
            raise ParamCorruptError(f"unknown method {unknown[0]!r}; expected some of {', '.join(FAULTS)}")
        set_(self, "methods", methods)
        for name in ("trials", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ParamCorruptError(f"{name} must be an integer >= 0, got {value!r}")
        stochastic = [m for m in methods if FAULTS[m].stochastic]
        if stochastic and self.trials < 1:
            raise ParamCorruptError(f"the {stochastic[0]} method needs trials >= 1, got trials={self.trials}")
        p_values = tuple(parse_p(p) for p in _as_tuple(self.p_values, "p_values"))
        n_values = tuple(None if n == "all" else n for n in _as_tuple(self.n_values, "n_values"))
        eps_values = _as_tuple(self.eps_values, "eps_values")
        set_(self, "p_values", tuple(dict.fromkeys(p_values)))
        set_(self, "n_values", tuple(dict.fromkeys(n_values)))
        set_(self, "eps_values", tuple(float(e) if isinstance(e, (int, float)) and not isinstance(e, bool) else e for e in eps_values))
        if self.settings is not None:
            set_(self, "settings", _frozen_settings(self.settings, methods))
        for method in methods:
            self.faults(method)  # validates every setting of every method
        for name in ("task", "grouping"):
            if not isinstance(getattr(self, name), str):
                raise InputTypeError(f"{name} must be a string, got {getattr(self, name)!r}")
        _check_quantize(self)
        _check_outcomes(self)
        if self.second_order is not None:
            if isinstance(self.second_order, bool) or not isinstance(self.second_order, int) or self.second_order < 2:
                raise ParamCorruptError(f"second_order (Hutchinson probes per group) must be an integer >= 2, got {self.second_order!r}")
            if not any(issubclass(FAULTS[m], LpFault) for m in methods):
                raise ParamCorruptError(f"second_order needs an L_p method (random, gradient, iterative, relative-*): {', '.join(methods)} add no delta a for ½ aᵀHa")

    def faults(self, method: str) -> list[FaultModel]:
        """Every setting ``method`` runs at, as fault models, in grid order (its parameters'
        order, the last varying fastest: the L_p methods' p, then n, then eps)."""
        cls = get_fault(method)
        given = (self.settings or {}).get(method, {})
        values = {name: getattr(self, GRID[name]) for name in grid_settings(cls) if name not in given}
        return cls.grid({**values, **given})

    def as_dict(self) -> dict[str, Any]:
        """The configuration as JSON-ready values (``inf`` as the string "inf"); ``settings``
        only when given, so the sweep_id of an L_p sweep does not depend on it."""
        out: dict[str, Any] = {
            "groups": None if self.groups is None else list(self.groups),
            "methods": list(self.methods),
            "trials": self.trials,
            "p_values": [_p_text(p) for p in self.p_values],
            "n_values": list(self.n_values),
            "eps_values": list(self.eps_values),
            "seed": self.seed,
        }
        settings = {m: dict(d) for m, d in (self.settings or {}).items()}
        for name, (method, setting) in _LEGACY_FIELDS.items():
            given = settings.get(method, {}).pop(setting, None)
            out[name] = given[0] if given else get_fault(method).defaults[setting]
            if given and not settings[method]:
                del settings[method]
        out.update(task=self.task, grouping=self.grouping, metric=self.metric, measure_gradient_data=self.measure_gradient_data)
        if self.settings is not None and settings:
            out["settings"] = {m: {k: [_p_text(v) for v in vs] for k, vs in d.items()} for m, d in settings.items()}
        if self.quantize is not None:  # absent for a float model: earlier sweep_ids unchanged
            out.update(quantize=self.quantize, quantize_options=dict(self.quantize_options or {}))
        if self.outcomes:  # absent without outcome classes: earlier sweep_ids unchanged
            out.update(outcomes=True, tolerance=self.tolerance)
        if self.second_order is not None:  # absent when off: earlier sweep_ids unchanged
            out["second_order"] = self.second_order
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepConfig:
        """The inverse of :meth:`as_dict`."""
        data = dict(data)
        for name, (method, setting) in _LEGACY_FIELDS.items():
            if name in data:
                value = data.pop(name)
                if method in _as_tuple(data.get("methods", cls.methods), "methods"):
                    settings = {m: dict(d) for m, d in (data.get("settings") or {}).items()}
                    settings[method] = {**settings.get(method, {}), setting: [value]}
                    data["settings"] = settings
        return cls(**data)


def _frozen_settings(settings: Any, methods: tuple[str, ...]) -> dict[str, dict[str, tuple]] | None:
    """``settings`` checked and frozen: values as tuples; a fixed setting at its default
    dropped (with its method's entry, when that leaves it empty)."""
    if not isinstance(settings, Mapping):
        raise InputTypeError(f"settings must map fault model names to their settings, got {type(settings).__name__}")
    extra = [name for name in settings if name not in methods]
    if extra:
        raise ParamCorruptError(f"settings are given for {extra[0]!r}, which is not among the methods {list(methods)}")
    frozen = {}
    for name, values in settings.items():
        if not isinstance(values, Mapping):
            raise InputTypeError(f"the settings of {name!r} must map setting names to values, got {type(values).__name__}")
        cls = get_fault(name)
        mine = {k: _as_tuple(v, f"the {name!r} setting {k!r}") for k, v in values.items()}
        at_default = [k for k, v in mine.items() if k in cls.fixed and k in cls.defaults and v == (cls.defaults[k],)]
        for k in at_default:
            del mine[k]
        if mine or not at_default:
            frozen[name] = mine
    return frozen or None


def _check_quantize(config: SweepConfig) -> None:
    """The quantisation format's name and option names (their values are checked against
    each weight when the sweep quantises, before anything changes)."""
    if config.quantize is None:
        if config.quantize_options:
            raise ParamCorruptError(f"quantize_options {dict(config.quantize_options)} are given without a quantize format")
        object.__setattr__(config, "quantize_options", None)
        return
    quantizer = get_quantizer(config.quantize)
    options = config.quantize_options or {}
    if not isinstance(options, Mapping):
        raise InputTypeError(f"quantize_options must map option names to values, got {type(options).__name__}")
    unknown = sorted(set(options) - set(quantizer.defaults))
    if unknown:
        valid = ", ".join(quantizer.defaults) or "none"
        raise ParamCorruptError(f"unknown option {', '.join(unknown)} for format {config.quantize!r}; its options: {valid}")
    object.__setattr__(config, "quantize_options", dict(sorted(options.items())))


def _check_outcomes(config: SweepConfig) -> None:
    """``outcomes`` a bool; ``tolerance`` >= 0 and only with outcomes."""
    from .outcomes import check_tolerance

    if not isinstance(config.outcomes, bool):
        raise InputTypeError(f"outcomes must be True or False, got {config.outcomes!r}")
    if config.tolerance is not None and not config.outcomes:
        raise ParamCorruptError(f"tolerance={config.tolerance!r} is given without outcomes (it is the SDC criterion of the outcome classes)")
    object.__setattr__(config, "tolerance", check_tolerance(config.tolerance))


def _p_text(p: Any) -> Any:
    return "inf" if isinstance(p, float) and p == math.inf else p


def with_setting(
    settings: Mapping[str, Mapping[str, Any]] | None, methods: Iterable[str], name: str, value: Any
) -> dict[str, dict[str, Any]] | None:
    """``settings`` (method -> {setting: values}) with the setting ``name`` set to ``value``
    for every method among ``methods`` that has such a setting (a CLI option for whichever
    fault model takes it: ``--steps``, the iterative ascent's).

    Example:
        >>> with_setting(None, ["random", "iterative"], "steps", 2)
        {'iterative': {'steps': [2]}}
    """
    out = {m: dict(d) for m, d in (settings or {}).items()}
    for method in methods:
        cls = FAULTS.get(method)  # an unknown one is the config's to report
        if cls is not None and name in cls.setting_names():
            out.setdefault(method, {})[name] = [value]
    return out or None


def fault_key(group: str, fault: FaultModel, trial: int) -> str:
    """A row's key from its fault model: ``group|name|<setting>|trial=..``.

    Example:
        >>> from paramcorrupt.faults import RandomLp
        >>> fault_key("norm", RandomLp(p="inf", n=None, eps=1e-3), 2)
        'norm|random|p=inf|n=all|eps=0.001|trial=2'
    """
    return f"{group}|{fault.name}|{fault.key()}|trial={trial}"


def _stable_hash(text: str, digits: int = 16) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:digits]


def row_seed(seed: int, key: str) -> int:
    """The seed of a random row's generator: a stable hash of the sweep's seed and the key
    (the first 16 hex digits of SHA-256, 63 bits): the same in every process and version,
    so a resumed row draws what the uninterrupted sweep drew.

    Example:
        >>> row_seed(0, "all|random|p=inf|n=all|eps=0.001|trial=0")
        4180974186777370123
        >>> row_seed(0, "all|random|p=inf|n=all|eps=0.001|trial=1"), row_seed(1, "all|random|p=inf|n=all|eps=0.001|trial=0")
        (450493555384463859, 1109566589214318628)
    """
    return int(_stable_hash(f"{seed}|{key}"), 16) & (2**63 - 1)


def sweep_id(config: SweepConfig, groups: Mapping[str, ParameterGroup]) -> str:
    """A stable hash of the configuration, the probed groups (labels and parameter names)
    and the task's identity: two runs with one sweep_id compute the same rows."""
    probed = probed_groups(config, groups)
    payload = {
        "config": config.as_dict(),
        "groups": [[label, list(group.names)] for label, group in probed.items()],
    }
    return _stable_hash(json.dumps(payload, sort_keys=True, allow_nan=False))


def probed_groups(config: SweepConfig, groups: Mapping[str, ParameterGroup]) -> dict[str, ParameterGroup]:
    """The groups the sweep probes (``config.groups`` of ``groups``, else all), checked."""
    if not isinstance(groups, Mapping) or not groups:
        raise ParamCorruptError("groups must map at least one label to a ParameterGroup")
    for label, group in groups.items():
        if not isinstance(group, ParameterGroup):
            raise InputTypeError(f"group {label!r} is a {type(group).__name__}, expected a ParameterGroup")
        if "|" in label:
            raise ParamCorruptError(f"group label {label!r} may not contain '|' (it separates the parts of a row key)")
    if config.groups is None:
        return dict(groups)
    unknown = [g for g in config.groups if g not in groups]
    if unknown:
        raise ParamCorruptError(f"unknown group {unknown[0]!r}; available: {', '.join(groups)}")
    return {label: groups[label] for label in config.groups}


def row_settings(config: SweepConfig, label: str) -> list[tuple[FaultModel, int, str]]:
    """(fault model, trial, key) of every row of one group: families in the order their
    first method appears, each family's grid in order, its methods interleaved at each
    setting (random and gradient L_p rows side by side at each (p, n, eps))."""
    families: dict[str, list[str]] = {}
    for method in config.methods:
        families.setdefault(get_fault(method).family_name(), []).append(method)
    rows = []
    for methods in families.values():
        grids = [config.faults(method) for method in methods]
        if len({tuple(f.key() for f in grid) for grid in grids}) > 1:
            raise ParamCorruptError(f"the fault models {', '.join(methods)} share a family but not their grid of settings")
        for faults in zip(*grids):
            for fault in faults:
                for trial in range(config.trials if fault.stochastic else 1):
                    rows.append((fault, trial, fault_key(label, fault, trial)))
    return rows
