"""Our bit search against the Bit-Flip Attack authors' code (elliothe/BFA), in the benchmark's
environment: runs ``benchmarks/compare_bfa.py`` when ``$BFA_SRC`` names a snapshot of their
repository (a checkout or its git directory), else skips. Their code is never part of the
project; the fast tier's checks of ``k_top`` are in ``test_bit_search_k_top.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ours_picks_their_flips_with_the_same_k_top():
    source = os.environ.get("BFA_SRC")
    if not source or not Path(source).exists():
        pytest.skip("set BFA_SRC to a snapshot of elliothe/BFA (a checkout or its git directory)")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare_bfa.py"), "--bfa", source, "--flips", "10", "--seeds", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    # one stored model: their integer weights are our int8 codes, their outputs ours
    assert "their integer weights vs our `int8` codes: 0 of" in out
    assert "codes of the stored model (weights = their int x step): 0 of" in out
    assert "outputs on the attack batch: equal bit for bit" in out
    # the first 10 flips equal, for their k_top = layer size and for k_top = 10
    assert "| default (every weight) | k_top = layer size (None) | **10** | 10 |" in out
    assert "| `k_top=10` | k_top = 10 | **10** | 10 |" in out
