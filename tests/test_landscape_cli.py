"""``paramcorrupt landscape``: the files it writes (CSV rows equal to the library's, the PNGs,
the summary), the model left unchanged, and bad input as one line before any work."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import torch

from paramcorrupt.cli import main
from paramcorrupt.probe.landscape import landscape, linspace

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "user_model.py"
USER = ["--model", f"{EXAMPLE}:make_model", "--data", f"{EXAMPLE}:make_data"]


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_command_writes_the_csv_the_figures_and_the_summary(tmp_path, capsys):
    out = tmp_path / "walk"
    code = main(
        [
            "landscape",
            *USER,
            "--t-range",
            "-0.5:0.5",
            "--points",
            "3",
            "--grid-points",
            "3",
            "--steps",
            "1",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["all-1d.png", "all-2d.png", "landscape.csv", "landscape.md"]
    for png in ("all-1d.png", "all-2d.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = read_rows(out / "landscape.csv")
    assert list(rows[0]) == ["group", "direction", "t", "u", "loss", "accuracy"]
    assert len(rows) == 4 * 3 + 3 * 3
    # the same walk by the library on the same model and data: the same numbers
    spec = importlib.util.spec_from_file_location("landscape_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    model = example.make_model().eval()
    gradient_loader, eval_loader, loss_fn, metrics = example.make_data()
    result = landscape(
        model,
        eval_loader,
        loss_fn,
        metrics,
        gradient_loader=gradient_loader,
        t_values=linspace(-0.5, 0.5, 3),
        grid_points=3,
        steps=1,
    )
    expected = result.rows()
    assert [(r["direction"], r["t"], r["u"]) for r in rows] == [
        (
            e["direction"],
            "" if e["t"] is None else repr(e["t"]),
            "" if e["u"] is None else repr(e["u"]),
        )
        for e in expected
    ]
    assert [float(r["loss"]) for r in rows] == [e["loss"] for e in expected]
    summary = (out / "landscape.md").read_text()
    assert (
        "## Group `all`" in summary
        and "![all-1d.png](all-1d.png)" in summary
        and "first order" in summary
    )
    assert "its axes against the 1-D curves: 6 shared points, the largest difference 0" in summary
    # the metric in its display unit, as every report shows it (an accuracy in percent)
    assert f"accuracy {result.clean['accuracy'] * 100:.4g}%." in summary


def test_groups_of_a_grouping_each_get_a_landscape(tmp_path, capsys):
    out = tmp_path / "types"
    code = main(
        [
            "landscape",
            *USER,
            "--by",
            "type",
            "--groups",
            "norm,linear",
            "--points",
            "2",
            "--t-range",
            "-0.1:0.1",
            "--grid-points",
            "0",
            "--directions",
            "gradient,filter",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    rows = read_rows(out / "landscape.csv")
    assert sorted({r["group"] for r in rows}) == ["linear", "norm"]
    assert sorted(p.name for p in out.glob("*.png")) == ["linear-1d.png", "norm-1d.png"]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--points", "1"], "--points must be >= 2, got 1"),
        (["--t-range", "1:-1"], "--t-range '1:-1' is an empty or infinite range"),
        (["--t-range=0:0"], "--t-range '0:0' is an empty or infinite range"),
        (["--t-range", "-1"], "--t-range takes LOW:HIGH, got '-1'"),
        (["--u-range", "a:1"], "--u-range: 'a' is not a number"),
        (["--grid-points", "1"], "--grid-points must be 0 (no 2-D slice) or >= 2, got 1"),
        (["--directions", "gradient,up"], "unknown direction 'up' in --directions"),
        (["--directions", "gradient", "--grid-points", "3"], "include both in --directions"),
        (["--by", "type", "--groups", "nonexistent"], "unknown group 'nonexistent' for --by type"),
        (["--groups", "empty=nothing.*"], "group 'empty' is empty: no parameter matches"),
        (["--steps", "-2"], "--steps must be >= 0, got -2"),
        (["--n", "all,3"], "--n takes one value here"),
        (["--p", "0.5"], "p must be"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, words):
    out = tmp_path / "never"
    code = main(["landscape", *USER, *argv, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert words in err and err.count("\n") == 1, err
    assert not out.exists()


def test_the_digits_task_refuses_an_unknown_group_before_training(tmp_path, capsys):
    code = main(
        [
            "landscape",
            "--by",
            "position",
            "--groups",
            "stem,head",
            "--out",
            str(tmp_path / "x"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "unknown group 'head' for --by position" in err and err.count("\n") == 1


def test_a_range_may_start_with_a_minus_sign():
    from paramcorrupt.cli import build_parser

    args = build_parser().parse_args(
        ["landscape", "--t-range", "-1e-2:1e-2", "--u-range", "-.5:.5"]
    )
    assert (args.t_range, args.u_range) == ("-1e-2:1e-2", "-.5:.5")


@pytest.mark.slow
def test_a_hugging_face_model_through_hf_and_the_model_is_unchanged(tmp_path, capsys):
    """--hf FOLDER (a tiny random GPT-2 saved here), one group of --by type: the command runs,
    and the library walk leaves the loaded model's state dict bit for bit."""
    transformers = pytest.importorskip("transformers")
    from paramcorrupt.tasks.hf import hf_task

    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=16,
        n_head=2,
        vocab_size=40,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
        architectures=["GPT2LMHeadModel"],
    )
    small = {"examples": 16, "eval_examples": 8, "seq_len": 8, "batch_size": 4}
    task = hf_task(config=config, seed=0, **small)
    folder = tmp_path / "gpt2"
    task.model.save_pretrained(folder)
    options = [f"--task-option={k}={v}" for k, v in small.items() if k != "batch_size"]
    out = tmp_path / "hf"
    code = main(
        [
            "landscape",
            "--hf",
            str(folder),
            *options,
            "--by",
            "type",
            "--groups",
            "mlp",
            "--points",
            "3",
            "--t-range",
            "-0.1:0.1",
            "--grid-points",
            "3",
            "--steps",
            "1",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    rows = read_rows(out / "landscape.csv")
    assert {r["group"] for r in rows} == {"mlp"} and len(rows) == 4 * 3 + 3 * 3
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    groups = task.groupings["type"](task.model)
    landscape(
        task.model,
        task.eval_loader,
        task.loss_fn,
        task.metrics,
        group=groups["mlp"],
        gradient_loader=task.gradient_loader,
        t_values=[-0.1, 0.0, 0.1],
        grid_points=3,
        steps=1,
    )
    assert all(torch.equal(before[k], v) for k, v in task.model.state_dict().items())
