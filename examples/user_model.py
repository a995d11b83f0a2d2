"""Probe your own model from the command line: a tiny example of the user protocol.

``make_model()`` returns the network; ``make_data()`` returns
``(gradient_loader, eval_loader, loss_fn, metrics)``; ``make_task()`` shows the other form,
a Task-like object that also carries the model. Any factory taking no arguments works, named
as ``package.module:factory`` or ``path/to/file.py:factory``.

Train it and save the weights (a plain state dict and a .safetensors copy), then probe::

    python examples/user_model.py --save model.pt
    paramcorrupt probe --model examples/user_model.py:make_model --checkpoint model.pt \\
        --data examples/user_model.py:make_data --by position --out user-position.jsonl
    paramcorrupt probe --data examples/user_model.py:make_task --checkpoint model.safetensors \\
        --by type --methods random,gradient --n all,10 --eps 1e-2,1e-1 --out user-type.jsonl

Without ``--checkpoint`` the probe runs on the freshly initialised (untrained) network.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from paramcorrupt import accuracy, classification_loss
from paramcorrupt.tasks import Task


class SpiralNet(nn.Module):
    """A small MLP with layer norm for 2-D points in 3 classes."""

    def __init__(self, width: int = 32, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(2, width)
        self.block1 = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())
        self.block2 = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = h + self.block1(h)
        h = h + self.block2(h)
        return self.head(h)


def make_model() -> nn.Module:
    """The network, initialised from a fixed seed (the global RNG is left as it was)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return SpiralNet()


def _spirals(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 3
    radius = torch.rand(count, generator=generator)
    angle = labels * (2 * torch.pi / 3) + 4 * radius + 0.2 * torch.randn(count, generator=generator)
    points = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return points, labels


def _batches(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


def make_data():
    """(gradient_loader, eval_loader, loss_fn, metrics): lists of batches are loaders too."""
    train = _spirals(600, seed=1)
    test = _spirals(300, seed=2)
    return _batches(*train, 200), _batches(*test, 300), classification_loss, {"accuracy": accuracy}


def make_task() -> Task:
    """The same as a Task: model, loaders, loss, metrics and the metric to lead with.

    A metric says its own direction and display: the built-in ``accuracy`` is higher-is-better,
    shown in percent. Give your own metric its direction with
    ``paramcorrupt.losses.describe_metric(my_metric, higher_is_better=False, display_name="Error")``
    (or class attributes ``higher_is_better``, ``display_name``, ``scale``, ``unit``); results
    headers and reports read it from there."""
    gradient_loader, eval_loader, loss_fn, metrics = make_data()
    return Task(
        name="spirals",
        model=make_model(),
        gradient_loader=gradient_loader,
        eval_loader=eval_loader,
        loss_fn=loss_fn,
        metrics=metrics,
        primary_metric="accuracy",  # its direction and display are the metric's own (below)
    )


def train(model: nn.Module, epochs: int = 200) -> nn.Module:
    """Full-batch Adam on the training points."""
    x, y = _spirals(600, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="train the example model and save its state dict")
    parser.add_argument("--save", default="model.pt", help="where to save (a .safetensors copy is written beside it)")
    parser.add_argument("--epochs", type=int, default=200)
    options = parser.parse_args()
    model = train(make_model(), options.epochs)
    torch.save(model.state_dict(), options.save)
    try:
        from safetensors.torch import save_file

        save_file(model.state_dict(), options.save.rsplit(".", 1)[0] + ".safetensors")
    except ImportError:
        pass
    from paramcorrupt import evaluate

    _, eval_loader, loss_fn, metrics = make_data()
    print(f"saved {options.save}; test {evaluate(model, eval_loader, loss_fn, metrics)}")
