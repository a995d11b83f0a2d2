"""How the command line ends on errors: user errors in one line (exit 2), a library bug is not
disguised as one (a hint, the traceback with -v, exit 1 for an internal error)."""

from __future__ import annotations

import pytest

import paramcorrupt.probe.report as report
from paramcorrupt.cli import EXIT_INTERNAL, EXIT_USAGE, CLIError, main
from paramcorrupt.errors import InputTypeError, MissingFileError, ParamCorruptError


def _fail_with(monkeypatch, error: BaseException) -> None:
    def write_report(*args, **kwargs):
        raise error

    monkeypatch.setattr(report, "write_report", write_report)


def _run(tmp_path, capsys, *options: str) -> tuple[int, str]:
    results = tmp_path / "results.jsonl"
    results.write_text("")
    code = main([*options, "report", str(results), "--out", str(tmp_path / "out")])
    return code, capsys.readouterr().err


def test_a_user_error_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    _fail_with(monkeypatch, CLIError("no such thing"))
    code, err = _run(tmp_path, capsys)
    assert code == EXIT_USAGE == 2
    assert err == "paramcorrupt report: error: no such thing\n"
    code, err = _run(tmp_path, capsys, "-v")  # nothing to trace: still one line
    assert code == 2 and err == "paramcorrupt report: error: no such thing\n"


@pytest.mark.parametrize(
    "error",
    [ParamCorruptError("bad eps"), InputTypeError("bad eps"), MissingFileError("bad eps"), FileNotFoundError("bad eps")],
)
def test_a_library_input_error_is_one_line_exit_2(tmp_path, capsys, monkeypatch, error):
    _fail_with(monkeypatch, error)
    for options in ((), ("-v",)):
        code, err = _run(tmp_path, capsys, *options)
        assert code == 2
        assert err == "paramcorrupt report: error: bad eps\n"


@pytest.mark.parametrize(
    "error",
    # a ValueError or TypeError that is not the project's own comes from a bug (ours or torch's)
    [KeyError("metric"), AttributeError("no attribute 'x'"), RuntimeError("boom"), ValueError("x"), TypeError("y")],
)
def test_a_library_bug_is_an_internal_error_exit_1(tmp_path, capsys, monkeypatch, error):
    _fail_with(monkeypatch, error)
    code, err = _run(tmp_path, capsys)
    assert code == EXIT_INTERNAL == 1
    name = type(error).__name__
    assert err.startswith(f"paramcorrupt report: internal error: {name}: ") and err.count("\n") == 1
    assert err.endswith("(run with -v for the traceback)\n") and "Traceback" not in err
    code, err = _run(tmp_path, capsys, "--verbose")
    assert code == 1 and err.startswith("Traceback (most recent call last):")
    assert err.splitlines()[-1] == f"paramcorrupt report: internal error: {name}: {error}"


def test_ctrl_c(tmp_path, capsys, monkeypatch):
    _fail_with(monkeypatch, KeyboardInterrupt())
    code, err = _run(tmp_path, capsys)
    assert code == 130 and err == "paramcorrupt report: interrupted\n"
