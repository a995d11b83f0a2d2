"""Scale-out with ``torch.distributed``: the same numbers as one process, from N of them.

* :mod:`.comm`: who am I and the collectives — the only part the core imports;
* :mod:`.data`: sharding data without repeats or drops (an exact sampler);
* :mod:`.work`: work split across ranks (the probe sweep: rank 0 writes in order);
* :mod:`.data_parallel`: data-parallel training (DDP) whose gradient sync sums;
* :mod:`.launch`: process groups (``torchrun``, :func:`spawn` for tests and notebooks);
* :mod:`.fsdp`: FSDP2 / flat shards: per-rank top-n candidates, one ``all_gather``.

Every name is also reachable here (``paramcorrupt.parallel.init_from_env()``); the
submodules are imported on first use, so that importing :mod:`.comm` from the core does not
import the rest.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "comm": (
        "PeerFailedError", "all_gather_objects", "all_reduce_scalars", "all_reduce_sums", "barrier",
        "broadcast_object", "collective", "comm_device", "get_rank", "get_world_size",
        "is_distributed", "is_main_process", "local", "use_distributed",
    ),
    "data": ("ExactDistributedSampler", "ShardedLoader", "batch_part", "shard"),
    "work": ("RankFailedError", "map_ordered", "on_main", "split"),
    "data_parallel": ("broadcast_module", "ddp", "grad_divisor", "no_sync", "unwrap"),
    "launch": ("command_session", "free_port", "init_from_env", "session", "spawn"),
    "fsdp": (
        "LocalShard", "flat_shard", "fsdp_dataset_gradient", "gradient_memory", "local_shard",
        "sharded_closed_form", "sharded_top_n",
    ),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = sorted(_HOME_OF)


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME_OF])
