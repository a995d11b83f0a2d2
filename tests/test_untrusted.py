"""Files and inputs that cannot be trusted (issue 23): damaged, foreign and repeated rows,
an edited header, special files as ``--out``, the import path of a user's model file, OS
errors, and the order of the cheap checks. Each numbered point of the issue is shown by a
``paramcorrupt`` subprocess (the command a user runs); the OS errors a test cannot cause
here (a full disk: a small tmpfs is not mountable in this sandbox) are simulated in process
with a monkeypatched ``OSError``."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from paramcorrupt.cli import main
from paramcorrupt.probe.store import FORMAT, ResultsStore, read_results

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "user_model.py"
USER = ["--model", f"{EXAMPLE}:make_model", "--data", f"{EXAMPLE}:make_data"]
FAST = ["--by", "position", "--methods", "random,gradient", "--trials", "1", "--eps", "1e-2", "--quiet"]

# each test runs the CLI (most in a fresh process): several seconds each
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # tests/conftest.py


def cli(*argv: object, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """``paramcorrupt ARGV`` in a fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "paramcorrupt", *map(str, argv)], capture_output=True, text=True,
        timeout=timeout, env=env, cwd=kwargs.pop("cwd", ROOT), **kwargs,
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, bytes]:
    """A finished results file of the example model (8 rows), and its bytes."""
    path = tmp_path_factory.mktemp("untrusted") / "r.jsonl"
    assert main(["probe", *USER, *FAST, "--out", str(path)]) == 0
    return path, path.read_bytes()


def lines_of(content: bytes) -> list[bytes]:
    return content.split(b"\n")


def damaged_copy(tmp_path: Path, content: bytes, line: int, new: bytes | None) -> Path:
    """A copy of a results file with line ``line`` (1-based) replaced (or removed: None)."""
    lines = lines_of(content)
    if new is None:
        del lines[line - 1]
    else:
        lines[line - 1] = new
    path = tmp_path / "damaged.jsonl"
    path.write_bytes(b"\n".join(lines))
    return path


# -- 1. a damaged, foreign or repeated row; an edited header ----------------------------------


def row_of(content: bytes, line: int) -> dict:
    return json.loads(lines_of(content)[line - 1])


@pytest.mark.parametrize(
    "damage, named",
    [
        ("key-only", "field 'task' is missing"),
        ("no-key", "it has no key"),
        ("empty", "it has no key"),
        ("wrong-type", "field 'loss_after' is 'oops', not a number"),
        ("foreign-key", "its key 'elsewhere|random|p=inf|n=all|eps=0.01|trial=0' is not a row of this sweep"),
        ("other-sweep", "its sweep_id is 'ffffffffffffffff'"),
        ("setting-lies", "field 'eps' is 0.5, but its key says 0.01"),
    ],
)
def test_a_damaged_or_foreign_row_is_named_and_never_counted_as_done(finished, tmp_path, damage, named):
    path, content = finished
    row = row_of(content, 6)
    new = {
        "key-only": {"sweep_id": row["sweep_id"], "key": row["key"]},
        "no-key": {k: v for k, v in row.items() if k != "key"},
        "empty": {},
        "wrong-type": {**row, "loss_after": "oops"},
        "foreign-key": {**row, "key": "elsewhere|random|p=inf|n=all|eps=0.01|trial=0", "group": "elsewhere"},
        "other-sweep": {**row, "sweep_id": "ffffffffffffffff"},
        "setting-lies": {**row, "eps": 0.5},
    }[damage]
    damaged = damaged_copy(tmp_path, content, 6, json.dumps(new).encode())
    before = damaged.read_bytes()
    result = cli("probe", *USER, *FAST, "--out", damaged)
    assert result.returncode == 2, result.stderr
    assert f"line 6 is not a finished row of this sweep: {named}" in result.stderr
    assert "internal error" not in result.stderr and result.stderr.count("\n") == 1  # one line
    assert "resuming" not in result.stdout
    assert damaged.read_bytes() == before  # left untouched
    # the report refuses it too, naming the line
    report = cli("report", damaged, "--out", tmp_path / "report")
    assert report.returncode == 2 and "line 6" in report.stderr, report.stderr


