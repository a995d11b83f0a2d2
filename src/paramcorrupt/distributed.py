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
  argument of :func:`~paramcorrupt.dataset_gradient`, :func:`~paramcorrupt.evaluate`,
  ``probe.sweep`` and ``train.fit``), :func:`local` (a block where "auto" means one process);
* sharding data: :func:`shard` (a loader's own ``shard(rank, world_size)``; a ``DataLoader``
  over a map-style data set example by example with :class:`ExactDistributedSampler`; any
  other re-iterable batch by batch with :class:`ShardedLoader`), :func:`split` for a list;
* communication: :func:`all_reduce_sums` (float64, bucketed: one collective per 32 MiB),
  :func:`all_reduce_scalars`, :func:`all_gather_objects`, :func:`broadcast_object`,
  :func:`broadcast_module`, :func:`barrier`; a collective that fails because another rank died
  raises :class:`PeerFailedError`;
* work split across ranks: :func:`map_ordered` (round-robin, gathered in rounds, rank 0
  writes in order; a failure on any rank raises :class:`RankFailedError` on every rank) and
  :func:`on_main` (rank 0 does it, every rank gets the result or the error) — the probe sweep;
* data-parallel training: :func:`ddp` (DistributedDataParallel whose gradient sync sums),
  :func:`batch_part`, :func:`no_sync`, :func:`grad_divisor`, :func:`unwrap` — ``train.fit``;
* process groups: :func:`init_from_env`, :func:`session`, :func:`command_session` (what the
  CLI uses under torchrun: stdout and files on rank 0, rank-tagged errors) and :func:`spawn`
  (run a function in N local processes — tests, notebooks, benchmarks).

Single-process behaviour is untouched: when ``torch.distributed`` is not initialised every
helper is the identity, and the core functions take exactly their old code path.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

__all__ = [
    "ExactDistributedSampler",
    "PeerFailedError",
    "RankFailedError",
    "ShardedLoader",
    "all_gather_objects",
    "all_reduce_scalars",
    "all_reduce_sums",
    "barrier",
    "batch_part",
    "broadcast_module",
    "broadcast_object",
    "command_session",
    "ddp",
    "free_port",
    "get_rank",
    "get_world_size",
    "grad_divisor",
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "local",
    "map_ordered",
    "no_sync",
    "on_main",
    "session",
    "shard",
    "spawn",
    "split",
    "unwrap",
    "use_distributed",
]

T = TypeVar("T")
R = TypeVar("R")

#: all_reduce_sums packs tensors into float64 buffers of at most this many bytes
BUCKET_BYTES = 32 * 2**20


class PeerFailedError(RuntimeError):
    """A collective failed because another process of the run stopped (its error is its own)."""


class RankFailedError(RuntimeError):
    """Work split across ranks failed on one rank; raised on every rank, with that rank's error.

    Attributes:
        rank: the rank that failed.
        item: a description of the work item it failed on.
        remote_traceback: the failing rank's traceback, as text.
    """

    def __init__(self, rank: int, item: str, error: str, remote_traceback: str = "") -> None:
        super().__init__(f"rank {rank} failed on {item}: {error}")
        self.rank, self.item, self.remote_traceback = rank, item, remote_traceback


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


