"""Issue 23, point 6 and the training side of point 4: ``paramcorrupt train`` resuming from an
unreadable ``checkpoint.pt``, an atomic ``model.pt``, and an output folder that cannot be
written refused before any training."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from paramcorrupt.cli import main
from paramcorrupt.errors import FileAccessError, ParamCorruptError
from paramcorrupt.train.loop import load_checkpoint, save_atomically

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "1", "--batch-size", "256", "--quiet", "--eval-eps", "0.1", "--random-trials", "1", "--threads", "1"]


@pytest.mark.parametrize("content", [b"", b"garbage, not a zip file", b"PK\x03\x04 truncated"])
def test_an_unreadable_checkpoint_is_a_user_error_without_unpickling_advice(tmp_path, content):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(ParamCorruptError, match="cannot read the checkpoint") as caught:
        load_checkpoint(path)
    assert "weights_only" not in str(caught.value) and "--no-resume" in str(caught.value)


def test_a_pickled_object_checkpoint_is_refused_and_never_run(tmp_path):
    path = tmp_path / "checkpoint.pt"
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": Evil()}, path)
    with pytest.raises(ParamCorruptError, match="cannot read the checkpoint") as caught:
        load_checkpoint(path)
    assert "weights_only" not in str(caught.value)
    assert not marker.exists()


@pytest.mark.slow  # a subprocess of the CLI
def test_train_resuming_from_a_damaged_checkpoint_exits_2(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"\x00" * 100)
    result = subprocess.run([sys.executable, "-m", "paramcorrupt", "train", "--out", str(out), *FAST],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert "cannot read the checkpoint" in result.stderr and "weights_only" not in result.stderr
    assert "internal error" not in result.stderr


def test_save_atomically_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    """A kill or an error while model.pt is written leaves the old model.pt (never a 0-byte
    or partial file) and no temporary file."""
    path = tmp_path / "model.pt"
    save_atomically({"w": torch.ones(3)}, path)
    before = path.read_bytes()
    real = torch.save

    def dying(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt  # as a Ctrl-C (or, for the file, a kill) in the middle of the write

    monkeypatch.setattr(torch, "save", dying)
    with pytest.raises(KeyboardInterrupt):
        save_atomically({"w": torch.zeros(3)}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]

    def full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(FileAccessError, match=f"{path}: No space left on device"):
        save_atomically({"w": torch.zeros(3)}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    monkeypatch.setattr(torch, "save", real)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))


@pytest.mark.slow  # trains once
def test_train_writes_model_pt_atomically(tmp_path, monkeypatch):
    """model.pt goes through save_atomically: an interrupted final save leaves no model.pt
    at all (it never existed) rather than a 0-byte one."""
    from paramcorrupt.experiments import runs

    calls = []
    real = runs.save_atomically

    def recording(obj, path):
        calls.append(Path(path).name)
        return real(obj, path)

    monkeypatch.setattr(runs, "save_atomically", recording)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *FAST]) == 0
    assert "model.pt" in calls
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "model.pt", "results.json"]


def test_an_output_folder_that_is_a_file_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["train", "--out", str(tmp_path / "file" / "run"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "internal error" not in err and str(tmp_path / "file") in err and err.count("\n") == 1
