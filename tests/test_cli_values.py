"""cli/values.py: every parser of a command-line value, and its error messages."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest

from paramcorrupt.cli.values import (
    argument_type,
    fault_settings,
    fault_value,
    floats,
    group_spec,
    ints,
    items,
    n_values,
    number,
    parse_method,
    parse_n,
    task_option_values,
    task_options,
)
from paramcorrupt.experiments import MethodConfig


def test_items_and_numbers():
    assert items(" a, b ,,c ", "--x") == ["a", "b", "c"]
    with pytest.raises(ValueError, match="--x needs at least one value"):
        items(" , ", "--x")
    assert floats("1e-3,inf,Infinity,2", "--eps") == [1e-3, math.inf, math.inf, 2.0]
    assert number("-INF") == -math.inf
    with pytest.raises(ValueError, match="--p: 'two' is not a number"):
        floats("2,two", "--p")
    assert ints("0, 1,2", "--seeds") == [0, 1, 2]
    with pytest.raises(ValueError, match="--seeds: '1.5' is not an integer"):
        ints("1.5", "--seeds")


@pytest.mark.parametrize("text", ["all", "ALL", "k", "K", "none", " None "])
def test_n_every_spelling_of_all(text):
    assert parse_n(text) is None


def test_n_values_and_errors():
    assert n_values("all,100,k,none,1") == [None, 100, None, None, 1]
    for bad in ("0", "-3", "some", "1.5"):
        with pytest.raises(ValueError, match="'all'") as error:
            parse_n(bad)
        assert str(error.value).startswith(f"--n: {bad!r}") and "None" not in str(error.value)
    with pytest.raises(ValueError, match="--top-n: 'x'"):
        n_values("5,x", "--top-n")


def test_argument_type_gives_argparse_one_line():
    parser = argparse.ArgumentParser(prog="p", exit_on_error=False)
    parser.add_argument("--n", type=argument_type(lambda text: parse_n(text, "n")))
    assert parser.parse_args(["--n", "all"]).n is None and parser.parse_args(["--n", "7"]).n == 7
    with pytest.raises(argparse.ArgumentError, match="n: '0' is not an integer >= 1 or 'all'"):
        parser.parse_args(["--n", "0"])


def test_group_spec():
    assert group_spec(None) == (None, None)
    assert group_spec("stem=conv1+bn1, head=fc") == ({"stem": ["conv1", "bn1"], "head": ["fc"]}, None)
    assert group_spec("conv,norm") == (None, ["conv", "norm"])
    for text, message in [
        ("a=x,b", "either LABEL=PATTERN entries or plain labels, not both"),
        ("a=", "'a=' is not LABEL=PATTERN"),
        ("=x", "'=x' is not LABEL=PATTERN"),
        ("a=x,a=y", "label 'a' is given twice"),
        (",", "--groups needs at least one value"),
    ]:
        with pytest.raises(ValueError, match=message):
            group_spec(text)


def _fault_args(**given):
    names = ("fault", "methods", "format", "bits", "ber", "flips", "value", "candidates", "batches", "count")
    return argparse.Namespace(**{n: given.get(n) for n in names}, fault_setting=given.get("fault_setting", []))


def test_fault_values_and_settings():
    assert [fault_value(t) for t in ("3", "1e-6", "int8")] == [3, 1e-6, "int8"]
    assert fault_settings(_fault_args()) == (["random", "gradient"], None)
    methods, settings = fault_settings(_fault_args(fault="bitflip", ber="1e-6,1e-5", format="int8"))
    assert methods == ["bitflip"] and settings == {"bitflip": {"format": ["int8"], "ber": [1e-6, 1e-5]}}
    methods, settings = fault_settings(_fault_args(fault="bitflip", methods="gradient", fault_setting=["flips=1,2"]))
    assert methods == ["gradient", "bitflip"] and settings == {"bitflip": {"flips": [1, 2]}}
    with pytest.raises(ValueError, match="--ber is a fault setting: give the fault model with --fault"):
        fault_settings(_fault_args(ber="1e-3"))
    with pytest.raises(ValueError, match="--ber is a setting of none of --fault bit-search"):
        fault_settings(_fault_args(fault="bit-search", ber="1e-3"))
    with pytest.raises(ValueError, match="--fault-setting takes KEY=VALUE"):
        fault_settings(_fault_args(fault="bitflip", fault_setting=["flips"]))


def test_task_options_as_typed():
    args = argparse.Namespace(task_option=["limit_test=1000", " model = resnet34 "], data_dir="/data")
    assert task_options(args) == {"limit_test": "1000", "model": "resnet34", "data_dir": "/data"}
    with pytest.raises(ValueError, match="--task-option expects KEY=VALUE, got 'model'"):
        task_options(argparse.Namespace(task_option=["model"], data_dir=None))


def _factory(
    *,
    seed: int = 0,
    limit: int | None = None,
    lr: float = 0.1,
    augment: bool = True,
    model: str = "resnet20",
    data_dir: str | Path | None = None,
    cache: Path | None = None,
    widths: tuple[int, ...] | None = None,
    anything=None,
):
    raise AssertionError("not called")


def test_task_option_values_follow_the_annotations():
    options = {
        "seed": 3, "limit": "none", "lr": "1e-3", "augment": "off", "model": "tiny", "data_dir": "d",
        "cache": "/tmp/c", "widths": "16,32x64", "anything": "7",
    }
    assert task_option_values(_factory, options) == {
        "seed": 3, "limit": None, "lr": 1e-3, "augment": False, "model": "tiny", "data_dir": "d",
        "cache": Path("/tmp/c"), "widths": (16, 32, 64), "anything": "7",
    }
    assert task_option_values(_factory, {"limit": "12"}) == {"limit": 12}


def test_task_option_values_errors_name_the_option():
    with pytest.raises(ValueError, match=r"unknown --task-option 'bogus' for the cifar10 task; valid: .*augment.*widths"):
        task_option_values(_factory, {"bogus": "1"}, "cifar10")
    with pytest.raises(ValueError, match=r"--task-option limit='many': expected an integer"):
        task_option_values(_factory, {"limit": "many"})
    with pytest.raises(ValueError, match=r"--task-option augment='maybe': expected true or false"):
        task_option_values(_factory, {"augment": "maybe"})
    with pytest.raises(ValueError, match=r"--task-option widths='a,b': expected an integer"):
        task_option_values(_factory, {"widths": "a,b"})


def test_task_option_values_without_annotations_keep_strings():
    def loose(**options):
        raise AssertionError("not called")

    assert task_option_values(loose, {"x": "1", "y": "true"}) == {"x": "1", "y": "true"}


def test_parse_method():
    base = MethodConfig()
    config = parse_method("resistant:eps=0.3:p=inf:n=all:interval=4", base)
    assert (config.method, config.eps, config.p, config.n, config.interval) == ("resistant", 0.3, math.inf, None, 4)
    assert parse_method("resistant:n=K", base).n is None and parse_method("resistant:n=7", base).n == 7
    assert parse_method("regularized:lam=0.05", base).method == "regularised"
    with pytest.raises(ValueError, match="unknown method 'guess'"):
        parse_method("guess", base)
    with pytest.raises(ValueError, match="bad method setting 'beta=1'"):
        parse_method("resistant:beta=1", base)
    with pytest.raises(ValueError, match="bad value in 'n=0': n: '0' is not an integer >= 1 or 'all'"):
        parse_method("resistant:n=0", base)
    with pytest.raises(ValueError, match="bad value in 'p=two': p must be a number"):
        parse_method("resistant:p=two", base)
