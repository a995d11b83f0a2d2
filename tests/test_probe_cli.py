"""``paramcorrupt probe``: user models from factories and checkpoints, resuming, and bad input
(one line on stderr, exit code 2, the results file untouched)."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from paramcorrupt.cli import main
from paramcorrupt.probe import read_results
from paramcorrupt.tasks.digits import DigitsResNet
from paramcorrupt.tasks.user import resolve
from paramcorrupt.tasks.weights import load_weights as load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "user_model.py"
USER = ["--model", f"{EXAMPLE}:make_model", "--data", f"{EXAMPLE}:make_data"]
FAST = ["--methods", "random,gradient", "--trials", "2", "--eps", "1e-2,1e-1", "--quiet"]


# tiny models: one intra-op thread is faster, and immune to a busy machine's other cores
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def probe(*argv, capsys=None):
    code = main(["probe", *map(str, argv)])
    if capsys is None:
        return code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A finished results file of the example model, and its bytes."""
    path = tmp_path_factory.mktemp("probe") / "user.jsonl"
    assert probe(*USER, "--by", "position", *FAST, "--out", path) == 0
    return path, path.read_bytes()


def test_user_model_from_a_file_path(results):
    path, _ = results
    header, rows = read_results(path)
    assert [g for g in header["groups"]] == ["embed", "block1", "block2", "head"]
    assert len(rows) == 4 * 2 * 3
    assert {r["grouping"] for r in rows} == {"position"} and {r["metric"] for r in rows} == {"accuracy"}
    assert header["config"]["task"].startswith(f"model={EXAMPLE}:make_model;data={EXAMPLE}:make_data")


def test_running_again_resumes_and_changes_nothing(results, capsys):
    path, content = results
    code, out, err = probe(*USER, "--by", "position", *FAST, "--out", path, capsys=capsys)
    assert code == 0 and err.startswith("warning: no --checkpoint") and err.count("\n") == 1  # an untrained model
    assert "resuming: 24 of 24 rows done" in out and "24 rows" in out
    assert path.read_bytes() == content


def test_checkpoints_pt_and_safetensors_and_module_specs(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "probe_user_factories.py").write_text(EXAMPLE.read_text())
    from safetensors.torch import save_file

    module = resolve(f"{EXAMPLE}:make_model")
    model = module()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    torch.save({"state_dict": model.state_dict()}, tmp_path / "wrapped.pt")
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    outputs = {}
    for name in ("model.pt", "wrapped.pt", "model.safetensors"):
        out = tmp_path / f"{name}.jsonl"
        spec = ["--data", "probe_user_factories:make_task"] if name != "model.pt" else [
            "--model", "probe_user_factories:make_model", "--data", "probe_user_factories:make_data"
        ]
        assert probe(*spec, "--checkpoint", tmp_path / name, "--by", "type", "--methods", "gradient", "--eps", "0.1", "--quiet", "--out", out) == 0
        outputs[name] = read_results(out)[1]
    losses = {name: [r["loss_after"] for r in rows] for name, rows in outputs.items()}
    assert losses["model.pt"] == losses["wrapped.pt"] == losses["model.safetensors"]
    # the weights were loaded: the clean loss differs from the untrained example's
    assert outputs["model.pt"][0]["loss_before"] != pytest.approx(
        read_results(_example_run(tmp_path))[1][0]["loss_before"], rel=1e-6
    )


def _example_run(tmp_path):
    out = tmp_path / "plain.jsonl"
    assert probe(*USER, "--by", "type", "--methods", "gradient", "--eps", "0.1", "--quiet", "--out", out) == 0
    return out


def test_reused_activations_give_the_same_rows(results, tmp_path):
    path, _ = results
    out = tmp_path / "reuse.jsonl"
    assert probe(*USER, "--by", "position", *FAST, "--reuse", "--out", out) == 0
    plain, reused = read_results(path)[1], read_results(out)[1]
    assert [r["key"] for r in reused] == [r["key"] for r in plain]
    for a, b in zip(plain, reused):
        for field in ("loss_after", "metric_after", "grad_loss_after", "first_order"):
            assert b[field] == pytest.approx(a[field], rel=1e-5, abs=1e-7), (a["key"], field)


