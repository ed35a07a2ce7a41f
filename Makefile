# Everything sets itself up: a local virtualenv in .venv, installed from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Published clients of the emulated APIs, for the dialect tests: one target folder
# each, since two of them install a module named dify_client.
CLIENTS := $(VENV)/clients
CLIENTS_STAMP := $(CLIENTS)/.installed-stamp

.PHONY: run test lint bench profile clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/flowrun serve --host 127.0.0.1 --port 8000 --db flowrun.db --workflows examples

$(CLIENTS_STAMP): tests/clients.txt $(STAMP)
	rm -rf $(CLIENTS)
	pids=""; for spec in $$(cat tests/clients.txt); do \
		$(BIN)/python -m pip install --quiet --target $(CLIENTS)/$${spec%%==*} $$spec & pids="$$pids $$!"; \
	done; for pid in $$pids; do wait $$pid || exit 1; done
	touch $(CLIENTS_STAMP)

# Debian packages the suite drives, installed together by one apt-get: chromium for the
# web UI's browser tests (never Playwright's own browsers), and PostgreSQL's binaries,
# from which tests/pg.py starts a server (whichever version /usr/lib/postgresql holds).
CHROMIUM := /usr/bin/chromium
PG_INITDB := $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb))
MISSING := $(strip $(if $(wildcard $(CHROMIUM)),,chromium) $(if $(PG_INITDB),,postgresql))
APT := DEBIAN_FRONTEND=noninteractive apt-get install -y -q

.PHONY: system-packages test-deps
system-packages:
	@if [ -n "$(MISSING)" ]; then \
		if command -v apt-get >/dev/null; then \
			$(APT) $(MISSING) || (apt-get update -q && $(APT) $(MISSING)) \
				|| echo "could not install $(MISSING): the browser tests fail and the PostgreSQL tests say they are skipped"; \
		else \
			echo "$(MISSING) missing and apt-get is not here: install them yourself"; \
		fi; \
	fi

# pip's and apt's work side by side
test-deps:
	$(MAKE) -j2 $(CLIENTS_STAMP) system-packages

# One pytest-xdist worker per core: each worker has its own servers, ports and databases.
TEST_WORKERS ?= auto

test: test-deps
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --durations=15

bench: $(STAMP)
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.sandbox

BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# Where the burst's time goes: py-spy's samples of the server, split by kind
profile: $(BENCH_STAMP)
	$(BIN)/python -m bench.profile

lint: $(STAMP)
	$(BIN)/ruff check flowrun tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m tests.offbox

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
