"""Process groups: :func:`init_from_env` (what ``torchrun`` sets), :func:`session`,
:func:`command_session` (what the CLI uses under torchrun: stdout and files on rank 0,
rank-tagged errors) and :func:`spawn` (a function in N local processes: tests, notebooks,
benchmarks).

Launch with PyTorch's own launcher; this module only reads what it sets::

    torchrun --nproc_per_node=2 -m paramcorrupt probe --task digits ...
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ..errors import ParamCorruptError
from .comm import PeerFailedError, get_rank, get_world_size, is_distributed, is_main_process
from .work import RankFailedError

T = TypeVar("T")





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
    user error (:class:`~paramcorrupt.errors.ParamCorruptError`) leaving the block is raised
    again, of the same type, with ``[rank r/N]`` in front of its message when the run is
    distributed, so the launcher's output says which process failed; any other exception
    keeps its own arguments and gets the rank as a note in its traceback; a
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
            if str(failure).startswith("[rank "):
                raise
            if error is not None and isinstance(failure, (RankFailedError, PeerFailedError)):
                raise error(f"{tag} {failure}") from failure
            if isinstance(failure, ParamCorruptError):  # our own types take one message
                raise type(failure)(f"{tag} {failure}") from failure
            # anything else is re-raised as it is (its arguments are its own), with the rank
            # as a note in its traceback
            if hasattr(failure, "add_note"):  # Python >= 3.11
                failure.add_note(f"raised on {tag}")
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
