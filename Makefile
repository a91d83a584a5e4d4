# Two commands set everything up: `make run` (the service, SQLite under ./var) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint clean lock

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
	@if $(BIN)/python -m tests.support.postgres; then \
		echo "PostgreSQL answers: the database tests (-m db) again, on PostgreSQL"; \
		FMNIST_TEST_DATABASE=postgresql $(BIN)/python -m pytest -m db; \
	else \
		echo "PostgreSQL pass SKIPPED: no PostgreSQL server answered (see above); only SQLite was tested"; \
	fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy service models

# The Docker image's dependencies, exact and hashed (requirements.lock), at the versions installed (and tested)
# here, resolved for the image's platform. Run it after changing the dependencies in pyproject.toml.
lock: install
	$(BIN)/python -m pip install --quiet 'uv>=0.4'
	$(BIN)/python -m pip freeze --exclude-editable > $(VENV)/tested-versions.txt
	printf 'setuptools>=69\n' | $(BIN)/python -m uv pip compile pyproject.toml - --quiet --generate-hashes \
		--constraint $(VENV)/tested-versions.txt --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		--custom-compile-command 'make lock' --output-file requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
