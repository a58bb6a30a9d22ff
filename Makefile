# nightshift: the commands the README names. Everything runs through uv and the lock file.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
RUN := $(UV) run --frozen

.PHONY: help install demo test lint typecheck pytest sql clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(UV):
	python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv

install: $(UV)  ## install the locked dependencies (all extras, dev tools) into .venv
	$(UV) sync --frozen --all-extras

demo: install  ## the demo: data, train, register, score the newest day, print predictions
	$(RUN) nightshift demo

test: install lint typecheck pytest  ## lint, type-check and run the test suite

lint:  ## ruff
	$(RUN) ruff check .
	$(RUN) ruff format --check jobs tests

typecheck:  ## mypy on the library
	$(RUN) mypy

pytest:  ## the tests (PostgreSQL tests skip without a server, except with CI=true)
	$(RUN) pytest $(PYTEST_ARGS)

sql:  ## regenerate the readable DDL in sql/ from the migrations
	$(RUN) python -m nightshift.sqlgen sql

clean:  ## remove local state and demo data
	rm -rf .nightshift data
