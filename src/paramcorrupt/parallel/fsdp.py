"""Models too large for one process's copies: sharded parameters and gradients.

With parameters sharded across processes (PyTorch's FSDP2, ``torch.distributed.fsdp.fully_shard``,
or your own flat shards), no process holds a whole gradient. The closed form of Proposition 1
only needs the n coordinates of largest |g|, so each rank sends its own top-n candidates and
one ``all_gather`` gives every rank the global top-n; each rank then writes the corruption
of its own shard. The result equals :func:`paramcorrupt.constraint.sparse_closed_form` on the
unsharded tensors (bit for bit when the n-th largest |g| is not tied: the values are then the
same floats, combined in the same order).

- :class:`LocalShard`, :func:`local_shard` (a DTensor of FSDP2: ``Shard(0)`` on a 1-D mesh;
  a plain tensor: replicated, owned by rank 0), :func:`flat_shard` (your own shards of a
  flat parameter, as FSDP2 cuts dim 0: ``torch.chunk``);
- :func:`sharded_top_n`: the global top-n from per-rank candidates, one ``all_gather`` of
  n x 4 float64 numbers per rank;
- :func:`sharded_closed_form`: Proposition 1 over sharded tensors (n < k: the one gather;
  n = k: one or two scalar all-reduces for the norm);
- :func:`fsdp_dataset_gradient`: the data set gradient of a ``fully_shard``-ed model, each
  rank summing its shard of the data, gradients reduce-scattered (summed, not averaged) and
  accumulated per shard in ``accumulate_dtype``;
- :func:`gradient_memory`: the bytes :func:`~paramcorrupt.dataset_gradient` needs beyond
  the model, per accumulation dtype.

Measured on this repository's CPU (torch 2.13, gloo): ``fully_shard`` works on CPU with 2
gloo processes — forward, backward and the reduce-scatter of gradients (``tests/test_hf_sharded.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .. import parallel as D
from .._state import frozen_norm_stats, mode
from ..constraint import Constraint, global_top_n, maximiser_values
from ..errors import ParamCorruptError
from ..groups import ParameterGroup, as_group
from ..losses import LossFn, as_batch_loss
from .comm import collective, comm_device

__all__ = [
    "LocalShard",
    "flat_shard",
    "fsdp_dataset_gradient",
    "gradient_memory",
    "local_shard",
    "sharded_closed_form",
    "sharded_top_n",
]


@dataclass(frozen=True)
class LocalShard:
    """This rank's contiguous piece of a tensor, in the tensor's flat (row-major) order.

    Attributes:
        tensor: the piece, flat (1-D); may be empty.
        offset: the flat index, in the whole tensor, of the piece's first element.
        numel: the whole tensor's number of elements.
    """

    tensor: Tensor
    offset: int
    numel: int


def _chunk_rows(rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows [start, stop) of rank's piece when ``torch.chunk`` cuts ``rows`` in world_size."""
    size = -(-rows // world_size) if rows else 0
    start = min(rank * size, rows)
    return start, min(start + size, rows)


def flat_shard(t: Tensor, rank: int | None = None, world_size: int | None = None) -> LocalShard:
    """Rank's piece of ``t`` cut as FSDP2 cuts parameters: ``torch.chunk`` along dim 0.

    Example:
        >>> s = flat_shard(torch.arange(10.0).view(5, 2), rank=1, world_size=2)
        >>> s.offset, s.tensor.tolist()
        (6, [6.0, 7.0, 8.0, 9.0])
    """
    rank = D.get_rank() if rank is None else rank
    world_size = D.get_world_size() if world_size is None else world_size
    flat = t.detach().reshape(-1)
    if t.dim() == 0:
        return LocalShard(flat if rank == 0 else flat[:0], 0, 1)
    start, stop = _chunk_rows(t.shape[0], rank, world_size)
    row = t[0].numel() if t.shape[0] else 0
    return LocalShard(flat[start * row : stop * row], start * row, t.numel())


def local_shard(t: Tensor) -> LocalShard:
    """This rank's piece of a parameter or gradient.

    A ``DTensor`` sharded on dim 0 over a 1-D mesh (FSDP2's ``fully_shard`` default) gives its
    local tensor at its global offset; a replicated DTensor or a plain tensor is owned whole
    by rank 0 (the other ranks hold an empty piece, so nothing is counted twice).

    Raises:
        ValueError: for a DTensor placement other than ``Shard(0)`` or ``Replicate()``.
    """
    try:
        from torch.distributed.tensor import DTensor, Replicate, Shard
    except ImportError:  # pragma: no cover - torch without DTensor
        DTensor = None  # type: ignore[assignment,misc]
    rank = D.get_rank()
    if DTensor is not None and isinstance(t, DTensor):
        placements = tuple(t.placements)
        local = t.to_local().detach()
        if placements == (Shard(0),):
            ranks = t.device_mesh.size()
            start, stop = _chunk_rows(t.shape[0], t.device_mesh.get_local_rank(), ranks)
            if local.shape[0] != stop - start:
                raise ParamCorruptError(f"a DTensor of shape {tuple(t.shape)} has an uneven local shard {tuple(local.shape)}")
            row = math.prod(t.shape[1:])
            return LocalShard(local.reshape(-1), start * row, t.numel())
        if placements == (Replicate(),):
            flat = local.reshape(-1)
            return LocalShard(flat if rank == 0 else flat[:0], 0, t.numel())
        raise ParamCorruptError(f"unsupported DTensor placements {placements}: expected (Shard(0),) or (Replicate(),)")
    flat = t.detach().reshape(-1)
    return LocalShard(flat if rank == 0 else flat[:0], 0, t.numel())


def _as_shards(tensors: Sequence[Tensor | LocalShard]) -> list[LocalShard]:
    return [t if isinstance(t, LocalShard) else local_shard(t) for t in tensors]


def sharded_top_n(
    shards: Sequence[Tensor | LocalShard], n: int
) -> tuple[list[Tensor], list[Tensor]]:
    """The global top-n of |v| over sharded tensors: per-rank candidates and one ``all_gather``.

    Each rank takes the top-min(n, its size) of its own pieces (:func:`~paramcorrupt.constraint.global_top_n`:
    chunked, O(n) memory) and sends them as an n x 4 float64 block (|v|, tensor, flat index,
    v; padded); one ``all_gather`` brings every rank all candidates, merged by descending |v|,
    then tensor order, then flat index (the unsharded tie rule). Without a process group it is
    the single-process top-n.

    Returns:
        ``(indices, values)``, the same on every rank: per tensor, the kept flat indices in
        the whole tensor (ascending) and v's values there (in v's dtype).
    """
    pieces = _as_shards(shards)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ParamCorruptError(f"n must be an integer >= 1, got n={n!r}")
    k = sum(s.numel for s in pieces)
    if n > k:
        raise ParamCorruptError(f"n={n} exceeds the group's size k={k}")
    dtype = pieces[0].tensor.dtype
    device = comm_device() if D.is_distributed() else pieces[0].tensor.device
    block = torch.full((n, 4), -1.0, dtype=torch.float64, device=device)
    owned = [j for j, s in enumerate(pieces) if s.tensor.numel()]
    local_total = sum(pieces[j].tensor.numel() for j in owned)
    if local_total:
        m = min(n, local_total)
        idx, vals = global_top_n([pieces[j].tensor for j in owned], m)
        rows = []
        for j, i, v in zip(owned, idx, vals):
            if i.numel():
                rows.append(torch.stack([
                    v.double().abs(), torch.full_like(i, j, dtype=torch.float64),
                    (i + pieces[j].offset).double(), v.double(),
                ], dim=1))
        cand = torch.cat(rows).to(device)
        block[: cand.shape[0]] = cand
    if D.is_distributed():
        gathered = [torch.empty_like(block) for _ in range(D.get_world_size())]
        with collective("sharded_top_n"):
            dist.all_gather(gathered, block)
        everything = torch.cat(gathered)
    else:
        everything = block
    everything = everything[everything[:, 0] >= 0]
    # lexicographic (-|v|, tensor, index) with stable sorts, least significant key first
    order = torch.sort(everything[:, 2], stable=True).indices
    everything = everything[order]
    order = torch.sort(everything[:, 1], stable=True).indices
    everything = everything[order]
    order = torch.sort(everything[:, 0], descending=True, stable=True).indices[:n]
    best = everything[order]
    indices, values = [], []
    for j in range(len(pieces)):
        mine = best[best[:, 1] == j]
        sort = torch.sort(mine[:, 2]).indices
        indices.append(mine[sort, 2].long().to(pieces[j].tensor.device))
        values.append(mine[sort, 3].to(dtype).to(pieces[j].tensor.device))
    return indices, values


def _all_reduce(value: float, op: Any) -> float:
    if not D.is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=comm_device())
    with collective("sharded_closed_form"):
        dist.all_reduce(t, op=op)
    return float(t.item())


