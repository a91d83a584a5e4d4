"""Retention: deleting an ended job, and the policy that ``fmnist gc`` and ``POST /v1/admin/gc`` apply.

Deleting a job (``delete_job``, ``DELETE /v1/jobs/{id}``) removes its row, its epoch metrics and its model in
one transaction, then its files (checkpoint, ONNX export, resume states). Only an ended job can go, never one
whose model an alias serves, and never a trial of a study that is still running (its sampler learns from every
trial). A sweep lists the jobs it has left. A study that has ended keeps the deleted trial's number and
parameters, with no job: it reads as failed, its error saying the job was deleted.

The policy (``collect_garbage``) removes:

- in each sweep, and each study that has ended, every model of its jobs except the best ``keep_best`` (by
  validation accuracy, else test accuracy) and the newest ``keep_latest``, and except any model an alias serves.
  A running study keeps all of its models: its sampler reads their accuracies. A lone job's model stays (delete
  the job to remove it). The jobs and their metrics stay; their listings show the last epoch's accuracies;
- the resume states of ended jobs (and of jobs no longer in the database), which a worker that died after the
  job's end was recorded left behind;
- checkpoint and ONNX files that no model row names (a crash between writing the file and registering it),
  once they are ``ORPHAN_GRACE_SECONDS`` old: a worker registers its checkpoint right after writing it;
- temporary files of interrupted writes in both folders, once ``STALE_TEMPORARY_SECONDS`` old, as the workers'
  own sweep does.

Rows go in one transaction, files after it commits: a reader never finds a row without its file. A dry run
removes nothing and reports what a run would remove at that moment.

It reads the resume folder by the names the workers write (service/jobs/resume_files.py, shared with
service/worker/resume.py, so that the API need not load the worker).
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
from service.jobs.resume_files import parse_resume_name, resume_files, resume_path
from service.jobs.status import JobStatus, StudyStatus
from service.jobs.sweeps import selection_rank
from service.registry import bump_version
from service.store.db import Database, valid_key
from service.store.tables import Alias, EpochMetric, Job, Model, Study, StudyTrial

log = logging.getLogger(__name__)

# A checkpoint without a row this much older than now is a crash's leftover, not a registration in progress.
ORPHAN_GRACE_SECONDS = 3600.0

_HEX_ID = r"[0-9a-f]{32}"
_MODEL_FILE = re.compile(rf"(?P<model>{_HEX_ID})\.(safetensors|onnx)")
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
class DeletedJob:
    """What ``delete_job`` removed: the job, its model (if it had one) and the files' names."""

    job_id: str
    model_id: str | None
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
    """What a run of the policy removed (or, in a dry run, would remove): ids and file names, and the bytes."""

    dry_run: bool
    models: list[SurplusModel] = field(default_factory=list)
    resume_job_ids: list[str] = field(default_factory=list)
    resume_files: list[str] = field(default_factory=list)
    orphan_files: list[str] = field(default_factory=list)
    temporary_files: list[str] = field(default_factory=list)
    bytes: int = 0


def job_resume_files(resume_dir: Path, job_id: str) -> list[Path]:
    """The job's resume states in ``resume_dir``: every attempt's and the unfenced one
    (service/jobs/resume_files.py)."""
    return sorted(path for _, path in resume_files(resume_path(resume_dir, job_id)))


# -- deleting one job ------------------------------------------------------------------------------------------