def test_a_repeated_key_is_refused(finished, tmp_path):
    path, content = finished
    lines = lines_of(content)
    damaged = tmp_path / "twice.jsonl"
    damaged.write_bytes(b"\n".join([*lines[:-1], lines[3], b""]))  # line 4 again at the end
    result = cli("probe", *USER, *FAST, "--out", damaged)
    assert result.returncode == 2 and "line 10 repeats the key" in result.stderr and "of line 4" in result.stderr
    assert cli("report", damaged, "--out", tmp_path / "report").returncode == 2


def test_an_edited_header_is_refused(finished, tmp_path):
    path, content = finished
    header = row_of(content, 1)
    header["config"]["seed"] = 7  # the rows were computed with seed 0; the sweep_id kept
    damaged = damaged_copy(tmp_path, content, 1, json.dumps(header).encode())
    result = cli("probe", *USER, *FAST, "--out", damaged)
    assert result.returncode == 2 and "the header was edited" in result.stderr and "seed" in result.stderr
    report = cli("report", damaged, "--out", tmp_path / "report")
    assert report.returncode == 2 and "sweep_id" in report.stderr, report.stderr


def test_an_intact_file_still_resumes_and_reports(finished, tmp_path):
    path, content = finished
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(content)
    result = cli("probe", *USER, *FAST, "--out", copy)
    assert result.returncode == 0 and "resuming: 8 of 8 rows done" in result.stdout
    assert copy.read_bytes() == content
    assert cli("report", copy, "--out", tmp_path / "report").returncode == 0


def test_a_deleted_damaged_line_is_computed_again(finished, tmp_path):
    path, content = finished
    damaged = damaged_copy(tmp_path, content, 6, None)  # what the message advises
    result = cli("probe", *USER, *FAST, "--out", damaged)
    assert result.returncode == 0 and "resuming: 7 of 8 rows done" in result.stdout
    rows = read_results(damaged)[1]
    expected = read_results(path)[1]
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert sorted(map(json.dumps, map(strip, rows))) == sorted(map(json.dumps, map(strip, expected)))


# -- 2. a named pipe and a device as --out -----------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_pipe_or_a_device_as_out_ends_at_once(tmp_path, kind):
    if kind == "fifo":
        out = tmp_path / "pipe.jsonl"
        os.mkfifo(out)
    else:
        out = Path("/dev/zero")
    start = time.perf_counter()
    result = cli("probe", *USER, *FAST, "--out", out, timeout=60)
    assert time.perf_counter() - start < 30
    assert result.returncode == 2, result.stderr
    assert str(out) in result.stderr and ("named pipe" in result.stderr or "device" in result.stderr)
    report = cli("report", out, "--out", tmp_path / "report", timeout=60)
    assert report.returncode == 2


def test_a_line_longer_than_the_limit_is_refused_unread(tmp_path, monkeypatch):
    from paramcorrupt.probe import schema, store

    monkeypatch.setattr(store, "MAX_LINE_BYTES", 1000)
    path = tmp_path / "long.jsonl"
    path.write_bytes(b'{"format": "' + FORMAT.encode() + b'", "sweep_id": "s", "x": "' + b"a" * 5000 + b'"}\n')
    with pytest.raises(ValueError, match="line 1 is longer than"):
        ResultsStore(path).open("s", {})
    assert schema.MAX_LINE_BYTES == 16 << 20  # the limit docs/ name


# -- 3. nothing beside a user's model file shadows a package ----------------------------------


def test_a_module_beside_the_user_model_file_does_not_shadow_a_package(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "model.py").write_text((EXAMPLE).read_text())
    marker = tmp_path / "MARKER"
    (folder / "safetensors.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (folder / "json.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    import torch

    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import user_model
    finally:
        sys.path.remove(str(EXAMPLE.parent))
    from safetensors.torch import save_file

    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in user_model.make_model().state_dict().items()}, str(weights))
    assert torch  # the checkpoint is real
    result = cli("probe", "--model", f"{folder}/model.py:make_model", "--data", f"{folder}/model.py:make_data",
                 "--checkpoint", weights, *FAST, "--out", tmp_path / "r.jsonl")
    assert result.returncode == 0, result.stderr
    assert not marker.exists()


