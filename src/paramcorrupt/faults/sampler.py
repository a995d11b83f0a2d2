"""Random bit faults of one group, prepared once and drawn many times (:class:`BitFaultSampler`).

The draw (see :mod:`paramcorrupt.faults.bits`): the number of faulty bits m among the
N = k x |bits| candidate (coordinate, bit) pairs is Binomial(N, ber) (or given), then m
distinct pairs are drawn uniformly, in O(m) memory. What does not change between draws — the
group's parameters looked up and checked, their sizes and offsets, the candidate bits — is
laid out once, so a draw costs a few calls plus a few per tensor holding a fault.

:meth:`BitFaultSampler.injected` is one whole trial: draw, write, restore. A flip in the
parameters' own format (float32 faults in float32 weights, bfloat16 in bfloat16) on
contiguous CPU tensors reads and writes the faulty weights' bits through NumPy views of the
parameters' storage (one NumPy indexing per tensor and direction, about 0.5 us, where a
PyTorch call costs 2-4 us), bumping each written tensor's autograd version as an in-place
PyTorch write would; every other case goes through ``torch.take``/``Tensor.put_``. Both give
the same faults and values, bit for bit (tests/test_bit_sampler.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..corruption.apply import corrupted, frozen_norm_stats
from ..corruption.base import Corruption
from ..errors import InputTypeError, ParamCorruptError
from ..formats import get_format
from ..groups import ParameterGroup, as_group
from .stored import stored_image
from .torchao import stored_layout

__all__ = ["OPS", "BitFaultSampler"]

OPS = ("flip", "stuck-0", "stuck-1")

#: one write of a trial: (parameter, its NumPy integer view or None, indices, new, old)
Write = tuple[Tensor, "np.ndarray | None", Any, Any, Any]


def _distinct(m: int, total: int, generator: torch.Generator) -> Tensor:
    """m distinct integers drawn uniformly from [0, total), sorted; O(m) memory unless m is
    more than half of total."""
    if m == 0:
        return torch.empty(0, dtype=torch.long)
    if 2 * m > total:
        return torch.randperm(total, generator=generator)[:m].sort().values
    chosen = torch.randint(0, total, (m,), generator=generator).unique()
    while chosen.numel() < m:  # a repeat (rare while m << total): draw the missing ones
        draw = torch.randint(0, total, (m - chosen.numel(),), generator=generator)
        chosen = torch.cat([chosen, draw]).unique()
    return chosen



class BitFaultSampler:
    """The random bit faults of one group, prepared once and drawn many times: what
    :func:`~paramcorrupt.faults.random_bit_faults` draws, without looking the group's
    parameters up, checking them and laying out their candidate bits again on every draw
    (the cost of a trial when trials are many and each is short).

    The group's parameters (the objects), names, shapes, dtypes and layout are read here; its
    values at each draw: a parameter replaced by another object, or moved to another dtype or
    device, needs a new sampler (a changed storage under the same object is followed, or
    refused with one line). A quantised model's stored image and torchao weights are laid out
    again at every draw (their layout holds values). Arguments as :func:`~paramcorrupt.faults.random_bit_faults`.

    Example:
        >>> model = nn.Linear(4, 2)
        >>> sampler = BitFaultSampler(model, format="float32", bits="exponent")
        >>> generator = torch.Generator().manual_seed(0)
        >>> [sampler(flips=2, generator=generator).info["bit_errors"] for _ in range(3)]
        [2, 2, 2]
    """

    def __init__(
        self,
        model: nn.Module,
        group: ParameterGroup | str | Iterable[str] | None = None,
        *,
        format: str = "float32",
        bits: str | int = "any",
        op: str = "flip",
        stored: Mapping[str, Any] | None = None,
    ) -> None:
        self.format = get_format(format)
        self.positions = self.format.select(bits)
        if op not in OPS:
            raise ParamCorruptError(f"unknown fault op {op!r}; expected one of {', '.join(OPS)}")
        self.model, self.bits, self.op, self.stored = model, bits, op, stored
        self.group = group if isinstance(group, ParameterGroup) else as_group(model, group)
        params = self.group.tensors(model)  # validates the names
        for name, param in params.items():
            if not param.is_floating_point():
                raise InputTypeError(
                    f"parameter {name!r} has dtype {param.dtype}; only floating-point parameters can be corrupted"
                )
        self.params = params
        # plain tensors: no torchao weight to look for (a walk of each one's classes)
        self._plain = stored is None and all(
            type(p) is nn.Parameter or type(p) is Tensor for p in params.values()
        )
        self._rates: dict[float, Tensor] = {}
        self._layout(None if self._plain else self._stored_layout())

    def _stored_layout(self) -> Any:
        """The stored image of a quantised model's weights (faults/stored.py), else the
        stored fields of torchao weights (faults/torchao.py), or None."""
        if self.stored is not None:
            return stored_image(self.params, self.stored, self.bits)
        return stored_layout(self.params, self.bits)

    def _layout(self, layout: Any) -> None:
        fmt = self.format
        self.layout = layout
        plain = self.params if layout is None else layout.plain
        self._names, self._tensors = list(plain), list(plain.values())
        self.sizes = [p.numel() for p in self._tensors]
        self._numel = dict(zip(self._names, self.sizes))
        self._cpu = all(p.device.type == "cpu" for p in self._tensors)
        self._bounds = np.cumsum([0, *self.sizes], dtype=np.int64)
        self.total = int(self._bounds[-1]) * len(self.positions) + (0 if layout is None else layout.total)
        self._total = torch.tensor([float(self.total)], dtype=torch.float64)
        # a flip in the parameters' own format: the new bits are the old ones xor the mask
        self._native = self.op == "flip" and fmt.is_float and all(p.dtype == fmt.dtype for p in self._tensors)
        # ... read and written through NumPy views of the storage, on contiguous CPU tensors
        self._arrays: list[np.ndarray] | None = None
        if self._native and self._cpu and all(p.is_contiguous() for p in self._tensors):
            self._masks = fmt.signed_masks.numpy()
            self._arrays = [self._array(p) for p in self._tensors]
            self._pointers = [p.data_ptr() for p in self._tensors]

    def _array(self, param: Tensor) -> np.ndarray:
        """The flat NumPy integer view of a contiguous CPU parameter's storage."""
        return param.detach().view(self.format.int_view).numpy().reshape(-1)

    def __call__(
        self, *, ber: float | None = None, flips: int | None = None, generator: torch.Generator
    ) -> Corruption:
        """One draw: a set-values corruption (see :func:`~paramcorrupt.faults.random_bit_faults`)."""
        return self._draw(ber, flips, generator)[0]

    @contextmanager
    def injected(
        self, *, ber: float | None = None, flips: int | None = None, generator: torch.Generator
    ) -> Iterator[Corruption]:
        """One trial: draw faults, write them into the model, yield the corruption (its
        ``info`` counts them), restore every changed weight bit for bit on exit — normal, by
        exception or by KeyboardInterrupt — and batch-norm statistics as they were, as
        :func:`~paramcorrupt.corrupted` does. The values the draw read are the ones restored,
        so a faulty weight is read once and written twice (the fault, the restore).

        Example:
            >>> model = nn.Linear(4, 2)
            >>> before = model.weight.clone()
            >>> sampler = BitFaultSampler(model, "weight", bits="exponent")
            >>> with sampler.injected(flips=3, generator=torch.Generator().manual_seed(0)) as fault:
            ...     fault.info["bit_errors"], fault.info["changed"], torch.equal(model.weight, before)
            (3, 2, False)
            >>> torch.equal(model.weight, before)
            True
        """
        corruption, writes = self._draw(ber, flips, generator)
        if writes is None:  # a stored image or torchao fields: the general path
            with corrupted(self.model, corruption):
                yield corruption
            return
        done: list[Write] = []
        with frozen_norm_stats(self.model):
            try:
                with torch.no_grad():
                    for write in writes:
                        done.append(write)
                        _put(write, 3)
                yield corruption
            finally:
                with torch.no_grad():
                    for write in reversed(done):
                        _put(write, 4)

    def _draw(
        self, ber: float | None, flips: int | None, generator: torch.Generator
    ) -> tuple[Corruption, list[Write] | None]:
        """A draw and, for plain parameters, its writes (with the values they replace)."""
        _check_rate(ber, flips)
        if not isinstance(generator, torch.Generator):
            raise InputTypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if not self._plain:  # laid out again: the layout holds values
            self._layout(self._stored_layout())
        layout, total = self.layout, self.total
        if flips is not None:
            if flips > total:
                raise ParamCorruptError(
                    f"flips={flips} exceeds the {total:,} candidate bits of group {self.group.name!r}"
                )
            m = flips
        else:
            rate = self._rates.get(ber)  # type: ignore[arg-type]
            if rate is None:
                rate = self._rates[ber] = torch.tensor([float(ber)], dtype=torch.float64)  # type: ignore[arg-type,index]
            m = int(torch.binomial(self._total, rate, generator=generator))
        chosen = _distinct(m, total, generator)
        if layout is not None:  # the plain parameters' candidates first, then the stored fields'
            stored, chosen = (
                chosen[chosen >= total - layout.total] - (total - layout.total),
                chosen[chosen < total - layout.total],
            )
        coords, bit_of = _coordinates(chosen, self.positions)
        corruption, writes = self._write_bits(coords, bit_of, bit_errors=m)
        if layout is None:
            return corruption, writes
        return layout.add_faults(corruption, stored, self.op), None

    @torch.no_grad()
    def _write_bits(self, coords: Tensor, bit_of: Tensor, **info: Any) -> tuple[Corruption, list[Write]]:
        """The corruption that applies the op to bit ``bit_of[j]`` of flat coordinate
        ``coords[j]`` of the group (coordinates over the group's tensors in order, sorted),
        and its writes."""
        fmt, op = self.format, self.op
        if not coords.numel():  # nothing faulty: no tensor is read
            return self._corruption({}, {}, info), []
        # one mask per faulty coordinate (its distinct bits summed = or-ed), coordinates sorted
        found = coords.cpu().numpy()
        repeated = found.size > 1 and bool((found[1:] == found[:-1]).any())
        if repeated:  # two bits of one weight (rare): one mask for both
            unique = coords.unique_consecutive()
            inverse = torch.searchsorted(unique, coords)
            mask = torch.zeros_like(unique).scatter_add_(0, inverse, torch.bitwise_left_shift(1, bit_of))
            found = unique.cpu().numpy()
        # the tensors holding a fault: one search over the sorted coordinates
        cuts = np.searchsorted(found, self._bounds)
        sizes = np.diff(cuts)
        held = np.flatnonzero(sizes).tolist()
        local = found - np.repeat(self._bounds[:-1], sizes)
        if self._arrays is not None and not repeated:
            return self._xor_arrays(local, cuts.tolist(), held, bit_of.numpy(), info)
        counts = sizes[held].tolist()
        pieces = torch.from_numpy(local).split(counts)
        names = [self._names[t] for t in held]
        tensors = [self._tensors[t] for t in held]
        if not self._cpu:
            pieces = tuple(i.to(p.device) for i, p in zip(pieces, tensors))
        read = [torch.take(p, i) for p, i in zip(tensors, pieces)]  # flat (logical) indices, any layout
        flat = torch.cat(read)
        if self._native and not repeated and flat.dtype == fmt.dtype:  # xor the bits in the parameters' own dtype
            masks = torch.take(fmt.signed_masks, bit_of.to(flat.device))
            parts = (flat.view(fmt.int_view) ^ masks).view(flat.dtype).split(counts)
            writes = list(zip(tensors, [None] * len(names), pieces, parts, read))
            return self._corruption(dict(zip(names, pieces)), dict(zip(names, parts)), info), writes
        # encode, apply the op and decode every faulty coordinate at once
        if not repeated:
            mask = torch.bitwise_left_shift(1, bit_of)
        scale = None
        if not fmt.is_float:
            scale = torch.cat([fmt.scale_at(p, i, fmt.scales(p)) for p, i in zip(tensors, pieces)])
        codes = fmt.encode_values(flat.to(fmt.dtype if fmt.is_float else torch.float64), scale)
        mask = mask.to(codes.device)
        new = codes ^ mask if op == "flip" else (codes | mask if op == "stuck-1" else codes & ~mask)
        decoded = fmt.decode_values(new, scale)
        keep = None if op == "flip" else new != codes  # a flip always changes its code
        if keep is not None and bool(keep.all()):
            keep = None
        indices: dict[str, Tensor | None] = {}
        values: dict[str, Tensor] = {}
        writes = []
        kept = [None] * len(counts) if keep is None else keep.split(counts)
        for name, param, idx, value, old, here in zip(names, tensors, pieces, decoded.split(counts), read, kept):
            if here is not None:
                idx, value, old = idx[here], value[here], old[here]
            if idx.numel():
                indices[name] = idx
                values[name] = value if value.dtype == param.dtype else value.to(param.dtype)
                writes.append((param, None, idx, values[name], old))
        return self._corruption(indices, values, info), writes

    def _xor_arrays(
        self, local: np.ndarray, cuts: list[int], held: list[int], bit_of: np.ndarray, info: dict[str, Any]
    ) -> tuple[Corruption, list[Write]]:
        """The native flip through NumPy views: per tensor holding a fault, one read."""
        assert self._arrays is not None
        masks = self._masks[bit_of]
        dtype = self.format.dtype
        indices: dict[str, Tensor | None] = {}
        values: dict[str, Tensor] = {}
        writes: list[Write] = []
        for t in held:
            param, a, b = self._tensors[t], cuts[t], cuts[t + 1]
            if param.data_ptr() != self._pointers[t]:  # its storage was replaced (.data = ...)
                if not param.is_contiguous() or param.dtype != dtype or param.device.type != "cpu":
                    raise ParamCorruptError(
                        f"parameter {self._names[t]!r} changed its layout, dtype or device since the "
                        "sampler was made: make a new BitFaultSampler"
                    )
                self._arrays[t], self._pointers[t] = self._array(param), param.data_ptr()
            where = local[a:b]
            old = self._arrays[t][where]
            new = old ^ masks[a:b]
            name = self._names[t]
            indices[name] = torch.from_numpy(where)
            values[name] = torch.from_numpy(new).view(dtype)
            writes.append((param, self._arrays[t], where, new, old))
        return self._corruption(indices, values, info), writes

    def _corruption(
        self, indices: dict[str, Tensor | None], values: dict[str, Tensor], info: dict[str, Any]
    ) -> Corruption:
        changed = sum(i.numel() for i in indices.values())  # type: ignore[union-attr]
        distinct = {n: self._numel[n] for n in indices}
        info = {"format": self.format.name, "changed": changed, "distinct_indices_of": distinct, **info}
        return Corruption(self.group, None, f"bit-{self.op}", indices, values, info, mode="set")


