"""The tests' real-data scaffolding, in one place.

Real data is read from ``$PARAMCORRUPT_DATA`` or else ``<repo>/../shared/data``
(:data:`DATA_DIR`). A test that needs a file of it says so with the ``data`` marker and the
file's path under the data folder, and is skipped, with the path in the reason, when the file
is absent::

    needs_ptb = pytest.mark.data("ptb_lm/ptb.zip")

    @needs_ptb
    def test_something(data_dir): ...

A bare ``@pytest.mark.data`` only labels a test (``-m "not data"`` leaves it out). Fixtures:

- ``data_dir``: the data folder (a :class:`~pathlib.Path`; session scope);
- ``require_data``: ``require_data("ptb_lm/ptb.zip")`` returns the data folder or skips (for
  fixtures of any scope that load data);
- ``one_thread``: one intra-op torch thread for a module's tests (on a shared CPU, more threads
  make LSTMs and small models many times slower, and a busy machine's other cores do not
  matter); a module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.

Two tiers: a test whose call takes over ~3 s on the shared 2-core machine is marked
``@pytest.mark.slow``. Plain ``pytest`` (``make test-fast``) leaves those out (``-m "not slow"``
in pyproject.toml's ``addopts``); ``make test``, what CI runs, runs every tier
(``pytest -m "slow or not slow"``: a later ``-m`` replaces the default one).

The doctest namespace lives in the repository's root ``conftest.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

#: the repository's root
ROOT = Path(__file__).resolve().parents[1]
#: the real data: ``$PARAMCORRUPT_DATA`` or ``<repo>/../shared/data``
DATA_DIR = Path(os.environ.get("PARAMCORRUPT_DATA") or ROOT.parent / "shared" / "data")


def missing_data(*files: str) -> str | None:
    """The skip reason for the first of ``files`` (paths under the data folder) that is absent."""
    for name in files:
        path = DATA_DIR / name
        if not path.is_file():
            return f"real data not found at {path} (set PARAMCORRUPT_DATA to the data folder)"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers(name="data"):
        reason = missing_data(*mark.args)
        if reason:
            pytest.skip(reason)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data folder (its files may be absent: mark the test ``data("<file>")``)."""
    return DATA_DIR


@pytest.fixture(scope="session")
def require_data() -> Callable[..., Path]:
    """``require_data(*files)``: the data folder, or a skip naming the first absent file."""

    def require(*files: str) -> Path:
        reason = missing_data(*files)
        if reason:
            pytest.skip(reason)
        return DATA_DIR

    return require


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module's tests; the previous count is restored after them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
