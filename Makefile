# The two commands of the README: `make run` and `make test`. Plus `make bench`, `make lint`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test test-fast bench lint venv deps dev-deps e2e-deps

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

# The whole suite: unit, websocket, processes and the real browser (skipped loudly without Chromium).
test: dev-deps
	$(BIN)/python -m pytest

bench: dev-deps
	$(BIN)/python -m bench.run --quick

lint: dev-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
