"""Administration: the retention policy (service.jobs.retention) run on demand."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from service.api.deps import DatabaseDep, SettingsDep
from service.jobs import retention

router = APIRouter(prefix="/v1/admin", tags=["admin"])


class RemovedModelPublic(BaseModel):
    id: str
    job_id: str
    sweep_id: str | None
    study_id: str | None


class RemovedModelsPublic(BaseModel):
    count: int
    data: list[RemovedModelPublic] = Field(description="The models removed, by id, with the job that made each.")


class RemovedResumeStatesPublic(BaseModel):
    count: int = Field(description="Files removed.")
    job_ids: list[str] = Field(description="The ended (or deleted) jobs they belonged to.")
    files: list[str]


class RemovedFilesPublic(BaseModel):
    count: int
    files: list[str] = Field(description="File names, in FMNIST_HOME/checkpoints or FMNIST_HOME/resume.")


class GarbageReportPublic(BaseModel):
    """What a retention run removed; in a dry run, what it would remove."""

    dry_run: bool
    keep_best: int
    keep_latest: int
    models: RemovedModelsPublic
    resume_states: RemovedResumeStatesPublic
    orphan_files: RemovedFilesPublic = Field(description="Checkpoint and ONNX files no model row names.")
    temporary_files: RemovedFilesPublic = Field(description="Files left by interrupted writes.")
    bytes: int = Field(description="Bytes of the files removed.")

    @classmethod
    def from_report(cls, report: retention.GarbageReport, policy: retention.RetentionPolicy) -> GarbageReportPublic:
        return cls(
            dry_run=report.dry_run,
            keep_best=policy.keep_best,
            keep_latest=policy.keep_latest,
            models=RemovedModelsPublic(
                count=len(report.models),
                data=[
                    RemovedModelPublic(id=m.id, job_id=m.job_id, sweep_id=m.sweep_id, study_id=m.study_id)
                    for m in report.models
                ],
            ),
            resume_states=RemovedResumeStatesPublic(
                count=len(report.resume_files), job_ids=report.resume_job_ids, files=report.resume_files
            ),
            orphan_files=RemovedFilesPublic(count=len(report.orphan_files), files=report.orphan_files),
            temporary_files=RemovedFilesPublic(count=len(report.temporary_files), files=report.temporary_files),
            bytes=report.bytes,
        )


@router.post("/gc", response_model=GarbageReportPublic)
def collect_garbage(
    db: DatabaseDep,
    settings: SettingsDep,
    dry_run: Annotated[bool, Query(description="Report what would be removed; remove nothing.")] = False,
    keep_best: Annotated[
        int | None, Query(ge=1, le=100_000, description="Models each sweep and ended study keeps, best first.")
    ] = None,
    keep_latest: Annotated[
        int | None, Query(ge=0, le=100_000, description="Newest models each sweep and ended study keeps as well.")
    ] = None,
) -> GarbageReportPublic:
    """Apply the retention policy now (needs the `admin` scope), as `fmnist gc` does.

    Removes, in each sweep and each ended study, the models outside its `keep_best` best (validation accuracy,
    else test accuracy) and `keep_latest` newest (defaults: FMNIST_GC_KEEP_BEST, FMNIST_GC_KEEP_LATEST), never
    one an alias serves; the resume states of ended jobs; checkpoint files no model names, once an hour old; and
    temporary files of interrupted writes. Lone jobs keep their models. With `dry_run=true` nothing is removed and
    the answer is what a run would remove."""
    policy = retention.RetentionPolicy(
        keep_best=settings.gc_keep_best if keep_best is None else keep_best,
        keep_latest=settings.gc_keep_latest if keep_latest is None else keep_latest,
    )
    report = retention.collect_garbage(db, settings.checkpoint_dir, settings.resume_dir, policy, dry_run=dry_run)
    return GarbageReportPublic.from_report(report, policy)
