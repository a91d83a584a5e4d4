"""docker-compose.yml and Dockerfile: Docker cannot run here, so check they parse and name real commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from service.cli import app

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
