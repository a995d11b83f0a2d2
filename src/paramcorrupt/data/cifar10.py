"""CIFAR-10 from the JPEG tarballs in ``<data>/cifar10_jpg/`` (see that folder's README).

The archives hold ``train/<class>/NNNN.jpg`` (5,000 per class) and ``test/<class>/NNNN.jpg``
(1,000 per class). They are decoded once with Pillow into a uint8 tensor [N, 3, 32, 32] plus
int64 labels (classes in alphabetical order, 0=airplane ... 9=truck) and cached as a ``.pt``
file of tensors in the cache folder (``cache_dir``, else ``$PARAMCORRUPT_CACHE``, else
``~/.cache/paramcorrupt``), never beside the data.

Image order is interleaved by class: image 0 of every class (in class order), then image 1 of
every class, and so on. Any prefix is therefore class-balanced, which is what ``limit=``
takes: ``limit=256`` decodes only those 256 images (and caches them under their own key).
The JPEGs are lossy re-encodings (quality 75) of CIFAR-10, so accuracies are close to, not
identical with, published numbers.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, get_worker_info

from .._progress import progress_bar
from ..errors import ParamCorruptError
from ._paths import resolve_cache_dir, resolve_data_file, save_tensors_atomic

__all__ = [
    "CIFAR10",
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "AugmentedImages",
    "cifar10_loaders",
    "load_cifar10",
    "seed_augmentation_worker",
]

logger = logging.getLogger(__name__)

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
#: Per-channel mean and standard deviation of the CIFAR-10 training pixels, in [0, 1].
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_ARCHIVES = {"train": "cifar10_jpg_train.tar.gz", "test": "cifar10_jpg_test.tar.gz"}
_SIZES = {"train": 50_000, "test": 10_000}
_CACHE_VERSION = 1


def _check_split(split: str) -> None:
    if split not in _ARCHIVES:
        raise ParamCorruptError(f"split must be 'train' or 'test', got {split!r}")


def _read_archive(archive: Path, split: str) -> list[tuple[str, int, bytes]]:
    """(stem, class index, JPEG bytes) of every image, interleaved by class."""
    entries: list[tuple[str, str, bytes]] = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.lower().endswith(".jpg"):
                continue
            parts = Path(member.name).parts
            if len(parts) < 2:
                continue
            handle = tar.extractfile(member)
            if handle is None:  # pragma: no cover - isfile() members always have data
                continue
            entries.append((Path(parts[-1]).stem, parts[-2], handle.read()))
    found = sorted({cls for _, cls, _ in entries})
    if tuple(found) != CIFAR10_CLASSES:
        raise ParamCorruptError(f"{archive}: expected the 10 CIFAR-10 class folders, found {found}")
    index = {name: i for i, name in enumerate(CIFAR10_CLASSES)}
    ordered = sorted(((stem, index[cls], data) for stem, cls, data in entries), key=lambda e: e[:2])
    if len(ordered) != _SIZES[split]:
        logger.warning("%s: %d images, expected %d", archive, len(ordered), _SIZES[split])
    return ordered


def _decode(
    entries: list[tuple[str, int, bytes]], progress: bool, desc: str
) -> tuple[Tensor, Tensor]:
    from PIL import Image

    images = np.empty((len(entries), 32, 32, 3), dtype=np.uint8)
    labels = np.empty(len(entries), dtype=np.int64)
    for i, (stem, label, data) in enumerate(
        progress_bar(entries, enabled=progress, total=len(entries), desc=desc, unit="img")
    ):
        with Image.open(io.BytesIO(data)) as img:
            array = np.asarray(img.convert("RGB"))
        if array.shape != (32, 32, 3):
            raise ParamCorruptError(
                f"{desc}: image {stem} of class {label} has shape {array.shape}, expected 32x32x3"
            )
        images[i] = array
        labels[i] = label
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


def _load_cache(path: Path) -> tuple[Tensor, Tensor] | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        images, labels = blob["images"], blob["labels"]
    except Exception as error:  # a truncated or foreign file: decode again
        logger.warning("ignoring unreadable cache %s (%s)", path, error)
        return None
    if images.dtype != torch.uint8 or images.dim() != 4 or labels.shape != images.shape[:1]:
        logger.warning("ignoring malformed cache %s", path)
        return None
    return images, labels


def load_cifar10(
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    limit: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> tuple[Tensor, Tensor]:
    """Images uint8 [N, 3, 32, 32] and labels int64 [N] of a CIFAR-10 split, via the cache.

    Args:
        split: ``"train"`` (50,000 images) or ``"test"`` (10,000).
        data_dir: the folder containing ``cifar10_jpg/`` (default: ``$PARAMCORRUPT_DATA``).
        limit: keep only the first ``limit`` images (class-balanced; decodes only those).
        cache_dir: where the decoded tensors are cached (default: ``$PARAMCORRUPT_CACHE``
            or ``~/.cache/paramcorrupt``).
        progress: show a progress bar while decoding.

    Raises:
        FileNotFoundError: when the archive is not found.
        ValueError: for an unknown split or a non-positive limit.
    """
    _check_split(split)
    if limit is not None and limit < 1:
        raise ParamCorruptError(f"limit must be positive, got {limit}")
    archive = resolve_data_file(data_dir, "cifar10_jpg", _ARCHIVES[split])
    if limit is not None and limit >= _SIZES[split]:
        limit = None
    cache = resolve_cache_dir(cache_dir)
    tag = f"cifar10jpg-v{_CACHE_VERSION}-{split}-{archive.stat().st_size}"
    full_path = cache / f"{tag}-all.pt"
    path = full_path if limit is None else cache / f"{tag}-first{limit}.pt"
    for candidate in dict.fromkeys((path, full_path)):
        cached = _load_cache(candidate)
        if cached is not None:
            images, labels = cached
            return (
                (images, labels)
                if limit is None
                else (images[:limit].clone(), labels[:limit].clone())
            )
    start = time.perf_counter()
    entries = _read_archive(archive, split)
    if limit is not None:
        entries = entries[:limit]
    images, labels = _decode(entries, progress, f"decoding CIFAR-10 {split}")
    save_tensors_atomic({"images": images, "labels": labels}, path)
    logger.info(
        "decoded %d CIFAR-10 %s images in %.1fs, cached at %s",
        len(labels),
        split,
        time.perf_counter() - start,
        path,
    )
    return images, labels


class AugmentedImages(Dataset):
    """uint8 images [N, C, H, W] + labels as a Dataset of normalised float images.

    With ``augment``: pad ``pad`` pixels (zeros) on each side, take a random HxW crop, and
    flip horizontally with probability 1/2, drawing from ``generator`` (He et al. 2016).

    Args:
        images: uint8 tensor [N, C, H, W].
        labels: int tensor [N].
        augment: apply the random crop and flip.
        normalize: subtract ``mean`` and divide by ``std`` (after scaling to [0, 1]).
        mean: per-channel mean.
        std: per-channel standard deviation.
        pad: padding of the random crop.
        generator: the random stream of the augmentation (default: seeded with 0). With
            DataLoader workers, :func:`seed_augmentation_worker` reseeds each worker's copy.

    Example:
        >>> ds = AugmentedImages(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.arange(4), augment=True)
        >>> x, y = ds[1]
        >>> x.shape, x.dtype, y
        (torch.Size([3, 32, 32]), torch.float32, 1)
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        augment: bool = False,
        normalize: bool = True,
        mean: tuple[float, ...] = CIFAR10_MEAN,
        std: tuple[float, ...] = CIFAR10_STD,
        pad: int = 4,
        generator: torch.Generator | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ParamCorruptError(
                f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != images.shape[:1]:
            raise ParamCorruptError(f"labels must be [N] = [{images.size(0)}], got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()
        self.augment = augment
        self.normalize = normalize
        self.pad = pad
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        # x = (img / 255 - mean) / std as one fused multiply-add
        self._scale = 1.0 / (255.0 * self.std)
        self._shift = -self.mean / self.std
        self._padded: Tensor | None = None
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def __len__(self) -> int:
        return self.images.size(0)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        img = self.images[index]
        if self.augment:
            if self._padded is None:  # zero-padded once, so that a crop is a slice
                self._padded = F.pad(self.images, (self.pad,) * 4)
            _, h, w = img.shape
            side = 2 * self.pad + 1
            draw = int(torch.randint(0, 2 * side * side, (), generator=self.generator))
            flip, offset = divmod(draw, side * side)
            dy, dx = divmod(offset, side)
            img = self._padded[index, :, dy : dy + h, dx : dx + w]
            if flip:
                img = img.flip(-1)
        if self.normalize:
            return torch.addcmul(self._shift, img.float(), self._scale), int(self.labels[index])
        return img.float().div_(255.0), int(self.labels[index])


class CIFAR10(AugmentedImages):
    """A CIFAR-10 split as a Dataset: (float image [3, 32, 32], label).

    Args:
        split: ``"train"`` or ``"test"``.
        data_dir: the folder containing ``cifar10_jpg/`` (default: ``$PARAMCORRUPT_DATA``).
        limit: keep only the first ``limit`` (class-balanced) images.
        augment: random crop + flip (default: on for ``"train"``, off for ``"test"``).
        normalize: normalise with :data:`CIFAR10_MEAN` / :data:`CIFAR10_STD`.
        seed: seed of the augmentation generator.
        cache_dir: see :func:`load_cifar10`.
        progress: progress bar while decoding.
    """

    def __init__(
        self,
        split: str = "train",
        data_dir: str | os.PathLike[str] | None = None,
        *,
        limit: int | None = None,
        augment: bool | None = None,
        normalize: bool = True,
        seed: int = 0,
        cache_dir: str | os.PathLike[str] | None = None,
        progress: bool = True,
    ) -> None:
        images, labels = load_cifar10(
            split, data_dir, limit=limit, cache_dir=cache_dir, progress=progress
        )
        super().__init__(
            images,
            labels,
            augment=(split == "train") if augment is None else augment,
            normalize=normalize,
            generator=torch.Generator().manual_seed(seed),
        )
        self.split = split
        self.classes = CIFAR10_CLASSES


def seed_augmentation_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker's dataset copy its own augmentation stream.

    The seed is the worker's torch seed, which the DataLoader derives from its own generator,
    so runs stay reproducible and epochs differ.
    """
    info = get_worker_info()
    if info is not None and isinstance(info.dataset, AugmentedImages):
        info.dataset.generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63)


def cifar10_loaders(
    data_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 128,
    *,
    test_batch_size: int | None = None,
    num_workers: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
    augment: bool = True,
    normalize: bool = True,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    drop_last: bool = False,
    **loader_kwargs: Any,
) -> tuple[DataLoader, DataLoader]:
    """(train_loader, test_loader) for CIFAR-10.

    The training loader shuffles (with a generator seeded by ``seed``) and augments (with a
    generator seeded by ``seed + 1``); the test loader does neither. Batches are
    (float images [B, 3, 32, 32], int64 labels [B]).

    Args:
        data_dir: the folder containing ``cifar10_jpg/`` (default: ``$PARAMCORRUPT_DATA``).
        batch_size: training batch size (the paper: 128).
        test_batch_size: test batch size (default: ``batch_size``).
        num_workers: DataLoader workers (each gets its own augmentation stream).
        limit_train: keep only the first ``limit_train`` training images.
        limit_test: keep only the first ``limit_test`` test images.
        augment: random crop + flip on the training set.
        normalize: normalise with the CIFAR-10 mean and std.
        seed: seed of the shuffling and augmentation.
        cache_dir: see :func:`load_cifar10`.
        progress: progress bars while decoding.
        drop_last: drop the last incomplete training batch.
        **loader_kwargs: passed to both DataLoaders (e.g. ``pin_memory=True``).
    """
    common = {
        "data_dir": data_dir,
        "normalize": normalize,
        "cache_dir": cache_dir,
        "progress": progress,
    }
    train_set = CIFAR10("train", limit=limit_train, augment=augment, seed=seed + 1, **common)
    test_set = CIFAR10("test", limit=limit_test, augment=False, seed=seed, **common)
    worker_init = seed_augmentation_worker if num_workers > 0 else None
    train_loader = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        worker_init_fn=worker_init,
        drop_last=drop_last,
        **loader_kwargs,
    )
    test_loader = DataLoader(
        test_set,
        batch_size=test_batch_size or batch_size,
        shuffle=False,
        num_workers=num_workers,
        **loader_kwargs,
    )
    return train_loader, test_loader
