"""Throwaway PostgreSQL databases for the tests (FMNIST_TEST_DATABASE=postgresql).

One migrated database serves the whole session; each test that uses it starts from the state the
migrations left (every table emptied, the rows the migrations seeded put back). A test that wants an
empty database, as SQLite's fresh file would be, gets one of its own.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, insert, make_url, select, text

from service.store import migrations
from service.store.db import create_db_engine

# The maintenance database of the server that the throwaway databases are created on.
ADMIN_URL = os.environ.get("FMNIST_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
SHOWN_URL = make_url(ADMIN_URL).render_as_string(hide_password=True)
CONNECT_TIMEOUT_S = 5


class PostgresServer:
    """Creates and drops databases through an AUTOCOMMIT connection (CREATE DATABASE cannot run in a transaction)."""

    def __init__(self, admin_url: str = ADMIN_URL) -> None:
        self.admin_url = make_url(admin_url)
        self._admin = create_engine(
            self.admin_url,
            isolation_level="AUTOCOMMIT",
            pool_pre_ping=True,
            connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
        )

    def check(self) -> None:
        with self._admin.connect() as connection:
            connection.execute(text("SELECT 1"))

    def create_database(self, prefix: str = "fmnist_test") -> str:
        name = f"{prefix}_{secrets.token_hex(6)}"
        with self._admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        name = make_url(url).database
        with self._admin.connect() as connection:
            # FORCE: connections a test left open (a server subprocess, an undisposed pool) do not block it.
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    @contextmanager
    def database(self, prefix: str = "fmnist_test") -> Iterator[str]:
        url = self.create_database(prefix)
        try:
            yield url
        finally:
            self.drop_database(url)

    def dispose(self) -> None:
        self._admin.dispose()


class MigratedDatabase:
    """A database migrated once; ``reset`` brings it back to just-migrated between tests."""

    def __init__(self, url: str) -> None:
        self.url = url
        migrations.upgrade(url)
        self._engine: Engine = create_db_engine(url)
        self._metadata = MetaData()
        self._metadata.reflect(self._engine)
        self._tables = [table for table in self._metadata.sorted_tables if table.name != "alembic_version"]
        # What the migrations themselves inserted (registry_state's row, for one), to put back after each TRUNCATE.
        with self._engine.connect() as connection:
            self._seeded: dict[str, list[dict[str, Any]]] = {
                table.name: [dict(row._mapping) for row in connection.execute(select(table))] for table in self._tables
            }

    def reset(self) -> None:
        names = ", ".join(f'"{table.name}"' for table in self._tables)
        with self._engine.begin() as connection:
            # A connection left idle in a transaction would block TRUNCATE for ever: fail the test instead.
            connection.execute(text("SET LOCAL lock_timeout = '20s'"))
            connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
            for table in self._tables:
                if rows := self._seeded[table.name]:
                    connection.execute(insert(table), rows)

    def dispose(self) -> None:
        self._engine.dispose()


def main() -> int:
    """``python -m tests.support.postgres``: exit status 0 when the test server answers (``make test`` then runs the
    database tests on PostgreSQL too)."""
    server = PostgresServer()
    try:
        server.check()
    except Exception as exc:
        print(f"no PostgreSQL answers at {SHOWN_URL}: {exc}", file=sys.stderr)
        return 1
    finally:
        server.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
