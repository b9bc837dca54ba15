# The one entry point. `make test` and `make run` set themselves up on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install system-deps fmt lint typecheck proto proto-check test bench run check clean

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

# The conformance suite and benchmarks compare against Debian's beanstalkd 1.12.
system-deps:
	@command -v beanstalkd >/dev/null 2>&1 || { \
	  echo "installing beanstalkd (the reference server) with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq beanstalkd >/dev/null; \
	  (systemctl stop beanstalkd || pkill -x beanstalkd) >/dev/null 2>&1 || true; }

test: install system-deps
	$(BIN)/pytest -q

bench: install
	$(BIN)/python -m bench.statemachine_bench

run: install
	$(BIN)/beanraft up --nodes 3 --workers 2

check: lint typecheck proto-check test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
