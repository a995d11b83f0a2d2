"""The reproduction scripts (benchmarks/reproduce_*.py) run end to end.

Each script runs as a subprocess in its ``--smoke`` size (tiny models, a few training steps;
about 15-30 s each on the shared 2-core machine, the four together well under 3 minutes), in
one output folder so that the models trained by the first script are reused by the others,
as in a real run. The ``--quick`` sizes (< 5 minutes per script) run only when
``PARAMCORRUPT_RUN_QUICK=1`` is set: too slow for the default test run. Needs the real data
(``$PARAMCORRUPT_DATA`` or ``<repo>/../shared/data``); skipped with the path in the reason
otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("reproduce_table1", "reproduce_table3", "reproduce_figure4", "reproduce_table2")

pytestmark = [
    pytest.mark.data,
    pytest.mark.slow,
    # skipped when absent (tests/conftest.py)
    pytest.mark.data("cifar10_jpg/cifar10_jpg_train.tar.gz", "ptb_lm/ptb.zip"),
]


def _run(
    script: str, *args: str, env_extra: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory, data_dir) -> Path:
    out = tmp_path_factory.mktemp("repro")
    cache = tmp_path_factory.mktemp("cache")
    results = {}
    for script in SCRIPTS:
        results[script] = _run(
            script,
            "--smoke",
            "--out",
            str(out),
            "--data-dir",
            str(data_dir),
            "--cache-dir",
            str(cache),
        )
    out.joinpath("_results.json").write_text(
        json.dumps(
            {k: [v.returncode, v.stdout[-3000:], v.stderr[-3000:]] for k, v in results.items()}
        )
    )
    return out


@pytest.mark.parametrize(
    ("script", "folder", "keys"),
    [
        ("reproduce_table1", "table1", ("cifar10", "ptb-lm")),
        ("reproduce_table3", "table3", ("ptb-lm", "cifar10")),
        ("reproduce_figure4", "figure4", ("settings",)),
        ("reproduce_table2", "table2", ("cifar10", "ptb-lm")),
    ],
)
def test_smoke(smoke_out: Path, script: str, folder: str, keys: tuple[str, ...]):
    code, stdout, stderr = json.loads(smoke_out.joinpath("_results.json").read_text())[script]
    assert code == 0, f"{script} failed:\n{stderr}"
    summary = (smoke_out / folder / "summary.md").read_text()
    assert "SMOKE MODE" in summary and "paper" in summary
    data = json.loads((smoke_out / folder / "summary.json").read_text())
    assert data["mode"] == "smoke"
    for key in keys:
        assert key in data
    if script == "reproduce_table3":
        for name in keys:
            assert {"empirical", "theoretical", "eps_G"} <= set(data[name])
            assert data[name]["ratio_eps_G_over_alpha09"] > 1  # gradient-based >> random
    assert (smoke_out / folder / "report" / "report.md").is_file()
    assert list((smoke_out / folder).glob("*.jsonl"))


def test_models_are_trained_once_and_reused(smoke_out: Path):
    models = smoke_out / "models"
    names = sorted(p.name for p in models.glob("*.pt") if ".ckpt." not in p.name)
    # <task>-<variant>-seed<s>.<digest of recipe and options>.pt, one per model
    assert [re.sub(r"\.[0-9a-f]{12}\.pt$", ".pt", n) for n in names] == [
        "cifar10-baseline-seed0.pt",
        "cifar10-resistant-seed0.pt",
        "ptb-lm-baseline-seed0.pt",
        "ptb-lm-resistant-seed0.pt",
    ]
    assert list(models.glob("*.ckpt.pt"))  # the per-epoch checkpoints
    _, _, stderr = json.loads(smoke_out.joinpath("_results.json").read_text())["reproduce_table3"]
    assert "reusing" in stderr  # table 3 reuses table 1's language model


def test_rerun_resumes(smoke_out: Path, tmp_path: Path, data_dir):
    """A second run finds every model and every sweep row: nothing is recomputed."""
    done = _run("reproduce_table3", "--smoke", "--out", str(smoke_out), "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    assert "already in the results file" in done.stderr  # no row recomputed


def test_models_saved_under_the_old_names_are_reused(smoke_out: Path, tmp_path: Path, data_dir):
    """Models saved as <task>-<variant>-seed<s>.pt (before the digest was in the name) are
    found when their recipe matches; nothing is trained again."""
    out = tmp_path / "out"
    (out / "models").mkdir(parents=True)
    for path in (smoke_out / "models").glob("ptb-lm-baseline-seed0.*"):
        if ".ckpt." in path.name:
            continue
        legacy = re.sub(r"\.[0-9a-f]{12}(\.(pt|json))$", r"\1", path.name)
        shutil.copy(path, out / "models" / legacy)
    assert sorted(p.name for p in (out / "models").iterdir()) == [
        "ptb-lm-baseline-seed0.json",
        "ptb-lm-baseline-seed0.pt",
    ]
    done = _run(
        "reproduce_table3", "--smoke", "--tasks", "ptb-lm", "--out", str(out), "--data-dir", str(data_dir)
    )
    assert done.returncode == 0, done.stderr
    assert "reusing" in done.stderr and "ptb-lm-baseline-seed0.pt" in done.stderr
    assert not list((out / "models").glob("*.ckpt.pt"))  # no training started


def test_missing_data_exits_2(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "PARAMCORRUPT_DATA"}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "reproduce_table3.py"),
            "--smoke",
            "--out",
            str(tmp_path),
            "--data-dir",
            str(tmp_path / "nowhere"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "not found" in lines[0], done.stderr


@pytest.mark.skipif(
    os.environ.get("PARAMCORRUPT_RUN_QUICK") != "1",
    reason="set PARAMCORRUPT_RUN_QUICK=1 to run the --quick modes (~10 min)",
)
@pytest.mark.parametrize("script", SCRIPTS)
def test_quick(script: str, tmp_path_factory, data_dir):
    out = tmp_path_factory.getbasetemp() / "quick"
    done = _run(script, "--quick", "--out", str(out), "--data-dir", str(data_dir), timeout=900)
    assert done.returncode == 0, done.stderr
    assert "QUICK MODE" in done.stdout
