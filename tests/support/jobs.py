"""Jobs written straight into the database with the columns a test wants (listing and tracking tests)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

from models.spec import TrainingSpec
from service.jobs import queue
from service.store.db import Database
from service.store.tables import Job

SMALL = TrainingSpec(hidden_layers=[8], epochs=3)


def add_job(db: Database, spec: TrainingSpec = SMALL, **columns: Any) -> str:
    """A queued job of ``spec`` (through the queue), then ``columns`` (status, created_at, test_acc, tags...)
    set as given; its id."""
    job = queue.enqueue_job(db, spec, max_attempts=3)
    if columns:
        with db.write() as session:
            session.execute(update(Job).where(Job.id == job.id).values(**columns))
    return job.id
