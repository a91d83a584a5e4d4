"""Jobs compared as data: what differs in their specs, and each one's final and best epochs (the figure is
GET /v1/compare.svg, in service/api/routes/plots.py, which validates the same `jobs` parameter)."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import DatabaseDep
from service.api.routes.plots import JobIds
from service.jobs import tracking
from service.schemas import ComparedJobPublic, EpochMetricsPublic, ErrorPublic, JobComparisonPublic
from service.store.tables import EpochMetric

router = APIRouter(prefix="/v1", tags=["jobs"])


@router.get(
    "/compare",
    response_model=JobComparisonPublic,
    responses={404: {"model": ErrorPublic, "description": "Some of the jobs do not exist; the answer names them."}},
)
def compare_jobs(job_ids: JobIds, db: DatabaseDep) -> JobComparisonPublic:
    """Several jobs side by side: the spec fields whose values differ among them, and for each job its final
    epoch (the latest recorded) and its best epochs by test and by validation accuracy."""
    comparison = tracking.compare_jobs(db, job_ids.split(","))
    return JobComparisonPublic(
        fields=comparison.fields,
        jobs=[
            ComparedJobPublic(
                id=run.job.id,
                status=run.job.status,
                params=run.params,
                tags=run.job.tags or {},
                model_id=run.job.model_id,
                final=_epoch(run.final),
                best_test=_epoch(run.best_test),
                best_val=_epoch(run.best_val),
            )
            for run in comparison.runs
        ],
    )


def _epoch(row: EpochMetric | None) -> EpochMetricsPublic | None:
    return None if row is None else EpochMetricsPublic.model_validate(row)
