# Two commands do everything on a fresh clone:  `make demo`  and  `make test`.
# `make test` runs every test (what CI runs: .ci/run); `make test-fast`, the default tier
# (plain `pytest`: the tests marked slow are left out, see pyproject.toml).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= demo-out

.PHONY: demo test test-fast lint clean

# torch first, pinned to the CPU wheel: an open range would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[all,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/paramcorrupt demo --out $(OUT)

# every tier: a later -m replaces the default tier's -m "not slow" (pyproject.toml's addopts)
test: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

test-fast: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
