# Quick start (see README): `make demo` sets up and runs the main job,
# `make test` sets up and runs the whole test suite. Both create .venv with the
# pinned versions of constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/implicit-geom demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[bench]"
	$(BIN)/python benchmarks/geometry.py
	$(BIN)/python benchmarks/samplers.py
	$(BIN)/python benchmarks/manifold_learning.py
	$(BIN)/python benchmarks/paper.py

clean:
	rm -rf $(VENV) runs benchmarks/results
