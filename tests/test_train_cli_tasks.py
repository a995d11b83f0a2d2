"""``paramcorrupt train`` / ``compare`` on the real tasks (``cifar10``, ``ptb-lm``): one epoch
on tiny slices of the real data (marked ``data``), plus data-free checks of the recipes and
of bad task options.

Real data is read from ``$PARAMCORRUPT_DATA`` or else ``<repo>/../shared/data`` (as in
tests/test_tasks_real.py); the tests that need it are skipped, with the path in the reason,
when it is absent.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from paramcorrupt.cli import main
from paramcorrupt.train.recipe import build_optimizer, build_scheduler, fit_options, schedule_name

needs_cifar = pytest.mark.data("cifar10_jpg/cifar10_jpg_train.tar.gz")  # tests/conftest.py
needs_ptb = pytest.mark.data("ptb_lm/ptb.zip")
pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--epochs", "1", "--quiet", "--eval-eps", "0.1", "--random-trials", "1", "--threads", "1"]


def _options(**options: object) -> list[str]:
    return [arg for k, v in options.items() for arg in ("--task-option", f"{k}={v}")]


def cifar_args(cache: Path, data_dir: Path) -> list[str]:
    return [
        "--task", "cifar10", "--data-dir", str(data_dir),
        *_options(model="tiny", limit_train=64, limit_test=40, limit_gradient=32, batch_size=16,
                  eval_batch_size=16, cache_dir=cache),
    ]  # fmt: skip


def ptb_args(data_dir: Path) -> list[str]:
    return [
        "--task", "ptb-lm", "--data-dir", str(data_dir),
        *_options(model="tiny", limit_train_tokens=1500, limit_eval_tokens=700, batch_size=5,
                  eval_batch_size=5, gradient_batch_size=5, bptt=20),
    ]  # fmt: skip


def _check_run(out: Path) -> dict:
    state = torch.load(out / "model.pt", weights_only=True)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    return json.loads((out / "results.json").read_text())


@pytest.mark.data
@needs_ptb
def test_train_ptb_lm_one_epoch(tmp_path, capsys, data_dir):
    out = tmp_path / "ptb"
    assert main(["train", *ptb_args(data_dir), "--out", str(out), *FAST]) == 0
    result = _check_run(out)
    assert result["metric"] == "log_ppl" and result["task"].startswith("ptb-lm(")
    assert "data_dir" not in result["task"]
    assert result["config"]["epochs"] == 1 and result["config"]["lr"] == 2e-3  # the task's recipe
    assert result["config"]["batch_size"] == 5
    printed = capsys.readouterr().out
    assert "| w/o corruption |" in printed and "Perplexity (lower is better)" in printed
    # perplexity as is (exp of the log-perplexity), not x100
    shown = f"| w/o corruption | - | {math.exp(result['clean']):.2f} |"  # one seed: no "± 0.00"
    assert shown in printed and "one seed (0): no standard deviation" in printed


@pytest.mark.data
@needs_cifar
@pytest.mark.slow
def test_train_cifar10_one_epoch(tmp_path, capsys, data_dir):
    out = tmp_path / "cifar"
    argv = ["train", *cifar_args(tmp_path / "cache", data_dir), "--method", "resistant", "--lr", "0.05"]
    assert main([*argv, "--out", str(out), *FAST]) == 0
    result = _check_run(out)
    assert result["metric"] == "accuracy" and 0 <= result["clean"] <= 1
    assert result["task"].startswith("cifar10(model=tiny") or "model=tiny" in result["task"]
    assert "cache_dir" not in result["task"]
    assert result["config"]["lr"] == 0.05 and result["config"]["batch_size"] == 16
    printed = capsys.readouterr().out
    assert "Accuracy (%)" in printed and f"| w/o corruption | - | {result['clean'] * 100:.2f} |" in printed


@pytest.mark.data
@needs_ptb
@pytest.mark.slow
def test_compare_ptb_lm_reuses_finished_runs(tmp_path, capsys, data_dir):
    out = tmp_path / "cmp"
    args = [
        "compare",
        *ptb_args(data_dir),
        "--methods",
        "plain",
        "regularised:lam=0.01",
        "--seeds",
        "0",
        "--out",
        str(out),
        *FAST,
    ]
    assert main(args) == 0
    table = (out / "table2.md").read_text()
    assert "| plain | regularised (λ=0.01, p=2) |" in table and "Perplexity" in table
    assert "goal <= +0.50" in capsys.readouterr().out
    assert main(args) == 0  # reuses results.json: same numbers
    assert (out / "table2.md").read_text() == table


@pytest.mark.parametrize(
    "argv, message",
    [
        pytest.param(
            ["--task", "ptb-lm", "--task-option", "bogus=1"],
            "unknown --task-option 'bogus'",
            id="unknown-option",
        ),
        pytest.param(
            ["--task", "digits", "--task-option", "bogus=1"],
            "unknown --task-option 'bogus'",
            id="unknown-option-digits",
        ),
        pytest.param(
            ["--task", "ptb-lm", "--task-option", "seed=3"],
            "set by the train command",
            id="seed-option",
        ),
        pytest.param(["--task", "ptb-lm", "--task-option", "model"], "KEY=VALUE", id="no-value"),
        pytest.param(["--task", "mnist"], "unknown task", id="unknown-task"),
    ],
)
def test_bad_task_options_exit_2(argv, message, tmp_path, capsys):
    assert main(["train", *argv, "--out", str(tmp_path / "x"), *FAST]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_data_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PARAMCORRUPT_DATA", raising=False)
    argv = [
        "train",
        "--task",
        "ptb-lm",
        "--data-dir",
        str(tmp_path / "nothing"),
        "--out",
        str(tmp_path / "x"),
        *FAST,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--data-dir" in err and "Traceback" not in err


def test_recipes_build_optimisers_and_schedules():
    model = torch.nn.Linear(3, 2)
    sgd = {
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": True,
        "schedule": "onecycle",
        "pct_start": 0.15,
    }
    opt = build_optimizer(model, sgd)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["nesterov"]
    assert isinstance(
        build_scheduler(opt, sgd, steps_per_epoch=4, epochs=2), torch.optim.lr_scheduler.OneCycleLR
    )
    adam = {"optimizer": "adam", "lr": 2e-3, "max_grad_norm": 0.25, "schedule": "cosine"}
    opt = build_optimizer(model, adam, resistant={"eps": 0.5})
    assert type(opt).__name__ == "CorruptionResistant" and opt.max_grad_norm == 0.25
    assert fit_options(adam, resistant=True)["max_grad_norm"] is None
    assert fit_options(adam)["max_grad_norm"] == 0.25
    assert schedule_name({"lr": 1e-3, "schedule": "exponential", "decay": 0.9}) == "exponential"
    assert schedule_name({"lr": 1e-3, "schedule": "inverse_sqrt", "warmup": 10}) == "inverse_sqrt"
    with pytest.raises(ValueError, match="warmup is read by schedule='inverse_sqrt' only"):
        schedule_name({"lr": 1e-3, "warmup": 10})  # the schedule is named, never implied
    opt = build_optimizer(model, {"optimizer": "adam", "lr": 1.0})
    sched = build_scheduler(opt, {"lr": 1.0, "schedule": "exponential", "decay": 0.5}, steps_per_epoch=2, epochs=3)
    lrs = []
    for _ in range(4):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [1.0, 0.5, 0.5, 0.25]
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(model, {"optimizer": "lion", "lr": 1.0})
