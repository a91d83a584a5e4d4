"""docker-compose.yml and Dockerfile: Docker cannot run here, so check they parse and name real commands."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import make_url
from typer.testing import CliRunner

from service.cli import app
from service.db import create_db_engine

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_api_and_worker_share_the_home_volume(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"api", "worker"} <= set(services)
    for name in ("api", "worker"):
        assert any(str(v).startswith("fmnist-home:/data") for v in services[name]["volumes"])
        assert services[name]["environment"]["FMNIST_HOME"] == "/data"
    assert "fmnist-home" in compose["volumes"]


def test_the_worker_reserves_one_nvidia_gpu(compose: dict[str, Any]) -> None:
    (device,) = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == 1 and "gpu" in device["capabilities"]


def test_every_command_is_a_real_cli_command(compose: dict[str, Any]) -> None:
    runner = CliRunner()
    commands = [service["command"] for service in compose["services"].values() if "command" in service]
    assert len(commands) >= 3
    for command in commands:
        assert command[0] == "fmnist"
        result = runner.invoke(app, [*command[1:], "--help"])
        assert result.exit_code == 0, (command, result.output)


def test_the_dockerfile_copies_what_the_commands_need() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for needed in ("models", "service", "alembic", "alembic.ini", "pyproject.toml"):
        assert needed in dockerfile
    assert '"fmnist", "serve"' in dockerfile


def test_an_unknown_option_is_caught_by_that_check() -> None:
    result = CliRunner().invoke(app, ["worker", "--no-such-option", "--help"])
    assert result.exit_code != 0


def test_without_a_profile_the_stack_is_the_sqlite_one(compose: dict[str, Any]) -> None:
    default = {name for name, service in compose["services"].items() if not service.get("profiles")}
    assert default == {"migrate", "api", "worker"}
    for name in default:
        # Empty unless the user sets it: Settings then uses SQLite in FMNIST_HOME.
        assert compose["services"][name]["environment"]["FMNIST_DATABASE_URL"] == "${FMNIST_DATABASE_URL:-}"


def test_the_postgres_profile_runs_a_server_that_keeps_its_data_and_reports_health(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["profiles"] == ["postgres"] and postgres["image"] == "postgres:16"
    (volume,) = postgres["volumes"]
    name, _, mount = volume.partition(":")
    assert mount == "/var/lib/postgresql/data" and name in compose["volumes"]
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    # The migration waits for the server when the profile runs it, and does not need it otherwise.
    waits_for = compose["services"]["migrate"]["depends_on"]["postgres"]
    assert waits_for == {"condition": "service_healthy", "required": False}
    for name in ("api", "worker"):
        assert compose["services"][name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_the_documented_postgres_url_reaches_that_server() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    (documented,) = set(re.findall(r"FMNIST_DATABASE_URL=(\S+) docker compose --profile postgres up", text))
    url = make_url(documented)
    postgres = yaml.safe_load(text)["services"]["postgres"]
    assert url.host == "postgres" and url.port == 5432
    assert url.username == postgres["environment"]["POSTGRES_USER"]
    assert url.database == postgres["environment"]["POSTGRES_DB"]
    # The password the server gets by default is the one the URL carries.
    assert postgres["environment"]["POSTGRES_PASSWORD"] == f"${{FMNIST_POSTGRES_PASSWORD:-{url.password}}}"
    engine = create_db_engine(documented)  # connects to nothing until used
    try:
        assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()


def test_compose_will_not_start_an_api_without_a_key(compose: dict[str, Any]) -> None:
    # The API listens on 0.0.0.0 inside its container, where `fmnist serve` refuses to run keyless.
    assert "--host" in compose["services"]["api"]["command"]
    keys = compose["services"]["api"]["environment"]["FMNIST_API_KEYS"]
    assert re.fullmatch(r"\$\{FMNIST_API_KEYS:\?.+\}", keys), keys
