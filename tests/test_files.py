"""Only regular files are opened as data and checkpoints: a named pipe would block ``open``
and a device such as /dev/zero would be read forever; each is refused in one line, at once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from paramcorrupt.data import resolve_data_file
from paramcorrupt.errors import MissingFileError, ParamCorruptError
from paramcorrupt.files import check_regular
from paramcorrupt.tasks.weights import load_weights


@pytest.fixture
def fifo(tmp_path) -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this system")
    path = tmp_path / "ptb_lm" / "ptb.zip"
    path.parent.mkdir()
    os.mkfifo(path)
    return path


def test_a_named_pipe_as_a_data_file_is_refused_without_opening_it(fifo):
    with pytest.raises(ParamCorruptError, match="is a named pipe"):
        resolve_data_file(fifo.parent.parent, "ptb_lm", "ptb.zip")  # would block if opened


def test_a_named_pipe_or_a_device_as_a_checkpoint_is_refused(fifo):
    with pytest.raises(ParamCorruptError, match="checkpoint .* is a named pipe"):
        load_weights(fifo)
    with pytest.raises(ParamCorruptError, match="checkpoint /dev/zero is a device"):
        load_weights("/dev/zero")
    with pytest.raises(ParamCorruptError, match="is a folder"):
        load_weights(fifo.parent)


def test_a_regular_or_missing_path_passes(tmp_path):
    regular = tmp_path / "ptb_lm" / "ptb.zip"
    regular.parent.mkdir()
    regular.write_bytes(b"")
    check_regular(regular, "data file")
    check_regular(tmp_path / "new.jsonl", "results file")
    assert resolve_data_file(tmp_path, "ptb_lm", "ptb.zip") == regular
    with pytest.raises(MissingFileError):
        resolve_data_file(tmp_path, "ptb_lm", "absent.zip")