def sharded_closed_form(
    shards: Sequence[Tensor | LocalShard], constraint: Constraint
) -> tuple[list[Tensor | None], list[Tensor]]:
    """Proposition 1 over sharded tensors: each rank gets the corruption of its own pieces.

    Args:
        shards: per tensor of the group, this rank's piece (a :class:`LocalShard`, an FSDP2
            ``DTensor`` — a gradient or a parameter — or a plain, replicated tensor).
        constraint: the set S.

    Returns:
        ``(indices, values)`` per tensor: for n < k, the flat indices *within this rank's
        piece* and the values of a there (equal to :func:`~paramcorrupt.constraint.sparse_closed_form`
        on the whole tensors, restricted to the piece); for n = k, ``None`` and the dense
        values of a on the piece.
    """
    pieces = _as_shards(shards)
    k = sum(s.numel for s in pieces)
    n = constraint.size(k)
    p, eps = constraint.p, constraint.eps
    if n < k or p == 1:
        kept = 1 if (n == k and p == 1) else n
        indices, values = sharded_top_n(pieces, kept)
        a_values = maximiser_values(values, constraint)
        out_idx: list[Tensor | None] = []
        out_val: list[Tensor] = []
        for s, idx, val in zip(pieces, indices, a_values):
            inside = (idx >= s.offset) & (idx < s.offset + s.tensor.numel())
            local_idx, local_val = idx[inside] - s.offset, val[inside]
            if n == k:  # p = 1, n = k: dense output
                dense = torch.zeros_like(s.tensor)
                dense[local_idx] = local_val
                out_idx.append(None)
                out_val.append(dense)
            else:
                out_idx.append(local_idx)
                out_val.append(local_val)
        return out_idx, out_val
    # n = k: dense; p = inf needs only the signs (and whether G = 0 globally), p = 2 the norm
    local = [s.tensor for s in pieces]
    scale = _all_reduce(max((float(t.abs().max()) for t in local if t.numel()), default=0.0), dist.ReduceOp.MAX)
    if scale == 0.0:
        # G = 0: the unsharded rule (eps spread equally, sign +) — the same values everywhere
        value = eps if p == math.inf else eps * k ** (-1.0 / p)
        return [None] * len(local), [torch.full_like(t, value) for t in local]
    if p == math.inf:
        return [None] * len(local), [eps * torch.sign(t) for t in local]
    expo = 1.0 / (p - 1.0)
    total = 0.0
    for t in local:
        for piece in t.split(1 << 20):
            y = piece.double() / scale
            total += float((y.abs().pow(p * expo) if p != 2 else y * y).sum())
    norm = _all_reduce(total, dist.ReduceOp.SUM) ** (1.0 / p)
    values = []
    for t in local:
        out = torch.empty_like(t)
        for piece, dst in zip(t.split(1 << 20), out.split(1 << 20)):
            y = piece.double() / scale
            y = y if p == 2 else torch.sign(y) * y.abs().pow(expo)
            dst.copy_(eps * y / norm)
        values.append(out)
    return [None] * len(local), values


