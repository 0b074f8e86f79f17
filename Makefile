# Every target sets up what it needs: a fresh clone runs `make demo` or `make test` directly.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[aws,dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/patchpilot validate --policy examples/policy.yaml --inventory examples/fleet.json
	$(BIN)/patchpilot schedule --policy examples/policy.yaml --count 3
	$(BIN)/patchpilot plan --policy examples/policy.yaml --inventory examples/fleet.json
	$(BIN)/patchpilot run --policy examples/policy.yaml --inventory examples/fleet.json --state-dir .patchpilot/demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy --strict shared/patchpilot

bench: setup
	$(BIN)/python bench/run.py

docs: setup
	$(BIN)/patchpilot schema policy > docs/policy.schema.json
	$(BIN)/patchpilot schema messages > docs/messages.schema.json
	$(BIN)/python -m patchpilot.engine.diagram > docs/state-machine.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
