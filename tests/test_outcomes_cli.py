"""probe --margin E --confidence C: the number of trials by Leveugle et al. (DATE 2009)."""

from __future__ import annotations

from pathlib import Path

import pytest

from paramcorrupt.cli import main
from paramcorrupt.probe.store import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "user_model.py"
USER = ["--model", f"{EXAMPLE}:make_model", "--data", f"{EXAMPLE}:make_data"]

pytestmark = pytest.mark.usefixtures("one_thread")


def probe(capsys, *argv):
    code = main(["probe", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_margin_sets_the_trials_and_says_so(tmp_path, capsys):
    out = tmp_path / "margin.jsonl"
    # by hand: 1.959964^2 * 0.25 / 0.3^2 = 10.67 -> 11 trials
    code, _, err = probe(
        capsys,
        *USER,
        "--methods",
        "random",
        "--eps",
        "1e-1",
        "--margin",
        "0.3",
        "--quiet",
        "--out",
        out,
    )
    assert code == 0, err
    assert (
        "--margin 0.3 at 0.95 confidence: 11 trials per setting (Leveugle et al., DATE 2009" in err
    )
    assert err.count("trials per setting") == 1
    rows = [row for row in read_jsonl(out) if row.get("method") == "random"]
    assert rows and {row["trial"] for row in rows} == set(range(11))
    # at 99%: 2.575829^2 * 0.25 / 0.3^2 = 18.43 -> 19
    out99 = tmp_path / "margin99.jsonl"
    code, _, err = probe(
        capsys,
        *USER,
        "--methods",
        "random",
        "--eps",
        "1e-1",
        "--margin",
        "0.3",
        "--confidence",
        "0.99",
        "--quiet",
        "--out",
        out99,
    )
    assert code == 0, err
    assert "19 trials per setting" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--margin", "0"], "--margin must be in (0, 1) (exclusive), got 0.0"),
        (["--margin", "1.5"], "--margin must be in (0, 1) (exclusive), got 1.5"),
        (["--margin", "nan"], "--margin must be in (0, 1) (exclusive), got nan"),
        (
            ["--margin", "0.01", "--confidence", "1"],
            "--confidence must be in (0, 1) (exclusive), got 1.0",
        ),
        (
            ["--margin", "0.01", "--confidence", "-0.5"],
            "--confidence must be in (0, 1) (exclusive), got -0.5",
        ),
        (
            ["--confidence", "0.9"],
            "--confidence goes with --margin (it sets how many trials that margin needs)",
        ),
    ],
)
def test_a_bad_margin_or_confidence_is_one_line_before_anything_runs(
    tmp_path, capsys, argv, message
):
    out = tmp_path / "bad.jsonl"
    code, stdout, err = probe(capsys, *USER, "--methods", "random", *argv, "--out", out)
    assert code == 2
    assert err.strip() == f"paramcorrupt probe: error: {message}"
    assert stdout == "" and not out.exists()


@pytest.mark.parametrize("trials", ["10", "3"])
def test_trials_and_margin_are_not_given_together(tmp_path, capsys, trials):
    # "10" is --trials' default: argparse's mutually exclusive groups would let it through
    out = tmp_path / "x.jsonl"
    code, stdout, err = probe(capsys, *USER, "--trials", trials, "--margin", "0.01", "--out", out)
    assert code == 2
    assert (
        err.strip()
        == "paramcorrupt probe: error: give --trials or --margin, not both (--margin chooses the number of trials)"
    )
    assert stdout == "" and not out.exists()


# -- probe --outcomes, activation faults at modules owning no parameters (issue 21) ------------------


