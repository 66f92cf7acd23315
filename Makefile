# The two commands of the README: `make run` and `make test`. Plus `make check` (lint, typecheck,
# migrations), `make bench`; `.ci/run` is CI (docs/operations.md).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# pytest-xdist workers for `make test` (a number, or `auto`: one per core); TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= auto
# The packages mypy checks: chatsite and every app (a top-level folder with an apps.py).
APPS := $(patsubst %/apps.py,%,$(wildcard */apps.py))

.PHONY: run test bench lint typecheck migrations-check check deps dev-deps

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

deps: $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt

dev-deps: $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt

# Starts the task worker and the ASGI server (bin/run.py); refuses a taken port; Ctrl-C stops both.
run: deps
	$(BIN)/python manage.py migrate --noinput
	@exec $(BIN)/python bin/run.py --host $(HOST) --port $(PORT)

# The whole suite: unit, websocket, processes and the real browser (skipped loudly without Chromium),
# in parallel; every browser test runs on the same worker (one Chromium at a time). PYTEST_ARGS adds options.
# pytest's status 5 (no test collected) fails too, and says so: a run that tested nothing is not a pass.
test: dev-deps
	@echo "$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)"
	@rc=0; $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "!! pytest collected no tests (exit status 5): nothing was tested" >&2; fi; \
	exit $$rc

bench: dev-deps
	$(BIN)/python -m bench.run --quick

lint: dev-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: dev-deps
	$(BIN)/mypy chatsite $(APPS)

# A model change without its migration fails here (nothing is written).
migrations-check: dev-deps
	CHAT_IGNORE_DOTENV=1 $(BIN)/python manage.py makemigrations --check --dry-run

check: lint typecheck migrations-check
