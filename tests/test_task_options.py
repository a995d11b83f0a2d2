"""Typed task factories (issue 19, point 4): every registered factory's options are typed
(no ``Any``), the command line's ``--task-option KEY=VALUE`` strings are converted by those
annotations for every built-in task, an unknown option is refused before the factory runs, and
an integer option reaches the factory as an int."""

from __future__ import annotations

import functools
import inspect
import typing
from pathlib import Path
from typing import Any

import pytest

from paramcorrupt.cli import main
from paramcorrupt.cli.values import task_option_values
from paramcorrupt.errors import ParamCorruptError
from paramcorrupt.tasks import TASKS, get_task, task_parameters

#: per task, options as the command line gives them, and the typed values they must become
STRINGS: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
    "digits": ({"batch_size": "64", "width": "8", "train": "no", "eval_batch_size": "100"},
               {"batch_size": 64, "width": 8, "train": False, "eval_batch_size": 100}),
    "cifar10": ({"depths": "3,4,6,3", "widths": "8x16x32x64", "limit_train": "100", "limit_test": "none",
                 "augment": "false", "num_workers": "0", "model": "tiny", "device": "cpu", "progress": "yes"},
                {"depths": (3, 4, 6, 3), "widths": (8, 16, 32, 64), "limit_train": 100, "limit_test": None,
                 "augment": False, "num_workers": 0, "model": "tiny", "device": "cpu", "progress": True}),
    "ptb-lm": ({"bptt": "8", "tie_weights": "true", "dropout": "0.1", "limit_train_tokens": "1500",
                "emb_size": "32", "eval_split": "valid", "limit_eval_tokens": "none"},
               {"bptt": 8, "tie_weights": True, "dropout": 0.1, "limit_train_tokens": 1500, "emb_size": 32,
                "eval_split": "valid", "limit_eval_tokens": None}),
    "ptb-dep": ({"held_out": "0.2", "split_seed": "1", "split_by": "file", "lr": "1e-3", "epochs": "2",
                 "limit_train_sentences": "50", "activation": "relu"},
                {"held_out": 0.2, "split_seed": 1, "split_by": "file", "lr": 1e-3, "epochs": 2,
                 "limit_train_sentences": 50, "activation": "relu"}),
    "ud-ewt": ({"eval_split": "dev", "hidden_size": "64", "dropout": "0", "gradient_batch_size": "128"},
               {"eval_split": "dev", "hidden_size": 64, "dropout": 0.0, "gradient_batch_size": 128}),
    "multi30k": ({"warmup": "100", "normalize_before": "yes", "d_model": "64", "label_smoothing": "0.0",
                  "max_tokens": "512", "layers": "none"},
                 {"warmup": 100, "normalize_before": True, "d_model": 64, "label_smoothing": 0.0,
                  "max_tokens": 512, "layers": None}),
    "hf": ({"path": "/ckpt", "seq_len": "16", "lr": "1e-3", "epochs": "2", "eval_batch_size": "none",
            "dtype": "bfloat16", "data": "train.txt"},
           {"path": "/ckpt", "seq_len": 16, "lr": 1e-3, "epochs": 2, "eval_batch_size": None,
            "dtype": "bfloat16", "data": "train.txt"}),
    "hf-causal-lm": ({"examples": "8", "batch_size": "4", "head": "causal-lm"},
                     {"examples": 8, "batch_size": 4, "head": "causal-lm"}),
    "hf-seq-cls": ({"eval_examples": "4", "seed": "3"}, {"eval_examples": 4, "seed": 3}),
}


def _hints(factory: Any) -> dict[str, Any]:
    target = factory.func if isinstance(factory, functools.partial) else factory
    return typing.get_type_hints(target)


def test_every_task_is_covered():
    assert set(STRINGS) == set(TASKS)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_the_registry_exposes_the_typed_factory(name):
    factory = TASKS[name]
    target = factory.func if isinstance(factory, functools.partial) else factory
    assert target.__module__.startswith("paramcorrupt.tasks.") and target.__name__.endswith("_task")
    parameters = inspect.signature(target).parameters
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()), "no **options"
    hints = _hints(factory)
    untyped = [n for n in parameters if n not in hints or hints[n] is Any or Any in typing.get_args(hints[n])]
    assert not untyped, f"{name}: options typed Any or not at all: {untyped}"
    assert task_parameters(factory) == [n for n in parameters if parameters[n].kind is not inspect.Parameter.VAR_POSITIONAL]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_options_convert_by_the_annotations(name):
    given, expected = STRINGS[name]
    converted = task_option_values(TASKS[name], given, name)
    assert converted == expected
    assert all(type(converted[k]) is type(v) for k, v in expected.items())


def test_hf_variants_fix_their_head():
    assert TASKS["hf-causal-lm"].keywords == {"head": "causal-lm"}
    assert TASKS["hf-seq-cls"].keywords == {"head": "sequence-classification"}
    assert TASKS["hf"].__name__ == "hf_task"


@pytest.mark.parametrize("name", sorted(TASKS))
def test_an_unknown_option_is_refused_before_the_factory_runs(name, tmp_path, monkeypatch):
    monkeypatch.setenv("PARAMCORRUPT_DATA", str(tmp_path))  # no data: a call would fail otherwise
    with pytest.raises(ParamCorruptError, match=rf"unknown option 'bogus' for the {name} task; valid: .*seed"):
        get_task(name, bogus=1)
    with pytest.raises(ParamCorruptError, match=rf"unknown --task-option 'bogus' for the {name} task; valid: "):
        task_option_values(TASKS[name], {"bogus": "1"}, name)


def test_digits_built_from_strings():
    options = task_option_values(TASKS["digits"], {"width": "8", "epochs": "0", "train": "no"}, "digits")
    task = get_task("digits", **options)
    assert task.model.fc.in_features == 16 and task.info["epochs"] == 0


def test_strings_are_no_longer_parsed_by_the_tasks():
    with pytest.raises(TypeError, match="batch_size must be an integer, got '64'"):
        get_task("hf", config=None, batch_size="64")


def test_probe_passes_an_int_option_as_an_int(tmp_path, monkeypatch):
    import paramcorrupt.tasks.digits as digits

    seen: dict[str, Any] = {}
    original = digits.digits_task

    @functools.wraps(original)
    def recording(**options: Any) -> Any:
        seen.update(options)
        return original(**options)

    monkeypatch.setattr(digits, "digits_task", recording)
    out = tmp_path / "rows.jsonl"
    argv = ["probe", "--task", "digits", "--task-option", "batch_size=64", "--epochs", "1", "--by", "type",
            "--methods", "random", "--trials", "1", "--eps", "1e-3", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    assert seen["batch_size"] == 64 and type(seen["batch_size"]) is int
    assert Path(out).is_file()
