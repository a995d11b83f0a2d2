"""Sharding data across ranks without repeats or drops.

:func:`shard` uses a loader's own ``shard(rank, world_size)``; a ``DataLoader`` over a
map-style data set is split example by example with :class:`ExactDistributedSampler`; any
other re-iterable is split batch by batch with :class:`ShardedLoader`. :func:`batch_part`
cuts one batch into a rank's part (data-parallel training).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from ..errors import ParamCorruptError
from .comm import get_rank, get_world_size

T = TypeVar("T")


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
            raise ParamCorruptError(f"rank {self.rank} is not in [0, {self.world_size})")

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
                raise ParamCorruptError(
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
