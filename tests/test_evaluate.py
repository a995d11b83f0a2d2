"""evaluate(): weight-averaged loss, mean metrics, derived metrics and vector statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paramcorrupt import evaluate
from paramcorrupt.losses import accuracy, classification_loss


def _setup():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(23, 4, generator=g), torch.randint(0, 3, (23,), generator=g)
    batches = [(x[i : i + 5], y[i : i + 5]) for i in range(0, 23, 5)]  # the last holds 3
    return model, batches, x, y


class Counts:
    """Predicted-class histogram: a vector total; its value is the share of the top class."""

    def __call__(self, logits, batch):
        return torch.bincount(logits.argmax(1), minlength=3), len(batch[1])

    @staticmethod
    def finalize(stats):
        return max(stats) / sum(stats)


def test_mean_and_vector_metrics_equal_the_whole_data_computation():
    model, batches, x, y = _setup()
    out = evaluate(model, batches, classification_loss, {"accuracy": accuracy, "top_share": Counts()})
    with torch.no_grad():
        logits = model(x)
    assert out["loss"] == pytest.approx(float(nn.functional.cross_entropy(logits, y)), rel=1e-6)
    assert out["accuracy"] == pytest.approx(float((logits.argmax(1) == y).double().mean()), abs=1e-12)
    counts = torch.bincount(logits.argmax(1), minlength=3)
    assert out["top_share"] == pytest.approx(int(counts.max()) / int(counts.sum()), abs=1e-12)


class NoFinalize:
    def __call__(self, logits, batch):
        return [1.0, 2.0], 1


class Changing:
    def __init__(self):
        self.calls = 0

    def __call__(self, logits, batch):
        self.calls += 1
        return ([1.0] * self.calls if self.calls < 3 else 1.0), 1

    finalize = staticmethod(sum)


class Matrix:
    def __call__(self, logits, batch):
        return torch.zeros(2, 2), 1

    finalize = staticmethod(sum)


@pytest.mark.parametrize(
    "metric, message",
    [
        (NoFinalize(), "give it a finalize"),
        (Changing(), "different shapes"),
        (Matrix(), "1-D vector"),
    ],
    ids=["vector-without-finalize", "shape-changes", "2-d-total"],
)
def test_bad_metric_totals_raise_type_error_naming_the_metric(metric, message):
    model, batches, _, _ = _setup()
    with pytest.raises(TypeError) as info:
        evaluate(model, batches, classification_loss, {"odd": metric})
    assert "'odd'" in str(info.value) and message in str(info.value)
