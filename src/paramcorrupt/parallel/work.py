"""Work split across ranks: :func:`split` a list, :func:`map_ordered` (round-robin, gathered in
rounds, rank 0 writes in order; a failure on any rank raises :class:`RankFailedError` on every
rank) and :func:`on_main` (rank 0 does it, every rank gets the result or the error).
"""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .comm import (
    all_gather_objects,
    broadcast_object,
    get_rank,
    get_world_size,
    is_main_process,
    local,
    use_distributed,
)

T = TypeVar("T")
R = TypeVar("R")


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


def split(items: Sequence[T], *, rank: int | None = None, world_size: int | None = None) -> list[T]:
    """Round-robin share of a list of work items: item ``i`` goes to rank ``i % world_size``.

    Example:
        >>> split(["a", "b", "c"], rank=0, world_size=2)
        ['a', 'c']
    """
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    return list(items[rank::world_size])


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
