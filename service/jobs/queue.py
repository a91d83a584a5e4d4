"""The job queue: the only module that changes a job's status.

Every transition is one named operation and one write transaction. A worker's operations carry the
``Claim`` it got from ``claim_next_job``; each checks the job's lease token, so a worker whose lease was
taken away (it stalled, the reaper requeued its job, another worker claimed it) cannot write any more.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.packed import pack_digest
from models.spec import TrainingSpec
from models.training import EpochMetrics
from service.errors import (
    IdempotencyConflict,
    JobNotCancellable,
    JobNotFound,
    QueueLimitReached,
    StudyNotFound,
    SweepNotFound,
)
from service.jobs import studies
from service.jobs.status import JobStatus, StudyStatus
from service.registry import register_model
from service.store.artifacts import ArtifactKind, ArtifactStore, StagedArtifact
from service.store.db import Database, db_now, valid_key
from service.store.tables import EpochMetric, Job, Model, Study, Sweep, utcnow

log = logging.getLogger(__name__)

MAX_SEED = 2**31 - 1

T = TypeVar("T")


class LeaseLost(RuntimeError):
    """The worker's claim on a job is no longer valid; it must stop working on it and write nothing more."""


@dataclass(frozen=True)
class Submitter:
    """Who submits, for idempotency and per-key limits. The defaults: anonymous, no key, no limit."""

    owner: str | None = None  # the API key's id
    idempotency_key: str | None = None
    request_sha256: str | None = None
    max_queued: int | None = None
    retry_after: float | None = None  # seconds, for the answer when max_queued is reached

    @property
    def scoped_key(self) -> str | None:
        """Idempotency keys are per owner: two clients may both use 'order-1'."""
        return None if self.idempotency_key is None else f"{self.owner or '-'}:{self.idempotency_key}"

    def stamp(self) -> dict[str, Any]:
        return {"owner": self.owner, "idempotency_key": self.scoped_key, "request_sha256": self.request_sha256}


@dataclass(frozen=True)
class Claim:
    """A worker's hold on one running job."""

    job_id: str
    spec: TrainingSpec
    seed: int
    attempt: int
    max_attempts: int
    token: int
    epochs_done: int
    study_id: str | None = None  # a study's trial: its pruner may end it early


@dataclass(frozen=True)
class LeaseState:
    cancel_requested: bool


def new_id() -> str:
    return uuid.uuid4().hex


def _new_job(spec: TrainingSpec, max_attempts: int, now: datetime, **extra: Any) -> Job:
    return Job(
        id=new_id(),
        status=JobStatus.queued,
        spec=spec.model_dump(mode="json"),
        seed=spec.seed if spec.seed is not None else secrets.randbelow(MAX_SEED),
        epochs_done=0,
        attempt=0,
        max_attempts=max_attempts,
        lease_token=0,
        cancel_requested=False,
        pack_key=pack_digest(spec),
        created_at=now,
        updated_at=now,
        **extra,
    )


def enqueue_job(db: Database, spec: TrainingSpec, max_attempts: int, preset: str | None = None) -> Job:
    """Stores a new queued job; the seed is fixed now (the spec's, or a random one) so the run is reproducible."""
    return submit_job(db, spec, max_attempts, preset=preset)[0]


def submit_job(
    db: Database,
    spec: TrainingSpec,
    max_attempts: int,
    *,
    preset: str | None = None,
    submitter: Submitter = Submitter(),
) -> tuple[Job, bool]:
    """``enqueue_job`` for a client: the job, and whether it is new. A repeated Idempotency-Key with the
    same request gets the job it created before; with another request, IdempotencyConflict. Past the
    submitter's limit of queued jobs, QueueLimitReached. Checks and insert share one write transaction."""

    def add(session: Session) -> tuple[Job, bool]:
        existing = _idempotent_match(session, Job, submitter)
        if existing is not None:
            return existing, False
        _check_queue_limit(session, submitter, adding=1)
        job = _new_job(spec, max_attempts, utcnow(), preset=preset, **submitter.stamp())
        session.add(job)
        return job, True

    return _submit(db, submitter, add, lambda session: (_idempotent_match(session, Job, submitter), False))


