# The one entry point. `make test` and `make run` set themselves up on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install system-deps native pure fmt lint typecheck layers deps proto proto-check test bench nemesis run check clean

$(BIN)/beanraft: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/beanraft

# The hot pure modules compiled with mypyc, in place (beanraft/native.py); skipped when current,
# and without a C compiler everything runs interpreted. `make pure` removes the build.
native: install
	$(BIN)/python -m beanraft.native build

pure: install
	$(BIN)/python -m beanraft.native clean

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy statemachine jobqueue cluster proxy executor api beanraft

# The packages' layers (import-linter; contracts in pyproject.toml) and the declared
# dependencies against the imported ones (deptry).
layers: install
	$(BIN)/lint-imports

deps: install
	$(BIN)/deptry .

proto: install
	$(BIN)/python -m api.generate

proto-check: install
	$(BIN)/python -m api.generate --check

# The conformance suite and benchmarks compare against Debian's beanstalkd 1.12; the fault
# tests cut links between nodes with iptables.
system-deps:
	@command -v beanstalkd >/dev/null 2>&1 || { \
	  echo "installing beanstalkd (the reference server) with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq beanstalkd >/dev/null; \
	  (systemctl stop beanstalkd || pkill -x beanstalkd) >/dev/null 2>&1 || true; }
	@command -v iptables >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || { \
	  echo "installing iptables (the fault tests cut links with it) with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables >/dev/null; }
	@ldconfig -p | grep -q 'libseccomp\.so\.2' || [ "$$(id -u)" != 0 ] || { \
	  echo "installing libseccomp2 (workers build their jobs' seccomp filter with it) with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libseccomp2 >/dev/null; }

# Everything against the native build, then the modules it compiles interpreted as well (its
# report goes aside, so that a report CI asks for in PYTEST_ADDOPTS is the whole suite's).
test: install system-deps native
	$(BIN)/pytest -q
	BEANRAFT_PURE=1 $(BIN)/pytest -q --junitxml=build/junit-interpreted.xml tests/statemachine tests/cluster/test_codec.py tests/proxy/test_protocol.py tests/test_native.py

bench: install native
	$(BIN)/python -m bench.statemachine_bench

# The long fault schedule (as root): SEED and FAULTS choose it; docs/fault-tolerance.md.
SEED ?= 1
FAULTS ?= 40
nemesis: install system-deps native
	cd tests && ../$(BIN)/python -m nemesis --seed $(SEED) --faults $(FAULTS)

run: install native
	$(BIN)/beanraft up --nodes 3 --workers 2

check: lint typecheck layers deps proto-check test

clean:
	-$(BIN)/python -m beanraft.native clean
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build
