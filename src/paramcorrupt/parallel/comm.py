"""Who am I and the collectives: the one part of :mod:`paramcorrupt.parallel` the core imports.

Every data-set quantity in this library is a *sum* divided by a *sum*: the data set gradient
is sum_b W_b dL_b / sum_b W_b, the loss and every metric sum_b total_b / sum_b count_b. A
distributed run therefore needs no averaging tricks: each process (rank) sums over its own
shard, the sums and the weights are all-reduced in float64, and every rank divides the same
two numbers. When ``torch.distributed`` is not initialised every helper is the identity.

* who am I: :func:`is_distributed`, :func:`get_rank`, :func:`get_world_size`,
  :func:`is_main_process`, :func:`use_distributed` (resolves the ``distributed=None`` "auto"
  argument), :func:`local` (a block where "auto" means one process);
* communication: :func:`all_reduce_sums` (float64, bucketed: one collective per 32 MiB),
  :func:`all_reduce_scalars`, :func:`all_gather_objects`, :func:`broadcast_object`,
  :func:`barrier`, :func:`collective` (a collective that fails because another rank died
  raises :class:`PeerFailedError`), :func:`comm_device` (where the backend's tensors live).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

_local = threading.local()


#: all_reduce_sums packs tensors into float64 buffers of at most this many bytes
BUCKET_BYTES = 32 * 2**20


class PeerFailedError(RuntimeError):
    """A collective failed because another process of the run stopped (its error is its own)."""


def is_distributed() -> bool:
    """Whether ``torch.distributed`` is available and a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """The number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0, and in a plain single-process run: the process that writes files."""
    return get_rank() == 0


@contextmanager
def local() -> Iterator[None]:
    """Inside the block, ``distributed=None`` means "not distributed" on this process.

    For work split across ranks (each rank computing *different* probe rows): the core
    functions called there must not all-reduce, or the ranks would wait on each other's
    unrelated collectives. Ranks, world size and explicit ``distributed=True`` are unchanged.

    Example:
        >>> with local():
        ...     use_distributed(None)
        False
    """
    depth = getattr(_local, "depth", 0)
    _local.depth = depth + 1
    try:
        yield
    finally:
        _local.depth = depth


def use_distributed(distributed: bool | None) -> bool:
    """Resolve a ``distributed`` argument: ``None`` means "when a process group is initialised"
    (and not inside :func:`local`).

    Raises:
        RuntimeError: ``True`` was asked for but no process group is initialised.

    Example:
        >>> use_distributed(None), use_distributed(False)
        (False, False)
    """
    if distributed is None:
        return is_distributed() and not getattr(_local, "depth", 0)
    if distributed and not is_distributed():
        raise RuntimeError(
            "distributed=True needs an initialised torch.distributed process group "
            "(launch with torchrun and call paramcorrupt.parallel.init_from_env())"
        )
    return bool(distributed)


def comm_device() -> torch.device:
    """Where collective buffers live: the current CUDA device for NCCL, else the CPU."""
    backend = dist.get_backend()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextmanager
def collective(what: str) -> Iterator[None]:
    """Turn a collective broken by a dead peer into a :class:`PeerFailedError`."""
    try:
        yield
    except PeerFailedError:
        raise
    except (RuntimeError, ConnectionError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PeerFailedError(
            f"{what} failed: another process of the distributed run stopped (its own error says why); {first}"
        ) from error


def all_reduce_sums(
    tensors: Sequence[Tensor], scalars: Sequence[float] = (), *, bucket_bytes: int = BUCKET_BYTES
) -> tuple[list[Tensor], list[float]]:
    """Sum ``tensors`` and ``scalars`` over all ranks, in float64; identity when not distributed.

    The tensors are packed into float64 buffers of at most ``bucket_bytes`` (the scalars ride
    in the first one), so a whole gradient plus its weight costs one collective per bucket:
    ``8 * (numel + len(scalars))`` bytes per rank and gradient. Results come back in each
    tensor's own dtype and device; every rank gets bit-identical sums.
    """
    if not is_distributed():
        return list(tensors), [float(s) for s in scalars]
    device = comm_device()
    out: list[Tensor] = [t for t in tensors]
    scalar_out: list[float] = [float(s) for s in scalars]
    # buckets of consecutive tensors; the scalars go first in bucket 0
    limit = max(bucket_bytes // 8, 1)
    buckets: list[list[int]] = [[]]
    size = len(scalars)
    for i, t in enumerate(tensors):
        if buckets[-1] and size + t.numel() > limit:
            buckets.append([])
            size = 0
        buckets[-1].append(i)
        size += t.numel()
    for b, indices in enumerate(buckets):
        parts = [torch.tensor(scalar_out, dtype=torch.float64, device=device)] if b == 0 else []
        parts += [
            tensors[i].detach().reshape(-1).to(device=device, dtype=torch.float64) for i in indices
        ]
        flat = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=device)
        with collective("all_reduce of the sums"):
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        if b == 0:
            scalar_out = flat[: len(scalars)].tolist()
            offset = len(scalars)
        for i in indices:
            t = tensors[i]
            out[i] = (
                flat[offset : offset + t.numel()].view(t.shape).to(device=t.device, dtype=t.dtype)
            )
            offset += t.numel()
    return out, scalar_out


def all_reduce_scalars(values: Sequence[float]) -> list[float]:
    """Sum a list of numbers over all ranks in float64 (identity when not distributed)."""
    return all_reduce_sums([], values)[1]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` when not distributed."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    with collective("all_gather_object"):
        dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself when not distributed)."""
    if not is_distributed():
        return obj
    box = [obj]
    with collective("broadcast_object_list"):
        dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait for every rank (nothing when not distributed)."""
    if is_distributed():
        with collective("barrier"):
            dist.barrier()
