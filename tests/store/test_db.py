"""service/store/db.py: engines for SQLite and PostgreSQL, the database clock, errors that mean "unavailable"."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from service import registry
from service.jobs import queries as jobs
from service.jobs import queue, sweeps
from service.settings import Settings
from service.store.db import Database, create_db_engine, db_now, means_unavailable
from service.store.tables import utcnow

pytestmark = pytest.mark.db


def test_a_bare_postgresql_url_gets_the_installed_driver() -> None:
    engine = create_db_engine("postgresql://fmnist@db.invalid/fmnist")  # connects to nothing until used
    try:
        assert engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()


def test_db_now_is_the_servers_clock_in_utc(db: Database) -> None:
    with db.read() as session:
        now = db_now(session)
    assert now.tzinfo is UTC
    # The server runs on this host in tests: its clock and ours agree.
    assert abs(now - utcnow()) < timedelta(seconds=5)


def test_db_now_is_utc_whatever_the_sessions_time_zone(db: Database) -> None:
    if db.is_sqlite:
        pytest.skip("PostgreSQL only: SQLite has no session time zone")
    with db.engine.connect() as connection:
        connection.execute(text("SET TIME ZONE 'Asia/Kathmandu'"))  # +05:45
        now = db_now(Session(bind=connection))
    assert now.utcoffset() == timedelta(0)
    assert abs(now - utcnow()) < timedelta(seconds=5)


NOT_FOUND: list[tuple[str, Callable[[Database, str], object], type[Exception]]] = [
    ("get_job", jobs.get_job, queue.JobNotFound),
    ("get_metrics", jobs.get_metrics, queue.JobNotFound),
    ("request_cancel", queue.request_cancel, queue.JobNotFound),
    ("get_sweep", sweeps.get_sweep, queue.SweepNotFound),
    ("cancel_sweep", queue.cancel_sweep, queue.SweepNotFound),
    ("get_model", registry.get_model, registry.ModelNotFound),
    ("get_alias", registry.get_alias, registry.AliasNotFound),
    ("delete_alias", registry.delete_alias, registry.AliasNotFound),
]


@pytest.mark.parametrize(("lookup", "error"), [(f, e) for _, f, e in NOT_FOUND], ids=[n for n, _, _ in NOT_FOUND])
def test_a_key_with_a_nul_character_names_nothing(
    db: Database, lookup: Callable[[Database, str], object], error: type[Exception]
) -> None:
    # PostgreSQL refuses NUL in text outright; the answer must be "not found" there as on SQLite.
    with pytest.raises(error):
        lookup(db, "a\x00b")


def test_a_missing_table_means_unavailable_and_bad_sql_does_not(settings: Settings) -> None:
    database = Database(settings.sqlalchemy_url)  # never migrated
    try:
        with database.read() as session, pytest.raises(DBAPIError) as missing:
            session.execute(text("SELECT id FROM jobs"))
        assert means_unavailable(missing.value)
        if not database.is_sqlite:  # SQLite calls bad SQL an OperationalError too
            with database.read() as session, pytest.raises(DBAPIError) as bad:
                session.execute(text("SELEKT 1"))
            assert not means_unavailable(bad.value), "a bug is a 500, not a 503"
    finally:
        database.dispose()
