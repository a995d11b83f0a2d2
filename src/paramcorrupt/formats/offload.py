"""The float weights of a quantised model kept in a temporary file, to restore them bit for bit
without a copy in memory (core).

:class:`FloatFile` writes each tensor's bytes to an anonymous temporary file
(``tempfile.TemporaryFile``: in ``$TMPDIR``, removed when closed or when the process ends)
and reads them back into the parameter in chunks of :data:`CHUNK` bytes: the memory it takes
is one chunk while it reads (and a CPU copy of one tensor while it writes a tensor that is
not a contiguous CPU tensor). On a ``tmpfs`` temporary directory the file is in memory.
"""

from __future__ import annotations

import tempfile
from typing import BinaryIO

import torch
from torch import Tensor

__all__ = ["CHUNK", "FloatFile"]

#: bytes read back at a time
CHUNK = 16 * 1024 * 1024


def _bytes(tensor: Tensor) -> Tensor:
    """The tensor's bytes as a flat uint8 CPU tensor (a view where it is contiguous on the CPU)."""
    flat = tensor.detach().reshape(-1)
    if flat.device.type != "cpu":
        flat = flat.cpu()
    return flat.contiguous().view(torch.uint8)


class FloatFile:
    """Tensors saved by name in a temporary file and written back into tensors of their shape."""

    def __init__(self, dir: str | None = None) -> None:
        self.file: BinaryIO = tempfile.TemporaryFile(prefix="paramcorrupt-float-", dir=dir)
        self.where: dict[str, tuple[int, int, torch.dtype, torch.Size]] = {}

    def save(self, name: str, tensor: Tensor) -> None:
        """Append the bytes of ``tensor`` (its dtype and shape recorded)."""
        data = _bytes(tensor)
        self.file.seek(0, 2)
        offset = self.file.tell()
        self.file.write(memoryview(data.numpy()))
        self.file.flush()
        self.where[name] = (offset, data.numel(), tensor.dtype, tensor.shape)

    @torch.no_grad()
    def load_into(self, name: str, target: Tensor) -> None:
        """Write the saved bytes of ``name`` into ``target`` (same dtype and shape), chunk by chunk."""
        offset, size, dtype, shape = self.where[name]
        assert target.dtype == dtype and target.shape == shape, (
            f"{name}: saved {dtype} {list(shape)}"
        )
        flat = target.reshape(-1) if target.is_contiguous() else None
        out = flat.view(torch.uint8) if flat is not None else torch.empty(size, dtype=torch.uint8)
        self.file.seek(offset)
        done = 0
        while done < size:
            chunk = bytearray(min(CHUNK, size - done))
            got = self.file.readinto(chunk)
            if not got:
                raise OSError(
                    f"the temporary file of the float weights ended at {name!r} ({done} of {size} bytes)"
                )
            out[done : done + got].copy_(torch.frombuffer(chunk, dtype=torch.uint8, count=got))
            done += got
        if flat is None:
            target.copy_(out.view(dtype).reshape(shape))

    def close(self) -> None:
        self.file.close()
