"""Database tables. Alembic creates them (alembic/versions); nothing here calls ``create_all``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from service.jobs.status import JobStatus, StudyStatus


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use datetime.now(UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """The tables' common base; Alembic compares its metadata with the migrations."""


class Sweep(Base):
    """A grid of specs submitted together; each grid point is one job."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    base: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    grid: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    # Who submitted it (the API key's id; none without keys), and the Idempotency-Key it came with, scoped
    # by owner, with the digest of the request it answered.
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(320), unique=True)
    request_sha256: Mapped[str | None] = mapped_column(String(64))


class Study(Base):
    """An adaptive hyperparameter search (service.jobs.studies): Optuna's sampler and pruner over a space of
    spec fields, each trial one job. The search's whole state is here and in ``study_trials``; nothing else."""

    __tablename__ = "studies"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[StudyStatus] = mapped_column(
        Enum(StudyStatus, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e]),
        nullable=False,
        index=True,
    )
    base: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    space: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    sampler: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    pruner: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    n_trials: Mapped[int] = mapped_column(Integer, nullable=False)
    max_concurrent: Mapped[int] = mapped_column(Integer, nullable=False)
    seed: Mapped[int] = mapped_column(BigInteger, nullable=False)
    max_attempts: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(320), unique=True)
    request_sha256: Mapped[str | None] = mapped_column(String(64))


class StudyTrial(Base):
    """One suggestion of a study's sampler: its number (0, 1, ... in the order asked), the parameters, the
    sampler's and pruner's own bookkeeping (Optuna's system attributes) and the job that runs it (none when the
    suggested spec is invalid: the trial failed as it was asked)."""

    __tablename__ = "study_trials"

    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    # None for a suggestion the spec's cross-field rules refuse: it never becomes a job; ``error`` says why.
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), unique=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    system_attrs: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    pruned_at_epoch: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e]),
        nullable=False,
    )
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    seed: Mapped[int] = mapped_column(BigInteger, nullable=False)
    epochs_done: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, nullable=False)
    # Raised on every claim: a worker's writes carry the token it claimed with, and a stale one is refused.
    lease_token: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    device: Mapped[str | None] = mapped_column(String(128))
    model_id: Mapped[str | None] = mapped_column(String(32))
    preset: Mapped[str | None] = mapped_column(String(64))
    sweep_id: Mapped[str | None] = mapped_column(ForeignKey("sweeps.id"), index=True)
    study_id: Mapped[str | None] = mapped_column(ForeignKey("studies.id"), index=True)
    # Where and with what the last attempt ran: torch version, device, data files' sha256, code version.
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(320), unique=True)
    request_sha256: Mapped[str | None] = mapped_column(String(64))
    # The shape it shares with the jobs it may train beside in one pack (models.packed.pack_digest).
    pack_key: Mapped[str | None] = mapped_column(String(32))
    # Run tracking: free key/value labels and a note, set by the owner (PATCH /v1/jobs/{id}).
    tags: Mapped[dict[str, str] | None] = mapped_column(JSON)
    note: Mapped[str | None] = mapped_column(Text)
    # For sorted and filtered listings: the kept model's accuracies once succeeded, else the latest epoch's;
    # the seconds of every recorded epoch. The queue keeps them with the epoch metrics they come from.
    test_acc: Mapped[float | None] = mapped_column(Float)
    val_acc: Mapped[float | None] = mapped_column(Float)
    train_seconds: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_created", "created_at"),
        Index("ix_jobs_status_pack_key_created", "status", "pack_key", "created_at"),
        # Keyset pagination of the sorted listings: (sort column, id) is unique and ordered.
        Index("ix_jobs_test_acc_id", "test_acc", "id"),
        Index("ix_jobs_val_acc_id", "val_acc", "id"),
        Index("ix_jobs_train_seconds_id", "train_seconds", "id"),
        Index("ix_jobs_created_id", "created_at", "id"),
    )


class EpochMetric(Base):
    __tablename__ = "epoch_metrics"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    train_loss: Mapped[float] = mapped_column(Float, nullable=False)
    train_acc: Mapped[float] = mapped_column(Float, nullable=False)
    test_acc: Mapped[float] = mapped_column(Float, nullable=False)
    val_acc: Mapped[float | None] = mapped_column(Float)
    lr: Mapped[float | None] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float, nullable=False)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class Model(Base):
    """A trained model; its checkpoint (and ONNX export) are artifacts under its id (service/store/artifacts.py)."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), nullable=False, unique=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    test_acc: Mapped[float | None] = mapped_column(Float)
    val_acc: Mapped[float | None] = mapped_column(Float)
    epoch: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
    # The evaluation on the test split (and validation, when held out) computed when the job finished
    # (models.evaluation); None for a model trained before it, evaluated on first request.
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Artifact(Base):
    """The record of one artifact (service/store/artifacts.py): a model's checkpoint or ONNX export (``name``:
    the model's id) or a job's resume state (``name``: the job's id; ``token``: the fencing token of the claim
    that wrote it). Its sha256 and size are what every read is checked against. ``data`` holds the bytes when
    they are kept in the database (FMNIST_ARTIFACTS=database); NULL means they are a file in the home folder
    of the process that wrote them (FMNIST_ARTIFACTS=folder)."""

    __tablename__ = "artifacts"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    token: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    data: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class Alias(Base):
    """A name (``production``, ``staging``...) pointing at a model; moving it switches what /predict serves."""

    __tablename__ = "aliases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), nullable=False, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class RegistryState(Base):
    """One row whose version goes up with every change to what a model reference resolves to (a model
    registered or deleted, an alias set or removed), so servers can cache resolutions safely."""

    __tablename__ = "registry_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, nullable=False)


class ApiKey(Base):
    """A key for the API: only its sha256 is stored; the key itself is shown once, when created."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    key_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    scopes: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
