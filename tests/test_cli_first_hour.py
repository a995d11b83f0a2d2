"""A new user's first hour, through real processes: an untrained model is named, checkpoint
errors say what to do, resume and Ctrl-C say where they stand, a finished sweep is extended,
and one's own model trains from the CLI (issue 15)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from paramcorrupt.probe import read_results
from paramcorrupt.tasks.user import resolve

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "user_model.py"
USER = ["--model", f"{EXAMPLE}:make_model", "--data", f"{EXAMPLE}:make_data"]
FAST = ["--methods", "random,gradient", "--trials", "2", "--eps", "1e-2,1e-1", "--quiet", "--threads", "1"]


def cli(*argv, env=None, timeout=300, command="probe"):
    """``python -m paramcorrupt COMMAND ARGV`` in a fresh process: (exit code, stdout, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "paramcorrupt", command, *map(str, argv)],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )
    return done.returncode, done.stdout, done.stderr


def one_line_error(code, err, expected):
    assert code == 2, err
    assert err.startswith("paramcorrupt probe: error: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert "\x1b[" not in err and "Traceback" not in err and "weights_only=False" not in err


@pytest.mark.slow
def test_an_untrained_model_is_named_and_a_checkpoint_silences_it(tmp_path):
    code, out, err = cli(*USER, "--by", "type", *FAST, "--out", tmp_path / "a.jsonl")
    assert code == 0, err
    assert "warning: no --checkpoint" in err and "initial weights" in err
    model = resolve(f"{EXAMPLE}:make_model")()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    code, out, err = cli(*USER, "--checkpoint", tmp_path / "w.pt", "--by", "type", *FAST, "--out", tmp_path / "b.jsonl")
    assert code == 0 and "warning" not in err, err


@pytest.mark.slow
def test_checkpoint_errors_say_what_to_save(tmp_path):
    model = resolve(f"{EXAMPLE}:make_model")()
    torch.save(model, tmp_path / "whole.pt")  # the whole pickled model
    torch.save({"model_state_dict": model.state_dict(), "epoch": 3}, tmp_path / "wrapped.pt")
    out = tmp_path / "r.jsonl"
    code, _, err = cli(*USER, "--checkpoint", tmp_path / "whole.pt", *FAST, "--out", out)
    one_line_error(code, err, "holds a pickled model")
    assert "model.state_dict()" in err and not out.exists()
    code, _, err = cli(*USER, "--checkpoint", tmp_path / "wrapped.pt", *FAST, "--out", out)
    one_line_error(code, err, "give --checkpoint-key model_state_dict")
    code, _, err = cli(*USER, "--checkpoint", tmp_path / "wrapped.pt", "--checkpoint-key", "nope", *FAST, "--out", out)
    one_line_error(code, err, "--checkpoint-key 'nope' is not in checkpoint")
    code, _, err = cli(*USER, "--checkpoint", tmp_path / "wrapped.pt", "--checkpoint-key", "model_state_dict",
                       "--by", "type", *FAST, "--out", out)
    assert code == 0 and "warning" not in err, err
    header, rows = read_results(out)
    assert header["config"]["task"].endswith("[model_state_dict]") and len(rows) == 2 * 2 * 3


INTERRUPTING = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {root!r})
    from examples.user_model import make_data as _make_data

    calls = [0]


    def make_data():
        gradient_loader, eval_loader, loss_fn, metrics = _make_data()
        limit = int(os.environ.get("STOP_AFTER", "0"))

        def interrupting_loss(model, batch):
            calls[0] += 1
            if limit and calls[0] > limit:
                raise KeyboardInterrupt
            return loss_fn(model, batch)

        return gradient_loader, eval_loader, interrupting_loss, metrics
    """
)


@pytest.mark.slow
def test_ctrl_c_names_the_saved_rows_and_the_command_then_resume_counts(tmp_path):
    data = tmp_path / "interrupting.py"
    data.write_text(INTERRUPTING.format(root=str(ROOT)))
    argv = ["--model", f"{EXAMPLE}:make_model", "--data", f"{data}:make_data", "--by", "type", *FAST,
            "--out", tmp_path / "r.jsonl"]
    code, _, err = cli(*argv, env={"STOP_AFTER": "30"})
    assert code == 130, err
    line = next(x for x in err.splitlines() if x.startswith("interrupted: "))
    saved = int(line.split()[1])
    assert 0 < saved < 12 and f"{saved} of 12 rows are saved in" in line
    assert "the same command resumes: paramcorrupt probe --model" in line and "--out" in line
    assert len(read_results(tmp_path / "r.jsonl")[1]) == saved
    code, out, err = cli(*argv)
    assert code == 0, err
    assert f"resuming: {saved} of 12 rows done" in out
    # the resumed file equals an uninterrupted run's, row for row (up to the wall times)
    code, _, err = cli(*argv[:-1], tmp_path / "whole.jsonl")
    assert code == 0, err

    def table(path):
        return sorted(json.dumps({k: v for k, v in r.items() if k != "seconds"}, sort_keys=True)
                      for r in read_results(path)[1])

    assert table(tmp_path / "r.jsonl") == table(tmp_path / "whole.jsonl")


@pytest.mark.slow
def test_another_sweep_names_what_differs_and_extend_keeps_old_rows(tmp_path):
    out = tmp_path / "r.jsonl"
    checkpoint = tmp_path / "w.pt"
    torch.save(resolve(f"{EXAMPLE}:make_model")().state_dict(), checkpoint)
    base = [*USER, "--checkpoint", checkpoint, "--by", "position"]
    code, _, err = cli(*base, *FAST, "--out", out)
    assert code == 0, err
    before = out.read_bytes()
    old_header, old_rows = read_results(out)
    more = [*base, "--methods", "random,gradient", "--trials", "3", "--eps", "1e-2,1e-1,0.5", "--quiet",
            "--threads", "1", "--out", out]
    code, _, err = cli(*more)
    one_line_error(code, err, "eps_values: file [0.01, 0.1], this sweep [0.01, 0.1, 0.5]")
    assert "trials: file 2, this sweep 3" in err and "add --extend" in err
    assert out.read_bytes() == before
    code, _, err = cli(*more, "--seed", "1", "--extend")  # another seed: not an extension
    one_line_error(code, err, "--extend cannot add to it (seed: file 0, this sweep 1)")
    assert out.read_bytes() == before
    code, stdout, err = cli(*more, "--extend")
    assert code == 0, err
    assert f"resuming: {len(old_rows)} of {4 * 3 * 4} rows done" in stdout
    after = out.read_bytes()
    # every old row line is kept byte for byte, the new rows come after them
    assert after.split(b"\n", 1)[1].startswith(before.split(b"\n", 1)[1])
    header, rows = read_results(out)
    assert header["extends"] == [old_header["sweep_id"]] and header["config"]["eps_values"] == [0.01, 0.1, 0.5]
    assert len(rows) == 4 * 3 * 4 and rows[: len(old_rows)] == old_rows
    # extended, it resumes as any finished sweep; the old, smaller sweep is now "another sweep"
    code, stdout, err = cli(*more)
    assert code == 0 and "resuming: 48 of 48 rows done" in stdout, err
    assert out.read_bytes() == after


@pytest.mark.slow
def test_train_your_own_model_then_probe_it(tmp_path):
    out = tmp_path / "run"
    code, stdout, err = cli(*USER, "--method", "resistant:eps=0.1", "--epochs", "3", "--random-trials", "1",
                            "--eval-eps", "0.1", "--quiet", "--threads", "1", "--out", out, command="train")
    assert code == 0, err
    assert "model=" in stdout and "w/o corruption" in stdout
    weights = out / "model.pt"
    state = torch.load(weights, weights_only=True)
    assert set(state) == set(resolve(f"{EXAMPLE}:make_model")().state_dict())
    code, _, err = cli(*USER, "--checkpoint", weights, "--by", "type", *FAST, "--out", tmp_path / "p.jsonl")
    assert code == 0 and "warning" not in err, err
    code, _, err = cli("--task", "digits", *USER, "--out", out, command="train")
    assert code == 2 and "not both" in err and err.count("\n") == 1, err


@pytest.mark.slow
def test_help_shows_defaults_and_method_settings():
    code, text, _ = cli("--help", command="train")
    assert code == 0
    assert "Table 2" in text and "(default: plain" in text and "(default: 0)" in text
    assert "resistant     eps, p, n" in text and "resistant:eps=0.2:alpha=1" in text and "--model SPEC" in text
    code, text, _ = cli("--help")
    assert code == 0 and "``" not in text
    assert "--seed SEED" in text and "(default: 0)" in text and "--depth DEPTH" in text and "(default: none" in text
    assert "--extend" in text and "--checkpoint-key KEY" in text
