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
	for spec in $$(cat tests/clients.txt); do \
		$(BIN)/python -m pip install --quiet --target $(CLIENTS)/$${spec%%==*} $$spec || exit 1; \
	done
	touch $(CLIENTS_STAMP)

# The web UI's browser tests drive Debian's chromium (never Playwright's own browsers).
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	if command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium); \
	else \
		echo "$(CHROMIUM) is missing and apt-get is not here: install chromium yourself"; \
	fi

# The PostgreSQL tests start a server from Debian's binaries (tests/pg.py), whichever
# version /usr/lib/postgresql holds; the postgresql package brings them.
PG_INITDB := $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb))

.PHONY: postgres
postgres:
	@if [ -z "$(PG_INITDB)" ]; then \
		if command -v apt-get >/dev/null; then \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql) \
				|| echo "could not install postgresql: the PostgreSQL tests will say they are skipped"; \
		else \
			echo "PostgreSQL (initdb) is missing and apt-get is not here: install postgresql yourself"; \
		fi; \
	fi

test: $(STAMP) $(CLIENTS_STAMP) $(CHROMIUM) postgres
	$(BIN)/python -m pytest -q --durations=15

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
