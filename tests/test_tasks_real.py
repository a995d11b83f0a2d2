"""The ``cifar10`` and ``ptb-lm`` tasks end to end on tiny slices of the real data (marked
``data``), plus data-free checks of their pieces.

Real data is read from ``$PARAMCORRUPT_DATA`` or else ``<repo>/../shared/data``; the tests
that need it are skipped, with the path in the reason, when it is absent. Caches go to a
temporary folder. Each task runs the data set gradient, a corruption and its metrics.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from paramcorrupt import (
    Constraint,
    corrupted,
    dataset_gradient,
    evaluate,
    gradient_corruption,
    random_corruption,
    select,
)
from paramcorrupt.cli.values import task_option_values
from paramcorrupt.tasks import TASKS, get_task
from paramcorrupt.tasks.ptb_lm import CarriedStateLoss, LMWindow, Perplexity, WindowLoader

CIFAR = "cifar10_jpg/cifar10_jpg_train.tar.gz"
PTB = "ptb_lm/ptb.zip"
needs_cifar = pytest.mark.data(CIFAR)  # skipped when absent (tests/conftest.py)
needs_ptb = pytest.mark.data(PTB)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def cifar_task(cache_dir, require_data):
    data_dir = require_data(CIFAR)
    torch.set_num_threads(1)
    return get_task(
        "cifar10",
        data_dir=data_dir,
        cache_dir=cache_dir,
        model="tiny",
        limit_train=64,
        limit_test=40,
        limit_gradient=32,
        batch_size=16,
        eval_batch_size=16,
        seed=0,
    )


@pytest.fixture(scope="module")
def ptb_task(require_data):
    data_dir = require_data(PTB)
    torch.set_num_threads(1)
    return get_task(
        "ptb-lm",
        data_dir=data_dir,
        model="tiny",
        limit_train_tokens=1500,
        limit_eval_tokens=700,
        batch_size=5,
        eval_batch_size=5,
        gradient_batch_size=5,
        bptt=20,
        seed=0,
    )


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _group_partition(model: torch.nn.Module, groups: dict) -> None:
    """The groups cover every trainable parameter exactly once."""
    names = [n for g in groups.values() for n in g.names]
    assert len(names) == len(set(names))
    assert set(names) == {n for n, p in model.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------------------------------
# data-free


def test_registered():
    assert {"cifar10", "ptb-lm"} <= set(TASKS)


def test_missing_data_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.delenv("PARAMCORRUPT_DATA", raising=False)
    for name in ("cifar10", "ptb-lm"):
        with pytest.raises(FileNotFoundError) as info:
            get_task(name, data_dir=tmp_path / "nowhere", cache_dir=tmp_path)
        message = str(info.value)
        assert "not found" in message and "\n" not in message
        with pytest.raises(FileNotFoundError, match="PARAMCORRUPT_DATA"):
            get_task(name, cache_dir=tmp_path)


def test_perplexity_is_derived_after_aggregation():
    """evaluate() applies a metric's finalize to sum(total) / sum(count): the perplexity of two
    windows is exp of their token-weighted mean loss, not the mean of their perplexities."""
    model = torch.nn.Embedding(5, 5)

    def loss_fn(m, batch):
        from paramcorrupt import BatchLoss

        logits = m(batch[0])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 5), batch[1].reshape(-1))
        return BatchLoss(loss, float(batch[1].numel()), (logits,))

    data = [
        (torch.tensor([[0, 1, 2]]), torch.tensor([[1, 2, 3]])),
        (torch.tensor([[4]]), torch.tensor([[0]])),
    ]
    out = evaluate(model, data, loss_fn, {"perplexity": Perplexity()})
    assert out["perplexity"] == pytest.approx(math.exp(out["loss"]), rel=1e-6)
    assert Perplexity.finalize(1e4) == math.inf


def test_carried_state_is_exact_and_deterministic():
    """Carrying the (detached) state across windows gives the loss of one long window; every
    pass restarts from zeros; a repeated window (as in corruption-resistant training) gets the
    same incoming state."""
    from paramcorrupt.models import LSTMLanguageModel

    torch.manual_seed(0)
    model = LSTMLanguageModel(30, 8, 8, 2, tie_weights=True).eval()
    stream = torch.randint(0, 30, (241,))
    loss_fn = CarriedStateLoss()
    short, long = WindowLoader(stream, 4, 6), WindowLoader(stream, 4, 60)
    a = evaluate(model, short, loss_fn)["loss"]
    b = evaluate(model, long, loss_fn)["loss"]
    assert a == pytest.approx(b, rel=1e-6)
    assert evaluate(model, short, loss_fn)["loss"] == a  # a second pass starts from zeros
    fresh = (
        sum(
            float(loss_fn(model, (w.input, w.target)).loss.detach()) * w.target.numel()
            for w in short
        )
        / short.num_targets
    )
    assert fresh != pytest.approx(a, rel=1e-6)  # windows without start: zero state each time
    windows = list(short)
    reference = CarriedStateLoss()
    expected = [float(reference(model, w).loss.detach()) for w in windows[:3]]
    repeated = CarriedStateLoss()
    got = [
        float(repeated(model, w).loss.detach())
        for w in (windows[0], windows[1], windows[1], windows[2])
    ]
    assert got == [expected[0], expected[1], expected[1], expected[2]]


def test_window_loader_shapes():
    loader = WindowLoader(torch.arange(101), batch_size=4, bptt=7)
    windows = list(loader)
    assert isinstance(windows[0], LMWindow)
    assert [w.start for w in windows] == list(range(0, 24, 7))
    assert windows[0].input.shape == (7, 4) and torch.equal(windows[0].target, windows[0].input + 1)
    assert sum(w.target.numel() for w in windows) == loader.num_targets == 24 * 4


# ---------------------------------------------------------------------------------------------
# CIFAR-10


@pytest.mark.data
@needs_cifar
class TestCifar10:
    @pytest.fixture
    def task(self, cifar_task):
        return cifar_task

    def test_loaders(self, task):
        assert (
            task.info["train_size"] == 64
            and task.info["gradient_size"] == 32
            and task.info["test_size"] == 40
        )
        x, y = next(iter(task.eval_loader))
        assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert len(set(y.tolist())) == 10  # images are interleaved by class
        # the gradient's data is the training set without augmentation: the same every pass
        first = [b[0] for b in task.gradient_loader]
        assert all(torch.equal(a, b[0]) for a, b in zip(first, task.gradient_loader))
        assert sum(len(b[1]) for b in task.gradient_loader) == 32
        xb, yb = next(iter(task.train_loader))
        assert xb.shape == (16, 3, 32, 32)

    def test_groups(self, task):
        model = task.model
        by_type = task.groupings["type"](model)
        assert list(by_type) == ["conv", "norm", "linear"]
        _group_partition(model, by_type)
        by_position = task.groupings["position"](model)
        assert list(by_position) == ["stem", "layer1", "layer2", "layer3", "fc"]
        _group_partition(model, by_position)
        assert by_position["stem"].names == ("conv1.weight", "bn1.weight", "bn1.bias")
        _group_partition(model, task.groupings["position_type"](model))

    @pytest.mark.slow
    def test_resnet34_layout_groups(self, cache_dir, data_dir):
        task = get_task(
            "cifar10",
            data_dir=data_dir,
            cache_dir=cache_dir,
            model="resnet34",
            limit_train=16,
            limit_test=16,
        )
        assert task.info["depths"] == [3, 4, 6, 3]
        assert list(task.groupings["position"](task.model)) == [
            "stem",
            "layer1",
            "layer2",
            "layer3",
            "layer4",
            "fc",
        ]

    def test_gradient_corruption_metric(self, task):
        model = task.model
        before = _state(model)
        clean = evaluate(model, task.eval_loader, task.loss_fn, task.metrics)
        assert 0.0 <= clean["accuracy"] <= 1.0
        group = select(model, name="all")
        gradient = dataset_gradient(model, task.gradient_loader, task.loss_fn, group)
        corruption = gradient_corruption(gradient, Constraint(math.inf, 1e-2, 100), group)
        with corrupted(model, corruption):
            on_gradient_data = evaluate(model, task.gradient_loader, task.loss_fn)
            after = evaluate(model, task.eval_loader, task.loss_fn, task.metrics)
        base = evaluate(model, task.gradient_loader, task.loss_fn)
        assert (
            on_gradient_data["loss"] > base["loss"]
        )  # first order: the loss goes up where g was taken
        assert 0.0 <= after["accuracy"] <= 1.0
        assert _same(before, _state(model))  # restored bit-exactly, running statistics included

    def test_checkpoint(self, task, tmp_path, cache_dir, data_dir):
        path = tmp_path / "w.pt"
        torch.save({"model": task.model.state_dict(), "epoch": 1}, path)  # a training checkpoint
        again = get_task(
            "cifar10",
            data_dir=data_dir,
            cache_dir=cache_dir,
            model="tiny",
            limit_train=64,
            limit_test=40,
            limit_gradient=32,
            batch_size=16,
            eval_batch_size=16,
            seed=1,
            checkpoint=str(path),
        )
        assert again.info["trained"] and _same(_state(again.model), _state(task.model))
        with pytest.raises(ValueError, match="do not fit"):
            get_task(
                "cifar10",
                data_dir=data_dir,
                cache_dir=cache_dir,
                model="resnet8",
                limit_train=16,
                limit_test=16,
                checkpoint=str(path),
            )

    def test_options_as_strings(self, cache_dir, data_dir):
        given = {"model": "tiny", "depths": "1,1", "widths": "8,16", "limit_train": "16", "limit_test": "16",
                 "augment": "false"}
        options = task_option_values(TASKS["cifar10"], given, "cifar10")  # as --task-option gives them
        assert options["depths"] == (1, 1) and options["limit_train"] == 16 and options["augment"] is False
        task = get_task("cifar10", data_dir=data_dir, cache_dir=cache_dir, **options)
        assert task.info["depths"] == [1, 1] and not task.train_loader.dataset.augment


# ---------------------------------------------------------------------------------------------
# PTB


@pytest.mark.data
@needs_ptb
class TestPTB:
    @pytest.fixture
    def task(self, ptb_task):
        return ptb_task

    def test_vocabulary_and_loaders(self, task):
        assert task.info["vocab_size"] == 10_000 and task.model.vocab_size == 10_000
        window = next(iter(task.eval_loader))
        assert isinstance(window, LMWindow) and window.input.shape == (20, 5) and window.start == 0
        assert task.info["eval_tokens"] == task.eval_loader.num_targets == (700 // 5 - 1) * 5

    def test_metrics(self, task):
        out = evaluate(task.model, task.eval_loader, task.loss_fn, task.metrics)
        assert out["log_ppl"] == pytest.approx(out["loss"], rel=1e-9)
        assert out["perplexity"] == pytest.approx(math.exp(out["log_ppl"]), rel=1e-9)
        assert 5_000 < out["perplexity"] < 20_000  # an untrained model: about the vocabulary size
        assert evaluate(task.model, task.gradient_loader, task.loss_fn)["loss"] > 0
        assert (
            evaluate(task.model, task.eval_loader, task.loss_fn, task.metrics) == out
        )  # deterministic

    def test_groups(self, task):
        model = task.model
        by_position = task.groupings["position"](model)
        assert list(by_position) == ["embedding", "lstm.0", "lstm.1", "decoder"]
        assert by_position["decoder"].names == ("decoder.bias",)  # the tied matrix counts once
        _group_partition(model, by_position)
        by_type = task.groupings["type"](model)
        assert list(by_type) == ["embedding", "recurrent", "linear"]
        _group_partition(model, by_type)

    def test_gradient_corruption_metric(self, task):
        model = task.model
        before = _state(model)
        group = task.groupings["position"](model)["lstm.1"]
        gradient = dataset_gradient(model, task.gradient_loader, task.loss_fn, group)
        base = evaluate(model, task.gradient_loader, task.loss_fn)["loss"]
        with corrupted(model, gradient_corruption(gradient, Constraint(2.0, 1e-2), group)):
            assert evaluate(model, task.gradient_loader, task.loss_fn)["loss"] > base
        generator = torch.Generator().manual_seed(0)
        with corrupted(
            model,
            random_corruption(model, Constraint(math.inf, 1e-3, 100), group, generator=generator),
        ):
            after = evaluate(model, task.eval_loader, task.loss_fn, task.metrics)
        assert math.isfinite(after["perplexity"])
        assert _same(before, _state(model))

    def test_sweep_reports_perplexity(self, task, tmp_path):
        from paramcorrupt.probe import ResultsStore, SweepConfig, sweep

        config = SweepConfig(
            methods=("gradient",),
            p_values=(2.0,),
            eps_values=(1e-2,),
            metric="perplexity",
            task="ptb-lm-test",
            measure_gradient_data=False,
        )
        rows = sweep(
            task.model,
            config,
            task.gradient_loader,
            task.eval_loader,
            task.loss_fn,
            task.metrics,
            groups={"all": select(task.model, name="all")},
            store=ResultsStore(tmp_path / "r.jsonl"),
            progress=False,
        )
        row = rows[0]
        assert row["metric"] == "perplexity"
        assert row["metric_before"] == pytest.approx(math.exp(row["loss_before"]), rel=1e-9)

    def test_trains_with_fit(self, data_dir):
        """fit() runs the LM's windows (hidden state carried), plain and corruption-resistant."""
        from paramcorrupt.train import CorruptionResistant, fit

        task = get_task(
            "ptb-lm",
            data_dir=data_dir,
            model="tiny",
            limit_train_tokens=600,
            limit_eval_tokens=300,
            batch_size=4,
            bptt=15,
            seed=0,
        )
        model = task.model
        before = evaluate(model, task.train_loader, task.loss_fn)["loss"]
        optimizer = CorruptionResistant(
            model.parameters(), torch.optim.Adam, eps=0.05, lr=3e-3, model=model, max_grad_norm=0.25
        )
        history = fit(model, optimizer, task.train_loader, task.loss_fn, epochs=3)
        assert len(history) == 3
        assert evaluate(model, task.train_loader, task.loss_fn)["loss"] < before
