# Lantau: two commands on a fresh Debian machine.
#   make run   - install, start the dev stack, send demo sign requests, keep serving (Ctrl-C stops)
#   make test  - install and run the whole test suite against real NATS and SoftHSM
#   make fuzz  - fuzz every decoder, header and file parser (FUZZ_SECONDS per target)
#   make chaos-bus - the NATS cluster chaos scenarios, four times longer than in make test
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

FUZZ_SECONDS ?= 60

.PHONY: run demo test lint bench chaos-bus fuzz chaos-hss setup system-deps schemas clean

setup: $(STAMP)

system-deps:
	@missing=""; \
	command -v softhsm2-util >/dev/null || missing="$$missing softhsm2"; \
	command -v pkcs11-tool >/dev/null || missing="$$missing opensc"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@# Test reference for BIP32 (tests/keytypes): it pins coincurve<21, which conflicts with
	@# ours, for no API reason; the tests prove it works on coincurve 21.
	$(PY) -m pip install -q --no-deps 'bip32==5.0.0'
	@touch $(STAMP)

$(VENV)/.fuzz-installed: $(STAMP)
	$(PY) -m pip install -q -e '.[dev,fuzz]'
	@touch $@

run: setup
	$(VENV)/bin/lantau dev up --demo --prometheus

demo: setup
	$(VENV)/bin/lantau dev up --demo --exit

test: setup
	$(PY) -m pytest -q

# Each atheris target runs in its own process (libFuzzer exits when done); crashes go to
# .fuzz/crashes/. Then the hypothesis fuzz tests with their large profile.
fuzz: $(VENV)/.fuzz-installed
	@status=0; \
	for target in $$($(PY) -m tests.fuzz.atheris_targets --list); do \
	  echo "== $$target ($(FUZZ_SECONDS) s)"; \
	  $(PY) -m tests.fuzz.atheris_targets $$target -max_total_time=$(FUZZ_SECONDS) \
	    -print_final_stats=1 || { status=1; echo "!! $$target found a crash"; }; \
	done; \
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -p no:cacheprovider tests/fuzz || status=1; \
	exit $$status

# Three consecutive runs (about 20 min here): every figure with its spread.
BENCH_RUNS ?= 3
bench: setup
	$(VENV)/bin/lantau bench --runs $(BENCH_RUNS)

# The HSS no-reuse chaos run, longer than CI's (HSS_CHAOS_SECONDS; CI runs two 12 s cycles).
HSS_CHAOS_SECONDS ?= 120
chaos-hss: setup
	$(VENV)/bin/lantau chaos --hss --seconds $(HSS_CHAOS_SECONDS)

# The bus chaos tests four times longer (CI runs them at their short size in `make test`).
chaos-bus: setup
	LANTAU_CHAOS_LONG=1 $(PY) -m pytest -q -s -p no:cacheprovider tests/cluster/test_bus_chaos.py

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy proto libs services

schemas: setup
	$(PY) -m proto.schema

clean:
	rm -rf .lantau .pytest_cache