def _fsdp_modules(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def fsdp_dataset_gradient(
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: LossFn,
    group: ParameterGroup | str | Iterable[str] | None = None,
    *,
    accumulate_dtype: torch.dtype | None = torch.float32,
    return_loss: bool = False,
) -> dict[str, Tensor] | tuple[dict[str, Tensor], float]:
    """The data set gradient of a model sharded with FSDP2 (``fully_shard``), as DTensors.

    Every rank iterates its own shard of the data (``paramcorrupt.parallel.shard(loader)``);
    ranks with fewer batches run zero-weight passes so that every rank joins every
    reduce-scatter. Each backward pass reduce-scatters ``W_b * dL_b`` summed over the ranks
    (the gradient divide factor is set to 1 for the call), and each rank adds its shard to a
    running sum in ``accumulate_dtype`` (``None``: the parameter's dtype): memory per rank is
    k / world_size x (bytes of accumulate_dtype), never a whole gradient. Parameters' ``.grad``,
    modes and norm statistics are left as they were.

    Returns:
        name -> the gradient as a DTensor with the parameter's placements (in its dtype), the
        same numbers as :func:`~paramcorrupt.dataset_gradient` of the unsharded model to
        float rounding; and the mean loss if asked for.

    Raises:
        ValueError: when no rank has a batch, or for a NaN/Inf loss.
    """
    from torch.distributed.tensor import DTensor

    group = as_group(model, group)
    params = group.tensors(model)
    names = list(params)
    batches = list(loader)
    count = int(_all_reduce(float(len(batches)), dist.ReduceOp.MAX))
    if count == 0:
        raise ParamCorruptError("the loader yielded no batch on any rank: cannot compute a data set gradient")
    modules = _fsdp_modules(model)
    all_params = list(model.parameters())
    saved_grads = [p.grad for p in all_params]
    saved_flags = [p.requires_grad for p in all_params]
    sums: dict[str, Tensor] = {}
    total_weight, loss_sum = 0.0, 0.0
    try:
        for p in all_params:
            p.grad = None
        for p in params.values():
            p.requires_grad_(True)
        for m in modules:
            m.set_gradient_divide_factor(1.0)
        with mode(model, False), frozen_norm_stats(model), torch.enable_grad():
            for step in range(count):
                real = step < len(batches)
                batch = batches[step] if real else (batches[-1] if batches else None)
                if batch is None:
                    raise ParamCorruptError("a rank has no batch at all; give every rank at least one batch")
                result = as_batch_loss(loss_fn(model, batch), batch)
                if not torch.isfinite(result.loss):
                    raise ParamCorruptError(f"the loss of a batch is {result.loss.item()}; cannot take its gradient")
                weight = result.weight if real else 0.0
                (result.loss * weight).backward()
                if real:
                    total_weight += weight
                    loss_sum += float(result.loss.detach()) * weight
                for name in names:
                    p = params[name]
                    if p.grad is None:
                        continue
                    g = p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
                    if name not in sums:
                        sums[name] = torch.zeros_like(g, dtype=accumulate_dtype or g.dtype)
                    sums[name].add_(g.to(sums[name].dtype))
                    p.grad = None
    finally:
        for m in modules:
            m.set_gradient_divide_factor(float(D.get_world_size()))
        for p, g, flag in zip(all_params, saved_grads, saved_flags):
            p.grad = g
            p.requires_grad_(flag)
    total_weight, loss_sum = D.all_reduce_scalars([total_weight, loss_sum])
    out = {}
    for name in names:
        p = params[name]
        local = p.to_local() if isinstance(p, DTensor) else p.detach()
        s = sums.get(name, torch.zeros_like(local, dtype=accumulate_dtype or local.dtype))
        g = (s / total_weight).to(local.dtype)
        out[name] = DTensor.from_local(g, p.device_mesh, p.placements, shape=p.shape, stride=p.stride()) if isinstance(p, DTensor) else g
    if return_loss:
        return out, loss_sum / total_weight
    return out


def gradient_memory(model: nn.Module, group: ParameterGroup | str | Iterable[str] | None = None,
                    accumulate_dtype: torch.dtype | None = torch.float64) -> dict[str, int]:
    """Bytes :func:`~paramcorrupt.dataset_gradient` holds beyond the model and activations.

    ``sums`` (the running sum, k x bytes of ``accumulate_dtype``; the parameters' dtype when
    None), ``batch_grads`` (one batch's gradient, in the parameters' dtype, transient) and
    ``result`` (the returned gradient, parameters' dtype). float64 sums of a bf16 model are 4x
    its size; float32 sums 2x; bf16 sums 1x (bf16 keeps 8 bits of mantissa: summing many
    batches loses precision, which tests/test_hf_scale.py measures).

    Example:
        >>> gradient_memory(nn.Linear(10, 10), accumulate_dtype=torch.float32)["sums"]
        440
    """
    group = as_group(model, group)
    tensors = list(group.tensors(model).values())
    param_bytes = sum(t.numel() * t.element_size() for t in tensors)
    sums = sum(t.numel() * (torch.empty((), dtype=accumulate_dtype).element_size() if accumulate_dtype else t.element_size()) for t in tensors)
    return {"parameters": param_bytes, "sums": sums, "batch_grads": param_bytes, "result": param_bytes,
            "total_extra": sums + 2 * param_bytes}