def _put(write: Write, which: int) -> None:
    """Write a trial's new values (``which`` = 3) or the old ones back (4) at its indices:
    through the NumPy view (bumping the tensor's autograd version, as an in-place PyTorch
    write does) or with ``Tensor.put_``."""
    param, array, where = write[0], write[1], write[2]
    if array is None:
        param.put_(where, write[which])
    else:
        array[where] = write[which]
        torch.autograd.graph.increment_version(param)


def _coordinates(chosen: Tensor, positions: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Candidate numbers (coordinate x |positions| + bit slot) as (coordinate, bit)."""
    slots = len(positions)
    if positions[-1] - positions[0] == slots - 1:  # consecutive bits (a class): no table to look up
        if slots & (slots - 1) == 0:  # a power of two (all 32, 16 or 8 bits): a shift and a mask
            shift = slots.bit_length() - 1
            coords, bit_of = chosen >> shift, chosen & (slots - 1)
        else:
            coords, bit_of = chosen // slots, chosen % slots
        if positions[0]:
            bit_of = bit_of + positions[0]
    else:
        coords, bit_of = chosen // slots, torch.take(torch.tensor(positions), chosen % slots)
    return coords, bit_of



def _check_rate(ber: Any, flips: Any) -> None:
    if (ber is None) == (flips is None):
        raise ParamCorruptError(f"give one of ber and flips, got ber={ber!r}, flips={flips!r}")
    if ber is not None and (
        isinstance(ber, bool) or not isinstance(ber, (int, float)) or not 0.0 <= ber <= 1.0
    ):
        raise ParamCorruptError(f"ber must be a number in [0, 1], got ber={ber!r}")
    if flips is not None and (isinstance(flips, bool) or not isinstance(flips, int) or flips < 0):
        raise ParamCorruptError(f"flips must be an integer >= 0, got flips={flips!r}")


