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


def test_the_listing_columns_are_filled_in_for_the_jobs_already_there(settings: Settings, db: Database) -> None:
    """0008: a succeeded job takes its model's accuracies, one that ended without a model its latest epoch's;
    both the seconds of every recorded epoch."""
    from alembic import command

    from models.training import EpochMetrics

    done = queue.enqueue_job(db, spec_of(hidden_layers=[8], epochs=2, val_fraction=0.2), max_attempts=1)
    assert Worker(settings, db, torch.device("cpu"), burst=True).run_once()
    stopped = queue.enqueue_job(db, spec_of(hidden_layers=[8], epochs=5), max_attempts=1)
    claim = queue.claim_next_job(db, "w", 30, "cpu")
    assert claim is not None and claim.job_id == stopped.id
    for epoch, test_acc in ((1, 0.5), (2, 0.6)):
        queue.record_epoch(
            db, claim, EpochMetrics(epoch=epoch, train_loss=1.0, train_acc=0.5, test_acc=test_acc, seconds=1.5)
        )
    queue.fail_job(db, claim, "stopped for the test")
    expected = {}
    with db.read() as session:
        for job_id in (done.id, stopped.id):
            row = session.execute(
                text("SELECT test_acc, val_acc, train_seconds FROM jobs WHERE id = :id"), {"id": job_id}
            ).one()
            expected[job_id] = tuple(row)
    model = get_job(db, done.id)
    assert expected[stopped.id] == (0.6, None, 3.0)
    command.downgrade(migrations.alembic_config(settings.sqlalchemy_url), "0007")
    migrations.upgrade(settings.sqlalchemy_url)
    with db.read() as session:
        for job_id in (done.id, stopped.id):
            row = session.execute(
                text("SELECT test_acc, val_acc, train_seconds FROM jobs WHERE id = :id"), {"id": job_id}
            ).one()
            assert tuple(row) == pytest.approx(expected[job_id]), job_id
        kept = session.execute(text("SELECT test_acc, val_acc FROM models WHERE job_id = :id"), {"id": done.id}).one()
    assert expected[done.id][:2] == tuple(kept) and model.status is JobStatus.succeeded
