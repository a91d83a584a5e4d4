"""Training jobs: submit, inspect, list, cancel, read metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status

from service.api.auth import TrainCaller
from service.api.deps import DatabaseDep, Offset, QueueSignalDep, SettingsDep
from service.api.idempotency import IdempotencyKey, idempotent_responses, submitter
from service.jobs import queries as jobs
from service.jobs import queue
from service.jobs.specs import validated_spec
from service.jobs.status import JobStatus
from service.schemas import (
    EpochMetricsPublic,
    ErrorPublic,
    JobCreate,
    JobMetricsPublic,
    JobPublic,
    JobsPublic,
)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorPublic, "description": "No job with this id."}}


LOCATION = {"Location": {"description": "URL of the job", "schema": {"type": "string"}}}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses={
        202: {"headers": LOCATION},
        **idempotent_responses(JobPublic, "job"),
    },
)
def submit_job(
    body: JobCreate,
    db: DatabaseDep,
    settings: SettingsDep,
    signal: QueueSignalDep,
    caller: TrainCaller,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobPublic:
    """Queue a training job; a worker picks it up. Poll the URL in the Location header for its status.

    With an `Idempotency-Key` header a retried request (a lost connection, a timeout) cannot queue the
    job twice: the same key and body return the first request's job, with 200.
    """
    spec = validated_spec(body.preset, body.explicit_fields())
    job, created = queue.submit_job(
        db,
        spec,
        settings.max_attempts,
        preset=body.preset,
        submitter=submitter(caller, idempotency_key, body, settings),
    )
    if created:
        signal.notify()
    else:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = str(request.url_for("get_job", job_id=job.id))
    return JobPublic.from_job(job)


@router.get("", response_model=JobsPublic)
def list_jobs(
    db: DatabaseDep,
    status_filter: Annotated[JobStatus | None, Query(alias="status", description="Only jobs in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Page size.")] = 50,
    offset: Offset = 0,
) -> JobsPublic:
    """List jobs, newest first."""
    rows, total = jobs.list_jobs(db, status_filter, limit=limit, offset=offset)
    return JobsPublic(data=[JobPublic.from_job(job) for job in rows], count=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobPublic, responses=NOT_FOUND)
def get_job(job_id: str, db: DatabaseDep) -> JobPublic:
    """A job's status, spec, progress and outcome."""
    return JobPublic.from_job(jobs.get_job(db, job_id))


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    responses={**NOT_FOUND, 409: {"model": ErrorPublic, "description": "The job has already ended."}},
)
def cancel_job(job_id: str, db: DatabaseDep) -> JobPublic:
    """Cancel a job: a queued one at once, a running one at its next batch (it then ends `cancelled`)."""
    return JobPublic.from_job(queue.request_cancel(db, job_id))


@router.get("/{job_id}/metrics", response_model=JobMetricsPublic, responses=NOT_FOUND)
def get_metrics(job_id: str, db: DatabaseDep) -> JobMetricsPublic:
    """Per-epoch metrics, written after each epoch and readable while the job runs."""
    job, rows = jobs.get_metrics(db, job_id)
    return JobMetricsPublic(
        job_id=job.id, status=job.status, epochs=[EpochMetricsPublic.model_validate(row) for row in rows]
    )
