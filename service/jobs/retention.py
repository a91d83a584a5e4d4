"""Retention: deleting an ended job, and the policy that ``fmnist gc`` and ``POST /v1/admin/gc`` apply.

Both remove artifacts (checkpoints, ONNX exports, resume states) through the artifact store
(service/store/artifacts.py), whatever ``FMNIST_ARTIFACTS`` says: an artifact's record is dropped in the
transaction that removes its model or job, and with it its bytes when they are kept in the database; a file in
the folder is removed once that transaction commits. A reader never finds a model row without its checkpoint.

Deleting a job (``delete_job``, ``DELETE /v1/jobs/{id}``) removes, in one transaction, its row, its epoch
metrics, its model and their artifacts (the model's checkpoint and ONNX export, the job's resume state), then
their files, with any resume file of the job that no record names and the temporary files of its interrupted
resume writes. Only an ended job
can go, never one whose model an alias serves, and never a trial of a study that is still running (its sampler
learns from every trial). A sweep lists the jobs it has left. A study that has ended keeps the deleted trial's
number and parameters, with no job: it reads as failed, its error saying the job was deleted.

The policy (``collect_garbage``) removes:

- in each sweep, and each study that has ended, every model of its jobs except the best ``keep_best`` (by
  validation accuracy, else test accuracy) and the newest ``keep_latest``, and except any model an alias serves,
  with its checkpoint and ONNX export. A running study keeps all of its models: its sampler reads their
  accuracies. A lone job's model stays (delete the job to remove it). The jobs and their metrics stay; their
  listings show the last epoch's accuracies;
- the resume states of ended jobs (and of jobs no longer in the database), which a worker that died after the
  job's end was recorded left behind: their records, and the resume files that no record names (one a crash
  left between writing it and committing its record, or an earlier release's ``<job>.safetensors`` and
  ``<job>.<token>.safetensors``), and the temporary files of their interrupted writes (a worker killed while
  writing one), whatever their age;
- the records of checkpoints and ONNX exports whose model is gone, with their files;
- checkpoint and ONNX files that no model row names (a crash between writing the file and registering it),
  once they are ``ORPHAN_GRACE_SECONDS`` old: a worker registers its checkpoint right after writing it;
- temporary files of interrupted writes in both folders, once ``STALE_TEMPORARY_SECONDS`` old, as the workers'
  own sweep does.

The folders are swept whatever the setting: a home that keeps its artifacts in the database may still hold
files from when it kept them in the folder, and no record names those. A file of a job that is still queued or
running is never touched (a resume state may be being published).

Rows go in one transaction, files after it commits. The report counts exactly what goes: every record dropped
(``artifacts``), every file removed, and the bytes freed (the records' bytes kept in the database, the files'
sizes). A dry run removes nothing and reports what a run would remove at that moment.
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.orm import Session

from models.checkpoints import STALE_TEMPORARY_SECONDS, sweep_temporary_files
from service.errors import JobModelInUse, JobNotEnded, JobNotFound, StudyStillRunning
from service.jobs.status import JobStatus, StudyStatus
from service.jobs.sweeps import selection_rank
from service.registry import bump_version
from service.store.artifacts import ArtifactKind, ArtifactStore, StoredArtifact
from service.store.db import Database, valid_key
from service.store.tables import Alias, Artifact, EpochMetric, Job, Model, Study, StudyTrial

log = logging.getLogger(__name__)

# A checkpoint without a row this much older than now is a crash's leftover, not a registration in progress.
ORPHAN_GRACE_SECONDS = 3600.0

_HEX_ID = r"[0-9a-f]{32}"  # model and job ids: service.jobs.queue.new_id
_MODEL_FILE = re.compile(rf"(?P<model>{_HEX_ID})\.(safetensors|onnx)")
_MODEL_KINDS = (ArtifactKind.checkpoint, ArtifactKind.onnx)
_TERMINAL = [status for status in JobStatus if status.is_terminal]
_CHUNK = 500  # ids per IN (...) list


@dataclass(frozen=True)
class RetentionPolicy:
    """How many models each sweep and each ended study keeps: the ``keep_best`` best and the ``keep_latest`` newest."""

    keep_best: int
    keep_latest: int

    def __post_init__(self) -> None:
        if self.keep_best < 1 or self.keep_latest < 0:
            raise ValueError(f"keep_best must be at least 1 and keep_latest at least 0, not {self}")


@dataclass(frozen=True)
class RemovedArtifact:
    """An artifact whose record went: ``name`` is its model's or job's id, ``size_bytes`` its recorded size,
    ``token`` a resume state's fencing token, ``file`` the name of its file in the folder (None when its bytes
    were in the database, and went with the record)."""

    kind: ArtifactKind
    name: str
    token: int | None
    size_bytes: int
    file: str | None

    @property
    def in_database(self) -> bool:
        return self.file is None


@dataclass(frozen=True)
class DeletedJob:
    """What ``delete_job`` removed: the job, its model (if it had one), the artifacts' records, by kind and name,
    and the names of the files removed from the folder (none when the artifacts were kept in the database)."""

    job_id: str
    model_id: str | None
    artifacts: list[RemovedArtifact]
    files: list[str]


@dataclass(frozen=True)
class SurplusModel:
    """A model the policy removes, and the sweep or study whose job made it."""

    id: str
    job_id: str
    sweep_id: str | None
    study_id: str | None


@dataclass
class GarbageReport:
    """What a run of the policy removed (or, in a dry run, would remove).

    ``artifacts``: every artifact record dropped (the removed models' checkpoints and ONNX exports, resume states
    of ended jobs, records whose model or job is gone). Files, by name: ``model_files`` the removed models'
    checkpoints and ONNX exports; ``resume_files`` the resume states' (of the records dropped, and those no record
    named); ``orphan_files`` checkpoints and ONNX exports that no model row names; ``temporary_files`` those of
    interrupted writes. ``resume_job_ids``: the jobs whose resume states went; ``resume_states``: how many went
    (records, and files no record named). ``bytes``: the records' bytes kept in the database and the files' sizes.
    """

    dry_run: bool
    models: list[SurplusModel] = field(default_factory=list)
    artifacts: list[RemovedArtifact] = field(default_factory=list)
    model_files: list[str] = field(default_factory=list)
    resume_job_ids: list[str] = field(default_factory=list)
    resume_states: int = 0
    resume_files: list[str] = field(default_factory=list)
    orphan_files: list[str] = field(default_factory=list)
    temporary_files: list[str] = field(default_factory=list)
    bytes: int = 0


# -- deleting one job ------------------------------------------------------------------------------------------


def delete_job(db: Database, job_id: str, artifacts: ArtifactStore) -> DeletedJob:
    """Removes an ended job with its epoch metrics, its model and their artifacts (rows in one transaction), then
    their files.

    Raises JobNotFound for an unknown id; JobNotEnded (409) for a queued or running job; JobModelInUse (409),
    naming the aliases, when an alias serves its model; StudyStillRunning (409) for a trial of a running study.
    Nothing is removed when it raises. A trial of an ended study keeps its row, with no job and an error that
    says the job was deleted."""
    with db.write() as session:
        job = session.get(Job, job_id, with_for_update=True) if valid_key(job_id) else None
        if job is None:
            raise JobNotFound(job_id)
        if not job.status.is_terminal:
            raise JobNotEnded(job_id, job.status.value)
        model = session.scalars(select(Model).where(Model.job_id == job_id)).one_or_none()
        model_id = model.id if model is not None else None
        if model_id is not None:
            bump_version(session)  # first: it serialises alias changes, so the check below still holds at commit
            aliases = session.scalars(select(Alias.name).where(Alias.model_id == model_id).order_by(Alias.name)).all()
            if aliases:
                raise JobModelInUse(job_id, model_id, aliases)
        _detach_trial(session, job_id)
        session.execute(delete(EpochMetric).where(EpochMetric.job_id == job_id))
        if model_id is not None:
            session.execute(delete(Model).where(Model.id == model_id))
        session.execute(delete(Job).where(Job.id == job_id))
        removed: list[RemovedArtifact] = []
        files: list[Path] = []
        owned = {kind: [model_id] if model_id else [] for kind in _MODEL_KINDS} | {ArtifactKind.resume: [job_id]}
        for kind, names in owned.items():
            dropped, dropped_files = _drop(session, artifacts, kind, names, dry_run=False)
            removed += dropped
            files += dropped_files
        # Files no record named (a killed worker's): forget removes them with the others once the transaction
        # commits; listed here.
        strays = [path for path in artifacts.resume_files(job_id) if path not in files]
        strays += artifacts.resume_files(job_id, temporary=True)
    names = sorted(path.name for path in (*files, *strays))
    log.info("job %s deleted (model %s, %d artifacts, %d files)", job_id, model_id or "none", len(removed), len(names))
    return DeletedJob(job_id, model_id, removed, names)


def _detach_trial(session: Session, job_id: str) -> None:
    """Unlinks the study trial that ran the job, refusing while its study runs."""
    trial = session.scalars(select(StudyTrial).where(StudyTrial.job_id == job_id)).one_or_none()
    if trial is None:
        return
    study = session.get(Study, trial.study_id, with_for_update=True)
    if study is not None and study.status == StudyStatus.running:
        raise StudyStillRunning(job_id, trial.study_id, trial.number)
    session.execute(
        update(StudyTrial)
        .where(StudyTrial.job_id == job_id)
        .values(job_id=None, error=f"its job {job_id} was deleted (DELETE /v1/jobs/{job_id})")
    )


# -- the policy ------------------------------------------------------------------------------------------------


def collect_garbage(
    db: Database, artifacts: ArtifactStore, policy: RetentionPolicy, *, dry_run: bool = False
) -> GarbageReport:
    """Applies the retention policy (this module's docstring); with ``dry_run``, removes nothing and reports
    what it would remove. Every row goes in one transaction (surplus models, artifact records); files once it
    commits: the records' files, then resume files no record names, orphaned checkpoint files and stale
    temporary files."""
    report = GarbageReport(dry_run=dry_run)
    with db.read() if dry_run else db.write() as session:
        if not dry_run:
            bump_version(session)  # first: no alias moves onto a model between the choice and the delete
        report.models = surplus_models(session, policy)
        surplus = [model.id for model in report.models]
        if not dry_run:
            for chunk in _chunks(surplus):
                session.execute(delete(Model).where(Model.id.in_(chunk)))
        model_files: list[Path] = []
        orphan_files: list[Path] = []
        for kind in _MODEL_KINDS:
            dropped, files = _drop(session, artifacts, kind, surplus, dry_run=dry_run)
            report.artifacts += dropped
            model_files += files
        # Records whose model is gone (the surplus models' are dropped above, in a real run already).
        unowned = {kind: _unowned_records(session, kind, exclude=set(surplus)) for kind in _MODEL_KINDS}
        for kind, names in unowned.items():
            dropped, files = _drop(session, artifacts, kind, names, dry_run=dry_run)
            report.artifacts += dropped
            orphan_files += files
        dropped, resume_files = _drop(
            session, artifacts, ArtifactKind.resume, _ended_resume_records(session), dry_run=dry_run
        )
        report.artifacts += dropped
        strays = _of_ended_jobs(session, artifacts.resume_files(), exclude=set(resume_files))
        interrupted = _of_ended_jobs(session, artifacts.resume_files(temporary=True), exclude=set())
        handled = set(surplus).union(*unowned.values())
        unregistered = _unregistered_model_files(session, artifacts.checkpoint_dir, exclude=handled)
        removed = (*model_files, *orphan_files, *resume_files, *strays, *interrupted, *unregistered)
        sizes = {path: _size(path) for path in removed}
    if not dry_run:  # forget removes the records' files (and their jobs' temporary ones) once the transaction commits
        _unlink([*strays, *interrupted, *unregistered])
    report.model_files = sorted(path.name for path in model_files)
    report.resume_files = sorted(path.name for path in (*resume_files, *strays))
    report.resume_job_ids = sorted(
        {a.name for a in report.artifacts if a.kind is ArtifactKind.resume} | {_job_of(path) for path in strays}
    )
    report.resume_states = sum(a.kind is ArtifactKind.resume for a in report.artifacts) + len(strays)
    report.orphan_files = sorted(path.name for path in (*orphan_files, *unregistered))
    report.bytes = sum(a.size_bytes for a in report.artifacts if a.in_database) + sum(sizes.values())
    report.temporary_files = sorted(path.name for path in interrupted)
    _remove_temporary_files((artifacts.checkpoint_dir, artifacts.resume_dir), report, dry_run, exclude=set(interrupted))
    log.info(
        "retention%s: %d models, %d artifact records, %d resume states, %d orphaned files, %d temporary files, "
        "%d bytes",
        " (dry run)" if dry_run else "",
        len(report.models),
        len(report.artifacts),
        report.resume_states,
        len(report.orphan_files),
        len(report.temporary_files),
        report.bytes,
    )
    return report


def surplus_models(session: Session, policy: RetentionPolicy) -> list[SurplusModel]:
    """The models of sweeps' and ended studies' jobs that the policy does not keep, by id: outside each one's
    ``keep_best`` best and ``keep_latest`` newest, and served by no alias."""
    rows = session.execute(
        select(Model.id, Model.job_id, Model.val_acc, Model.test_acc, Model.created_at, Job.sweep_id, Job.study_id)
        .join(Job, Job.id == Model.job_id)
        .outerjoin(Study, Study.id == Job.study_id)
        .where(or_(Job.sweep_id.is_not(None), and_(Job.study_id.is_not(None), Study.status != StudyStatus.running)))
    ).all()
    aliased = set(session.scalars(select(Alias.model_id)))
    groups: dict[tuple[str | None, str | None], list[Any]] = defaultdict(list)
    for row in rows:
        groups[(row.sweep_id, None if row.sweep_id else row.study_id)].append(row)
    surplus = []
    for members in groups.values():
        best = sorted(members, key=lambda row: (selection_rank(row.val_acc, row.test_acc), row.created_at, row.id))
        newest = sorted(members, key=lambda row: (row.created_at, row.id), reverse=True)
        kept = {row.id for row in best[: policy.keep_best]} | {row.id for row in newest[: policy.keep_latest]}
        surplus += [
            SurplusModel(row.id, row.job_id, row.sweep_id, row.study_id)
            for row in members
            if row.id not in kept and row.id not in aliased
        ]
    return sorted(surplus, key=lambda model: model.id)


def _unowned_records(session: Session, kind: ArtifactKind, exclude: set[str]) -> list[str]:
    """The names of the ``kind`` (checkpoint, onnx) records whose model has no row, but those in ``exclude``."""
    names = session.scalars(
        select(Artifact.name).where(
            Artifact.kind == kind.value, ~select(Model.id).where(Model.id == Artifact.name).exists()
        )
    )
    return sorted(name for name in names if name not in exclude)


def _ended_resume_records(session: Session) -> list[str]:
    """The jobs with a resume record that have ended, or have no row any more."""
    live = select(Job.id).where(Job.id == Artifact.name, Job.status.not_in(_TERMINAL))
    return sorted(
        session.scalars(select(Artifact.name).where(Artifact.kind == ArtifactKind.resume.value, ~live.exists()))
    )


def _of_ended_jobs(session: Session, paths: Iterable[Path], exclude: set[Path]) -> list[Path]:
    """Those of ``paths`` (resume files, or their temporary files) whose job has ended or is gone, but those in
    ``exclude`` (the records' files)."""
    by_job: dict[str, list[Path]] = defaultdict(list)
    for path in paths:
        by_job[_job_of(path)].append(path)
    live: set[str] = set()
    for chunk in _chunks(sorted(by_job)):
        live.update(session.scalars(select(Job.id).where(Job.id.in_(chunk), Job.status.not_in(_TERMINAL))))
    return sorted(
        path for job_id, paths in by_job.items() if job_id not in live for path in paths if path not in exclude
    )


def _unregistered_model_files(session: Session, checkpoint_dir: Path, exclude: set[str]) -> list[Path]:
    """Checkpoint and ONNX files ``ORPHAN_GRACE_SECONDS`` old whose model has no row (but for models in
    ``exclude``, whose files go with their records)."""
    cutoff = time.time() - ORPHAN_GRACE_SECONDS
    candidates: dict[str, list[Path]] = defaultdict(list)
    if checkpoint_dir.is_dir():
        for path in checkpoint_dir.iterdir():
            match = _MODEL_FILE.fullmatch(path.name)
            if match and match.group("model") not in exclude and _modified_before(path, cutoff):
                candidates[match.group("model")].append(path)
    registered: set[str] = set()
    for chunk in _chunks(sorted(candidates)):
        registered.update(session.scalars(select(Model.id).where(Model.id.in_(chunk))))
    return sorted(path for model_id, paths in candidates.items() if model_id not in registered for path in paths)


def _remove_temporary_files(folders: Iterable[Path], report: GarbageReport, dry_run: bool, exclude: set[Path]) -> None:
    """The temporary files of interrupted writes, once stale; those in ``exclude`` are already reported."""
    now = time.time()
    for folder in folders:
        if dry_run:
            cutoff = now - STALE_TEMPORARY_SECONDS
            found = sorted(
                path for path in folder.glob(".*.tmp") if _modified_before(path, cutoff) and path not in exclude
            )
            report.bytes += sum(_size(path) for path in found)
        else:
            sizes = {path: _size(path) for path in folder.glob(".*.tmp")} if folder.is_dir() else {}
            found = sorted(sweep_temporary_files(folder, STALE_TEMPORARY_SECONDS, now=now))
            report.bytes += sum(sizes.get(path, 0) for path in found)
        report.temporary_files += [path.name for path in found]


# -- records and files -----------------------------------------------------------------------------------------


def _drop(
    session: Session, store: ArtifactStore, kind: ArtifactKind, names: Sequence[str], *, dry_run: bool
) -> tuple[list[RemovedArtifact], list[Path]]:
    """Forgets the records of the ``kind`` artifacts named ``names`` in ``session``'s transaction (in a dry run,
    only reads them). Returns the records and the files that go once it commits (those there now): the records'
    files, and a checkpoint's or ONNX export's file that was never recorded (ArtifactStore.forget)."""
    records: list[StoredArtifact] = []
    for chunk in _chunks(sorted(set(names))):
        records += store.recorded(session, kind, chunk) if dry_run else store.forget(session, kind, chunk)
    removed = [
        RemovedArtifact(kind, r.name, r.token, r.size_bytes, None if r.in_database else store.file_of(r).name)
        for r in sorted(records, key=lambda record: record.name)
    ]
    paths = {store.file_of(r) for r in records if not r.in_database}
    if kind is not ArtifactKind.resume:
        paths.update(store.path(kind, name) for name in names)
    return removed, sorted(path for path in paths if path.is_file())


def _job_of(path: Path) -> str:
    """The job of a resume file (``<job>....safetensors``) or of its temporary file (``.<job>....tmp``)."""
    return path.name.removeprefix(".")[:32]


def _modified_before(path: Path, cutoff: float) -> bool:
    try:
        return path.is_file() and path.stat().st_mtime < cutoff
    except FileNotFoundError:
        return False


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _unlink(paths: Iterable[Path]) -> list[Path]:
    """Removes the files that exist; returns those it removed (another process may have been first)."""
    removed = []
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed


def _chunks(ids: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]
