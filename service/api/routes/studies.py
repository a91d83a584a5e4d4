"""Studies: adaptive hyperparameter searches (service.jobs.studies), submitted, read and cancelled."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status

from service.api.auth import TrainCaller
from service.api.deps import DatabaseDep, Offset, QueueSignalDep, SettingsDep
from service.api.idempotency import IdempotencyKey, answer_submission, idempotent_responses, submitter
from service.api.ownership import ensure_owner, listing_owner
from service.jobs import queue, studies
from service.jobs.status import JobStatus
from service.jobs.studies import StudyView, get_study, list_studies
from service.schemas import (
    ErrorPublic,
    JobProgress,
    StudiesPublic,
    StudyBestPublic,
    StudyCreate,
    StudyPublic,
    StudyTrialPublic,
)

router = APIRouter(prefix="/v1/studies", tags=["studies"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorPublic, "description": "No study with this id."}}


def _curve(row: studies.TrialRow) -> list[float | None]:
    last = max([row.epochs_done, *row.curve], default=0)
    return [row.curve.get(epoch) for epoch in range(1, last + 1)]


def _latest(row: studies.TrialRow) -> float | None:
    return row.curve[max(row.curve)] if row.curve else None


def study_public(view: StudyView) -> StudyPublic:
    """The API's view of a study: its trials in order of suggestion, and the best one."""
    study = view.study
    trials = [
        StudyTrialPublic(
            number=row.trial.number,
            job_id=row.job.id if row.job else None,
            params=row.trial.params,
            status=row.status,
            progress=JobProgress(epoch=row.epochs_done, epochs=row.epochs),
            val_acc=row.value if row.value is not None else _latest(row),
            test_acc=row.model.test_acc if row.model is not None else None,
            curve=_curve(row),
            pruned_at_epoch=row.trial.pruned_at_epoch,
            error=row.error if row.status is JobStatus.failed else None,
        )
        for row in view.rows
    ]
    best = view.best
    return StudyPublic(
        id=study.id,
        status=study.status,
        base=study.base,
        space=study.space,
        sampler=study.sampler,
        pruner=study.pruner,
        n_trials=study.n_trials,
        max_concurrent=study.max_concurrent,
        seed=study.seed,
        counts=view.counts,
        trials=trials,
        best=None
        if best is None or best.value is None or best.job is None
        else StudyBestPublic(
            number=best.trial.number,
            job_id=best.job.id,
            params=best.trial.params,
            val_acc=best.value,
            test_acc=best.model.test_acc if best.model is not None else None,
            model_id=best.job.model_id,
        ),
        created_at=study.created_at,
        finished_at=study.finished_at,
    )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=StudyPublic,
    responses={**idempotent_responses(StudyPublic, "study")},
)
def submit_study(
    body: StudyCreate,
    db: DatabaseDep,
    settings: SettingsDep,
    signal: QueueSignalDep,
    caller: TrainCaller,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> StudyPublic:
    """Start a study: the sampler's first `max_concurrent` trials are queued now, each next one as a trial
    ends (succeeded, pruned or failed), until `trials` have run.

    The objective is validation accuracy (`base.val_fraction`, 0.1 unless given); the pruner reads it after
    every epoch and ends a trial that falls behind as `pruned`. The same `seed` suggests the same parameters
    in the same order (for TPE, with `max_concurrent` 1). `Idempotency-Key` works as for `POST /v1/jobs`."""
    preset = body.base.preset
    base = studies.study_base(body.base.explicit_fields())
    studies.validate_base(preset, base)
    space = {name: param.as_space() for name, param in body.space.items()}
    sampler = body.sampler.model_dump()
    pruner = body.pruner.model_dump(exclude_none=True)
    studies.validate_study(preset, base, space, sampler, body.trials)
    study, created = queue.enqueue_study(
        db,
        studies.new_study_row(
            study_id=queue.new_id(),
            preset=preset,
            base=base,
            space=space,
            sampler=sampler,
            pruner=pruner,
            n_trials=body.trials,
            max_concurrent=body.max_concurrent,
            seed=body.seed if body.seed is not None else secrets.randbelow(studies.MAX_SEED),
            max_attempts=settings.max_attempts,
            stamp=(who := submitter(caller, idempotency_key, body, settings)).stamp(),
        ),
        who,
    )
    answer_submission(created, signal, response, str(request.url_for("get_study_status", study_id=study.id)))
    return study_public(get_study(db, study.id))


@router.get("", response_model=StudiesPublic, name="list_studies")
def list_all(
    db: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Offset = 0,
    owner: Annotated[str | None, Depends(listing_owner)] = None,
) -> StudiesPublic:
    """Studies, newest first."""
    ids, total = list_studies(db, limit=limit, offset=offset, owner=owner)
    return StudiesPublic(data=[study_public(get_study(db, study_id)) for study_id in ids], count=total)


@router.get("/{study_id}", response_model=StudyPublic, responses=NOT_FOUND)
def get_study_status(study_id: str, db: DatabaseDep) -> StudyPublic:
    """A study's trials in the order suggested, their status, learning curves and the best trial so far."""
    return study_public(get_study(db, study_id))


@router.post("/{study_id}/cancel", response_model=StudyPublic, responses=NOT_FOUND, name="cancel_study")
def cancel(study_id: str, db: DatabaseDep, caller: TrainCaller) -> StudyPublic:
    """Stop the study: no more trials; its queued trials are cancelled, running ones stop at the next batch.
    Cancelling a study that has ended changes nothing. Only the key that submitted the study, or an admin key,
    may cancel it (403 `not_owner` otherwise)."""
    ensure_owner(db, caller, "study", study_id, "cancel")
    queue.cancel_study(db, study_id)
    return study_public(get_study(db, study_id))
