"""Random faults in the stored bits: flips at a bit error rate or of a fixed number, and
stuck-at-0/1 bits, in float32, float16, bfloat16 or int8 storage (see
:mod:`~paramcorrupt.formats.numbers`).

Faults are drawn sparsely: the number of faulty bits m among the N = k x |bits| candidate
(coordinate, bit) pairs is Binomial(N, ber) (or given), then m distinct pairs are drawn
uniformly. Memory is O(m), never a mask of N entries. The faulty weights are written as
values (``mode="set"``), so restores are bit-exact even where a flip made Inf or NaN. The
draw itself is :class:`~paramcorrupt.faults.sampler.BitFaultSampler`'s (faults/sampler.py),
which a loop of many trials keeps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..corruption.base import Corruption
from ..errors import ParamCorruptError
from ..formats import bits_setting
from ..groups import ParameterGroup
from .base import FaultContext, FaultModel, key_text, register_fault
from .sampler import BitFaultSampler, _check_rate
from .stored import row_fields as stored_row_fields
from .torchao import row_fields as torchao_row_fields

__all__ = ["BitFlip", "StuckAt", "random_bit_faults"]


def random_bit_faults(
    model: nn.Module,
    group: ParameterGroup | str | Iterable[str] | None = None,
    *,
    format: str = "float32",
    bits: str | int = "any",
    ber: float | None = None,
    flips: int | None = None,
    op: str = "flip",
    generator: torch.Generator,
    stored: Mapping[str, Any] | None = None,
) -> Corruption:
    """Random faults in the stored bits of a group: each candidate bit faulty with
    probability ``ber`` independently, or exactly ``flips`` faulty bits.

    Args:
        model: the network (values are read to encode them).
        group: the parameters (default: every trainable one).
        format: the stored format: float32, float16, bfloat16, int8, int8-channel.
        bits: which bits may fail: any, sign, exponent, mantissa, msb, or a bit index.
        ber: the bit error rate, in [0, 1]; or
        flips: the number of faulty bits, >= 0 (give one of the two).
        op: "flip", "stuck-0" or "stuck-1" (a stuck bit changes a weight only where it
            held the other value).
        generator: the source of randomness.
        stored: name -> :class:`~paramcorrupt.formats.StoredTensor` of a model quantised by
            :func:`paramcorrupt.quantize`: the group's stored weights are faulted in their
            stored image (codes, scales, zero points, each bit in its field's own format;
            see :mod:`paramcorrupt.faults.stored`), its other parameters in ``format``.

    Returns:
        A set-values corruption of the weights whose stored code changed;
        ``info["bit_errors"]`` is m, ``info["changed"]`` the number of weights changed.

    Raises:
        ValueError: for ber outside [0, 1], a negative count or one above N, both or none of
            ber/flips, an unknown format, bit class or op, or a bit index out of range.

    Example:
        >>> model = nn.Linear(4, 2)
        >>> fault = random_bit_faults(model, format="int8", flips=3, generator=torch.Generator().manual_seed(0))
        >>> fault.info["bit_errors"], fault.mode
        (3, 'set')
    """
    sampler = BitFaultSampler(model, group, format=format, bits=bits, op=op, stored=stored)
    return sampler(ber=ber, flips=flips, generator=generator)


def stuck_value(value: Any) -> int:
    """A stuck-at setting's value: 0 or 1 (the strings "0" and "1" too; never a bool)."""
    if isinstance(value, str) and value in ("0", "1"):
        value = int(value)
    if value not in (0, 1) or isinstance(value, bool):
        raise ParamCorruptError(f"a stuck-at value must be 0 or 1, got value={value!r}")
    return value


class _BitFault(FaultModel):
    """Settings shared by the random bit faults; exactly one of ber and flips is set."""

    defaults = {"format": "float32", "bits": "any", "ber": None, "flips": None}
    stochastic = True
    axes = ("ber", "flips")
    op = "flip"

    def check(self, setting: dict[str, Any]) -> dict[str, Any]:
        bits = bits_setting(setting["format"], setting["bits"])
        _check_rate(setting["ber"], setting["flips"])
        out = dict(setting, bits=bits)
        if out["ber"] is not None:
            out["ber"] = float(out["ber"])
        return out

    @classmethod
    def grid(cls, values: Any) -> list[FaultModel]:
        """As :meth:`FaultModel.grid`; ber and flips exclude each other, so values for both
        give the grid over the rates, then the grid over the counts."""
        values = dict(values)
        if values.get("ber") is not None and values.get("flips") is not None:
            rates = {k: v for k, v in values.items() if k != "flips"}
            counts = {k: v for k, v in values.items() if k != "ber"}
            return super().grid(rates) + super().grid(counts)
        return super().grid(values)

    def key(self) -> str:
        # unset (None) settings are left out: "format=int8|bits=any|ber=1e-06"
        return "|".join(
            f"{n}={key_text(self.setting[n])}"
            for n in self.parameters
            if self.setting[n] is not None
        )

    def corrupt(self, ctx: FaultContext) -> Corruption:
        s = self.setting
        # the group laid out once for all its rows of this format, bit class and op
        key = ("bit-faults", s["format"], s["bits"], self._op(), id(ctx.stored))
        sampler = ctx.cache.get(key)
        if sampler is None:
            sampler = ctx.cache[key] = BitFaultSampler(
                ctx.model, ctx.group, format=s["format"], bits=s["bits"], op=self._op(), stored=ctx.stored
            )
        return sampler(ber=s["ber"], flips=s["flips"], generator=ctx.generator)  # type: ignore[arg-type]

    def _op(self) -> str:
        return self.op

    def row_fields(self, ctx: FaultContext, corruption: Corruption | None = None) -> dict[str, Any]:
        out = dict(self.setting)
        if corruption is not None:
            out["bit_errors"] = corruption.info.get("bit_errors")
            out["changed"] = corruption.info.get("changed")
            out.update(stored_row_fields(corruption.info))
            out.update(torchao_row_fields(corruption.info))
        return out


@register_fault
class BitFlip(_BitFault):
    """Bits of the stored weights flip: at a bit error rate (``ber``) or a fixed number
    (``flips``), among the chosen ``bits`` of the ``format``."""

    name = "bitflip"
    parameters = ("format", "bits", "ber", "flips")


@register_fault
class StuckAt(_BitFault):
    """Bits of the stored weights stuck at ``value`` (0 or 1), at a rate or a number."""

    name = "stuck-at"
    parameters = ("format", "bits", "value", "ber", "flips")
    defaults = {**_BitFault.defaults, "value": 0}

    def check(self, setting: dict[str, Any]) -> dict[str, Any]:
        return super().check(dict(setting, value=stuck_value(setting["value"])))

    def _op(self) -> str:
        return f"stuck-{self.setting['value']}"