def test_the_folder_is_not_left_on_sys_path(tmp_path):
    from paramcorrupt.tasks.user import resolve

    # a name of its own: test_probe_cli leaves a module "neighbour" in sys.modules
    (tmp_path / "fac.py").write_text("import untrusted_neighbour\nVALUE = untrusted_neighbour.VALUE\n")
    (tmp_path / "untrusted_neighbour.py").write_text("VALUE = 3\n")
    before = list(sys.path)
    try:
        assert resolve(f"{tmp_path}/fac.py:VALUE") == 3  # a neighbour imported while the file is
    finally:
        sys.modules.pop("untrusted_neighbour", None)
    assert sys.path == before


@pytest.mark.parametrize("option", ["--model", "--data", "--checkpoint"])
def test_a_folder_given_as_a_file_is_called_a_folder(tmp_path, option):
    argv = {"--model": ["--model", f"{tmp_path}/dir.py:make_model", "--data", f"{EXAMPLE}:make_data"],
            "--data": ["--model", f"{EXAMPLE}:make_model", "--data", f"{tmp_path}/dir.py:make_data"],
            "--checkpoint": [*USER, "--checkpoint", tmp_path / "dir.py"]}[option]
    (tmp_path / "dir.py").mkdir()
    result = cli("probe", *argv, *FAST, "--out", tmp_path / "r.jsonl")
    assert result.returncode == 2 and "is a folder" in result.stderr, result.stderr


# -- 4. OS errors: one line with the path, exit 2 ----------------------------------------------


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permissions")
def test_a_read_only_output_is_a_user_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        result = cli("probe", *USER, *FAST, "--out", folder / "r.jsonl")
    finally:
        folder.chmod(0o700)
    assert result.returncode == 2 and str(folder / "r.jsonl") in result.stderr and "Permission denied" in result.stderr


def test_a_parent_that_is_a_file_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("x")
    result = cli("probe", *USER, *FAST, "--out", tmp_path / "file" / "r.jsonl")
    assert result.returncode == 2, result.stderr
    assert "internal error" not in result.stderr and str(tmp_path / "file") in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_is_a_user_error(finished, tmp_path, monkeypatch, capsys, code):
    """Simulated (a tmpfs cannot be mounted here): the results file's writes fail as a full
    disk or a read-only file system makes them fail."""
    from paramcorrupt.probe import store as store_module

    def failing(handle, line):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(store_module.ResultsStore, "_write", staticmethod(failing))
    out = tmp_path / "r.jsonl"
    assert main(["probe", *USER, *FAST, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "internal error" not in err and str(out) in err and os.strerror(code) in err


def test_a_failed_extension_leaves_no_temporary_file(finished, tmp_path, monkeypatch, capsys):
    """--extend rewrites the header through a temporary file; a full disk removes it."""
    from paramcorrupt.probe import store as store_module

    path, content = finished
    copy = tmp_path / "r.jsonl"
    copy.write_bytes(content)
    real = os.fsync

    def full(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".extend.tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(store_module.os, "fsync", full)
    argv = [*FAST[:-3], "--eps", "1e-2,1e-1", "--quiet"]
    assert main(["probe", *USER, *argv, "--extend", "--out", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(copy) in err
    assert copy.read_bytes() == content
    assert [p.name for p in tmp_path.iterdir()] == ["r.jsonl"]


# -- 5. the lock before any training, and before "resuming" ----------------------------------


def test_a_locked_file_is_refused_before_any_training(finished, tmp_path):
    path, content = finished
    copy = tmp_path / "r.jsonl"
    copy.write_bytes(content)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import fcntl, sys, time
            f = open({str(copy)!r}, "a+b")
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            print("locked", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.perf_counter()
        # the digits task would train for its epochs first: the refusal comes before
        result = cli("probe", "--task", "digits", "--epochs", "30", "--out", copy)
        took = time.perf_counter() - start
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 2 and "being written by another process" in result.stderr
    assert "resuming" not in result.stdout and "training" not in result.stdout
    assert took < 20
