"""The ``cifar10`` task: a CIFAR-style ResNet (ResNet-20 by default, ResNet-34 layout available)
on CIFAR-10 from the JPEG tarballs.

Data (see :mod:`paramcorrupt.data.cifar10`): ``data_dir`` or ``$PARAMCORRUPT_DATA`` names the
folder holding ``cifar10_jpg/``; the decoded tensors are cached in ``cache_dir``,
``$PARAMCORRUPT_CACHE`` or ``~/.cache/paramcorrupt``. A missing archive raises
``FileNotFoundError`` with one sentence saying where it was looked for.

The loaders, as in the paper:

- ``train_loader``: the training set (or its first ``limit_train`` images, class-balanced),
  shuffled by a generator seeded with ``seed`` and augmented (4-pixel pad, random 32x32 crop,
  horizontal flip) by one seeded with ``seed + 1``.
- ``gradient_loader``: the training set **without augmentation**, in order (the first
  ``limit_gradient`` images; default ``limit_train``) — the data of the data set gradient.
- ``eval_loader``: the test set (the first ``limit_test`` images), in order.

The metric is top-1 ``accuracy``. Groupings (label -> :class:`~paramcorrupt.ParameterGroup`):

- ``"type"``: ``conv`` (3x3 and 1x1 projection convolutions), ``norm`` (every batch norm),
  ``linear`` (the final fc) — the paper's Conv / BN / FC (Figure 4 a);
- ``"position"``: ``stem`` (conv1 + bn1), ``layer1`` ... ``layer4`` (each stage with its
  shortcut projections), ``fc`` — lower to upper (Figure 4 c, Table 4);
- ``"position_type"``: each position split by type (``layer1/conv``, ``layer1/norm``, ...), a
  coarse version of the paper's Figure 7.

Without ``checkpoint`` or ``state_dict`` the model is freshly initialised (untrained; a
warning is logged): train it with ``paramcorrupt train --task cifar10`` or the reproduction
scripts in ``benchmarks/``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..errors import ParamCorruptError
from ..groups import ParameterGroup, select
from ..losses import accuracy, classification_loss
from ..train.recipe import Recipe
from .base import Task, check_int
from .weights import load_given, load_weights, resolve_device

__all__ = [
    "CIFAR10_RECIPE",
    "MODELS",
    "DeviceLoader",
    "ImageBatches",
    "build_resnet",
    "cifar10_task",
    "load_weights",
    "resnet_groups_by_position",
    "resnet_groups_by_position_type",
    "resnet_groups_by_type",
]

logger = logging.getLogger(__name__)

#: model name -> (stage depths, stage widths). ResNet-20/34 as in He et al. (2016); the small
#: ones are for smoke tests and quick reproductions.
MODELS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "resnet34": ((3, 4, 6, 3), (64, 128, 256, 512)),
    "resnet20": ((3, 3, 3), (16, 32, 64)),
    "resnet14": ((2, 2, 2), (16, 32, 64)),
    "resnet8": ((1, 1, 1), (16, 32, 64)),
    "tiny": ((1, 1, 1), (8, 16, 32)),
}


#: the recipe the reproductions use (docs/reproduction.md), for the train CLI: SGD with
#: Nesterov momentum 0.9, weight decay 5e-4, a one-cycle schedule peaking at lr 0.1
CIFAR10_RECIPE = Recipe(
    optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True, schedule="onecycle"
)


# ---------------------------------------------------------------------------------------------
# helpers shared with the ptb-lm task


class DeviceLoader:
    """Wraps a loader so that every batch (a tuple of tensors) lands on ``device``.

    It keeps ``len`` and exposes the wrapped loader's shuffling ``generator`` (which
    :func:`paramcorrupt.train.fit` saves and restores when resuming).
    """

    def __init__(self, loader: Any, device: torch.device) -> None:
        self.loader, self.device = loader, device

    @property
    def generator(self) -> torch.Generator | None:
        return getattr(self.loader, "generator", None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            moved = [
                t.to(self.device, non_blocking=True) if isinstance(t, Tensor) else t for t in batch
            ]
            yield type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)


# ---------------------------------------------------------------------------------------------


class ImageBatches:
    """uint8 images [N, 3, 32, 32] + labels as in-order, normalised (x, y) batches, no augmentation.

    Normalising a whole batch at once, it is much faster than a per-image DataLoader, which
    matters for probes that evaluate the same data hundreds of times. The tensors are moved to
    ``device`` once.

    Example:
        >>> batches = ImageBatches(torch.zeros(5, 3, 32, 32, dtype=torch.uint8), torch.arange(5), 2)
        >>> len(batches), [tuple(x.shape) for x, _ in batches][-1]
        (3, (1, 3, 32, 32))
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        device: torch.device | str | None = None,
    ) -> None:
        from ..data.cifar10 import CIFAR10_MEAN, CIFAR10_STD

        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ParamCorruptError(
                f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        self.batch_size = check_int(batch_size, "batch_size")
        device = torch.device(device or "cpu")
        self.images, self.labels = images.to(device), labels.long().to(device)
        std = torch.tensor(CIFAR10_STD, device=device).view(1, -1, 1, 1)
        mean = torch.tensor(CIFAR10_MEAN, device=device).view(1, -1, 1, 1)
        self._scale, self._shift = 1.0 / (255.0 * std), -mean / std

    def __len__(self) -> int:
        return -(-self.labels.numel() // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, self.labels.numel(), self.batch_size):
            x = self.images[start : start + self.batch_size].float()
            yield (
                torch.addcmul(self._shift, x, self._scale),
                self.labels[start : start + self.batch_size],
            )


def build_resnet(
    model: str = "resnet20",
    depths: Sequence[int] | None = None,
    widths: Sequence[int] | None = None,
    num_classes: int = 10,
) -> nn.Module:
    """A :class:`~paramcorrupt.models.CifarResNet` by name (see :data:`MODELS`), or with explicit
    ``depths`` and ``widths`` (which override the named model's).

    Example:
        >>> sum(p.numel() for p in build_resnet("resnet20").parameters())
        272474
    """
    from ..models.resnet import CifarResNet

    if model not in MODELS:
        raise ParamCorruptError(
            f"unknown model {model!r}; expected one of {', '.join(MODELS)} (or give depths and widths)"
        )
    base_depths, base_widths = MODELS[model]
    depths = base_depths if depths is None else _ints(depths, "depths")
    widths = base_widths if widths is None else _ints(widths, "widths")
    return CifarResNet(depths, widths, num_classes)


def _ints(values: Sequence[int], what: str) -> tuple[int, ...]:
    """A non-empty sequence of integers >= 1 as a tuple."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ParamCorruptError(f"{what} must be a non-empty sequence of integers such as (3, 3, 3), got {values!r}")
    return tuple(check_int(v, what) for v in values)


def _stages(model: nn.Module) -> tuple[str, ...]:
    stages = getattr(model, "stage_names", None)
    if stages is None:
        stages = tuple(n for n, _ in model.named_children() if n.startswith("layer"))
    return tuple(stages)


def resnet_groups_by_type(model: nn.Module) -> dict[str, ParameterGroup]:
    """``conv``, ``norm`` (BN) and ``linear`` (FC) parameters (Figure 4 a)."""
    return {t: select(model, types=t, name=t) for t in ("conv", "norm", "linear")}


def resnet_groups_by_position(model: nn.Module) -> dict[str, ParameterGroup]:
    """``stem``, ``layer1`` ... ``layerN``, ``fc``: lower to upper (Figure 4 c, Table 4)."""
    groups = {"stem": select(model, ["conv1", "bn1"], name="stem")}
    for stage in _stages(model):
        groups[stage] = select(model, stage, name=stage)
    groups["fc"] = select(model, "fc", name="fc")
    return groups


def resnet_groups_by_position_type(model: nn.Module) -> dict[str, ParameterGroup]:
    """Every position split by type: ``stem/conv``, ``stem/norm``, ``layer1/conv``, ..., ``fc/linear``."""
    groups = {}
    for position, group in resnet_groups_by_position(model).items():
        patterns = list(group.names)
        for kind in ("conv", "norm", "linear"):
            label = f"{position}/{kind}"
            try:
                groups[label] = select(model, patterns, types=kind, name=label)
            except ValueError:  # no parameter of that type here
                continue
    return groups


#: the task's groupings (see the module's docstring)
_GROUPINGS = {
    "type": resnet_groups_by_type,
    "position": resnet_groups_by_position,
    "position_type": resnet_groups_by_position_type,
}


def _limit(value: int | None, what: str, minimum: int = 1) -> int | None:
    return None if value is None else check_int(value, what, minimum)


def _cifar_model(
    model: str,
    depths: Sequence[int] | None,
    widths: Sequence[int] | None,
    checkpoint: str | os.PathLike[str] | None,
    state_dict: Mapping[str, Tensor] | None,
    seed: int,
) -> tuple[nn.Module, bool]:
    """The ResNet initialised from ``seed``, the weights loaded when given; and whether they were."""
    torch.manual_seed(seed)
    net = build_resnet(model, depths, widths)
    if not load_given(net, checkpoint, state_dict, f"the {model} model (depths {net.depths}, widths {net.widths})"):
        logger.info("cifar10: no checkpoint given, the %s model is untrained", model)
        return net, False
    return net, True


def _train_loader(
    images: Tensor, labels: Tensor, *, batch_size: int, augment: bool, num_workers: int, seed: int, device: torch.device
) -> tuple[Any, int]:
    """The shuffled, augmented training loader (on ``device``) and its number of images."""
    from ..data.cifar10 import AugmentedImages

    train_set = AugmentedImages(images, labels, augment=augment, generator=torch.Generator().manual_seed(seed + 1))
    worker_init = None
    if num_workers > 0:
        from ..data.cifar10 import seed_augmentation_worker

        worker_init = seed_augmentation_worker
    loader: Any = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        worker_init_fn=worker_init,
    )
    if device.type != "cpu":
        loader = DeviceLoader(loader, device)
    return loader, len(train_set)


def cifar10_task(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    model: str = "resnet20",
    depths: tuple[int, ...] | None = None,
    widths: tuple[int, ...] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    state_dict: Mapping[str, Tensor] | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    limit_gradient: int | None = None,
    batch_size: int = 128,
    eval_batch_size: int = 500,
    augment: bool = True,
    num_workers: int = 0,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> Task:
    """The CIFAR-10 task (see the module's docstring).

    The options are typed values; ``paramcorrupt probe/train --task-option KEY=VALUE``
    converts its strings by these annotations (``depths=3,4,6,3``, ``augment=no``, ...).

    Args:
        data_dir: the folder containing ``cifar10_jpg/`` (default: ``$PARAMCORRUPT_DATA``).
        cache_dir: where decoded images are cached (default: ``$PARAMCORRUPT_CACHE`` or
            ``~/.cache/paramcorrupt``).
        model: "resnet20" (default), "resnet34", "resnet14", "resnet8" or "tiny".
        depths: blocks per stage (e.g. (3, 4, 6, 3)), overriding the named model's.
        widths: channels per stage (e.g. (16, 32, 64)), overriding the named model's.
        checkpoint: a file with the weights (a state dict or a training checkpoint).
        state_dict: the weights themselves (instead of ``checkpoint``).
        limit_train: train on the first ``limit_train`` training images only (class-balanced).
        limit_test: evaluate on the first ``limit_test`` test images only.
        limit_gradient: take the gradient on the first ``limit_gradient`` training images
            (default: ``limit_train``, i.e. all the training images used).
        batch_size: the training batch size (the paper: 128).
        eval_batch_size: the batch size of the gradient and evaluation loaders.
        augment: augment the training loader (crop + flip).
        num_workers: DataLoader workers of the training loader.
        seed: seeds the initialisation, the shuffling and the augmentation.
        device: "cpu" (default), "cuda", "auto", ...: where the model and every batch live.
        progress: progress bars while decoding the JPEGs.

    Raises:
        FileNotFoundError: when the data (or the checkpoint) is not found.
        ValueError: for bad options or weights that do not fit the model.
    """
    from ..data.cifar10 import load_cifar10

    if checkpoint is not None and state_dict is not None:
        raise ParamCorruptError("give checkpoint or state_dict, not both")
    seed = check_int(seed, "seed", minimum=0)
    limit_train, limit_test = _limit(limit_train, "limit_train"), _limit(limit_test, "limit_test")
    limit_gradient = limit_train if limit_gradient is None else _limit(limit_gradient, "limit_gradient")
    batch_size, eval_batch_size = check_int(batch_size, "batch_size"), check_int(eval_batch_size, "eval_batch_size")
    num_workers = check_int(num_workers, "num_workers", minimum=0)
    resolved = resolve_device(device)

    needed = None if limit_train is None or limit_gradient is None else max(limit_train, limit_gradient)  # one decode
    train_images, train_labels = load_cifar10("train", data_dir, limit=needed, cache_dir=cache_dir, progress=progress)
    test_images, test_labels = load_cifar10("test", data_dir, limit=limit_test, cache_dir=cache_dir, progress=progress)

    net, trained = _cifar_model(model, depths, widths, checkpoint, state_dict, seed)
    net.to(resolved).eval()
    train_loader, train_size = _train_loader(
        train_images[:limit_train], train_labels[:limit_train],
        batch_size=batch_size, augment=augment, num_workers=num_workers, seed=seed, device=resolved,
    )
    g_images, g_labels = train_images[:limit_gradient], train_labels[:limit_gradient]
    return Task(
        name="cifar10",
        model=net,
        gradient_loader=ImageBatches(g_images, g_labels, eval_batch_size, resolved),
        eval_loader=ImageBatches(test_images, test_labels, eval_batch_size, resolved),
        loss_fn=classification_loss,
        metrics={"accuracy": accuracy},
        primary_metric="accuracy",
        chance=0.1,  # ten classes
        groupings=_GROUPINGS,
        train_loader=train_loader,
        info={
            "seed": seed,
            "model": model,
            "depths": list(net.depths),
            "widths": list(net.widths),
            "parameters": sum(p.numel() for p in net.parameters()),
            "trained": trained,
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "train_size": train_size,
            "gradient_size": int(g_labels.numel()),
            "test_size": int(test_labels.numel()),
            "batch_size": batch_size,
            "device": str(resolved),
            "recipe": CIFAR10_RECIPE,
        },
    )
