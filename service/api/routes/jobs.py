"""Training jobs: submit, inspect, list (filtered, sorted, paged by cursor), label, cancel, read metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status

from service.api.auth import TrainCaller
from service.api.deps import ArtifactsDep, DatabaseDep, QueueSignalDep, SettingsDep
from service.api.idempotency import IdempotencyKey, answer_submission, idempotent_responses, submitter
from service.api.ownership import ensure_owner, listing_owner
from service.jobs import listing, queue, retention, tracking
from service.jobs import queries as jobs
from service.jobs.specs import validated_spec
from service.schemas import (
    EpochMetricsPublic,
    ErrorPublic,
    JobCreate,
    JobListQuery,
    JobMetricsPublic,
    JobPublic,
    JobsPublic,
    JobUpdate,
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
    answer_submission(created, signal, response, str(request.url_for("get_job", job_id=job.id)))
    return JobPublic.from_job(job)


@router.get("", response_model=JobsPublic)
def list_jobs(
    db: DatabaseDep, query: Annotated[JobListQuery, Query()], owner: Annotated[str | None, Depends(listing_owner)]
) -> JobsPublic:
    """List jobs, newest first, or sorted by accuracy or training time; filtered by status, tags, spec fields,
    accuracy bounds, sweep or study. Every filter given must hold.

    Page with `cursor`: each page's `next_cursor` continues the listing (same sort and filters) where it ended,
    as fast at page 10,000 as at page 1, and without repeating or skipping a job when jobs are added meanwhile.
    `offset` still works, at a cost that grows with it. Jobs without the sorted value (no epoch recorded) come
    last in both directions; ties are ordered by id. A parameter that is not listed here is a 422.
    """
    filters = listing.JobFilters(
        status=query.status,
        tags=[listing.TagFilter.parse(tag) for tag in query.tag],
        spec=query.spec_filters(),
        min_test_acc=query.min_test_acc,
        max_test_acc=query.max_test_acc,
        min_val_acc=query.min_val_acc,
        max_val_acc=query.max_val_acc,
        sweep_id=query.sweep_id,
        study_id=query.study_id,
        owner=owner,
    )
    page = listing.list_jobs(
        db,
        filters,
        listing.JobOrder.parse(query.sort),
        limit=query.limit,
        offset=query.offset,
        cursor=query.cursor,
        count=query.count,
    )
    return JobsPublic(
        data=[JobPublic.from_job(job) for job in page.jobs],
        count=page.count,
        limit=query.limit,
        offset=query.offset,
        next_cursor=page.next_cursor,
    )


@router.get("/{job_id}", response_model=JobPublic, responses=NOT_FOUND)
def get_job(job_id: str, db: DatabaseDep) -> JobPublic:
    """A job's status, spec, progress and outcome."""
    return JobPublic.from_job(jobs.get_job(db, job_id))


@router.patch(
    "/{job_id}",
    response_model=JobPublic,
    responses={**NOT_FOUND, 422: {"description": "A tag or note out of bounds, or more than 32 tags in all."}},
)
def update_job(job_id: str, body: JobUpdate, db: DatabaseDep, caller: TrainCaller) -> JobPublic:
    """Label a job (any status): tags merge, the note is replaced; fields left out stay as they are.

    `{"tags": {"team": "vision", "baseline": null}}` sets `team`, removes `baseline` and keeps the other tags;
    `"tags": null` removes them all. `"note": "..."` replaces the note, `"note": null` clears it. A job has at most
    32 tags; keys are 1-64 letters, digits, `_`, `.` or `-`; values strings of at most 256 characters without
    control characters. The job's status and `updated_at` do not change. Only the key that submitted the job,
    or an admin key, may label it (403 `not_owner` otherwise).
    """
    ensure_owner(db, caller, "job", job_id, "label")
    return JobPublic.from_job(tracking.label_job(db, job_id, **body.changes()))


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    responses={**NOT_FOUND, 409: {"model": ErrorPublic, "description": "The job has already ended."}},
)
def cancel_job(job_id: str, db: DatabaseDep, caller: TrainCaller) -> JobPublic:
    """Cancel a job: a queued one at once, a running one at its next batch (it then ends `cancelled`). Only the
    key that submitted it, or an admin key, may cancel it (403 `not_owner` otherwise)."""
    ensure_owner(db, caller, "job", job_id, "cancel")
    return JobPublic.from_job(queue.request_cancel(db, job_id))


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        **NOT_FOUND,
        409: {
            "model": ErrorPublic,
            "description": "The job has not ended (`job_not_ended`: cancel it first), an alias serves its model "
            "(`job_model_in_use`), or it is a trial of a study that is still running (`study_still_running`).",
        },
    },
)
def delete_job(job_id: str, db: DatabaseDep, artifacts: ArtifactsDep, caller: TrainCaller) -> Response:
    """Delete an ended job (succeeded, failed, cancelled or pruned) with its metrics and its model, their
    artifacts included (checkpoint, ONNX export, resume state). Only the key that submitted it, or an admin key,
    may delete it (403 `not_owner` otherwise).

    A sweep then lists the jobs it has left; a study that has ended keeps the trial's number and parameters, with
    no job (it reads as failed, its error saying why). Refused (409, nothing removed) for a queued or running job,
    while an alias serves its model, and for a trial of a running study."""
    ensure_owner(db, caller, "job", job_id, "delete")
    retention.delete_job(db, job_id, artifacts)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{job_id}/metrics", response_model=JobMetricsPublic, responses=NOT_FOUND, name="get_job_metrics")
def get_metrics(job_id: str, db: DatabaseDep) -> JobMetricsPublic:
    """Per-epoch metrics, written after each epoch and readable while the job runs."""
    job, rows = jobs.get_metrics(db, job_id)
    return JobMetricsPublic(
        job_id=job.id, status=job.status, epochs=[EpochMetricsPublic.model_validate(row) for row in rows]
    )
