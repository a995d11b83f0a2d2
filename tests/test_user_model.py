"""tasks/user.py: a user's model and data files become a Task; the one task identity."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from paramcorrupt.losses import MetricInfo, metric_info, metric_infos
from paramcorrupt.tasks import Task
from paramcorrupt.tasks.user import (
    USER_RECIPE,
    load_checkpoint_into,
    resolve,
    task_identity,
    user_identity,
    user_task,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "user_model.py"


def test_a_task_from_a_user_file():
    task = user_task(f"{EXAMPLE}:make_model", f"{EXAMPLE}:make_data")
    assert isinstance(task, Task) and isinstance(task.model, torch.nn.Module)
    assert task.name == "custom" and task.primary_metric == "accuracy"
    assert metric_info(task.metrics["accuracy"]).higher_is_better
    assert task.info["declared_metric"] is False  # the tuple form declares none
    assert task.info["recipe"] == USER_RECIPE and task.train_loader is task.gradient_loader
    assert task.info["identity"] == f"model={EXAMPLE}:make_model;data={EXAMPLE}:make_data"
    assert len(task.gradient_loader) == 3 and set(task.metrics) == {"accuracy"}


def test_a_task_like_object_and_a_checkpoint(tmp_path):
    model = user_task(f"{EXAMPLE}:make_model", f"{EXAMPLE}:make_data").model
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    path = tmp_path / "w.pt"
    torch.save({"model_state_dict": model.state_dict()}, path)
    task = user_task(None, f"{EXAMPLE}:make_task", checkpoint=path, checkpoint_key="model_state_dict")
    assert task.name == "spirals" and task.info["declared_metric"] is True
    assert all(torch.equal(a, b) for a, b in zip(task.model.state_dict().values(), model.state_dict().values()))
    assert task.info["identity"].startswith(f"model=-;data={EXAMPLE}:make_task;checkpoint=sha256:")
    assert task.info["identity"].endswith("[model_state_dict]")
    assert task.info["identity"] == user_identity(None, f"{EXAMPLE}:make_task", checkpoint=path, checkpoint_key="model_state_dict")


def test_seed_and_a_relative_spec_are_the_same_task(tmp_path, monkeypatch):
    (tmp_path / "mine.py").write_text(textwrap.dedent("""
        import torch
        from paramcorrupt import classification_loss
        def make_model():
            return torch.nn.Linear(2, 3)
        def make_data():
            batches = [(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))]
            return batches, batches, classification_loss
        def not_a_model():
            return 3
        def bad_tuple():
            return (1, 2)
    """))
    monkeypatch.chdir(tmp_path)
    a = user_task("mine.py:make_model", "mine.py:make_data", seed=5)
    b = user_task(f"{tmp_path / 'mine.py'}:make_model", f"{tmp_path / 'mine.py'}:make_data", seed=5)
    assert torch.equal(a.model.weight, b.model.weight) and a.info["identity"] == b.info["identity"]
    assert a.primary_metric == "loss" and metric_infos(a.metrics, a.primary_metric)["loss"].higher_is_better is False
    with pytest.raises(TypeError, match="--model 'mine.py:not_a_model' gave a int, expected a torch.nn.Module"):
        user_task("mine.py:not_a_model", "mine.py:make_data")
    with pytest.raises(TypeError, match="returned a tuple of 2"):
        user_task("mine.py:make_model", "mine.py:bad_tuple")
    with pytest.raises(ValueError, match="no model: give --model"):
        user_task(None, "mine.py:make_data")
    with pytest.raises(ValueError, match="has no attribute 'nothing'"):
        user_task(None, "mine.py:nothing")
    with pytest.raises(FileNotFoundError, match="no file missing.py"):
        user_task(None, "missing.py:make_data")


def test_a_checkpoint_of_another_model_is_one_line(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(ValueError, match=f"checkpoint {path} does not match the model: missing keys"):
        load_checkpoint_into(torch.nn.Sequential(torch.nn.Linear(2, 2)), path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint_into(torch.nn.Linear(2, 2), tmp_path / "missing.pt")


def test_task_identity(tmp_path):
    assert task_identity("digits", [("seed", 0), ("epochs", 30)]) == "digits(seed=0,epochs=30)"
    assert task_identity("ptb-lm", []) == "ptb-lm"
    assert task_identity("ptb-lm", [("model", "tiny")]) == "ptb-lm(model=tiny)"
    path = tmp_path / "w.pt"
    path.write_bytes(b"weights")
    digest = "sha256:" + __import__("hashlib").sha256(b"weights").hexdigest()[:16]
    assert task_identity("digits", [("seed", 0)], checkpoint=path, checkpoint_key="k") == f"digits(seed=0,checkpoint={digest}[k])"
    assert task_identity(None, [("model", "-"), ("data", "m:d")], checkpoint=path) == f"model=-;data=m:d;checkpoint={digest}"


def test_a_declared_direction_reaches_the_metric(tmp_path, monkeypatch):
    """A Task-like object's ``higher_is_better`` gives its primary metric a direction when the
    metric declares none (the metric is wrapped, not changed); a metric's own one wins."""
    (tmp_path / "scored.py").write_text(textwrap.dedent("""
        import torch
        from types import SimpleNamespace
        from paramcorrupt import classification_loss
        from paramcorrupt.losses import describe_metric
        def misses(output, batch):
            return (output.argmax(1) != batch[1]).sum(), len(batch[1])
        def error(output, batch):
            return misses(output, batch)
        describe_metric(error, higher_is_better=False, display_name="Error", scale=100.0)
        batches = [(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))]
        def plain():
            return SimpleNamespace(model=torch.nn.Linear(2, 3), gradient_loader=batches, eval_loader=batches,
                                   loss_fn=classification_loss, metrics={"misses": misses}, primary_metric="misses",
                                   higher_is_better=False)
        def declared():
            return SimpleNamespace(model=torch.nn.Linear(2, 3), gradient_loader=batches, eval_loader=batches,
                                   loss_fn=classification_loss, metrics={"error": error}, primary_metric="error",
                                   higher_is_better=True)
    """))
    monkeypatch.chdir(tmp_path)
    task = user_task(None, "scored.py:plain")
    metric = task.metrics["misses"]
    assert metric_info(metric).higher_is_better is False
    assert metric_infos(task.metrics, task.primary_metric)["misses"].higher_is_better is False
    batch = task.eval_loader[0]
    assert metric(torch.zeros(4, 3), batch) == (0, 4)  # still the user's metric
    assert not hasattr(resolve("scored.py:misses"), "higher_is_better")  # the user's function is unchanged
    own = user_task(None, "scored.py:declared").metrics["error"]
    assert metric_info(own) == MetricInfo(False, "Error", 100.0, "%")  # the metric's own direction wins
