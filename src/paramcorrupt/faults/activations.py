"""Faults in activations: bits of module outputs flip or stick during inference.

:func:`activation_faults` is a context manager that hooks the outputs of chosen modules
(by name pattern, or the modules owning a :class:`~paramcorrupt.groups.ParameterGroup`, so
every grouping of weights — type, position, layer — chooses activations too) and writes
faults into them, in the same stored formats and bit classes as the weight faults
(:mod:`paramcorrupt.formats.numbers`: float32, float16, bfloat16, int8 per tensor, and
int8-channel: one scale per example, dim 0).

- ``mode="transient"``: the faults hit one inference — the first forward pass of the model
  inside the context, or after :meth:`ActivationFaults.arm` — and are drawn anew at each arm.
  ``per_example=True`` gives every example of the batch (dim 0) its own independent draw,
  so one forward pass carries as many independent trials as the batch has examples.
- ``mode="permanent"``: the faulty positions are drawn once over one example's output
  (``shape[1:]``) and hit every example of every inference (a stuck cell).

What fails: each candidate (element, bit) pair with probability ``ber``, or exactly
``flips`` pairs (per hooked module output; per example where positions are per example),
or every bit of ``bits`` at one ``index``. Faults are drawn sparsely, as the weight faults
are: a Binomial count, then that many distinct pairs; never a mask of all bits. A module's
output is copied only when it receives a fault (an output that is a view of the module's
input is never written through). The model's parameters and buffers are never touched; the
hooks are removed when the context exits, by an exception (``KeyboardInterrupt``
included) as well.

Positions live in one example's output (``shape[1:]``, batch dim 0) when ``per_example``
or ``permanent``, else in the whole output tensor. Flat indices are in row-major
(logical) order.

Example:
    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    >>> g = torch.Generator().manual_seed(0)
    >>> with activation_faults(model, "0", index=2, bits="sign", generator=g) as faults:
    ...     out = model(torch.ones(1, 4))
    >>> faults.bit_errors, faults.changed
    (1, 1)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..corruption.apply import frozen_norm_stats
from ..errors import InputTypeError, ParamCorruptError
from ..formats import NumberFormat, get_format
from .activation_select import modules_in_scope, select_modules
from .sampler import OPS, _distinct

__all__ = ["MODES", "ActivationFaults", "activation_faults", "modules_in_scope", "select_modules"]

MODES = ("transient", "permanent")


class ActivationFaults:
    """The hooks of :func:`activation_faults` and what they wrote.

    Args:
        model: the network (its parameters and buffers are never written).
        modules: which outputs (see :func:`select_modules`).
        format: float32, float16, bfloat16, int8 (one scale per output tensor) or
            int8-channel (one scale per example); a float activation faulted in a narrower
            format becomes the faulty narrow value, the others keep their own.
        bits: the bit class (any, sign, exponent, mantissa, msb) or a bit index.
        ber: each candidate (element, bit) faulty with this probability; or
        flips: exactly this many faulty pairs (per output; per example with ``per_example``
            or ``permanent``); or
        index: one element (a flat index or a full index tuple), every bit of ``bits`` at it.
        op: flip, stuck-0 or stuck-1.
        mode: transient (one inference per :meth:`arm`) or permanent (every inference).
        per_example: transient faults drawn per example (dim 0): independent trials.
        item: which tensor of a tuple output is faulted.
        generator: the source of randomness (needed for ber and flips).
        rearm: transient faults drawn anew at every forward pass of the model (each batch
            of a data set is a new inference; the counters add up until :meth:`arm`).
        example: inputs of one forward pass (a tensor or a tuple) to check every hooked
            module's output type on before anything is hooked (:meth:`check`).

    Attributes:
        modules: name -> module, the hooked modules.
        calls: name -> how many times each hooked module ran inside the context.
        counting: whether faults written now are counted (default True); faults are
            written either way (the sweep counts the evaluation data only: it sets this
            False while the gradient's data is evaluated).
        bit_errors: faulty (element, bit) pairs drawn since the last :meth:`arm` (or entry).
        changed: output elements whose value changed since then.
        records: one dict per faulted module call since then: ``module``, ``bit_errors``,
            ``changed``, and ``per_example`` (faulty bits per example, a tensor) where
            positions are per example.
    """

    def __init__(
        self,
        model: nn.Module,
        modules: Any,
        *,
        format: str = "float32",
        bits: str | int = "any",
        ber: float | None = None,
        flips: int | None = None,
        index: int | tuple[int, ...] | None = None,
        op: str = "flip",
        mode: str = "transient",
        per_example: bool = False,
        item: int = 0,
        generator: torch.Generator | None = None,
        example: Any = None,
        rearm: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.format: NumberFormat = get_format(format)
        self.positions = torch.tensor(self.format.select(bits), dtype=torch.long)
        if op not in OPS:
            raise ParamCorruptError(f"unknown fault op {op!r}; expected one of {', '.join(OPS)}")
        if mode not in MODES:
            raise ParamCorruptError(
                f"unknown activation fault mode {mode!r}; expected one of {', '.join(MODES)}"
            )
        _check_what(ber, flips, index)
        if (
            not isinstance(per_example, bool)
            or not isinstance(item, int)
            or isinstance(item, bool)
            or item < 0
        ):
            raise InputTypeError(
                f"per_example must be a bool and item an integer >= 0, got per_example={per_example!r}, item={item!r}"
            )
        if generator is None and index is None:
            raise ParamCorruptError("random activation faults (ber or flips) need a generator")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise InputTypeError(
                f"generator must be a torch.Generator, got {type(generator).__name__}"
            )
        self.model = model
        self.modules = select_modules(model, modules)
        self.ber, self.flips, self.index, self.op, self.mode = ber, flips, index, op, mode
        self.per_example, self.item, self.generator = per_example, item, generator
        self.rearm = bool(rearm)
        self.counting = True
        self.calls = dict.fromkeys(self.modules, 0)
        self._handles: list[Any] = []
        self._permanent: dict[str, tuple[tuple[int, ...], Tensor]] = {}
        self._armed = False
        self.arm()
        if example is not None:
            self.check(example)

    def check(self, example: Any) -> None:
        """Run one forward pass on ``example`` (a tensor, or a tuple of positional inputs)
        without faults, under ``no_grad`` and with the normalisation statistics kept, and
        refuse (one line) a hooked module whose output is not a floating-point tensor or a
        tuple of tensors; the check's hooks are removed whatever happens."""
        inputs = example if isinstance(example, tuple) else (example,)
        self.check_run(lambda: self.model(*inputs))

    def check_run(self, run: Any) -> set[str]:
        """As :meth:`check`, with ``run()`` doing the forward pass (e.g. a task's loss on one
        batch); returns the names of the hooked modules that ran."""
        handles = []
        ran: set[str] = set()

        def checker(name: str) -> Any:
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                self._output_tensor(name, output)
                ran.add(name)

            return hook

        try:
            for name, module in self.modules.items():
                handles.append(module.register_forward_hook(checker(name)))
            with torch.no_grad(), frozen_norm_stats(self.model):
                run()
        finally:
            for handle in handles:
                handle.remove()
        return ran

    # -- the context ---------------------------------------------------------------------

    def __enter__(self) -> ActivationFaults:
        try:
            for name, module in self.modules.items():
                self._handles.append(module.register_forward_hook(self._hook(name)))
            if self.mode == "transient":  # after the model's forward pass, one inference is over
                self._handles.append(self.model.register_forward_hook(self._disarm))
                if self.rearm:  # every forward pass (batch) is a new inference: a new draw
                    self._handles.append(self.model.register_forward_pre_hook(self._rearm))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        while self._handles:
            self._handles.pop().remove()
        self._armed = False

    @property
    def hooked(self) -> bool:
        return bool(self._handles)

    def arm(self) -> None:
        """Transient faults hit the next inference (a new draw); resets the counters."""
        self._armed = True
        self.bit_errors = 0
        self.changed = 0
        self.records: list[dict[str, Any]] = []

    def _disarm(self, module: nn.Module, args: Any, output: Any) -> None:
        self._armed = False

    def _rearm(self, module: nn.Module, args: Any) -> None:
        self._armed = True

    # -- the faults ----------------------------------------------------------------------

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            tensor = self._output_tensor(name, output)
            self.calls[name] += 1
            if not self._armed:
                return None
            new = self._fault(name, tensor)
            if new is None:
                return None
            if isinstance(output, tuple):
                return output[: self.item] + (new,) + output[self.item + 1 :]
            return new

        return hook

    def _output_tensor(self, name: str, output: Any) -> Tensor:
        what = f"module {name!r} ({type(self.modules[name]).__name__})"
        if isinstance(
            output, tuple
        ):  # None beside the tensors: attention's (output, None) without weights
            if not all(isinstance(t, Tensor) or t is None for t in output):
                raise ParamCorruptError(
                    f"{what} returns a tuple holding a {next(type(t).__name__ for t in output if not isinstance(t, Tensor))}; activation faults need a tensor or a tuple of tensors"
                )
            if self.item >= len(output):
                raise ParamCorruptError(
                    f"{what} returns a tuple of {len(output)} tensors; item={self.item} is out of range"
                )
            output = output[self.item]
        if not isinstance(output, Tensor):
            raise ParamCorruptError(
                f"{what} returns a {type(output).__name__}; activation faults need a tensor or a tuple of tensors"
            )
        if not output.is_floating_point():
            raise ParamCorruptError(
                f"{what} returns a {output.dtype} tensor; activation faults need floating-point outputs"
            )
        if (self.per_example or self.mode == "permanent") and output.dim() == 0:
            raise ParamCorruptError(
                f"{what} returns a scalar; per-example or permanent faults need a batch dimension"
            )
        return output

    def _draw(self, n: int, generator: torch.Generator, m: int | None = None) -> Tensor:
        """Distinct candidate pairs (element * |bits| + bit slot) among n elements."""
        total = n * self.positions.numel()
        if m is None:
            m = (
                self.flips
                if self.flips is not None
                else int(
                    torch.binomial(
                        torch.tensor([float(total)], dtype=torch.float64),
                        torch.tensor([float(self.ber)], dtype=torch.float64),
                        generator=generator,
                    )
                )
            )
        if m > total:
            raise ParamCorruptError(
                f"flips={m} exceeds the {total:,} candidate bits of one activation"
            )
        return _distinct(m, total, generator)

    def _index_pairs(self, shape: tuple[int, ...]) -> Tensor:
        index = self.index if isinstance(self.index, tuple) else (self.index,)
        numel = math.prod(shape)
        if len(index) == 1:
            flat = index[0]
        elif len(index) == len(shape) and all(0 <= i < s for i, s in zip(index, shape)):
            flat = sum(i * math.prod(shape[d + 1 :]) for d, i in enumerate(index))
        else:
            raise ParamCorruptError(
                f"index={self.index!r} does not fit an activation of shape {tuple(shape)}"
            )
        if not 0 <= flat < numel:
            raise ParamCorruptError(
                f"index={self.index!r} is out of range for an activation of {numel:,} elements"
            )
        slots = self.positions.numel()
        return flat * slots + torch.arange(slots)

    def _pairs(self, name: str, out: Tensor) -> tuple[Tensor, Tensor | None]:
        """Flat (whole-tensor) candidate pairs of this call; and faulty bits per example."""
        slots = self.positions.numel()
        if not (self.per_example or self.mode == "permanent"):
            pairs = (
                self._index_pairs(tuple(out.shape))
                if self.index is not None
                else self._draw(out.numel(), self.generator)
            )
            return pairs, None
        batch, shape = out.shape[0], tuple(out.shape[1:])
        size = math.prod(shape)
        if self.mode == "permanent" or self.index is not None:
            if self.mode == "permanent" and name in self._permanent:
                first, pairs = self._permanent[name]
                if first != shape:
                    raise ParamCorruptError(
                        f"module {name!r}: a permanent fault was placed in outputs of shape {first}, now {shape}"
                    )
            else:
                pairs = (
                    self._index_pairs(shape)
                    if self.index is not None
                    else self._draw(size, self.generator)
                )
                if self.mode == "permanent":
                    self._permanent[name] = (shape, pairs)
            per = torch.full((batch,), pairs.numel(), dtype=torch.long)
            offsets = torch.arange(batch).repeat_interleave(pairs.numel()) * (size * slots)
            return pairs.repeat(batch) + offsets, per
        # transient, per example: every example its own draw
        total = size * slots
        if self.flips is not None:
            counts = torch.full((batch,), self.flips, dtype=torch.long)
        else:
            counts = torch.binomial(
                torch.full((batch,), float(total), dtype=torch.float64),
                torch.full((batch,), float(self.ber), dtype=torch.float64),
                generator=self.generator,
            ).long()
        if int(counts.max()) > total:
            raise ParamCorruptError(
                f"flips={self.flips} exceeds the {total:,} candidate bits of one example's activation"
            )
        if int(counts.max()) <= 1:  # one fault per example at most: one draw for the batch
            hit = torch.nonzero(counts).reshape(-1)
            pairs = torch.randint(0, total, (hit.numel(),), generator=self.generator) + hit * total
            return pairs, counts
        pieces = [
            self._draw(size, self.generator, int(c)) + b * total
            for b, c in enumerate(counts.tolist())
            if c
        ]
        return torch.cat(pieces), counts

    @torch.no_grad()
    def _codes(self, values: Tensor, scale: Tensor | None) -> Tensor:
        dtype = self.format.dtype if self.format.is_float else torch.float64
        return self.format.encode_values(values.detach().to(dtype), scale)

    def _fault(self, name: str, out: Tensor) -> Tensor | None:
        pairs, per = self._pairs(name, out)
        m = pairs.numel()
        record: dict[str, Any] = {"module": name, "bit_errors": m, "changed": 0}
        if per is not None:
            record["per_example"] = per
        if self.counting:
            self.bit_errors += m
            self.records.append(record)
        if m == 0:
            return None
        slots = self.positions.numel()
        coords, bit_of = pairs // slots, self.positions[pairs % slots]
        unique, inverse = coords.unique(return_inverse=True)
        mask = torch.zeros_like(unique).scatter_add_(0, inverse, torch.ones_like(coords) << bit_of)
        fmt = self.format
        scale = None
        if not fmt.is_float:
            scale = fmt.scale_at(out, unique, fmt.scales(out)).to("cpu")
        new = out.clone(memory_format=torch.contiguous_format)
        flat = new.view(-1)
        local = unique.to(out.device)
        codes = self._codes(flat[local], None if scale is None else scale.to(out.device)).cpu()
        faulty = (
            codes ^ mask
            if self.op == "flip"
            else (codes | mask if self.op == "stuck-1" else codes & ~mask)
        )
        keep = (
            faulty != codes
        )  # a stuck bit that held its value changes nothing (no rounding either)
        if not bool(keep.any()):
            return None
        decoded = fmt.decode_values(faulty[keep], None if scale is None else scale[keep])
        flat[local[keep.to(out.device)]] = decoded.to(device=out.device, dtype=out.dtype)
        changed = int(keep.sum())
        record["changed"] = changed
        if self.counting:
            self.changed += changed
        return new


def _check_what(ber: Any, flips: Any, index: Any) -> None:
    given = [n for n, v in (("ber", ber), ("flips", flips), ("index", index)) if v is not None]
    if len(given) != 1:
        raise ParamCorruptError(
            f"give exactly one of ber, flips and index, got ber={ber!r}, flips={flips!r}, index={index!r}"
        )
    if ber is not None and (
        isinstance(ber, bool) or not isinstance(ber, (int, float)) or not 0.0 <= ber <= 1.0
    ):
        raise ParamCorruptError(f"ber must be a number in [0, 1], got ber={ber!r}")
    if flips is not None and (isinstance(flips, bool) or not isinstance(flips, int) or flips < 0):
        raise ParamCorruptError(f"flips must be an integer >= 0, got flips={flips!r}")
    if index is not None:
        parts = index if isinstance(index, tuple) else (index,)
        if not parts or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in parts
        ):
            raise ParamCorruptError(
                f"index must be a flat index or a tuple of indices, each an integer >= 0, got index={index!r}"
            )


def activation_faults(model: nn.Module, modules: Any, **settings: Any) -> ActivationFaults:
    """Faults in the outputs of ``modules`` while the context is open (see the module's
    docstring and :class:`ActivationFaults` for the settings). Every setting and the module
    selection are checked here, before any hook is placed; an output that is not a tensor
    or a tuple of tensors is refused by a check pass on ``example`` when one is given (before
    any fault hook is placed), else at that module's first call, before a fault is written
    into it, and the context removes every hook.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
        >>> with activation_faults(model, "0", ber=0.1, per_example=True, generator=torch.Generator().manual_seed(0)) as f:
        ...     _ = model(torch.ones(8, 4))
        >>> f.records[0]["per_example"].shape
        torch.Size([8])
    """
    return ActivationFaults(model, modules, **settings)