def test_custom_groups_and_a_subset_of_groups(tmp_path):
    out = tmp_path / "custom.jsonl"
    assert probe(*USER, "--groups", "norms=*.0.weight+*.0.bias,head=head", "--methods", "gradient", "--p", "inf,2", "--n", "all,10", "--eps", "0.1", "--quiet", "--out", out) == 0
    header, rows = read_results(out)
    assert header["groups"]["norms"] == ["block1.0.weight", "block1.0.bias", "block2.0.weight", "block2.0.bias"]
    assert [(r["group"], r["p"], r["n"]) for r in rows] == [
        ("norms", float("inf"), 128), ("norms", float("inf"), 10), ("norms", 2.0, 128), ("norms", 2.0, 10),
        ("head", float("inf"), 99), ("head", float("inf"), 10), ("head", 2.0, 99), ("head", 2.0, 10),
    ]
    subset = tmp_path / "subset.jsonl"
    assert probe(*USER, "--by", "type", "--groups", "norm", "--methods", "iterative", "--steps", "1", "--eps", "0.1", "--quiet", "--out", subset) == 0
    assert {(r["group"], r["method"]) for r in read_results(subset)[1]} == {("norm", "iterative")}


def test_builtin_digits_task_with_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "digits.pt"
    torch.save(DigitsResNet().state_dict(), ckpt)
    out = tmp_path / "digits.jsonl"
    assert probe("--task", "digits", "--checkpoint", ckpt, "--by", "position", "--methods", "gradient", "--n", "100", "--eps", "1e-2", "--no-gradient-data", "--quiet", "--out", out) == 0
    header, rows = read_results(out)
    assert [r["group"] for r in rows] == ["stem", "layer1", "layer2", "fc"]  # the task's own grouping
    assert all(r["grad_loss_after"] is None and r["ratio"] is None for r in rows)
    assert header["config"]["task"].startswith("digits(seed=0,checkpoint=sha256:")


def bad_cases(tmp_path: Path) -> dict[str, list]:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    unsafe = tmp_path / "unsafe.pt"
    unsafe.write_bytes(pickle.dumps(Path("/etc"), protocol=2))  # a pickle that would need code to load
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    not_a_state = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], not_a_state)
    other_model = tmp_path / "other.pt"
    torch.save(DigitsResNet().state_dict(), other_model)
    shapes = tmp_path / "shapes.pt"
    model = resolve(f"{EXAMPLE}:make_model")()
    state = model.state_dict()
    state["head.weight"] = torch.zeros(5, 32)
    torch.save(state, shapes)
    return {
        "unknown group pattern": [*USER, "--groups", "nothing=decoder.*"],
        "unknown group label": [*USER, "--by", "type", "--groups", "attention"],
        "unknown grouping": [*USER, "--by", "colour"],
        "unreadable checkpoint": [*USER, "--checkpoint", garbage],
        "unsafe checkpoint": [*USER, "--checkpoint", unsafe],
        "truncated safetensors": [*USER, "--checkpoint", truncated],
        "not a state dict": [*USER, "--checkpoint", not_a_state],
        "missing checkpoint": [*USER, "--checkpoint", tmp_path / "nowhere.pt"],
        "checkpoint of another model": [*USER, "--checkpoint", other_model],
        "checkpoint with other shapes": [*USER, "--checkpoint", shapes],
        "another sweep": [*USER, "--by", "position", "--eps", "0.5", "--quiet"],
        "bad p": [*USER, "--p", "0.5"],
        "bad p text": [*USER, "--p", "two"],
        "bad n": [*USER, "--n", "some"],
        "bad method": [*USER, "--methods", "gradient,guess"],
        "bad model spec": ["--model", "no_such_package_xyz:make", "--data", f"{EXAMPLE}:make_data"],
        "missing attribute": ["--model", f"{EXAMPLE}:make_nothing", "--data", f"{EXAMPLE}:make_data"],
        "model without data": ["--model", f"{EXAMPLE}:make_model"],
        "task and model": ["--task", "digits", *USER],
    }


