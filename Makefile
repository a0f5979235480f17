# Two commands from a fresh clone: `make demo` and `make test`. The venv is built here.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch lies on disk here; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mambakit demo

test: $(STAMP)
	$(BIN)/python -m pytest

# Peers (transformers, mambapy) measured in the same run; run on an otherwise idle machine.
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/bench_scan.py
	$(BIN)/python benchmarks/bench_lm.py

clean:
	rm -rf $(VENV) runs .pytest_cache
