"""Database engine and sessions, on SQLite (one host) or PostgreSQL (many hosts).

SQLite runs in WAL mode with a busy timeout, and every write transaction starts with ``BEGIN IMMEDIATE``
so that it takes the write lock up front instead of failing halfway when another process holds it.
Reads start deferred and never block writers.

Times that several hosts compare (lease expiries) come from ``db_now``, the database server's clock, so
that a worker whose clock is off neither loses its lease early nor keeps a dead one alive.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Engine, String, create_engine, event, func, make_url, select
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000
_IMMEDIATE = "fmnist_sqlite_immediate"


def _configure_sqlite(engine: Engine, foreign_keys: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy's "begin" event below (pysqlite's own BEGIN is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get(_IMMEDIATE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def create_db_engine(url: str, *, foreign_keys: bool = True) -> Engine:
    """An engine for ``url``; on SQLite, WAL, a busy timeout, BEGIN IMMEDIATE on request and foreign keys
    enforced (``foreign_keys=False`` is for migrations only: SQLite rebuilds a table by dropping it, and
    with enforcement on, dropping a table that other rows refer to fails or cascades)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _configure_sqlite(engine, foreign_keys)
        return engine
    if parsed.drivername == "postgresql":
        # A bare postgresql:// would mean psycopg2, which is not installed; psycopg (3) is.
        parsed = parsed.set(drivername="postgresql+psycopg")
    # pre_ping: a pooled connection that a database restart or a firewall dropped is replaced, not handed out.
    return create_engine(parsed, pool_pre_ping=True)


def db_now(session: Session) -> datetime:
    """The database server's current time, aware UTC: the one clock that all hosts sharing the database agree on."""
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        # The clock of the host running this process: SQLite serves one host, its file on that host's own disk.
        stamp = session.execute(select(func.strftime("%Y-%m-%d %H:%M:%f", "now", type_=String))).scalar_one()
        return datetime.fromisoformat(stamp).replace(tzinfo=UTC)
    if dialect == "postgresql":
        # clock_timestamp, not now(): now() stands still at the transaction's start, however long it waited on locks.
        moment = session.execute(select(func.clock_timestamp(type_=DateTime(timezone=True)))).scalar_one()
        return moment.astimezone(UTC)
    raise NotImplementedError(f"no database clock for {dialect}: use SQLite or PostgreSQL")


def valid_key(value: str) -> bool:
    """Whether a key from a client (an id, an alias) can be looked up at all. PostgreSQL refuses text with a
    NUL character in it, an error where SQLite simply finds nothing: such a key names nothing, on both."""
    return "\x00" not in value


# PostgreSQL's SQLSTATEs for a table or column that is not there: the schema is behind the code.
_UNDEFINED_TABLE_OR_COLUMN = {"42P01", "42703"}


def means_unavailable(exc: DBAPIError) -> bool:
    """Whether a database error means "unreachable, busy or not migrated" (retry later) rather than a bug.

    SQLite reports a missing table as an OperationalError; PostgreSQL as a ProgrammingError with a SQLSTATE.
    """
    if isinstance(exc, OperationalError):
        return True
    return getattr(exc.orig, "sqlstate", None) in _UNDEFINED_TABLE_OR_COLUMN


class Database:
    """An engine with two kinds of session: ``read()`` and ``write()`` (one transaction, committed on exit)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_db_engine(url)
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = sessionmaker(self.engine.execution_options(**{_IMMEDIATE: True}), expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._reader() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        with self._writer.begin() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