def test_bad_input_is_one_line_exit_2_and_the_file_untouched(results, tmp_path, capsys):
    path, content = results
    expected = {
        "unknown group pattern": "'nothing' is empty",
        "unknown group label": "unknown group 'attention'",
        "unknown grouping": "unknown grouping",
        "unreadable checkpoint": "cannot read checkpoint",
        "unsafe checkpoint": "cannot read checkpoint",
        "truncated safetensors": "cannot read checkpoint",
        "not a state dict": "does not hold a state dict",
        "missing checkpoint": "does not exist",
        "checkpoint of another model": "does not match the model: missing keys",
        "checkpoint with other shapes": "shape mismatches head.weight (5, 32) vs (3, 32)",
        "another sweep": "holds the results of another sweep",
        "bad p": "p must be",
        "bad p text": "--p: 'two' is not a number",
        "bad n": "--n: 'some'",
        "bad method": "unknown method 'guess'",
        "bad model spec": "cannot import 'no_such_package_xyz'",
        "missing attribute": "has no attribute 'make_nothing'",
        "model without data": "--model needs --data",
        "task and model": "not both",
    }
    cases = bad_cases(tmp_path)
    assert cases.keys() == expected.keys()
    for name, argv in cases.items():
        code, out, err = probe(*argv, "--quiet", "--out", path, capsys=capsys)
        assert code == 2, name
        assert err.startswith("paramcorrupt probe: error: ") and err.count("\n") == 1, (name, err)
        assert expected[name] in err, (name, err)
        assert "Traceback" not in err + out
        assert path.read_bytes() == content, name


@pytest.mark.slow
def test_bad_input_in_a_real_process(results):
    path, content = results
    done = subprocess.run(
        [sys.executable, "-m", "paramcorrupt", "probe", *USER, "--by", "module", "--quiet", "--out", str(path)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "another sweep" in done.stderr, done.stderr
    assert path.read_bytes() == content


def test_a_file_that_is_not_a_results_file_is_not_overwritten(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    code, _, err = probe(*USER, *FAST, "--out", notes, capsys=capsys)
    assert code == 2 and "not a probe results file" in err
    assert notes.read_text() == "my notes\n"
    code, _, err = probe(*USER, *FAST, "--out", tmp_path, capsys=capsys)
    assert code == 2 and "folder" in err


def test_resolve_and_load_checkpoint(tmp_path):
    assert resolve("paramcorrupt.losses:accuracy").__name__ == "accuracy"
    assert resolve(f"{EXAMPLE}:make_data") is resolve(f"{EXAMPLE}:make_data")  # loaded once
    (tmp_path / "pkg_mod.py").write_text(textwrap.dedent("""
        import neighbour
        VALUE = neighbour.VALUE + 1
    """))
    (tmp_path / "neighbour.py").write_text("VALUE = 41\n")
    assert resolve(f"{tmp_path / 'pkg_mod.py'}:VALUE") == 42
    with pytest.raises(ValueError, match="expected package.module:attribute"):
        resolve("no-colon")
    with pytest.raises(FileNotFoundError):
        resolve(f"{tmp_path / 'missing.py'}:x")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.slow
def test_demo_writes_table1_probes_and_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1", "--trials", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    _, table1 = read_results(out / "results.jsonl")
    fields = {"method", "p", "eps", "n", "group", "trial", "loss_before", "loss_after", "metric_before", "metric_after", "first_order"}
    assert all(fields <= row.keys() for row in table1)
    assert len(table1) == 2 * 2 * 5 * (2 + 1)  # L_inf and L_2, n = k and 100, five eps, random trials + gradient
    assert {r["group"] for r in read_results(out / "probe-type.jsonl")[1]} == {"conv", "norm", "linear"}
    assert [g for g in read_results(out / "probe-position.jsonl")[0]["groups"]] == ["stem", "layer1", "layer2", "fc"]
    report = out / "report" / "report.md"
    assert report.is_file() and f"report: {report}" in printed
    assert "| n | eps | random acc % (test, mean ± std) | gradient acc % (test) |" in printed
    assert "L_2, all" in printed and "gradient Δloss (test) | gradient Δloss (train) | first-order (train) |" in printed
