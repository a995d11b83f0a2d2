"""Faults that write values: random values in a range (pytorchfi's random weight injection)."""

from __future__ import annotations

from typing import Any

from ..corruption.base import Corruption
from ..corruption.random import random_values
from ..errors import InputTypeError, ParamCorruptError
from .base import FaultContext, FaultModel, register_fault

__all__ = ["RandomValues"]


@register_fault
class RandomValues(FaultModel):
    """``count`` coordinates of the group set to uniform values in [low, high), written exactly."""

    name = "random-values"
    parameters = ("count", "low", "high")
    defaults = {"low": -1.0, "high": 1.0}
    stochastic = True
    axes = ("count",)

    def check(self, setting: dict[str, Any]) -> dict[str, Any]:
        count, low, high = setting["count"], setting["low"], setting["high"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ParamCorruptError(f"count must be an integer >= 1, got count={count!r}")
        for name, value in (("low", low), ("high", high)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputTypeError(f"{name} must be a number, got {name}={value!r}")
        if not low < high:
            raise ParamCorruptError(f"low must be below high, got low={low!r}, high={high!r}")
        return {"count": count, "low": float(low), "high": float(high)}

    def corrupt(self, ctx: FaultContext) -> Corruption:
        s = self.setting
        return random_values(ctx.model, s["count"], ctx.group, low=s["low"], high=s["high"], generator=ctx.generator)
