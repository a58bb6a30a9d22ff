# nightshift: the commands the README names. Everything runs through uv and the lock file.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
RUN := $(UV) run --frozen
# The suite runs on two pytest-xdist workers, a test file per worker at a time (module fixtures stay whole):
# most of a real Airflow or HTTP test is waiting, so two cores keep busy. PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2
PYTEST_XDIST := $(if $(filter 0,$(PYTEST_WORKERS)),-p no:xdist,-n $(PYTEST_WORKERS) --dist loadfile)

.PHONY: help install demo demo-loop test lint typecheck pytest soak chaos extra sql clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(UV):
	python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv

install: $(UV)  ## install the locked dependencies (all extras, dev tools) into .venv
	$(UV) sync --frozen --all-extras --compile-bytecode

demo: install  ## the demo: data, train, register, then the nightly scoring run through Airflow, read back
	$(AIRFLOW_RUN) python -m nightshift_airflow.demo

demo-loop: install  ## one full loop on fresh demo data: drift → monitoring fails → retrain → gates → rollout
	$(RUN) nightshift demo-loop

test: install lint typecheck pytest  ## lint, type-check and run the test suite

lint:  ## ruff, and the layering of the package (import-linter: [tool.importlinter] in pyproject.toml)
	$(RUN) ruff check .
	$(RUN) lint-imports
	$(RUN) ruff format --check jobs tests dags bench

typecheck:  ## mypy on the library, the DAGs and the Airflow plugin
	$(RUN) mypy
	$(RUN) mypy dags

pytest:  ## the tests on PYTEST_WORKERS=2 workers (PostgreSQL and Redis tests skip without a server, except with CI=true)
	$(RUN) pytest $(PYTEST_XDIST) --durations=25 $(PYTEST_ARGS)

soak:  ## the long run left out of `make test`: a 5-minute soak of the real API process (PostgreSQL)
	NIGHTSHIFT_SOAK_S=300 $(RUN) pytest tests/api/test_soak.py $(PYTEST_ARGS)

chaos:  ## the month of chaos left out of `make test`: 30 nights of faults (NIGHTSHIFT_CHAOS_NIGHTS, _SEED, _REPORT)
	$(RUN) pytest -p no:xdist -s -m chaos tests/reliability/test_chaos.py $(PYTEST_ARGS)

extra:  ## the second variants left out of `make test` (marker extra): the SQLite group DAG run, one store of tests above the store (tests/conftest.py ONE_STORE)
	$(RUN) pytest $(PYTEST_XDIST) -m extra $(PYTEST_ARGS)

sql:  ## regenerate the readable DDL in sql/ from the migrations
	$(RUN) python -m nightshift.db.sqlgen sql

clean:  ## remove local state and demo data
	rm -rf .nightshift data

# -- benchmarks: bench/, docs/performance.md ------------------------------------------------------
# dask-ml (its peer) and py-spy (the profile) are in the lock file's dev group.
SIZE ?= default

.PHONY: bench bench-peers
bench: install  ## every benchmark, the peers (Ray Data, Feast) included (SIZE=small|default, BENCH_ARGS=...); results in bench/results/<time>/
	@# The peers' own environment; without it (offline) their cases are skipped and the summary says why.
	-$(UV) sync --frozen --project bench/peers_env
	$(RUN) python -m bench --size $(SIZE) $(BENCH_ARGS)

bench-peers: install  ## Ray Data and Feast, the peers users pick instead, in their own env (bench/peers_env), SIZE=small|default
	$(UV) sync --frozen --project bench/peers_env
	$(RUN) python -m bench.ray_feast --size $(SIZE) $(BENCH_ARGS)

# -- production: the images and the compose stack (docker/, docs/operations.md) ---------------
COMPOSE ?= docker compose -f docker/compose.yaml

.PHONY: docker-build docker-config docker-up docker-down deploy-check

docker-build:  ## build the airflow, dask-worker and api images (needs a Docker engine)
	$(COMPOSE) build

docker-config:  ## let docker compose validate the stack with docker/.env (needs the docker CLI)
	$(COMPOSE) config --quiet

docker-up:  ## start the stack (fill docker/.env first: docs/operations.md)
	$(COMPOSE) up -d --build

docker-down:  ## stop the stack, keeping its volumes
	$(COMPOSE) down

deploy-check: install  ## the deployment tests, no Docker engine needed (tests/deploy)
	$(RUN) pytest tests/deploy $(PYTEST_ARGS)

# -- Airflow: dags/, jobs/nightshift_airflow/, docs/airflow.md -------------------------------------------------
# A local Airflow on this repo's dags/ and plugins/, metadata in SQLite under .nightshift/airflow.
AIRFLOW_PORT ?= 8080
AIRFLOW_RUN := $(RUN)

.PHONY: airflow airflow-demo airflow-env airflow-test

airflow: install  ## local Airflow (UI, scheduler, triggerer) on 127.0.0.1:8080 or AIRFLOW_PORT; login admin / admin
	$(AIRFLOW_RUN) python -m nightshift_airflow.local standalone --port $(AIRFLOW_PORT)

airflow-demo: install  ## what `make demo` runs: data, train + bring models, `airflow dags test` of each scoring DAG, read back
	$(AIRFLOW_RUN) python -m nightshift_airflow.demo

airflow-env:  ## print the exports that point the `airflow` CLI at `make airflow`'s instance
	@$(AIRFLOW_RUN) python -m nightshift_airflow.local env --port $(AIRFLOW_PORT)

airflow-test: install  ## only the Airflow tests: DAG integrity, dag.test, backfills, the UI in Chromium
	$(RUN) pytest tests/dags tests/airflow $(PYTEST_ARGS)
