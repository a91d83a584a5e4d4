"""Read-side queries over jobs and their metrics."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select

from service.errors import JobNotFound
from service.jobs.status import JobStatus
from service.store.db import Database, valid_key
from service.store.tables import EpochMetric, Job


def get_job(db: Database, job_id: str) -> Job:
    with db.read() as session:
        job = session.get(Job, job_id) if valid_key(job_id) else None
    if job is None:
        raise JobNotFound(job_id)
    return job


def list_jobs(db: Database, status: JobStatus | None, limit: int, offset: int) -> tuple[Sequence[Job], int]:
    """Newest first, with the total count of jobs matching the filter."""
    query = select(Job)
    count = select(func.count()).select_from(Job)
    if status is not None:
        query = query.where(Job.status == status)
        count = count.where(Job.status == status)
    with db.read() as session:
        jobs = session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset)).all()
        total = session.scalar(count) or 0
    return jobs, total


def get_metrics(db: Database, job_id: str) -> tuple[Job, Sequence[EpochMetric]]:
    with db.read() as session:
        job = session.get(Job, job_id) if valid_key(job_id) else None
        if job is None:
            raise JobNotFound(job_id)
        rows = session.scalars(
            select(EpochMetric).where(EpochMetric.job_id == job_id).order_by(EpochMetric.epoch)
        ).all()
    return job, rows
