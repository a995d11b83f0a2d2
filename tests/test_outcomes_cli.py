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
    code, _, err = probe(capsys, *USER, "--methods", "random", "--eps", "1e-1", "--margin", "0.3", "--quiet", "--out", out)
    assert code == 0, err
    assert "--margin 0.3 at 0.95 confidence: 11 trials per setting (Leveugle et al., DATE 2009" in err
    assert err.count("trials per setting") == 1
    rows = [row for row in read_jsonl(out) if row.get("method") == "random"]
    assert rows and {row["trial"] for row in rows} == set(range(11))
    # at 99%: 2.575829^2 * 0.25 / 0.3^2 = 18.43 -> 19
    out99 = tmp_path / "margin99.jsonl"
    code, _, err = probe(capsys, *USER, "--methods", "random", "--eps", "1e-1", "--margin", "0.3", "--confidence", "0.99",
                         "--quiet", "--out", out99)
    assert code == 0, err
    assert "19 trials per setting" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--margin", "0"], "--margin must be in (0, 1) (exclusive), got 0.0"),
        (["--margin", "1.5"], "--margin must be in (0, 1) (exclusive), got 1.5"),
        (["--margin", "nan"], "--margin must be in (0, 1) (exclusive), got nan"),
        (["--margin", "0.01", "--confidence", "1"], "--confidence must be in (0, 1) (exclusive), got 1.0"),
        (["--margin", "0.01", "--confidence", "-0.5"], "--confidence must be in (0, 1) (exclusive), got -0.5"),
        (["--confidence", "0.9"], "--confidence goes with --margin (it sets how many trials that margin needs)"),
    ],
)
def test_a_bad_margin_or_confidence_is_one_line_before_anything_runs(tmp_path, capsys, argv, message):
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
    assert err.strip() == "paramcorrupt probe: error: give --trials or --margin, not both (--margin chooses the number of trials)"
    assert stdout == "" and not out.exists()
