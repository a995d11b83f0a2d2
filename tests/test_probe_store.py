"""The results store: append-only, resumable, torn last lines, refusing other sweeps' files;
and a sweep killed with SIGKILL part-way, then resumed, equals an uninterrupted one."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from paramcorrupt.probe import ResultsStore, read_results
from paramcorrupt.probe.store import FORMAT, decode_row, encode_row

ROWS = [
    {"key": "a|random|0", "group": "a", "p": math.inf, "eps": 1e-3, "ratio": None, "loss_after": 0.5},
    {"key": "a|gradient|0", "group": "inf", "p": 2.0, "eps": 1e-2, "ratio": 1.25, "loss_after": math.inf},
    {"key": "b|gradient|0", "group": "b", "p": 1.0, "eps": 1e-1, "ratio": -0.5, "loss_after": -math.inf},
]


def write_store(path: Path, rows=ROWS, sweep_id: str = "s1") -> None:
    with ResultsStore(path) as store:
        assert store.open(sweep_id, {"trials": 1}) == []
        for row in rows:
            store.append(row)


def test_rows_round_trip_with_non_finite_values(tmp_path):
    path = tmp_path / "r.jsonl"
    write_store(path)
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + len(ROWS)
    header = json.loads(lines[0])
    assert header["format"] == FORMAT and header["sweep_id"] == "s1" and header["config"] == {"trials": 1}
    assert json.loads(lines[1])["p"] == "inf"  # valid JSON: no bare Infinity
    assert "Infinity" not in path.read_text()
    with ResultsStore(path) as store:
        assert store.open("s1", {"trials": 1}) == ROWS
    header, rows = read_results(path)
    assert header["sweep_id"] == "s1" and rows == ROWS
    assert rows[1]["group"] == "inf"  # text fields stay text
    nan_row = decode_row(json.loads(encode_row({"key": "x", "loss_after": math.nan})))
    assert math.isnan(nan_row["loss_after"])


@pytest.mark.parametrize("tail", [b'{"key": "b|random|1", "p": "in', b"\x00\x00\x00", b'{"key": "c"}', b"garbage\n"])
def test_torn_last_line_is_ignored_and_cut_away(tmp_path, tail):
    path = tmp_path / "r.jsonl"
    write_store(path)
    intact = path.read_bytes()
    path.write_bytes(intact + tail)
    assert read_results(path)[1] == ROWS  # reading alone changes nothing
    assert path.read_bytes() == intact + tail
    with ResultsStore(path) as store:
        assert store.open("s1", {}) == ROWS
        assert path.read_bytes() == intact
        store.append({"key": "c|random|0", "p": 2.0})
    header, rows = read_results(path)
    assert [r["key"] for r in rows] == [r["key"] for r in ROWS] + ["c|random|0"]


def test_torn_header_starts_afresh(tmp_path):
    path = tmp_path / "r.jsonl"
    write_store(path)
    path.write_bytes(path.read_bytes()[:25])
    with ResultsStore(path) as store:
        assert store.open("s1", {"trials": 1}) == []
    assert read_results(path) == ({"format": FORMAT, "sweep_id": "s1", "config": {"trials": 1}}, [])


def test_another_sweeps_file_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "r.jsonl"
    write_store(path)
    path.write_bytes(path.read_bytes() + b'{"key": "torn')
    content = path.read_bytes()
    store = ResultsStore(path)
    with pytest.raises(ValueError, match="another sweep .*sweep_id s1.*this sweep is s2"):
        store.open("s2", {})
    with pytest.raises(ValueError, match="another sweep"):
        store.check("s2")
    store.check("s1")
    assert path.read_bytes() == content


@pytest.mark.parametrize(
    "content",
    [b"some notes\n", b"hello", b'{"method": "random", "p": "inf"}\n{"method": "gradient"}\n', b"[1, 2]\n"],
    ids=["text", "text-no-newline", "headerless-rows", "json-array"],
)
def test_a_file_that_is_not_ours_is_refused(tmp_path, content):
    path = tmp_path / "notes.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a probe results file"):
        ResultsStore(path).open("s1", {})
    with pytest.raises(ValueError, match="not a probe results file"):
        ResultsStore(path).check("s1")
    assert path.read_bytes() == content


def test_a_bad_line_before_the_last_is_an_error(tmp_path):
    path = tmp_path / "r.jsonl"
    write_store(path)
    lines = path.read_bytes().split(b"\n")
    lines[2] = b"{broken"
    path.write_bytes(b"\n".join(lines))
    content = path.read_bytes()
    with pytest.raises(ValueError, match="line 3"):
        ResultsStore(path).open("s1", {})
    assert path.read_bytes() == content


def test_resume_off_and_concurrent_writers(tmp_path):
    path = tmp_path / "r.jsonl"
    write_store(path)
    with pytest.raises(ValueError, match="resume is off"):
        ResultsStore(path, resume=False).open("s1", {})
    with ResultsStore(path) as first:
        first.open("s1", {})
        with pytest.raises(ValueError, match="another process"):
            ResultsStore(path).open("s1", {})
    with ResultsStore(path) as again:  # the lock went with the first store
        assert len(again.open("s1", {})) == len(ROWS)
    with pytest.raises(ValueError, match="not open"):
        ResultsStore(tmp_path / "new.jsonl").append({"key": "x"})
    with pytest.raises(ValueError, match="folder"):
        ResultsStore(tmp_path).open("s1", {})


def test_read_results_of_a_headerless_file(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text('{"method": "random", "p": "inf", "eps": 0.1}\n{"method": "gradient", "p": 2, "eps": 0.1}\n')
    header, rows = read_results(path)
    assert header == {} and [r["p"] for r in rows] == [math.inf, 2]


# -- a sweep killed with SIGKILL, then resumed -----------------------------------------------------

SLOW_TASK = '''
import time
import torch
from torch import nn
from paramcorrupt import accuracy, classification_loss


def make_model():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))


def slow_loss(model, batch):
    time.sleep(0.01)  # slow enough for the kill to land part-way
    return classification_loss(model, batch)


def make_data():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 3, generator=g), torch.randint(0, 3, (64,), generator=g)
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 64, 32)]
    return batches, batches[:1], slow_loss, {"accuracy": accuracy}
'''

ARGS = ["--by", "position", "--methods", "random,gradient", "--trials", "4", "--eps", "1e-2,1e-1", "--n", "all,5", "--quiet"]
TOTAL = 3 * 2 * 2 * (4 + 1)  # groups x eps x n x (trials + gradient)


def row_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text().split("\n")[1:] if line.endswith("}")]


def strip(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    (tmp_path / "slow_task.py").write_text(textwrap.dedent(SLOW_TASK))
    spec = ["--model", f"{tmp_path / 'slow_task.py'}:make_model", "--data", f"{tmp_path / 'slow_task.py'}:make_data"]
    killed = tmp_path / "killed.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "paramcorrupt", "probe", *spec, *ARGS, "--out", str(killed)]

    def run_and_kill(after_rows: int) -> list[dict]:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            while len(row_lines(killed)) < after_rows and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
            process.send_signal(signal.SIGKILL)
        finally:
            process.wait()
        assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
        rows = read_results(killed)[1]
        assert after_rows <= len(rows) < TOTAL, "the kill did not land part-way"
        return rows

    partial = run_and_kill(5)
    # killed again while resuming: rows finished by both runs are kept
    more = run_and_kill(len(partial) + 7)
    assert strip(more[: len(partial)]) == strip(partial)

    # resume in a fresh process, to the end
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # the same sweep without interruption, in the same environment (thread counts change the
    # last bits of a gradient)
    clean = tmp_path / "clean.jsonl"
    command[-1] = str(clean)
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    header_k, rows_k = read_results(killed)
    header_c, rows_c = read_results(clean)
    assert header_k == header_c
    assert len(rows_k) == TOTAL and len({r["key"] for r in rows_k}) == TOTAL  # none lost, none twice
    assert strip(rows_k) == strip(rows_c)
    assert strip(rows_k[: len(partial)]) == strip(partial)  # finished rows were kept as they were
    assert killed.read_text().count('"format"') == 1