_local = threading.local()


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

    A loader with a ``shard(rank, world_size)`` method shards itself (the language-model
    ``WindowLoader`` gives each rank some of its columns: a batch-by-batch split would break
    the hidden state carried from window to window). A ``DataLoader`` over a map-style data set (built with ``batch_size``, ``shuffle`` and no
    ``drop_last``) is rebuilt with an :class:`ExactDistributedSampler`: each rank loads only
    its examples, batched as before. Any other re-iterable (a list of batches, a custom
    loader, an iterable data set) is wrapped in a :class:`ShardedLoader`, batch by batch.
    Either way every example is in exactly one shard.
    """
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if world_size == 1:
        return loader
    custom = getattr(loader, "shard", None)
    if callable(custom) and not isinstance(loader, ShardedLoader):
        return custom(rank, world_size)
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


def get_backend_device() -> str:
    """ "cuda" for NCCL, "cpu" for gloo: where collective buffers must live."""
    return "cuda" if dist.get_backend() == "nccl" else "cpu"


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
# work split across ranks


def map_ordered(
    items: Sequence[T],
    fn: Callable[[T], R],
    *,
    on_result: Callable[[T, R], None] | None = None,
    describe: Callable[[T], str] = repr,
    progress: Callable[[int], None] | None = None,
    distributed: bool | None = None,
) -> list[R]:
    """``[fn(item) for item in items]`` with the items split round-robin across the ranks.

    The items go in rounds of ``world_size``: in round ``j`` rank ``r`` computes item
    ``j * world_size + r`` inside :func:`local` (so the core functions it calls do not
    all-reduce), then the round's results are all-gathered. Every rank returns all results,
    in item order; ``on_result(item, result)`` runs on rank 0 only, in item order, as soon as
    a round is gathered — the place to append a row to a results file, so that a killed run
    loses at most one round, and nothing is ever written by two processes.

    Every rank must call it with the same items. When ``fn`` raises on some rank, the round
    is still gathered: rank 0 hands on the results that come before the failed item, and
    every rank raises :class:`RankFailedError` naming the rank, the item (``describe``) and
    its error. Not distributed, it is a plain loop.

    Args:
        items: the work items (the same list on every rank).
        fn: computes one item's result (picklable).
        on_result: called on rank 0 with each finished item and result, in order.
        describe: names an item in error messages.
        progress: called on rank 0 with the number of items finished in each round.
        distributed: ``None``: when a process group is initialised.

    Example:
        >>> map_ordered([1, 2, 3], lambda x: x * x)
        [1, 4, 9]
    """
    items = list(items)
    if not use_distributed(distributed):
        results = []
        for item in items:
            result = fn(item)
            if on_result is not None:
                on_result(item, result)
            if progress is not None:
                progress(1)
            results.append(result)
        return results
    rank, world = get_rank(), get_world_size()
    results = []
    for start in range(0, len(items), world):
        index = start + rank
        payload: tuple[str, Any]
        if index >= len(items):
            payload = ("idle", None)
        else:
            try:
                with local():
                    payload = ("ok", fn(items[index]))
            except Exception as error:  # handed to every rank below
                payload = ("error", (f"{type(error).__name__}: {error}", traceback.format_exc()))
        gathered = all_gather_objects(payload)
        done = [
            (items[start + r], value)
            for r, (status, value) in enumerate(gathered)
            if status != "idle"
        ]
        failed = next((r for r, (status, _) in enumerate(gathered) if status == "error"), None)
        for offset, (item, value) in enumerate(done):
            if failed is not None and offset >= failed:
                break
            if is_main_process() and on_result is not None:
                on_result(item, value)
            results.append(value)
        if failed is not None:
            message, remote = gathered[failed][1]
            raise RankFailedError(failed, describe(items[start + failed]), message, remote)
        if progress is not None and is_main_process():
            progress(len(done))
    return results


def on_main(fn: Callable[[], R], *, distributed: bool | None = None) -> R:
    """``fn()`` on rank 0 only, its result broadcast to every rank (picklable).

    For what one process must do alone — opening a results file (which is locked), reading
    what it holds. An exception on rank 0 is raised on every rank (the same type and
    message, when it pickles), so all of them stop together. Not distributed: ``fn()``.
    """
    if not use_distributed(distributed):
        return fn()
    payload: tuple[str, Any] = ("ok", None)
    if is_main_process():
        try:
            payload = ("ok", fn())
        except Exception as error:
            try:
                pickle.dumps(error)
                payload = ("error", error)
            except Exception:
                payload = (
                    "error",
                    RankFailedError(0, "work done on rank 0", f"{type(error).__name__}: {error}"),
                )
            broadcast_object(payload)
            raise
    box = broadcast_object(payload)
    if box[0] == "error":
        raise box[1]
    return box[1]


# ---------------------------------------------------------------------------------------------
# data-parallel training


def broadcast_module(model: nn.Module, src: int = 0) -> nn.Module:
    """Copy rank ``src``'s parameters and buffers into ``model`` on every rank (in place).

    For models built independently on each rank (trained from a seed, say), whose weights
    could differ in the last bit with the thread count: afterwards every rank probes the
    very same weights. Nothing happens when not distributed.
    """
    if not is_distributed():
        return model
    with torch.no_grad(), _collective("broadcast of the model's weights"):
        for tensor in [*model.parameters(), *model.buffers()]:
            if get_backend_device() == "cpu" and tensor.device.type != "cpu":
                buffer = tensor.detach().cpu()
                dist.broadcast(buffer, src=src)
                tensor.copy_(buffer)
            else:
                dist.broadcast(tensor.data, src=src)
    return model


def batch_part(batch: Any, *, rank: int | None = None, world_size: int | None = None) -> Any:
    """This rank's rows of a global batch: part ``rank`` of ``world_size`` near-equal pieces.

    Tensors (alone, or in tuples, lists and dicts) are split on dim 0 with
    ``torch.tensor_split``; pieces differ by at most one row. Every rank iterating the same
    global batches and training on its part sees, together, exactly the single-process batch.

    Raises:
        ValueError: when the batch has fewer rows than there are ranks (a rank would get
            none, and DistributedDataParallel needs every rank in every backward pass).

    Example:
        >>> x, y = batch_part((torch.arange(5), torch.arange(5)), rank=1, world_size=2)
        >>> x.tolist()
        [3, 4]
    """
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if world_size == 1:
        return batch

    def part(x: Any) -> Any:
        if isinstance(x, Tensor):
            if x.dim() == 0 or x.shape[0] < world_size:
                rows = 0 if x.dim() == 0 else x.shape[0]
                raise ValueError(
                    f"a batch of {rows} rows cannot be split over {world_size} processes: "
                    "use a batch size of at least the number of processes"
                )
            return torch.tensor_split(x, world_size)[rank]
        if isinstance(x, dict):
            return {k: part(v) for k, v in x.items()}
        if isinstance(x, (tuple, list)):
            return type(x)(part(v) for v in x)
        return x  # non-tensor entries (lengths, ids, ...) are shared

    return part(batch)


def _sum_hook(state, bucket):  # no annotations: DDP checks them (none, or its own types)
    """DDP communication hook: all-reduce the bucket as a SUM (DDP's default divides by N)."""
    work = dist.all_reduce(bucket.buffer(), op=dist.ReduceOp.SUM, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def ddp(model: nn.Module, **kwargs: Any) -> nn.Module:
    """Wrap ``model`` in DistributedDataParallel whose gradient sync *sums* over the ranks.

    Each rank back-propagates ``W_r * L_r`` (its share of the global batch's weight times its
    mean loss); the summed gradient divided by the global weight ``sum_r W_r`` is then exactly
    the single-process gradient of the global batch, whatever the split — this is what
    ``paramcorrupt.train.training_closure`` does under torch.distributed. One all-reduce per
    backward pass (DDP's buckets, overlapped with the backward), none twice: the closure
    uses ``no_sync`` for every micro-batch but the last. Returns ``model`` itself when not
    distributed. ``kwargs`` go to DistributedDataParallel (``device_ids`` is set to
    ``LOCAL_RANK`` on CUDA).
    """
    if not is_distributed() or isinstance(model, DistributedDataParallel):
        return model
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type == "cuda":
        kwargs.setdefault("device_ids", [device.index])
    wrapped = DistributedDataParallel(model, **kwargs)
    wrapped.register_comm_hook(None, _sum_hook)
    wrapped._paramcorrupt_sums = True  # type: ignore[attr-defined]  # read by grad_divisor
    return wrapped


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (``model`` itself otherwise)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def grad_divisor(model: nn.Module, global_weight: float) -> float:
    """What to divide synchronised gradients of ``sum_b W_b L_b`` by to get the global mean.

    ``global_weight`` for a :func:`ddp` model (it sums), ``global_weight / N`` for a plain
    DistributedDataParallel (it averages), ``global_weight`` otherwise.
    """
    if isinstance(model, DistributedDataParallel) and not getattr(
        model, "_paramcorrupt_sums", False
    ):
        return global_weight / get_world_size()
    return global_weight


def no_sync(model: nn.Module, sync: bool) -> AbstractContextManager[Any]:
    """``model.no_sync()`` when ``sync`` is False and ``model`` is DistributedDataParallel.

    For gradient accumulation: wrap every micro-batch's backward but the last, so the
    accumulated gradient is synchronised once.
    """
    if not sync and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return nullcontext()


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


@contextmanager
def command_session(
    backend: str | None = None, *, error: type[Exception] | None = None
) -> Iterator[bool]:
    """A command-line command's process group: :func:`session`, plus stdout on rank 0 only.

    Under torchrun every rank runs the whole command; only rank 0 prints results (the other
    ranks' stdout goes to ``os.devnull``; their stderr — warnings, errors — stays). An
    exception leaving the block is re-raised with ``[rank r/N]`` in front of its message
    when the run is distributed, so the launcher's output says which process failed; a
    :class:`RankFailedError` or :class:`PeerFailedError` becomes ``error`` (the CLI's
    one-line error type) when given. Yields whether the run is distributed; in a single
    process it only yields False.
    """
    with session(backend) as on:
        if not on:
            yield False
            return
        quiet = None
        if not is_main_process():
            quiet = open(os.devnull, "w")  # noqa: SIM115 - closed below
            saved, sys.stdout = sys.stdout, quiet
        try:
            yield True
        except Exception as failure:
            tag = f"[rank {get_rank()}/{get_world_size()}]"
            if error is not None and isinstance(failure, (RankFailedError, PeerFailedError)):
                raise error(f"{tag} {failure}") from failure
            if (
                failure.args
                and isinstance(failure.args[0], str)
                and not failure.args[0].startswith("[rank ")
            ):
                failure.args = (f"{tag} {failure.args[0]}", *failure.args[1:])
            raise
        finally:
            if quiet is not None:
                sys.stdout = saved
                quiet.close()


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
    threads: int,
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(threads)
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        result = fn(*args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def spawn(
    fn: Callable[..., T],
    world_size: int = 2,
    *args: Any,
    backend: str = "gloo",
    start_method: str = "spawn",
    threads: int | None = None,
) -> list[T]:
    """Run ``fn(*args)`` in ``world_size`` local processes joined in a process group.

    Its return values (anything ``torch.save`` can write) come back in rank order. If any
    rank raises, the others are terminated and a ``torch.multiprocessing.ProcessRaisedException``
    carrying that rank's traceback is raised here. With ``start_method="spawn"`` (the
    default, safe with CUDA) ``fn`` must be importable and each process starts a fresh
    interpreter (seconds); ``"fork"`` (POSIX, CPU only) starts in milliseconds but runs each
    process with one torch thread (OpenMP cannot be used again in a child forked after the
    parent used it: it would hang). With ``"spawn"`` each process gets ``threads`` torch
    threads (default ``cores // world_size``). For tests, notebooks and benchmarks; real runs use torchrun.
    """
    import torch.multiprocessing as mp

    if start_method == "fork":
        threads = 1
    elif threads is None:
        threads = max(1, (os.cpu_count() or 1) // world_size)
    with tempfile.TemporaryDirectory(prefix="paramcorrupt-spawn-") as out_dir:
        mp.start_processes(
            _spawn_entry,
            args=(fn, world_size, free_port(), backend, out_dir, args, threads),
            nprocs=world_size,
            join=True,
            start_method=start_method,
        )
        # the results our own child processes wrote into this private temporary folder (any
        # object fn returns), never a user's checkpoint: those are read with weights_only=True
        return [
            torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False)
            for r in range(world_size)
        ]
