"""Sweeps: a grid of specs submitted, ranked and cancelled together."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status

from models.spec import TrainingSpec
from service.api.auth import TrainCaller
from service.api.deps import DatabaseDep, Offset, QueueSignalDep, SettingsDep
from service.api.idempotency import IdempotencyKey, answer_submission, idempotent_responses, submitter
from service.api.ownership import ensure_owner, listing_owner
from service.jobs import queue
from service.jobs.sweeps import expand_grid, get_sweep, list_sweeps, status_counts
from service.schemas import ErrorPublic, JobProgress, SweepCreate, SweepJobPublic, SweepPublic, SweepsPublic

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorPublic, "description": "No sweep with this id."}}


def _public(db: DatabaseDep, sweep_id: str) -> SweepPublic:
    sweep, rows = get_sweep(db, sweep_id)
    return SweepPublic(
        id=sweep.id,
        base=sweep.base,
        grid=sweep.grid,
        created_at=sweep.created_at,
        counts=status_counts(rows),
        jobs=[
            SweepJobPublic(
                id=row["job"].id,
                params=row["params"],
                spec=TrainingSpec.model_validate(row["job"].spec),
                status=row["job"].status,
                progress=JobProgress(epoch=row["job"].epochs_done, epochs=row["job"].spec["epochs"]),
                val_acc=row["val_acc"],
                test_acc=row["test_acc"],
                model_id=row["job"].model_id,
            )
            for row in rows
        ],
    )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SweepPublic,
    responses={
        **idempotent_responses(SweepPublic, "sweep"),
    },
)
def submit_sweep(
    body: SweepCreate,
    db: DatabaseDep,
    settings: SettingsDep,
    signal: QueueSignalDep,
    caller: TrainCaller,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> SweepPublic:
    """Queue one job per grid point (every combination of the grid's values, on top of `base`).

    `Idempotency-Key` works as for `POST /v1/jobs`: a retry returns the first request's sweep."""
    base = body.base.explicit_fields()
    points = expand_grid(body.base.preset, base, body.grid, settings.max_sweep_size)
    sweep, _jobs, created = queue.enqueue_sweep(
        db,
        base={**base, **({"preset": body.base.preset} if body.base.preset else {})},
        grid=body.grid,
        specs=[spec for _params, spec in points],
        max_attempts=settings.max_attempts,
        submitter=submitter(caller, idempotency_key, body, settings),
    )
    answer_submission(created, signal, response, str(request.url_for("get_sweep_status", sweep_id=sweep.id)))
    return _public(db, sweep.id)


@router.get("", response_model=SweepsPublic, name="list_sweeps")
def list_all(
    db: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Offset = 0,
    owner: Annotated[str | None, Depends(listing_owner)] = None,
) -> SweepsPublic:
    """Sweeps, newest first."""
    sweeps, total = list_sweeps(db, limit=limit, offset=offset, owner=owner)
    return SweepsPublic(data=[_public(db, sweep.id) for sweep in sweeps], count=total)


@router.get("/{sweep_id}", response_model=SweepPublic, responses=NOT_FOUND)
def get_sweep_status(sweep_id: str, db: DatabaseDep) -> SweepPublic:
    """A sweep's jobs, best first (by validation accuracy when present, else test accuracy)."""
    return _public(db, sweep_id)


@router.post("/{sweep_id}/cancel", response_model=SweepPublic, responses=NOT_FOUND, name="cancel_sweep")
def cancel(sweep_id: str, db: DatabaseDep, caller: TrainCaller) -> SweepPublic:
    """Cancel every job of the sweep that has not ended yet. Only the key that submitted the sweep, or an admin
    key, may cancel it (403 `not_owner` otherwise)."""
    ensure_owner(db, caller, "sweep", sweep_id, "cancel")
    queue.cancel_sweep(db, sweep_id)
    return _public(db, sweep_id)