def enqueue_sweep(
    db: Database,
    base: dict[str, Any],
    grid: dict[str, Any],
    specs: list[TrainingSpec],
    max_attempts: int,
    submitter: Submitter = Submitter(),
) -> tuple[Sweep, list[Job], bool]:
    """Stores a sweep and one queued job per grid point, all in one transaction; whether it is new, as
    ``submit_job`` (idempotency, the submitter's limit) says."""

    def existing_sweep(session: Session) -> tuple[Sweep, list[Job], bool] | None:
        sweep = _idempotent_match(session, Sweep, submitter)
        if sweep is None:
            return None
        jobs = session.scalars(select(Job).where(Job.sweep_id == sweep.id).order_by(Job.created_at)).all()
        return sweep, list(jobs), False

    def add(session: Session) -> tuple[Sweep, list[Job], bool]:
        found = existing_sweep(session)
        if found is not None:
            return found
        _check_queue_limit(session, submitter, adding=len(specs))
        now = utcnow()
        sweep = Sweep(id=new_id(), base=base, grid=grid, created_at=now, **submitter.stamp())
        # Distinct creation times keep the grid order in the queue (claims take the oldest first).
        jobs = [
            _new_job(spec, max_attempts, now + timedelta(microseconds=i), sweep_id=sweep.id, owner=submitter.owner)
            for i, spec in enumerate(specs)
        ]
        session.add(sweep)
        session.flush()
        session.add_all(jobs)
        return sweep, jobs, True

    return _submit(db, submitter, add, existing_sweep)


def enqueue_study(db: Database, study: Study, submitter: Submitter = Submitter()) -> tuple[Study, bool]:
    """Stores a new study (``studies.new_study_row``) and queues its first trials (as many as it may run at
    once), in one transaction; whether it is new, as ``submit_job`` (idempotency, the submitter's limit) says."""
    studies.load_optuna()  # before the write transaction: the import must not hold the database's lock

    def add(session: Session) -> tuple[Study, bool]:
        existing = _idempotent_match(session, Study, submitter)
        if existing is not None:
            return existing, False
        _check_queue_limit(session, submitter, adding=min(study.max_concurrent, study.n_trials))
        session.add(study)
        session.flush()
        studies.ask_trials(session, study, _study_job_maker(study))
        return study, True

    return _submit(db, submitter, add, lambda session: (_idempotent_match(session, Study, submitter), False))


def _study_job_maker(study: Study) -> Callable[..., Job]:
    def make(spec: TrainingSpec, created_at: datetime, **extra: Any) -> Job:
        return _new_job(
            spec, study.max_attempts, created_at, owner=study.owner, preset=study.base.get("preset"), **extra
        )

    return make


def advance_study(db: Database, study_id: str) -> list[Job]:
    """Queues the study's next trials if it has room (a trial ended), or marks it completed; the new jobs."""
    return studies.advance(db, study_id, _study_job_maker)


def advance_studies(db: Database) -> int:
    """``advance_study`` for every running study (a worker's poll: tops up a study whose last decision was lost
    with its process); how many trials it queued."""
    return sum(len(advance_study(db, study_id)) for study_id in studies.running_study_ids(db))


def cancel_study(db: Database, study_id: str) -> int:
    """Ends the study (no more trials) and cancels its trials that have not ended; returns how many it reached.
    Cancelling a study that has ended changes nothing."""
    with db.write() as session:
        study = session.get(Study, study_id, with_for_update=True) if valid_key(study_id) else None
        if study is None:
            raise StudyNotFound(study_id)
        now = db_now(session)
        if study.status == StudyStatus.running:
            study.status, study.finished_at = StudyStatus.cancelled, now
        live = session.scalars(
            select(Job)
            .where(Job.study_id == study_id, Job.status.in_([JobStatus.queued, JobStatus.running]))
            .order_by(Job.id)
            .with_for_update()
        ).all()
        for job in live:
            _cancel(job, now)
        return len(live)


def _submit(db: Database, submitter: Submitter, add: Callable[[Session], T], existing: Callable[[Session], Any]) -> T:
    try:
        with db.write() as session:
            return add(session)
    except IntegrityError:
        # Two requests with one Idempotency-Key at once (PostgreSQL): the other one's insert won the unique
        # constraint, so this one answers with what it stored.
        if submitter.scoped_key is None:
            raise
        with db.read() as session:
            found = existing(session)
            if found is None or found[0] is None:
                raise
            return found  # type: ignore[no-any-return]


