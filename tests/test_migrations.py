"""alembic/ and service/migrations.py: migrations are the only source of the schema, and match the tables."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from service import migrations
from service.db import create_db_engine
from service.settings import Settings
from service.tables import Base

pytestmark = pytest.mark.db


def test_upgrade_creates_the_tables_and_matches_the_models(settings: Settings) -> None:
    migrations.upgrade(settings.sqlalchemy_url)
    engine = create_db_engine(settings.sqlalchemy_url)
    try:
        assert {"jobs", "epoch_metrics", "models", "alembic_version"} <= set(inspect(engine).get_table_names())
        assert migrations.current_revision(engine) == migrations.head_revision()
        migrations.ensure_current(engine)
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert differences == [], "service/tables.py and the migrations disagree: add a migration"
    finally:
        engine.dispose()


def test_downgrade_to_base_and_up_again(settings: Settings) -> None:
    migrations.upgrade(settings.sqlalchemy_url)
    migrations.upgrade(settings.sqlalchemy_url, "head")  # idempotent
    from alembic import command

    command.downgrade(migrations.alembic_config(settings.sqlalchemy_url), "base")
    engine = create_db_engine(settings.sqlalchemy_url)
    try:
        assert migrations.current_revision(engine) is None
        assert "jobs" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()
    migrations.upgrade(settings.sqlalchemy_url)


def test_an_empty_database_is_reported_out_of_date(settings: Settings) -> None:
    engine = create_db_engine(settings.sqlalchemy_url)
    try:
        try:
            migrations.ensure_current(engine)
        except migrations.SchemaOutOfDate as exc:
            assert "fmnist db upgrade" in str(exc)
        else:
            raise AssertionError("an empty database passed as current")
    finally:
        engine.dispose()


@pytest.mark.sqlite_only
def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(settings: Settings) -> None:
    engine = create_db_engine(settings.sqlalchemy_url)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()
