"""The Python examples of the README and docs/training.md run as they are written.

Each fenced ``python`` block is taken from the Markdown file itself (not a copy), so an
example that drifts from the code fails here. docs/training.md's blocks are fragments of a
training loop: they run after a small prelude that defines what they assume (``model``,
``x``, ``y``, ``loss_fn``, ``steps``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def test_the_block_finder_finds_blocks():
    assert len(python_blocks(ROOT / "README.md")) == 1
    assert len(python_blocks(ROOT / "docs" / "training.md")) == 2


@pytest.mark.slow  # trains the digits model (~20 s)
def test_the_readme_example_runs(one_thread):
    (block,) = python_blocks(ROOT / "README.md")
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result.loss_change > 0 and result.first_order > 0


def test_the_training_examples_run():
    import torch
    import torch.nn.functional as F
    from torch import nn

    prelude = {
        "torch": torch,
        "model": nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)),
        "x": torch.randn(16, 4, generator=torch.Generator().manual_seed(0)),
        "y": torch.arange(16) % 3,
        "loss_fn": F.cross_entropy,
        "steps": 10,
    }
    first, second = python_blocks(ROOT / "docs" / "training.md")
    namespace = dict(prelude)
    exec(compile(first, "docs/training.md", "exec"), namespace)
    before = [p.detach().clone() for p in prelude["model"].parameters()]
    exec(compile(second, "docs/training.md", "exec"), namespace)  # the two-phase form
    after = list(prelude["model"].parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # a step was taken