def _idempotent_match(session: Session, table: type[Job] | type[Sweep] | type[Study], submitter: Submitter) -> Any:
    if submitter.scoped_key is None:
        return None
    row = session.scalars(select(table).where(table.idempotency_key == submitter.scoped_key)).one_or_none()
    if row is not None and getattr(row, "request_sha256", None) != submitter.request_sha256:
        raise IdempotencyConflict(submitter.idempotency_key or "")
    return row


def _check_queue_limit(session: Session, submitter: Submitter, adding: int) -> None:
    if submitter.max_queued is None:
        return
    if session.get_bind().dialect.name == "postgresql":  # SQLite's BEGIN IMMEDIATE already serialises writers
        session.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"fmnist-queue:{submitter.owner}"))))
    owner = Job.owner.is_(None) if submitter.owner is None else Job.owner == submitter.owner
    queued = session.scalar(select(func.count()).select_from(Job).where(owner, Job.status == JobStatus.queued)) or 0
    if queued + adding > submitter.max_queued:
        raise QueueLimitReached(submitter.max_queued, queued, adding, retry_after=submitter.retry_after)


def _cancel(job: Job, now: datetime) -> None:
    if job.status is JobStatus.queued:
        job.status = JobStatus.cancelled
        job.finished_at = now
    elif job.status is JobStatus.running:
        job.cancel_requested = True
    else:
        raise JobNotCancellable(job.id, job.status)
    job.updated_at = now


def request_cancel(db: Database, job_id: str) -> Job:
    """A queued job is cancelled at once; a running one is flagged and its worker stops at the next batch."""
    with db.write() as session:
        # FOR UPDATE: on PostgreSQL a worker may be claiming or ending the job right now; decide on its latest state.
        job = session.get(Job, job_id, with_for_update=True) if valid_key(job_id) else None
        if job is None:
            raise JobNotFound(job_id)
        _cancel(job, db_now(session))
        session.flush()
        return job


def cancel_sweep(db: Database, sweep_id: str) -> int:
    """Cancels every job of the sweep that has not ended; returns how many it reached."""
    with db.write() as session:
        if not valid_key(sweep_id) or session.get(Sweep, sweep_id) is None:
            raise SweepNotFound(sweep_id)
        now = db_now(session)
        live = session.scalars(
            select(Job)
            .where(Job.sweep_id == sweep_id, Job.status.in_([JobStatus.queued, JobStatus.running]))
            .order_by(Job.id)  # one lock order for every canceller
            .with_for_update()
        ).all()
        for job in live:
            _cancel(job, now)
        return len(live)


def claim_next_job(db: Database, worker_id: str, lease_seconds: float, device: str) -> Claim | None:
    """Atomically takes the oldest queued job (``claim_jobs`` with a limit of 1)."""
    claims = claim_jobs(db, worker_id, lease_seconds, device, limit=1)
    return claims[0] if claims else None