def delete_job(db: Database, job_id: str, checkpoint_dir: Path, resume_dir: Path) -> DeletedJob:
    """Removes an ended job with its epoch metrics and its model (rows in one transaction), then their files.

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
        if model is not None:
            bump_version(session)  # first: it serialises alias changes, so the check below still holds at commit
            aliases = session.scalars(select(Alias.name).where(Alias.model_id == model.id).order_by(Alias.name)).all()
            if aliases:
                raise JobModelInUse(job_id, model.id, aliases)
        _detach_trial(session, job_id)
        session.execute(delete(EpochMetric).where(EpochMetric.job_id == job_id))
        if model is not None:
            session.execute(delete(Model).where(Model.id == model.id))
        session.execute(delete(Job).where(Job.id == job_id))
        model_files = [checkpoint_dir / model.filename, checkpoint_dir / model.onnx_filename] if model else []
    removed = _unlink([*model_files, *job_resume_files(resume_dir, job_id)])
    log.info("job %s deleted (model %s, %d files)", job_id, model.id if model else "none", len(removed))
    return DeletedJob(job_id, model.id if model else None, [path.name for path in removed])


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
    db: Database, checkpoint_dir: Path, resume_dir: Path, policy: RetentionPolicy, *, dry_run: bool = False
) -> GarbageReport:
    """Applies the retention policy (this module's docstring); with ``dry_run``, removes nothing and reports
    what it would remove. Model rows go in one transaction, then their files; then the resume states of ended
    jobs, orphaned checkpoint files and stale temporary files."""
    report = GarbageReport(dry_run=dry_run)
    report.models = _remove_surplus_models(db, checkpoint_dir, policy, report, dry_run)
    _remove_ended_resume_states(db, resume_dir, report, dry_run)
    _remove_orphan_model_files(db, checkpoint_dir, report, dry_run)
    _remove_temporary_files((checkpoint_dir, resume_dir), report, dry_run)
    log.info(
        "retention%s: %d models, %d resume states, %d orphaned files, %d temporary files, %d bytes",
        " (dry run)" if dry_run else "",
        len(report.models),
        len(report.resume_files),
        len(report.orphan_files),
        len(report.temporary_files),
        report.bytes,
    )
    return report


def _remove_surplus_models(
    db: Database, checkpoint_dir: Path, policy: RetentionPolicy, report: GarbageReport, dry_run: bool
) -> list[SurplusModel]:
    if dry_run:
        with db.read() as session:
            surplus = surplus_models(session, policy)
    else:
        with db.write() as session:
            bump_version(session)  # first: no alias moves onto a model between the choice and the delete
            surplus = surplus_models(session, policy)
            for chunk in _chunks([model.id for model in surplus]):
                session.execute(delete(Model).where(Model.id.in_(chunk)))
    files = [checkpoint_dir / name for model in surplus for name in (f"{model.id}.safetensors", f"{model.id}.onnx")]
    report.bytes += _sizes(files)
    if not dry_run:
        _unlink(files)
    return surplus


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


def _remove_ended_resume_states(db: Database, resume_dir: Path, report: GarbageReport, dry_run: bool) -> None:
    by_job: dict[str, list[Path]] = defaultdict(list)
    if resume_dir.is_dir():
        for path in resume_dir.glob("*.safetensors"):
            if parsed := parse_resume_name(path.name):
                by_job[parsed[0]].append(path)
    if not by_job:
        return
    live: set[str] = set()
    with db.read() as session:
        for chunk in _chunks(sorted(by_job)):
            live.update(session.scalars(select(Job.id).where(Job.id.in_(chunk), Job.status.not_in(_TERMINAL))))
    ended = sorted(job_id for job_id in by_job if job_id not in live)
    files = sorted(path for job_id in ended for path in by_job[job_id])
    report.resume_job_ids = ended
    report.resume_files = [path.name for path in files]
    report.bytes += _sizes(files)
    if not dry_run:
        _unlink(files)


def _remove_orphan_model_files(db: Database, checkpoint_dir: Path, report: GarbageReport, dry_run: bool) -> None:
    cutoff = time.time() - ORPHAN_GRACE_SECONDS
    candidates: dict[str, list[Path]] = defaultdict(list)
    if checkpoint_dir.is_dir():
        for path in checkpoint_dir.iterdir():
            if (match := _MODEL_FILE.fullmatch(path.name)) and _modified_before(path, cutoff):
                candidates[match.group("model")].append(path)
    if not candidates:
        return
    registered: set[str] = set()
    with db.read() as session:
        for chunk in _chunks(sorted(candidates)):
            registered.update(session.scalars(select(Model.id).where(Model.id.in_(chunk))))
    files = sorted(path for model_id, paths in candidates.items() if model_id not in registered for path in paths)
    report.orphan_files = [path.name for path in files]
    report.bytes += _sizes(files)
    if not dry_run:
        _unlink(files)


def _remove_temporary_files(folders: Iterable[Path], report: GarbageReport, dry_run: bool) -> None:
    now = time.time()
    for folder in folders:
        if dry_run:
            cutoff = now - STALE_TEMPORARY_SECONDS
            found = sorted(path for path in folder.glob(".*.tmp") if path.is_file() and _modified_before(path, cutoff))
            report.bytes += _sizes(found)
        else:
            sizes = {path: _sizes([path]) for path in folder.glob(".*.tmp")} if folder.is_dir() else {}
            found = sorted(sweep_temporary_files(folder, STALE_TEMPORARY_SECONDS, now=now))
            report.bytes += sum(sizes.get(path, 0) for path in found)
        report.temporary_files += [path.name for path in found]


# -- files -----------------------------------------------------------------------------------------------------


def _modified_before(path: Path, cutoff: float) -> bool:
    try:
        return path.is_file() and path.stat().st_mtime < cutoff
    except FileNotFoundError:
        return False


def _sizes(paths: Iterable[Path]) -> int:
    total = 0
    for path in paths:
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            continue
    return total


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
