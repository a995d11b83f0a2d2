"""Scale-out with ``torch.distributed``: the same numbers as one process, from N of them.

Every data-set quantity in this library is a *sum* divided by a *sum*: the dataset gradient
is sum_b W_b dL_b / sum_b W_b, the loss and every metric sum_b total_b / sum_b count_b. A
distributed run therefore needs no averaging tricks: each process (rank) sums over its own
shard, the sums and the weights are all-reduced in float64, and every rank divides the same
two numbers. Shards may be uneven — even empty — and no example is counted twice or dropped.

Launch with PyTorch's own launcher (``torchrun``); this module only reads what it sets::

    torchrun --nproc_per_node=2 -m paramcorrupt probe --task digits ...

What lives here:

* who am I: :func:`is_distributed`, :func:`get_rank`, :func:`get_world_size`,
  :func:`is_main_process`, :func:`use_distributed` (resolves the ``distributed=None`` "auto"
  argument of :func:`~paramcorrupt.dataset_gradient` and :func:`~paramcorrupt.evaluate`);
* sharding data: :func:`shard` (any re-iterable loader, batch by batch; a ``DataLoader`` over
  a map-style data set, example by example with :class:`ExactDistributedSampler`), and
  :func:`split` for a list of work items (probe configurations);
* communication: :func:`all_reduce_sums` (float64, bucketed: one collective per 32 MiB),
  :func:`all_reduce_scalars`, :func:`all_gather_objects`, :func:`broadcast_object`, :func:`barrier`;
  a collective that fails because another rank died raises :class:`PeerFailedError`;
* process groups: :func:`init_from_env` / :func:`session` (what the CLI uses under torchrun)
  and :func:`spawn` (run a function in N local processes — tests, notebooks, benchmarks).

Single-process behaviour is untouched: when ``torch.distributed`` is not initialised every
helper is the identity, and the core functions take exactly their old code path.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

__all__ = [
    "ExactDistributedSampler",
    "PeerFailedError",
    "ShardedLoader",
    "all_gather_objects",
    "all_reduce_scalars",
    "all_reduce_sums",
    "barrier",
    "broadcast_object",
    "get_rank",
    "get_world_size",
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "session",
    "shard",
    "spawn",
    "split",
    "use_distributed",
]

T = TypeVar("T")

#: all_reduce_sums packs tensors into float64 buffers of at most this many bytes
BUCKET_BYTES = 32 * 2**20


class PeerFailedError(RuntimeError):
    """A collective failed because another process of the run stopped (its error is its own)."""


# ---------------------------------------------------------------------------------------------
# who am I


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


def use_distributed(distributed: bool | None) -> bool:
    """Resolve a ``distributed`` argument: ``None`` means "when a process group is initialised".

    Raises:
        RuntimeError: ``True`` was asked for but no process group is initialised.

    Example:
        >>> use_distributed(None), use_distributed(False)
        (False, False)
    """
    if distributed is None:
        return is_distributed()
    if distributed and not is_distributed():
        raise RuntimeError(
            "distributed=True needs an initialised torch.distributed process group "
            "(launch with torchrun and call paramcorrupt.distributed.init_from_env())"
        )
    return bool(distributed)


# ---------------------------------------------------------------------------------------------
# sharding


class ShardedLoader:
    """Batch ``i`` of ``loader`` goes to rank ``i % world_size``: any re-iterable loader.

    Every rank iterates the whole loader (so a shuffling loader must be seeded identically on
    every rank) but runs the model only on its own batches. The union of the shards is exactly
    the loader's batches — the same batches a single process sees — so even models whose
    output depends on the batch (batch norm in training mode) give the single-process sums.
    Shards differ by at most one batch; a rank may get none when there are fewer batches than
    ranks, which :func:`~paramcorrupt.dataset_gradient` and :func:`~paramcorrupt.evaluate`
    handle.

    Example:
        >>> list(ShardedLoader([10, 11, 12, 13, 14], rank=1, world_size=2))
        [11, 13]
    """

    def __init__(
        self, loader: Iterable[T], *, rank: int | None = None, world_size: int | None = None
    ) -> None:
        self.loader = loader
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, {self.world_size})")

    def __len__(self) -> int:
        return len(range(self.rank, len(self.loader), self.world_size))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[T]:
        for i, batch in enumerate(self.loader):
            if i % self.world_size == self.rank:
                yield batch

    def __getattr__(self, name: str) -> Any:  # batch_size, dataset, ... of the wrapped loader
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)


class ExactDistributedSampler(DistributedSampler):
    """A :class:`~torch.utils.data.distributed.DistributedSampler` that neither pads nor drops.

    PyTorch's sampler repeats examples so that every rank gets as many (fine for training,
    wrong for a data-set sum); this one gives rank r the indices ``r, r + N, r + 2N, ...`` of
    the (optionally shuffled, with the same ``seed + epoch`` on every rank) order: shards of
    sizes differing by at most one, whose union is the data set exactly once.

    Example:
        >>> list(ExactDistributedSampler(range(5), num_replicas=2, rank=1))
        [1, 3]
    """

    def __init__(
        self,
        dataset: Any,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        num_replicas = get_world_size() if num_replicas is None else num_replicas
        rank = get_rank() if rank is None else rank
        super().__init__(
            dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=False,
        )
        self.num_samples = len(range(self.rank, len(dataset), self.num_replicas))
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(self.dataset), generator=g).tolist()
        else:
            order = list(range(len(self.dataset)))
        return iter(order[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


def _plain_dataloader(loader: Any) -> bool:
    """A DataLoader built from (dataset, batch_size, shuffle): safe to re-shard by example."""
    return (
        isinstance(loader, DataLoader)
        and not isinstance(loader.dataset, IterableDataset)
        and loader.batch_size is not None
        and not loader.drop_last
        and type(loader.sampler) in (SequentialSampler, RandomSampler)
    )


def shard(
    loader: Iterable[T], *, rank: int | None = None, world_size: int | None = None
) -> Iterable[T]:
    """This rank's share of ``loader``; the loader itself when not distributed.

    A ``DataLoader`` over a map-style data set (built with ``batch_size``, ``shuffle`` and no
    ``drop_last``) is rebuilt with an :class:`ExactDistributedSampler`: each rank loads only
    its examples, batched as before. Any other re-iterable (a list of batches, a custom
    loader, an iterable data set) is wrapped in a :class:`ShardedLoader`, batch by batch.
    Either way every example is in exactly one shard.
    """
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if world_size == 1:
        return loader
    if _plain_dataloader(loader):
        dl: DataLoader = loader  # type: ignore[assignment]
        sampler = ExactDistributedSampler(
            dl.dataset,
            num_replicas=world_size,
            rank=rank,
            shuffle=isinstance(dl.sampler, RandomSampler),
        )
        kwargs: dict[str, Any] = {
            "batch_size": dl.batch_size,
            "sampler": sampler,
            "num_workers": dl.num_workers,
            "collate_fn": dl.collate_fn,
            "pin_memory": dl.pin_memory,
            "timeout": dl.timeout,
            "worker_init_fn": dl.worker_init_fn,
        }
        if dl.num_workers > 0:
            kwargs.update(
                multiprocessing_context=dl.multiprocessing_context,
                prefetch_factor=dl.prefetch_factor,
                persistent_workers=dl.persistent_workers,
            )
        return DataLoader(dl.dataset, **kwargs)
    return ShardedLoader(loader, rank=rank, world_size=world_size)


def split(items: Sequence[T], *, rank: int | None = None, world_size: int | None = None) -> list[T]:
    """Round-robin share of a list of work items: item ``i`` goes to rank ``i % world_size``.

    Example:
        >>> split(["a", "b", "c"], rank=0, world_size=2)
        ['a', 'c']
    """
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    return list(items[rank::world_size])


# ---------------------------------------------------------------------------------------------
# communication


def _comm_device() -> torch.device:
    """Where collective buffers live: the current CUDA device for NCCL, else the CPU."""
    backend = dist.get_backend()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextmanager
def _collective(what: str) -> Iterator[None]:
    """Turn a collective broken by a dead peer into a :class:`PeerFailedError`."""
    try:
        yield
    except PeerFailedError:
        raise
    except (RuntimeError, ConnectionError) as error:
        raise PeerFailedError(
            f"rank {get_rank()}: {what} failed — another process of the distributed run stopped "
            f"(its own error says why): {str(error).splitlines()[0] if str(error) else type(error).__name__}"
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
    device = _comm_device()
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
        with _collective("all_reduce of the sums"):
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
    with _collective("all_gather_object"):
        dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself when not distributed)."""
    if not is_distributed():
        return obj
    box = [obj]
    with _collective("broadcast_object_list"):
        dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait for every rank (nothing when not distributed)."""
    if is_distributed():
        with _collective("barrier"):
            dist.barrier()


# ---------------------------------------------------------------------------------------------
# process groups


def _launched() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def init_from_env(backend: str | None = None) -> bool:
    """Initialise the default process group from torchrun's environment, if launched by it.

    Does nothing (and returns False) in a plain single-process run, or when the group is
    already initialised (returns True). ``backend`` defaults to NCCL when CUDA is available,
    else gloo; under NCCL each process takes the GPU ``LOCAL_RANK``.
    """
    if is_distributed():
        return True
    if not _launched():
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    return True


@contextmanager
def session(backend: str | None = None) -> Iterator[bool]:
    """``init_from_env`` for the block, and destroy the group it made on the way out.

    Yields whether the run is distributed. A group initialised by someone else is left alone.
    """
    made = not is_distributed() and init_from_env(backend)
    try:
        yield is_distributed()
    finally:
        if made and is_distributed():
            dist.destroy_process_group()


def free_port() -> int:
    """A TCP port that was free a moment ago on localhost."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn_entry(
    rank: int,
    fn: Callable[..., Any],
    world_size: int,
    port: int,
    backend: str,
    out_dir: str,
    args: tuple,
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        result = fn(*args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable[..., T], world_size: int = 2, *args: Any, backend: str = "gloo") -> list[T]:
    """Run ``fn(*args)`` in ``world_size`` fresh local processes joined in a process group.

    ``fn`` must be importable (a module-level function); its return values (anything
    ``torch.save`` can write) come back in rank order. If any rank raises, the others are
    terminated and a ``torch.multiprocessing.ProcessRaisedException`` carrying that rank's
    traceback is raised here. For tests, notebooks and benchmarks; real runs use torchrun.
    """
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="paramcorrupt-spawn-") as out_dir:
        mp.spawn(
            _spawn_entry,
            args=(fn, world_size, free_port(), backend, out_dir, args),
            nprocs=world_size,
            join=True,
        )
        return [
            torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False)
            for r in range(world_size)
        ]
