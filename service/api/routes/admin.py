"""Administration: the retention policy (service.jobs.retention) run on demand."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from service.api.deps import ArtifactsDep, DatabaseDep, SettingsDep
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
    files: list[str] = Field(
        description="Their checkpoint and ONNX files removed from FMNIST_HOME/checkpoints (none when the artifacts "
        "are kept in the database)."
    )


class RemovedArtifactPublic(BaseModel):
    kind: str = Field(description="checkpoint, onnx or resume.")
    name: str = Field(description="The model's id (checkpoint, onnx) or the job's (resume).")
    token: int | None = Field(description="A resume state's fencing token.")
    size_bytes: int
    file: str | None = Field(description="Its file's name in the folder; null when its bytes were in the database.")


class RemovedArtifactsPublic(BaseModel):
    count: int
    data: list[RemovedArtifactPublic] = Field(
        description="Every artifact record removed: the removed models' checkpoints and ONNX exports, resume states "
        "of ended jobs, and records whose model or job is gone."
    )


class RemovedResumeStatesPublic(BaseModel):
    count: int = Field(description="Resume states removed: records, and files that no record named.")
    job_ids: list[str] = Field(description="The ended (or deleted) jobs they belonged to.")
    files: list[str] = Field(description="Files removed from FMNIST_HOME/resume.")


class RemovedFilesPublic(BaseModel):
    count: int
    files: list[str] = Field(description="File names, in FMNIST_HOME/checkpoints or FMNIST_HOME/resume.")


class GarbageReportPublic(BaseModel):
    """What a retention run removed; in a dry run, what it would remove."""

    dry_run: bool
    keep_best: int
    keep_latest: int
    models: RemovedModelsPublic
    artifacts: RemovedArtifactsPublic
    resume_states: RemovedResumeStatesPublic
    orphan_files: RemovedFilesPublic = Field(description="Checkpoint and ONNX files no model row names.")
    temporary_files: RemovedFilesPublic = Field(description="Files left by interrupted writes.")
    bytes: int = Field(description="Bytes freed: the records' bytes kept in the database, and the files' sizes.")

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
                files=report.model_files,
            ),
            artifacts=RemovedArtifactsPublic(
                count=len(report.artifacts),
                data=[
                    RemovedArtifactPublic(
                        kind=a.kind.value, name=a.name, token=a.token, size_bytes=a.size_bytes, file=a.file
                    )
                    for a in report.artifacts
                ],
            ),
            resume_states=RemovedResumeStatesPublic(
                count=report.resume_states, job_ids=report.resume_job_ids, files=report.resume_files
            ),
            orphan_files=RemovedFilesPublic(count=len(report.orphan_files), files=report.orphan_files),
            temporary_files=RemovedFilesPublic(count=len(report.temporary_files), files=report.temporary_files),
            bytes=report.bytes,
        )


@router.post("/gc", response_model=GarbageReportPublic)
def collect_garbage(
    db: DatabaseDep,
    settings: SettingsDep,
    artifacts: ArtifactsDep,
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
    one an alias serves, with their checkpoints and ONNX exports; the resume states of ended jobs; artifact records
    whose model or job is gone; checkpoint files no model names, once an hour old; and temporary files of
    interrupted writes. Lone jobs keep their models. Artifacts go whether kept in the database or in the folder
    (FMNIST_ARTIFACTS). With `dry_run=true` nothing is removed and the answer is what a run would remove."""
    policy = retention.RetentionPolicy(
        keep_best=settings.gc_keep_best if keep_best is None else keep_best,
        keep_latest=settings.gc_keep_latest if keep_latest is None else keep_latest,
    )
    report = retention.collect_garbage(db, artifacts, policy, dry_run=dry_run)
    return GarbageReportPublic.from_report(report, policy)
