"""`fmnist serve` and `fmnist worker` on a brand-new home create the schema; on an older one they refuse.

Real processes, as a shell starts them, on a real SQLite file in a fresh FMNIST_HOME.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.store import migrations
from tests.test_e2e import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture
def stack(tmp_path: Path, synthetic_data_dir: Path) -> Iterator[Stack]:
    instance = Stack(tmp_path / "home", synthetic_data_dir, tmp_path)
    instance.env.pop("FMNIST_API_KEYS", None)
    yield instance
    instance.close()


def revision(home: Path) -> str | None:
    with sqlite3.connect(home / "fmnist.db") as connection:
        row = connection.execute("select version_num from alembic_version").fetchone()
    return None if row is None else str(row[0])


def test_serve_on_an_empty_home_creates_the_database_and_answers(stack: Stack, tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert not home.exists()
    stack.start("api", "serve", "--port", str(stack.port))
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        stack.wait_ready(client)  # /readyz: the schema is current
        assert client.get("/healthz").status_code == 200
        assert client.get("/v1/jobs").json()["data"] == []
    assert stack.stop("api") == 0, stack.log("api")
    assert revision(home) == migrations.head_revision()
    assert "created the database schema" in stack.log("api")


def test_worker_on_an_empty_home_creates_the_database_too(stack: Stack, tmp_path: Path) -> None:
    result = stack.run("worker", "--device", "cpu", "--burst")
    assert result.returncode == 0, result.stderr
    assert revision(tmp_path / "home") == migrations.head_revision()


def test_serve_and_worker_refuse_a_database_at_an_older_revision(stack: Stack, tmp_path: Path) -> None:
    assert stack.run("db", "upgrade", "0007").returncode == 0
    expected = (
        f"error: the database schema is at revision 0007, this code needs {migrations.head_revision()}: "
        "run `fmnist db upgrade`\n"
    )
    for args in (("serve", "--port", str(stack.port)), ("worker", "--device", "cpu", "--burst")):
        result = stack.run(*args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.endswith(expected), result.stderr
    assert revision(tmp_path / "home") == "0007", "a database with a schema is never upgraded behind the user's back"


def test_a_database_with_tables_but_no_revision_is_refused(stack: Stack, tmp_path: Path) -> None:
    """Not empty: tables someone else made. Creating the schema over them could harm them."""
    home = tmp_path / "home"
    home.mkdir()
    with sqlite3.connect(home / "fmnist.db") as connection:
        connection.execute("create table notes (text varchar)")
    result = stack.run("serve", "--port", str(stack.port))
    assert result.returncode == 2
    assert result.stderr.endswith(
        f"error: the database sqlite:///{home / 'fmnist.db'} holds tables (notes) but no fmnist schema revision: "
        "set FMNIST_HOME or FMNIST_DATABASE_URL to a new or an fmnist database\n"
    )
    with sqlite3.connect(home / "fmnist.db") as connection:
        assert connection.execute("select name from sqlite_master").fetchall() == [("notes",)]