def claim_jobs(db: Database, worker_id: str, lease_seconds: float, device: str, limit: int) -> list[Claim]:
    """Atomically takes the oldest queued job and, when ``limit`` > 1 and it starts from scratch, up to
    ``limit`` - 1 more queued jobs of the same shape that start from scratch too (a pack: they train together,
    models.packed). Oldest first; each claim is a job's own, with its own attempt, lease and fencing token.

    One write transaction of UPDATE ... RETURNING statements, so no two workers get the same job: on SQLite
    it begins IMMEDIATE; on PostgreSQL the subqueries lock with SKIP LOCKED. The lease runs on the database's
    clock, which every worker and the reaper share. A job that has recorded epochs resumes alone.
    """
    oldest_queued = (
        select(Job.id)
        .where(Job.status == JobStatus.queued)
        .order_by(Job.created_at, Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    with db.write() as session:
        now = db_now(session)
        claimed = list(session.execute(_claiming(Job.id == oldest_queued, now, worker_id, lease_seconds, device)))
        if claimed and limit > 1 and claimed[0].epochs_done == 0 and claimed[0].pack_key is not None:
            # Selected (and on PostgreSQL locked) first, then claimed by id: an UPDATE ... WHERE id IN (a
            # subquery with LIMIT and SKIP LOCKED) may claim more rows than the limit on PostgreSQL.
            companions = session.scalars(
                select(Job.id)
                .where(Job.status == JobStatus.queued, Job.pack_key == claimed[0].pack_key, Job.epochs_done == 0)
                .order_by(Job.created_at, Job.id)
                .limit(limit - 1)
                .with_for_update(skip_locked=True)
            ).all()
            if companions:
                rows = session.execute(_claiming(Job.id.in_(companions), now, worker_id, lease_seconds, device)).all()
                claimed += sorted(rows, key=lambda row: (row.created_at, row.id))
    return [
        Claim(
            job_id=row.id,
            spec=TrainingSpec.model_validate(row.spec),
            seed=row.seed,
            attempt=row.attempt,
            max_attempts=row.max_attempts,
            token=row.lease_token,
            epochs_done=row.epochs_done,
            study_id=row.study_id,
        )
        for row in claimed
    ]


def _claiming(which: ColumnElement[bool], now: datetime, worker_id: str, lease_seconds: float, device: str) -> Any:
    """The UPDATE that claims the queued jobs ``which`` selects, RETURNING what a Claim needs."""
    return (
        update(Job)
        .where(which, Job.status == JobStatus.queued)
        .values(
            status=JobStatus.running,
            attempt=Job.attempt + 1,
            lease_token=Job.lease_token + 1,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            worker_id=worker_id,
            device=device,
            started_at=now,
            updated_at=now,
        )
        .returning(
            Job.id,
            Job.spec,
            Job.seed,
            Job.attempt,
            Job.max_attempts,
            Job.lease_token,
            Job.epochs_done,
            Job.pack_key,
            Job.created_at,
            Job.study_id,
        )
        .execution_options(synchronize_session=False)
    )


def _guarded_update(session: Session, claim: Claim, now: datetime | None = None, **values: Any) -> None:
    """Updates the claimed job only while the claim still holds; raises LeaseLost otherwise.

    ``now`` is the database's clock, read here unless the caller has read it already.
    """
    result = session.execute(
        update(Job)
        .where(Job.id == claim.job_id, Job.lease_token == claim.token, Job.status == JobStatus.running)
        .values(updated_at=now or db_now(session), **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise LeaseLost(f"job {claim.job_id}: lease token {claim.token} is no longer current")


def renew_lease(db: Database, claim: Claim, lease_seconds: float) -> LeaseState:
    """Extends the lease (the heartbeat) and reports whether a cancel was asked for; LeaseLost when the claim
    no longer holds."""
    [state] = renew_leases(db, [claim], lease_seconds)
    if state is None:
        raise LeaseLost(f"job {claim.job_id}: lease token {claim.token} is no longer current")
    return state


def renew_leases(db: Database, claims: Sequence[Claim], lease_seconds: float) -> list[LeaseState | None]:
    """Extends every claim's lease in one transaction (a pack's heartbeat); per claim, whether a cancel was
    asked for, or None for a claim that no longer holds (its lease is lost; the others are renewed)."""
    states: list[LeaseState | None] = []
    with db.write() as session:
        now = db_now(session)
        for claim in claims:
            try:
                _guarded_update(session, claim, now, lease_expires_at=now + timedelta(seconds=lease_seconds))
            except LeaseLost:
                states.append(None)
                continue
            cancel = session.scalar(select(Job.cancel_requested).where(Job.id == claim.job_id))
            states.append(LeaseState(cancel_requested=bool(cancel)))
    return states


def record_epoch(
    db: Database,
    claim: Claim,
    metrics: EpochMetrics,
    *,
    resume_state: bytes | None = None,
    artifacts: ArtifactStore | None = None,
) -> None:
    """Stores one epoch's metrics, moves the progress counter and publishes the run's ``resume_state`` (the
    job's ``resume`` artifact, under the claim's fencing token, in ``artifacts``), in one transaction: LeaseLost,
    and nothing recorded, once the claim no longer holds."""
    if resume_state is None:
        staging: AbstractContextManager[StagedArtifact | None] = nullcontext()
    else:
        assert artifacts is not None, "a resume state is published to an artifact store"
        staging = artifacts.staging(ArtifactKind.resume, claim.job_id, resume_state, token=claim.token)
    with staging as staged, db.write() as session:
        now = db_now(session)
        _guarded_update(
            session,
            claim,
            now,
            epochs_done=metrics.epoch,
            test_acc=metrics.test_acc,
            val_acc=metrics.val_acc,
            train_seconds=func.coalesce(Job.train_seconds, 0.0) + metrics.seconds,
        )
        session.execute(insert(EpochMetric).values(job_id=claim.job_id, recorded_at=now, **metrics.as_dict()))
        if staged is not None and artifacts is not None:
            artifacts.record(session, staged)


def begin_attempt(db: Database, claim: Claim, history: list[EpochMetrics], provenance: dict[str, Any]) -> None:
    """Sets the job's recorded epochs to ``history`` (what the attempt resumes from; empty when it starts over)."""
    latest = history[-1] if history else None
    with db.write() as session:
        _guarded_update(
            session,
            claim,
            epochs_done=len(history),
            provenance=provenance,
            test_acc=latest.test_acc if latest else None,
            val_acc=latest.val_acc if latest else None,
            train_seconds=sum(metrics.seconds for metrics in history) if history else None,
        )
        _clear_metrics(session, claim.job_id)
        now = utcnow()
        for metrics in history:
            session.execute(insert(EpochMetric).values(job_id=claim.job_id, recorded_at=now, **metrics.as_dict()))


def _end_attempt(session: Session, claim: Claim, now: datetime, status: JobStatus, **values: Any) -> JobStatus:
    """Moves the claimed job to ``status`` (an end, or back to the queue), unless a cancel was asked for: then
    the job ends ``cancelled`` instead. Returns the status the job now has; raises LeaseLost when the claim no
    longer holds.

    This is where a cancel and the end of a run meet, so it is decided here, in the ending transaction and under
    the lease guard, not by the worker's last look at the flag: a cancel answered 200 always wins. (SQLite's
    BEGIN IMMEDIATE serialises this with ``request_cancel``; on PostgreSQL both take the row's lock, and the
    second UPDATE sees the flag the first one's WHERE was re-checked against.)
    """
    claimed = (Job.id == claim.job_id) & (Job.lease_token == claim.token) & (Job.status == JobStatus.running)
    ended = session.execute(
        update(Job)
        .where(claimed, Job.cancel_requested.is_(False))
        .values(status=status, updated_at=now, **values)
        .execution_options(synchronize_session=False)
    )
    if ended.rowcount == 1:  # type: ignore[attr-defined]
        return status
    cancelled = session.execute(
        update(Job)
        .where(claimed, Job.cancel_requested.is_(True))
        .values(status=JobStatus.cancelled, finished_at=now, updated_at=now, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    if cancelled.rowcount == 1:  # type: ignore[attr-defined]
        return JobStatus.cancelled
    raise LeaseLost(f"job {claim.job_id}: lease token {claim.token} is no longer current")


def finish_job(
    db: Database,
    claim: Claim,
    *,
    model_id: str,
    checkpoint: bytes,
    artifacts: ArtifactStore,
    selected: EpochMetrics | None,
    evaluation: dict[str, Any] | None = None,
) -> JobStatus:
    """Publishes the ``checkpoint`` (safetensors bytes) as model ``model_id``'s artifact, registers the model
    (with its ``evaluation``, models.evaluation, when given), marks the job succeeded and drops its resume
    state, together; the job's listed accuracies become the kept epoch's. A job whose cancel was asked for ends
    ``cancelled`` instead and publishes and registers nothing; returns which. LeaseLost, and nothing written,
    once the claim no longer holds."""
    # Its file (in the folder) written before the transaction, removed unless the transaction records it.
    with artifacts.staging(ArtifactKind.checkpoint, model_id, checkpoint) as staged:
        status = _finish(db, claim, model_id, staged, artifacts, selected, evaluation)
        if status is not JobStatus.succeeded:
            artifacts.unstage(staged)
    return status


def _finish(
    db: Database,
    claim: Claim,
    model_id: str,
    staged: StagedArtifact,
    artifacts: ArtifactStore,
    selected: EpochMetrics | None,
    evaluation: dict[str, Any] | None,
) -> JobStatus:
    with db.write() as session:
        now = db_now(session)
        status = _end_attempt(
            session,
            claim,
            now,
            JobStatus.succeeded,
            finished_at=now,
            model_id=model_id,
            lease_expires_at=None,
            error=None,
            **({"test_acc": selected.test_acc, "val_acc": selected.val_acc} if selected else {}),
        )
        artifacts.forget(session, ArtifactKind.resume, [claim.job_id])
        if status is not JobStatus.succeeded:
            return status
        stored = artifacts.record(session, staged)
        register_model(
            session,
            Model(
                id=model_id,
                job_id=claim.job_id,
                spec=claim.spec.model_dump(mode="json"),
                sha256=stored.sha256,
                size_bytes=stored.size_bytes,
                test_acc=selected.test_acc if selected else None,
                val_acc=selected.val_acc if selected else None,
                epoch=selected.epoch if selected else None,
                created_at=now,
                evaluation=evaluation,
            ),
        )
        return status


def fail_job(db: Database, claim: Claim, error: str) -> JobStatus:
    """Ends the job ``failed`` with ``error`` (``cancelled`` if a cancel was asked for); returns which."""
    with db.write() as session:
        now = db_now(session)
        return _end_attempt(session, claim, now, JobStatus.failed, finished_at=now, error=error, lease_expires_at=None)


def retry_job(db: Database, claim: Claim, error: str) -> JobStatus:
    """Back to the queue after a failure the retry policy judged worth another attempt (``cancelled`` instead
    if a cancel was asked for); returns which."""
    with db.write() as session:
        return _end_attempt(
            session, claim, db_now(session), JobStatus.queued, error=error, lease_expires_at=None, worker_id=None
        )


def cancel_claimed_job(db: Database, claim: Claim) -> None:
    """Ends a running job whose cancel was requested; the epochs it finished stay recorded."""
    with db.write() as session:
        now = db_now(session)
        _guarded_update(session, claim, now, status=JobStatus.cancelled, finished_at=now, lease_expires_at=None)


def prune_claimed_job(db: Database, claim: Claim, epoch: int) -> JobStatus:
    """Ends a study's trial that its pruner stopped after ``epoch``: ``pruned``, its metrics kept (``cancelled``
    instead if a cancel was asked for); returns which."""
    with db.write() as session:
        now = db_now(session)
        status = _end_attempt(session, claim, now, JobStatus.pruned, finished_at=now, lease_expires_at=None)
        if status is JobStatus.pruned:
            studies.record_pruned(session, claim.job_id, epoch)
        return status


def release_job(db: Database, claim: Claim) -> JobStatus:
    """Gives a job back to the queue on a clean shutdown, the attempt not counted against it (``cancelled``
    instead if a cancel was asked for); returns which."""
    with db.write() as session:
        return _end_attempt(
            session,
            claim,
            db_now(session),
            JobStatus.queued,
            attempt=Job.attempt - 1,
            lease_expires_at=None,
            worker_id=None,
        )


def _clear_metrics(session: Session, job_id: str) -> None:
    session.query(EpochMetric).filter(EpochMetric.job_id == job_id).delete(synchronize_session=False)


def requeue_expired_leases(db: Database, now: datetime | None = None) -> tuple[list[str], list[str]]:
    """Jobs whose worker stopped renewing go back to the queue, or fail once out of attempts.

    A job whose cancel was asked for while its worker was gone ends cancelled instead.
    Returns (requeued ids, failed ids). "Now" is the database's clock, the one the leases were given on;
    tests pass their own.
    """
    with db.write() as session:
        now = now or db_now(session)
        expired = (Job.status == JobStatus.running) & (Job.lease_expires_at < now)
        ended = {"finished_at": now, "updated_at": now, "lease_expires_at": None}
        session.execute(
            update(Job)
            .where(expired, Job.cancel_requested.is_(True))
            .values(status=JobStatus.cancelled, **ended)
            .execution_options(synchronize_session=False)
        )
        failed = session.scalars(
            update(Job)
            .where(expired, Job.attempt >= Job.max_attempts)
            .values(
                status=JobStatus.failed,
                error="the worker running this job stopped renewing its lease on every one of its attempts",
                **ended,
            )
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        ).all()
        requeued = session.scalars(
            update(Job)
            .where(expired, Job.attempt < Job.max_attempts)
            .values(
                status=JobStatus.queued,
                updated_at=now,
                lease_expires_at=None,
                worker_id=None,
                error="the previous attempt's worker stopped renewing its lease",
            )
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        ).all()
    for job_id in requeued:
        log.warning("job %s: lease expired, back in the queue", job_id)
    for job_id in failed:
        log.error("job %s: lease expired on its last attempt, failed", job_id)
    return list(requeued), list(failed)
