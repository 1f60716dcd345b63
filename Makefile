# Every target creates the virtual environment when it is missing; an up-to-date one costs nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: lab test bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

## Run the main job: the exact-gradient lab on its default gridworld scenario.
lab: $(STAMP)
	$(BIN)/mbpg lab

## Run the test suite (CI calls exactly this).
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

## Time the lab and the estimators (vmapped vs a Python loop).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_lab.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
