"""CIFAR-style residual networks (He et al. 2016) with BasicBlocks and batch norm.

The stem is a single 3x3 convolution (no 7x7 conv, no max-pool), as usual for 32x32 inputs.
Each stage ``layer{i}`` is an ``nn.Sequential`` of :class:`BasicBlock` s; every stage after
the first halves the resolution in its first block. Shortcuts that change shape are a 1x1
convolution + batch norm projection ("option B"), so the parameter names are stable and
readable for grouping by type or position::

    conv1.weight, bn1.weight, bn1.bias,
    layer1.0.conv1.weight, layer1.0.bn1.weight, ..., layer2.0.shortcut.0.weight (1x1 conv),
    layer2.0.shortcut.1.weight (its bn), ..., fc.weight, fc.bias
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ParamCorruptError

__all__ = ["BasicBlock", "CifarResNet", "resnet20_cifar", "resnet34_cifar"]


class BasicBlock(nn.Module):
    """conv3x3-bn-relu-conv3x3-bn, plus the identity or a 1x1 conv + bn projection, then relu.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first convolution (and of the projection).
    """

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A ResNet for small images: 3x3 stem, ``len(depths)`` stages of BasicBlocks, global pool, fc.

    Args:
        depths: number of blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-34.
        widths: channels per stage (the stem has ``widths[0]``), same length as ``depths``.
        num_classes: outputs of the final linear layer ``fc``.
        in_channels: input image channels.
        zero_init_residual: start each block's last batch-norm scale at 0 (off by default).

    Raises:
        ValueError: for empty or mismatched ``depths``/``widths`` or non-positive entries.

    Example:
        >>> import torch
        >>> net = CifarResNet((1, 1), (8, 16), num_classes=5)
        >>> net(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 5])
        >>> [n for n, _ in net.named_parameters()][:4]
        ['conv1.weight', 'bn1.weight', 'bn1.bias', 'layer1.0.conv1.weight']
    """

    def __init__(
        self,
        depths: Sequence[int],
        widths: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
        *,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        depths, widths = tuple(depths), tuple(widths)
        if not depths or len(depths) != len(widths):
            raise ParamCorruptError(
                f"depths and widths must be non-empty and of equal length, got {depths} and {widths}"
            )
        if any(d < 1 for d in depths) or any(w < 1 for w in widths):
            raise ParamCorruptError(f"depths and widths must be positive, got {depths} and {widths}")
        self.depths = depths
        self.widths = widths
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        channels = widths[0]
        for i, (depth, width) in enumerate(zip(depths, widths)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(depth):
                blocks.append(BasicBlock(channels, width, stride if j == 0 else 1))
                channels = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(channels, num_classes)
        self._init_weights(zero_init_residual)

    @property
    def stage_names(self) -> tuple[str, ...]:
        """``("layer1", "layer2", ...)``: module prefixes of the stages, for position groups."""
        return tuple(f"layer{i + 1}" for i in range(len(self.depths)))

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for name in self.stage_names:
            out = getattr(self, name)(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def resnet34_cifar(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-34 for 32x32 images: stages [3, 4, 6, 3] x widths [64, 128, 256, 512] (~21.3M params)."""
    return CifarResNet((3, 4, 6, 3), (64, 128, 256, 512), num_classes, in_channels)


def resnet20_cifar(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-20 (He et al. 2016, CIFAR): stages [3, 3, 3] x widths [16, 32, 64] (~0.27M params).

    Example:
        >>> sum(p.numel() for p in resnet20_cifar().parameters())
        272474
    """
    return CifarResNet((3, 3, 3), (16, 32, 64), num_classes, in_channels)
