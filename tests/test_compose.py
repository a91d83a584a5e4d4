"""docker-compose.yml, Dockerfile, .dockerignore and requirements.lock: Docker cannot run here, so check them
statically: they parse, name real commands, and build a reproducible, unprivileged image of what it needs."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from sqlalchemy import make_url
from typer.testing import CliRunner

from service.cli import app
from service.settings import Settings
from service.store.db import create_db_engine

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


# -- the image ------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1]) for line in lines]


def test_the_image_runs_as_an_unprivileged_user() -> None:
    instructions = dockerfile_instructions()
    users = [args for name, args in instructions if name == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    last_user = max(i for i, (name, _) in enumerate(instructions) if name == "USER")
    # Everything after the switch runs as that user: no RUN that would need root.
    assert all(name != "RUN" for name, _ in instructions[last_user:])
    (create,) = [args for name, args in instructions if name == "RUN" and "useradd" in args]
    assert users[-1] in create and "chown" in create and "/data" in create  # it can write the volume


def test_the_image_reports_the_apis_readiness() -> None:
    instructions = dict(dockerfile_instructions())
    assert "/readyz" in instructions["HEALTHCHECK"]
    cmd = json.loads(instructions["CMD"])
    port = cmd[cmd.index("--port") + 1]
    assert f"127.0.0.1:{port}/readyz" in instructions["HEALTHCHECK"] and port in instructions["EXPOSE"]


def test_dependencies_come_from_the_lock_with_hashes_before_the_code() -> None:
    instructions = dockerfile_instructions()
    runs = [(i, args) for i, (name, args) in enumerate(instructions) if name == "RUN"]
    (lock_install,) = [(i, args) for i, args in runs if "requirements.lock" in args]
    assert "--require-hashes" in lock_install[1] and "--only-binary=:all:" in lock_install[1]
    (project_install,) = [(i, args) for i, args in runs if "-e ." in args]
    assert "--no-deps" in project_install[1] and "--no-build-isolation" in project_install[1]
    assert "pip check" in project_install[1]
    first_code_copy = min(i for i, (name, args) in enumerate(instructions) if name == "COPY" and "service" in args)
    assert lock_install[0] < first_code_copy < project_install[0]  # code changes do not reinstall torch


def locked_versions() -> dict[str, Version]:
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", (ROOT / "requirements.lock").read_text(), flags=re.MULTILINE)
    return {canonicalize_name(name): Version(version) for name, version in pins}


def test_the_lock_pins_every_dependency_within_its_range_with_hashes() -> None:
    text = (ROOT / "requirements.lock").read_text()
    locked = locked_versions()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # What the image is: Linux, x86-64, CPython 3.11 (python:3.11-slim).
    image = {"sys_platform": "linux", "platform_machine": "x86_64", "python_version": "3.11", "extra": ""}
    for line in [*project["dependencies"], "setuptools>=69"]:  # setuptools: the in-place install's build
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate(image):
            continue
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(locked[name], prereleases=True), (line, locked[name])
    # Every pinned package carries its sha256 (pip --require-hashes refuses the lock otherwise).
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    assert len(entries) == len(locked)
    assert all("--hash=sha256:" in entry for entry in entries)


def dockerignore_excludes(path: str) -> bool:
    """Whether Docker leaves ``path`` out of the build context: the last .dockerignore pattern that matches
    the path or one of its parent folders decides."""
    excluded = False
    parents = ["/".join(path.split("/")[: i + 1]) for i in range(path.count("/") + 1)]
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, parent) for parent in parents):
            excluded = not negated
    return excluded


@pytest.mark.parametrize(
    "path",
    [
        "requirements.lock",
        "pyproject.toml",
        "README.md",
        "alembic.ini",
        "alembic/env.py",
        "models/spec.py",
        "service/cli/server.py",
        "service/api/web/templates/base.html",
        "service/api/web/static/app.css",
    ],
)
def test_the_build_context_holds_what_the_image_needs(path: str) -> None:
    assert not dockerignore_excludes(path)


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "var/fmnist.db",
        ".env",
        "tests/api/test_api.py",
        "bench/training.py",
        "test-artifacts/dashboard.png",
        "service/__pycache__/cli.cpython-311.pyc",
        "models/__pycache__/spec.cpython-311.pyc",
    ],
)
def test_the_build_context_leaves_out_local_state_and_secrets(path: str) -> None:
    assert dockerignore_excludes(path)


def test_every_copied_path_and_every_dashboard_file_reaches_the_build() -> None:
    copied = [
        source
        for name, args in dockerfile_instructions()
        if name == "COPY"
        for source in args.split()[:-1]
        if not source.startswith("--")
    ]
    assert copied and all(not dockerignore_excludes(source) for source in copied), copied
    web = [p.relative_to(ROOT).as_posix() for p in (ROOT / "service" / "web").rglob("*") if p.is_file()]
    assert all(not dockerignore_excludes(path) for path in web if "__pycache__" not in path)


def test_only_the_api_has_a_health_check(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    # The image's check asks the API; the worker and the migration serve no HTTP.
    for name in ("worker", "migrate"):
        assert services[name]["healthcheck"] == {"disable": True}


def test_containers_log_json_unless_told_otherwise(compose: dict[str, Any]) -> None:
    for name in ("migrate", "api", "worker"):
        assert compose["services"][name]["environment"]["FMNIST_LOG_FORMAT"] == "${FMNIST_LOG_FORMAT:-json}"
    assert Settings(log_format="json").log_format == "json"
