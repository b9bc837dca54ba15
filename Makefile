# The one entry point. `make test` and `make run` set themselves up on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install fmt lint typecheck proto proto-check test bench run check clean

$(BIN)/beanraft: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/beanraft

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy statemachine cluster proxy executor api beanraft

proto: install
	$(BIN)/python -m api.generate

proto-check: install
	$(BIN)/python -m api.generate --check

test: install
	$(BIN)/pytest -q

bench: install
	$(BIN)/python -m bench.statemachine_bench

run: install
	$(BIN)/beanraft up --nodes 3 --workers 2

check: lint typecheck proto-check test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
