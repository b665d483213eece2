# Two commands do everything on a fresh machine: `make run` and `make test`.
# Both create or update the virtual environment first; a second call skips the install.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
export NO_MKDOCS_2_WARNING := 1

.PHONY: install run repro bench test test-order lint docs up down clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

run: $(STAMP)  ## the whole pipeline as a Prefect flow on the bundled MNIST subset
	$(BIN)/distillery run

repro: $(STAMP)  ## the same pipeline through `dvc repro`
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

bench: $(STAMP)  ## 3 seeds, Distillery vs the baselines side by side: bench/results/latest.{json,md}
	$(BIN)/python -m bench.run

up: $(STAMP)  ## local stack on 127.0.0.1: SeaweedFS S3 + Prefect server and UI
	$(BIN)/python -m infra.stack up

down: $(STAMP)
	$(BIN)/python -m infra.stack down

test: lint docs  ## test files over one pytest-xdist worker per logical CPU (up to 4), each pinned to its share, the slowest files first (-m unit|stage|e2e runs a part)
	$(BIN)/pytest -n logical --maxprocesses 4 --dist loadfile --no-loadscope-reorder

test-order: $(STAMP)  ## after a full `make test`: its per-file seconds into tests/file_seconds.json, a fresh clone's order
	$(BIN)/python -c "from tests.conftest import write_file_seconds; write_file_seconds()"

lint: $(STAMP)  ## lint rules and the formatter's layout (`ruff format .` applies it); `make test` runs this first
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

docs: $(STAMP)  ## the documentation site in site/ (offline); --strict: a broken link fails
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) .distillery site
