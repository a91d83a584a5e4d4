"""Fixtures of the CLI tests: each module brings its own ``live`` stack."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner, Result

from service.cli import app
from tests.support.live import Live


@pytest.fixture(scope="module")
def fmnist(live: Live) -> Any:
    """Runs `fmnist ARGS...` in-process against the live server, with the admin key from the environment."""
    runner = CliRunner()
    environment = {"FMNIST_URL": live.url, "FMNIST_API_KEY": live.admin_key, "COLUMNS": "200"}

    def run(*args: str, env: dict[str, str | None] | None = None) -> Result:
        return runner.invoke(app, list(args), env={**environment, **(env or {})}, catch_exceptions=False)

    return run