def _user_model_and_data():
    import importlib.util

    spec = importlib.util.spec_from_file_location("user_model_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.make_model().eval()
    _, eval_loader, loss_fn, metrics = module.make_data()
    return model, eval_loader, loss_fn, metrics


@pytest.mark.parametrize(
    ("argv", "hooked"),
    [
        (
            ["--by", "position", "--groups", "block1,block2", "--fault-setting", "modules=gelu"],
            {"block1": "block1.2", "block2": "block2.2"},
        ),
        (
            ["--by", "type", "--groups", "linear", "--fault-setting", r"modules=re:block1\.2"],
            {"linear": "block1.2"},
        ),
    ],
)
def test_activation_faults_at_modules_owning_no_parameters_from_the_cli(
    tmp_path, capsys, argv, hooked
):
    import torch

    from paramcorrupt.evaluate import evaluate
    from paramcorrupt.faults.activations import ActivationFaults
    from paramcorrupt.probe.plan import row_seed

    out = tmp_path / "act.jsonl"
    code, stdout, err = probe(
        capsys,
        *USER,
        *argv,
        "--fault",
        "activation-bitflip",
        "--bits",
        "exponent",
        "--flips",
        "1",
        "--outcomes",
        "--trials",
        "2",
        "--quiet",
        "--out",
        out,
    )
    assert code == 0, err
    rows = [row for row in read_jsonl(out) if row.get("method") == "activation-bitflip"]
    assert sorted({row["group"] for row in rows}) == sorted(hooked) and len(rows) == 2 * len(hooked)
    assert "Outcome classes (per trial x example, 95% Wilson intervals):" in stdout
    model, eval_loader, loss_fn, metrics = _user_model_and_data()
    for row in rows:
        # one flip per eval example (one batch of 300), counted on the evaluation data only
        assert (
            row["bit_errors"] == row["examples"] == 300
            and row["masked"] + row["sdc"] + row["due"] == 300
        )
        # the row is the GELU's: the same draws hooked there by hand give the same metric and loss
        generator = torch.Generator().manual_seed(row_seed(0, row["key"]))
        with ActivationFaults(
            model,
            hooked[row["group"]],
            bits="exponent",
            flips=1,
            per_example=True,
            rearm=True,
            generator=generator,
        ) as faults:
            literal = evaluate(model, eval_loader, loss_fn, metrics)
        assert faults.calls == {hooked[row["group"]]: 1}
        assert literal["accuracy"] == row["metric_after"] and faults.bit_errors == 300


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--fault", "activation-bitflip", "--flips", "1", "--fault-setting", "modules=conv2d"],
            "modules='conv2d' matches no module inside module 'embed' (the scope of group 'embed'); its module classes: Linear (a functional call such as F.relu has no module to hook)",
        ),
        (
            [
                "--fault",
                "activation-bitflip",
                "--flips",
                "1",
                "--fault-setting",
                "modules=re:nothing",
            ],
            "modules='re:nothing' matches no module inside module 'embed' (the scope of group 'embed'); its module classes: Linear (a functional call such as F.relu has no module to hook)",
        ),
        (
            ["--fault", "bitflip", "--flips", "1", "--outcomes", "--tolerance", "-1"],
            "--tolerance must be a finite number >= 0, got -1",
        ),
        (
            ["--fault", "bitflip", "--flips", "1", "--tolerance", "0.5"],
            "--tolerance 0.5 goes with --outcomes (it is the SDC criterion of the outcome classes)",
        ),
        (
            ["--fault", "bitflip", "--flips", "1", "--outcomes", "--reuse"],
            "--outcomes does not go with --reuse (the outcome classes need the sweep's full passes)",
        ),
    ],
)
def test_bad_outcome_and_module_input_is_one_line_before_anything_runs(
    tmp_path, capsys, argv, message
):
    out = tmp_path / "bad.jsonl"
    code, stdout, err = probe(capsys, *USER, "--by", "position", *argv, "--out", out)
    assert code == 2
    assert err.strip().splitlines()[-1] == f"paramcorrupt probe: error: {message}"
    assert stdout == "" and not out.exists()


DICT_MODEL = """
import torch
from torch import nn
from paramcorrupt import accuracy, classification_loss


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(2, 3)

    def forward(self, x):
        return {"logits": self.inner(x)}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.pair, self.head = Pair(), nn.Linear(3, 3)

    def forward(self, x):
        return self.head(self.pair(x)["logits"])


def make_model():
    torch.manual_seed(0)
    return Net()


def make_data():
    x = torch.randn(12, 2)
    batches = [(x, torch.arange(12) % 3)]
    return batches, batches, classification_loss, {"accuracy": accuracy}
"""


def test_a_module_whose_output_is_not_a_tensor_is_one_line_from_the_cli(tmp_path, capsys):
    source = tmp_path / "dict_model.py"
    source.write_text(DICT_MODEL)
    out = tmp_path / "bad.jsonl"
    code, stdout, err = probe(
        capsys,
        "--model",
        f"{source}:make_model",
        "--data",
        f"{source}:make_data",
        "--groups",
        "all=*",
        "--fault",
        "activation-bitflip",
        "--flips",
        "1",
        "--fault-setting",
        "modules=pair",
        "--outcomes",
        "--out",
        out,
    )
    assert code == 2
    message = (
        "module 'pair' (Pair) returns a dict; activation faults need a tensor or a tuple of tensors"
    )
    assert err.strip().splitlines()[-1] == f"paramcorrupt probe: error: {message}"
    assert stdout == "" and not out.exists()
