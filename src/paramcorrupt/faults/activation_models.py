"""Activation faults as registered fault models, so a sweep runs them (same rows, store,
resume and report as the weight faults).

A row's group chooses the activations: by default (``modules="owners"``) the outputs of the
modules that own the group's parameters; with ``modules`` a module class name (``relu``,
``maxpool2d``, ...) or a name pattern, the matching modules inside the group's scope, the
smallest module holding its parameters (:func:`~paramcorrupt.faults.activations.modules_in_scope`):
modules that own no parameters are chosen this way. ``modules`` is a fixed setting (one value
per sweep, not in the row key; written on the rows only when not "owners"). One row is one
trial over the evaluation data:

- ``activation-bitflip``: transient flips at ``ber`` (or ``flips`` per example and hooked
  output), drawn anew for every example of every batch (each example is one inference);
- ``activation-stuck-at``: permanent stuck-at-``value`` cells, drawn once per row over one
  example's output and hitting every example of every batch.

Rows record ``bit_errors`` (faulty bits written while the evaluation data was evaluated: the
sweep's evaluator stops counting during the gradient's data pass, whose faults still hit
the model; see :func:`paramcorrupt.probe.outcome_rows.evaluate_row` for ``--reuse``) and
``changed`` (output elements changed). The weights are untouched (the row's corruption is empty); the
hooks live only while the row is evaluated.
"""

from __future__ import annotations

from typing import Any

from ..corruption.base import Corruption
from ..errors import ParamCorruptError
from .activations import ActivationFaults, modules_in_scope
from .base import FaultContext, register_fault
from .bits import StuckAt, _BitFault, stuck_value

__all__ = ["ActivationBitFlip", "ActivationStuckAt"]


class _ActivationFault(_BitFault):
    mode = "transient"
    order = 120
    fixed = ("modules",)
    defaults = {**_BitFault.defaults, "modules": "owners"}

    def check(self, setting: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(setting["modules"], str) or not setting["modules"].strip():
            raise ParamCorruptError(
                f"{self.name}: modules must be 'owners', a module class name or a name pattern, got {setting['modules']!r}"
            )
        return super().check(setting)

    def hooked_modules(self, model: Any, group: Any) -> dict[str, Any]:
        """The modules whose outputs this fault hooks for ``group`` (refused when none)."""
        return modules_in_scope(model, group, self.setting["modules"])

    def corrupt(self, ctx: FaultContext) -> Corruption:
        s = self.setting
        faults = ActivationFaults(
            ctx.model,
            self.hooked_modules(ctx.model, ctx.group),
            format=s["format"],
            bits=s["bits"],
            ber=s["ber"],
            flips=s["flips"],
            op=self._op(),
            mode=self.mode,
            per_example=True,
            rearm=True,
            generator=ctx.generator,
        )
        # no weight changes; the sweep holds info["during"] open while it evaluates the row
        return Corruption(ctx.group, None, self.name, {}, {}, {"during": faults}, mode="set")

    def row_fields(self, ctx: FaultContext, corruption: Corruption | None = None) -> dict[str, Any]:
        out = dict(self.setting)
        if out["modules"] == "owners":  # the default: rows written before the setting existed match
            del out["modules"]
        faults = None if corruption is None else corruption.info.get("during")
        if isinstance(faults, ActivationFaults):
            idle = [name for name, n in faults.calls.items() if n == 0]
            if idle:
                raise ParamCorruptError(
                    f"{self.name}: module {idle[0]!r} of group {ctx.group.name!r} never ran during the evaluation "
                    "(a module an evaluator skips, or --reuse's traced graph inlining it); no fault reached it"
                )
            out["bit_errors"], out["changed"] = faults.bit_errors, faults.changed
        return out


@register_fault
class ActivationBitFlip(_ActivationFault):
    """Transient bit flips in the outputs of the modules owning the group's parameters,
    drawn anew for every example of every batch."""

    name = "activation-bitflip"
    parameters = ("format", "bits", "ber", "flips")


@register_fault
class ActivationStuckAt(_ActivationFault):
    """Permanent stuck-at-``value`` cells in the outputs of the modules owning the group's
    parameters, the same cells in every example of every batch."""

    name = "activation-stuck-at"
    parameters = StuckAt.parameters
    defaults = {**StuckAt.defaults, "modules": "owners"}
    mode = "permanent"

    def check(self, setting: dict[str, Any]) -> dict[str, Any]:
        return super().check(dict(setting, value=stuck_value(setting["value"])))

    def _op(self) -> str:
        return f"stuck-{self.setting['value']}"
