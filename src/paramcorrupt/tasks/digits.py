"""The built-in ``digits`` task: a small residual CNN with batch norm on scikit-learn's digits.

No download: the 1,797 8x8 images ship with scikit-learn. The split is seeded (80/20,
stratified), so every run sees the same train and test sets.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ParamCorruptError
from ..groups import ParameterGroup, select
from ..losses import accuracy, classification_loss
from ..models.resnet import BasicBlock
from ..train.recipe import Recipe, fit_recipe
from .base import Task

__all__ = ["DIGITS_RECIPE", "DigitsResNet", "digits_data", "digits_task"]

logger = logging.getLogger(__name__)

#: how the digits model trains (the task's own training through
#: :func:`~paramcorrupt.train.recipe.fit_recipe`, and ``paramcorrupt train``'s defaults): SGD with Nesterov momentum 0.9, weight decay 5e-4, a one-cycle schedule peaking
#: at lr 0.1 after 15% of the steps, 30 epochs of batches of 64. See
#: :class:`~paramcorrupt.train.recipe.Recipe` for the fields.
DIGITS_RECIPE = Recipe(
    optimizer="sgd",
    lr=0.1,
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    schedule="onecycle",
    pct_start=0.15,
    max_grad_norm=None,
    epochs=30,
    batch_size=64,
)


class DigitsResNet(nn.Module):
    """A residual CNN for 1x8x8 digits: stem, layer1 (16 ch), layer2 (32 ch, stride 2), fc.

    Example:
        >>> DigitsResNet()(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer2(self.layer1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def digits_data(seed: int = 0, test_fraction: float = 0.2) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """((x_train, y_train), (x_test, y_test)): images as float [N, 1, 8, 8] scaled to [0, 1]."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("the digits task needs scikit-learn: pip install 'paramcorrupt[tasks]'") from error
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=test_fraction, random_state=seed, stratify=y.numpy()
    )
    idx_train, idx_test = torch.as_tensor(idx_train), torch.as_tensor(idx_test)
    return (x[idx_train], y[idx_train]), (x[idx_test], y[idx_test])


class Batches:
    """A re-iterable list of (x, y) batches, in order or shuffled by a seeded generator."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> None:
        if batch_size < 1:
            raise ParamCorruptError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.y), generator=self.generator) if self.shuffle else torch.arange(len(self.y))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self.x[idx], self.y[idx]


def groups_by_type(model: nn.Module) -> dict[str, ParameterGroup]:
    """conv, norm and linear parameters (Figure 4 a)."""
    return {t: select(model, types=t, name=t) for t in ("conv", "norm", "linear")}


def groups_by_position(model: nn.Module) -> dict[str, ParameterGroup]:
    """stem, layer1, layer2, fc: lower to upper (Figure 4 c)."""
    return {
        "stem": select(model, ["conv1", "bn1"], name="stem"),
        "layer1": select(model, "layer1", name="layer1"),
        "layer2": select(model, "layer2", name="layer2"),
        "fc": select(model, "fc", name="fc"),
    }


def digits_task(
    *,
    seed: int = 0,
    epochs: int = 30,
    batch_size: int = 64,
    eval_batch_size: int = 512,
    width: int = 16,
    state_dict: dict[str, Tensor] | None = None,
    train: bool = True,
) -> Task:
    """The digits task, with a model trained from ``seed`` (seconds on a CPU).

    Args:
        seed: seeds the split, the initialisation and the batch order.
        epochs: training epochs when no ``state_dict`` is given.
        batch_size: the training batch size.
        eval_batch_size: the batch size of the gradient and evaluation loaders.
        width: the network's base width.
        state_dict: weights to load instead of training.
        train: train the model (when no ``state_dict`` is given); False leaves it untrained.
    """
    (x_train, y_train), (x_test, y_test) = digits_data(seed)
    torch.manual_seed(seed)
    model = DigitsResNet(width)
    train_loader = Batches(x_train, y_train, batch_size, shuffle=True, seed=seed)
    recipe = DIGITS_RECIPE.replace(epochs=epochs, batch_size=batch_size)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    elif train:
        logger.info("training the digits model for %d epochs", epochs)
        fit_recipe(model, train_loader, classification_loss, recipe)
    model.eval()
    return Task(
        name="digits",
        model=model,
        gradient_loader=Batches(x_train, y_train, eval_batch_size),
        eval_loader=Batches(x_test, y_test, eval_batch_size),
        loss_fn=classification_loss,
        metrics={"accuracy": accuracy},
        primary_metric="accuracy",
        chance=0.1,  # ten classes
        groupings={"type": groups_by_type, "position": groups_by_position},
        train_loader=train_loader,
        info={
            "seed": seed,
            "epochs": epochs,
            "train_size": len(y_train),
            "test_size": len(y_test),
            "recipe": recipe,
        },
    )
