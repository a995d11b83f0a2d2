"""``paramcorrupt train`` and ``paramcorrupt compare`` (one-epoch runs on digits)."""

from __future__ import annotations

import json

import pytest
import torch

import paramcorrupt.train.recipe
from paramcorrupt.cli import main
from paramcorrupt.cli.values import parse_method
from paramcorrupt.experiments import MethodConfig
from paramcorrupt.experiments.training import method_settings

FAST = ["--epochs", "1", "--batch-size", "256", "--quiet", "--eval-eps", "0.1,0.3", "--random-trials", "1", "--threads", "1"]


def test_train_writes_weights_results_and_a_table(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--method", "resistant:eps=0.2:n=500", "--out", str(out), *FAST]) == 0
    state = torch.load(out / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    result = json.loads((out / "results.json").read_text())
    assert result["config"]["eps"] == 0.2 and result["config"]["n"] == 500
    assert set(result["gradient"]) == {"0.1", "0.3"} and 0 <= result["clean"] <= 1
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    printed = capsys.readouterr().out
    assert "| w/o corruption |" in printed and "gradient corruption" in printed


@pytest.mark.slow
def test_train_resumes_its_own_checkpoint_and_refuses_another_runs(tmp_path, capsys, monkeypatch):
    fast = FAST[2:]  # without "--epochs 1"
    assert FAST[:2] == ["--epochs", "1"]
    straight = tmp_path / "straight"
    assert main(["train", "--out", str(straight), "--epochs", "2", *fast]) == 0

    out = tmp_path / "run"
    real_fit = paramcorrupt.train.recipe.fit  # what train_model's fit_recipe calls

    def interrupted_fit(*args, **kwargs):
        def stop(epoch, record):
            raise KeyboardInterrupt

        return real_fit(*args, **kwargs, on_epoch_end=stop)

    monkeypatch.setattr(paramcorrupt.train.recipe, "fit", interrupted_fit)
    assert main(["train", "--out", str(out), "--epochs", "2", *fast]) == 130  # Ctrl-C after epoch 1
    monkeypatch.undo()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (out / "model.pt").exists()

    # a changed recipe does not continue the checkpoint: one line, exit 2, the file kept
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--epochs", "3", "--resume", *fast]) == 2
    err = capsys.readouterr().err
    assert "from another run" in err and "--no-resume" in err and "Traceback" not in err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1

    # the same command resumes and ends where the uninterrupted run ended, bit for bit
    assert main(["train", "--out", str(out), "--epochs", "2", "--resume", *fast]) == 0
    a = torch.load(straight / "model.pt", weights_only=True)
    b = torch.load(out / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    assert main(["train", "--out", str(out), "--epochs", "3", "--no-resume", *fast]) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 3


@pytest.mark.slow
def test_compare_writes_table2_and_reuses_finished_runs(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--methods", "plain", "regularised:lam=0.01", "--seeds", "0,1", "--out", str(out), *FAST]
    assert main(args) == 0
    table = (out / "table2.md").read_text()
    assert "| plain | regularised (λ=0.01, p=2) |" in table and "± " in table
    assert len((out / "results.jsonl").read_text().splitlines()) == 4
    first = capsys.readouterr().out
    assert main(args) == 0  # reuses results.json: same numbers
    assert (out / "table2.md").read_text() == table
    assert "clean" in first


@pytest.mark.parametrize(
    "argv, message",
    [
        pytest.param(["train", "--method", "sam"], "unknown method", id="unknown-method"),
        pytest.param(["train", "--method", "resistant:rho=1"], "bad method setting", id="bad-setting"),
        pytest.param(["train", "--method", "resistant:alpha=2"], "alpha", id="alpha-out-of-range"),
        pytest.param(["train", "--method", "resistant:eps=0"], "eps", id="eps-zero"),
        pytest.param(["train", "--method", "resistant:eta=0.1"], "relative=true", id="eta-without-relative"),
        pytest.param(["train", "--method", "resistant:relative=maybe"], "true or false", id="relative-not-bool"),
        pytest.param(["train", "--method", "resistant:relative=true:eta=-1"], "eta", id="eta-negative"),
        pytest.param(["train", "--task", "cifar10"], "digits task only", id="other-task"),
        pytest.param(["compare", "--methods", "plain", "plain"], "same settings", id="duplicate"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, message, tmp_path, capsys, monkeypatch):
    # a data folder without the data, whatever this machine has: "other-task" finds none
    (tmp_path / "no-data").mkdir()
    monkeypatch.setenv("PARAMCORRUPT_DATA", str(tmp_path / "no-data"))
    assert main([*argv, "--out", str(tmp_path / "x"), *FAST]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_parse_method_settings():
    base = MethodConfig(eps=0.1)
    config = parse_method("resistant:eps=0.3:p=inf:n=all:interval=4", base)
    assert (config.method, config.eps, config.p, config.n, config.interval) == ("resistant", 0.3, float("inf"), None, 4)
    assert parse_method("regularized", base).method == "regularised"


def test_parse_method_relative():
    config = parse_method("resistant:relative=true:eta=0.05:eps=0.5", MethodConfig())
    assert (config.relative, config.eta, config.eps) == (True, 0.05, 0.5)
    assert "relative" in config.label() and "η=0.05" in config.label()
    # an absolute run's settings (and so the ids of the runs saved before relative existed) are unchanged
    assert "relative" not in method_settings(parse_method("resistant:eps=0.5", MethodConfig()))
    assert method_settings(config)["relative"] is True and method_settings(config)["eta"] == 0.05


def test_relative_training_is_the_recipes_optimizer_wrapped_relatively():
    """train_model with relative=True trains as the literal construction: the digits recipe's
    SGD wrapped in CorruptionResistant(relative=True, eta) by hand, with the recipe's schedule
    and fit options (the path benchmarks/bfa_defence.py used before MethodConfig had it)."""
    from paramcorrupt.experiments import train_model
    from paramcorrupt.experiments.training import build_task, task_setup
    from paramcorrupt.train import CorruptionResistant, fit
    from paramcorrupt.train.recipe import build_scheduler, fit_options

    setup, base = task_setup("digits", epochs=1)
    config = parse_method("resistant:relative=true:eps=0.5:eta=0.01", base)
    task, _ = train_model(config, 0, setup=setup)
    ours = {k: v.clone() for k, v in task.model.state_dict().items()}

    reference = build_task(setup, 0, config.batch_size)
    recipe = setup.recipe.replace(lr=config.lr, epochs=1)
    optimizer = CorruptionResistant(
        reference.model.parameters(), torch.optim.SGD, eps=0.5, p=2.0, n=None, alpha=0.5, interval=1,
        relative=True, eta=0.01, model=reference.model, max_grad_norm=recipe.max_grad_norm, lr=float(recipe.lr),
        weight_decay=float(recipe.weight_decay), momentum=float(recipe.momentum), nesterov=bool(recipe.nesterov),
    )
    scheduler = build_scheduler(optimizer, recipe, steps_per_epoch=len(reference.train_loader), epochs=1)
    fit(reference.model, optimizer, reference.train_loader, reference.loss_fn, epochs=1, scheduler=scheduler,
        **fit_options(recipe, resistant=True))
    theirs = reference.model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    absolute, _ = train_model(parse_method("resistant:eps=0.5", base), 0, setup=setup)
    assert not all(torch.equal(ours[k], v) for k, v in absolute.model.state_dict().items())


def test_eval_eps_is_checked_when_parsed_before_training(tmp_path, capsys):
    # a radius of 0 used to be refused by the evaluation, after the whole training
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--eval-eps", "0.1,0", "--out", str(tmp_path / "x"), *FAST])
    assert exit_info.value.code == 2
    assert "--eval-eps: each radius must be a finite number > 0, got 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
