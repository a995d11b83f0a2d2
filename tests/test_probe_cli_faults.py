"""``paramcorrupt probe --fault ...``: hardware fault models from the command line, their
settings, the summary, resume, the report, and bad input (exit 2, nothing written)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from paramcorrupt.cli import main
from paramcorrupt.probe import read_results

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "user_model.py"
USER = ["--model", f"{EXAMPLE}:make_model", "--data", f"{EXAMPLE}:make_data", "--quiet", "--by", "position"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def probe(*argv, capsys):
    code = main(["probe", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_bit_faults_and_the_bit_search_from_the_cli(tmp_path, capsys):
    path = tmp_path / "bits.jsonl"
    argv = [*USER, "--fault", "bitflip,bit-search", "--format", "int8", "--ber", "1e-4,1e-2", "--flips", "1,3",
            "--trials", "2", "--out", path]
    code, out, err = probe(*argv, capsys=capsys)
    assert code == 0, err
    header, rows = read_results(path)
    assert header["config"]["methods"] == ["bitflip", "bit-search"]
    # bitflip: 2 rates + 2 counts, 2 trials each; bit-search: 2 budgets, one search each; 4 groups
    assert len(rows) == 4 * (4 * 2 + 2)
    keys = [r["key"] for r in rows if r["group"] == "head"]
    assert "head|bitflip|format=int8|bits=any|ber=0.0001|trial=1" in keys
    assert "head|bit-search|format=int8|bits=any|flips=3|candidates=1|batches=1|trial=0" in keys
    assert "| head | bit-search | format=int8, bits=any, flips=3, candidates=1, batches=1 |" in out
    # a second run resumes: nothing recomputed, the file unchanged
    content = path.read_bytes()
    code, out, _ = probe(*argv, capsys=capsys)
    assert code == 0 and path.read_bytes() == content
    assert main(["report", str(path), "--out", str(tmp_path / "report")]) == 0
    assert "## Hardware faults" in (tmp_path / "report" / "report.md").read_text()


def test_relative_faults_run_on_the_lp_grid(tmp_path, capsys):
    path = tmp_path / "relative.jsonl"
    code, _, err = probe(*USER, "--fault", "relative-gradient", "--methods", "gradient", "--p", "2", "--eps", "0.1",
                         "--out", path, capsys=capsys)
    assert code == 0, err
    _, rows = read_results(path)
    assert [r["method"] for r in rows[:2]] == ["gradient", "relative-gradient"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--fault", "bitflip", "--ber", "2"], r"ber must be a number in \[0, 1\], got ber=2"),
        (["--fault", "bitflip", "--format", "int4", "--flips", "1"], "unknown number format 'int4'"),
        (["--fault", "bitflip", "--bits", "40", "--flips", "1"], r"bit index 40 is out of range for float32 \(0 to 31\)"),
        (["--fault", "bitflp", "--flips", "1"], "unknown fault model 'bitflp'"),
        (["--ber", "1e-3"], "--ber is a fault setting: give the fault model with --fault"),
        (["--fault", "bit-search", "--flips", "1", "--ber", "1e-3"], "--ber is a setting of none of --fault bit-search"),
        (["--fault", "stuck-at", "--value", "2", "--flips", "1"], "a stuck-at value must be 0 or 1"),
    ],
)
def test_bad_fault_input_is_one_line_and_nothing_is_written(tmp_path, capsys, argv, message):
    path = tmp_path / "bad.jsonl"
    code, _, err = probe(*USER, *argv, "--out", path, capsys=capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not path.exists()
