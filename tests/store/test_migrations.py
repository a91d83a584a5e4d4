"""alembic/ and service/store/migrations.py: migrations are the only source of the schema, and match the tables."""

from __future__ import annotations

import pytest
import torch
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from service.jobs import queue
from service.jobs.queries import get_job
from service.jobs.status import JobStatus
from service.settings import Settings
from service.store import migrations
from service.store.db import Database, create_db_engine
from service.store.tables import Base
from service.worker.worker import Worker
from tests.support.specs import spec_of

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
        assert differences == [], "service/store/tables.py and the migrations disagree: add a migration"
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


def _row_counts(url: str) -> dict[str, int]:
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            return {
                table: connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in ("jobs", "epoch_metrics", "models")
            }
    finally:
        engine.dispose()


def test_every_migration_keeps_the_rows_there_both_ways(settings: Settings, db: Database) -> None:
    """Table rebuilds (SQLite's batch mode) must not cascade into, or trip over, the rows that refer to them."""
    from alembic import command

    job = queue.enqueue_job(db, spec_of(hidden_layers=[8], epochs=1), max_attempts=1)
    assert Worker(settings, db, torch.device("cpu"), burst=True).run_once()
    assert get_job(db, job.id).status is JobStatus.succeeded
    before = _row_counts(settings.sqlalchemy_url)
    assert before == {"jobs": 1, "epoch_metrics": 1, "models": 1}
    config = migrations.alembic_config(settings.sqlalchemy_url)
    command.downgrade(config, "0003")  # back past every migration that rebuilds jobs
    assert _row_counts(settings.sqlalchemy_url) == before
    migrations.upgrade(settings.sqlalchemy_url)
    assert _row_counts(settings.sqlalchemy_url) == before
    assert get_job(db, job.id).model_id is not None
