"""The README's demo table is what the demo prints: retrain the digits model (seed 0, 30
epochs, one thread) and recompute the table's settings (issue 15)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from paramcorrupt.cli.demo import README_SETTINGS, readme_table, table1_rows

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block() -> str:
    text = README.read_text()
    found = re.search(r"<!-- demo-table:[^\n]*-->\n(.*?)\n<!-- /demo-table -->", text, re.S)
    assert found, "README.md has no <!-- demo-table --> block"
    return found.group(1).strip()


@pytest.mark.usefixtures("one_thread")  # as the demo runs (--threads 1)
def test_readme_demo_table_equals_a_fresh_demo():
    from paramcorrupt.tasks import get_task

    task = get_task("digits", seed=0, epochs=30)
    eps = tuple(sorted({e for _, e in README_SETTINGS}))
    # a row's key and seed depend on its own setting only: the subset of the demo's grid
    # gives the demo's rows
    rows = table1_rows(task, eps_values=eps, sizes=(None, 100), norms=(math.inf,), trials=10, seed=0,
                       progress=False, identity="digits(seed=0,epochs=30)")
    assert readme_table(rows) == readme_block()
