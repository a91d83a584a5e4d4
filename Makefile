# Two commands set everything up: `make run` (the service, SQLite under ./var) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstalls whenever pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/fmnist up

# The whole suite on SQLite; then, when a PostgreSQL server answers (FMNIST_TEST_POSTGRES_URL, default
# postgres@127.0.0.1:5432), the database tests again on a throwaway database there.
test: install
	$(BIN)/python -m pytest
	@if $(BIN)/python -m tests.postgres; then \
		echo "PostgreSQL answers: the database tests (-m db) again, on PostgreSQL"; \
		FMNIST_TEST_DATABASE=postgresql $(BIN)/python -m pytest -m db; \
	else \
		echo "PostgreSQL pass SKIPPED: no PostgreSQL server answered (see above); only SQLite was tested"; \
	fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy service models

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
