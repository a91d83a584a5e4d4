"""Ended jobs with registered models, written straight into the database with their artifacts published through
the artifact store, in the folder or in the database as the settings say (retention tests: what is removed is
rows, records and files, not training)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update

from service.jobs import queue
from service.jobs.status import JobStatus, StudyStatus
from service.registry import register_model
from service.settings import Settings
from service.store.artifacts import ArtifactKind, ArtifactStore
from service.store.db import Database
from service.store.tables import Artifact, EpochMetric, Job, Model, Study, StudyTrial, Sweep, utcnow
from tests.support.jobs import SMALL, add_job

T0 = datetime(2030, 1, 1, tzinfo=UTC)
MODES = ("folder", "database")  # FMNIST_ARTIFACTS
CHECKPOINT_BYTES, ONNX_BYTES = 100, 50


@dataclass(frozen=True)
class Finished:
    job_id: str
    model_id: str | None

    def model_files(self, settings: Settings) -> list[Path]:
        """Its model's checkpoint and ONNX files, in the folder."""
        assert self.model_id is not None
        return [
            settings.checkpoint_dir / f"{self.model_id}.safetensors",
            settings.checkpoint_dir / f"{self.model_id}.onnx",
        ]


def write_file(path: Path, size: int = 16, age_seconds: float = 0.0) -> Path:
    """A file of ``size`` bytes, last modified ``age_seconds`` ago."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    if age_seconds:
        moment = time.time() - age_seconds
        os.utime(path, (moment, moment))
    return path


def finished_job(
    db: Database,
    settings: Settings,
    *,
    minute: int = 0,
    val_acc: float | None = 0.5,
    test_acc: float | None = 0.5,
    status: JobStatus = JobStatus.succeeded,
    with_model: bool = True,
    **columns: Any,
) -> Finished:
    """An ended job (``columns``: sweep_id, study_id, owner...) with one epoch's metrics and, when succeeded and
    ``with_model``, a registered model created ``minute`` minutes after T0 with its checkpoint (100 bytes) and ONNX
    export (50 bytes) published through the settings' artifact store, in the transaction that registers it."""
    created = T0 + timedelta(minutes=minute)
    job_id = add_job(db, status=status, finished_at=created, **columns)
    model_id = queue.new_id() if with_model and status is JobStatus.succeeded else None
    store = ArtifactStore.for_settings(settings)
    with db.write() as session:
        session.add(
            EpochMetric(
                job_id=job_id,
                epoch=1,
                train_loss=1.0,
                train_acc=0.5,
                test_acc=test_acc if test_acc is not None else 0.5,
                val_acc=val_acc,
                seconds=0.1,
                recorded_at=created,
            )
        )
        if model_id is not None:
            stored = store.publish(session, ArtifactKind.checkpoint, model_id, b"c" * CHECKPOINT_BYTES)
            store.publish(session, ArtifactKind.onnx, model_id, b"o" * ONNX_BYTES)
            register_model(
                session,
                Model(
                    id=model_id,
                    job_id=job_id,
                    spec=SMALL.model_dump(mode="json"),
                    sha256=stored.sha256,
                    size_bytes=stored.size_bytes,
                    test_acc=test_acc,
                    val_acc=val_acc,
                    epoch=1,
                    created_at=created,
                ),
            )
            session.execute(update(Job).where(Job.id == job_id).values(model_id=model_id))
    return Finished(job_id, model_id)


def publish_resume(db: Database, settings: Settings, job_id: str, token: int, size: int = 10) -> str:
    """A resume state of ``size`` bytes for the job, as the claim holding fencing token ``token`` publishes it; the
    name of its file when kept in the folder."""
    store = ArtifactStore.for_settings(settings)
    with db.write() as session:
        stored = store.publish(session, ArtifactKind.resume, job_id, b"r" * size, token=token)
    return store.file_of(stored).name


def artifact_rows(db: Database, kind: ArtifactKind | None = None) -> set[tuple[str, str]]:
    """The artifacts recorded, as (kind, name)."""
    query = select(Artifact.kind, Artifact.name)
    if kind is not None:
        query = query.where(Artifact.kind == kind.value)
    with db.read() as session:
        return {(row[0], row[1]) for row in session.execute(query)}


def interrupted_resume_write(settings: Settings, job_id: str, size: int = 7, age_seconds: float = 0.0) -> Path:
    """The temporary file a worker killed while writing a resume state of ``job_id`` leaves (the name
    models.files.write_atomic gives it)."""
    name = f".{job_id}.000000000003.0123456789abcdef.safetensors.k1ll3d_x.tmp"
    return write_file(settings.resume_dir / name, size, age_seconds=age_seconds)


def home_files(settings: Settings) -> set[str]:
    """The files in the home's artifact folders, as ``checkpoints/<name>`` and ``resume/<name>``."""
    found: set[str] = set()
    for folder in (settings.checkpoint_dir, settings.resume_dir):
        if folder.is_dir():
            found.update(f"{folder.name}/{path.name}" for path in folder.iterdir())
    return found


def new_sweep(db: Database) -> str:
    sweep_id = queue.new_id()
    with db.write() as session:
        session.add(Sweep(id=sweep_id, base={}, grid={"lr": [0.1]}, created_at=utcnow()))
    return sweep_id


def new_study(db: Database, status: StudyStatus = StudyStatus.completed) -> str:
    study_id = queue.new_id()
    with db.write() as session:
        session.add(
            Study(
                id=study_id,
                status=status,
                base={"epochs": 3},
                space={"lr": {"choices": [0.1, 0.2, 0.3]}},
                sampler={"type": "random"},
                pruner={"type": "none"},
                n_trials=3,
                max_concurrent=1,
                seed=0,
                max_attempts=3,
                created_at=utcnow(),
            )
        )
    return study_id


def study_trial(db: Database, study_id: str, number: int, job_id: str) -> None:
    with db.write() as session:
        session.add(StudyTrial(study_id=study_id, number=number, job_id=job_id, params={"lr": 0.1}, system_attrs={}))


def count(db: Database, table: Any, *where: Any) -> int:
    with db.read() as session:
        return int(session.scalar(select(func.count()).select_from(table).where(*where)) or 0)
