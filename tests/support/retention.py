"""Ended jobs with registered models, written straight into the database with their files on disk (retention
tests: what is removed is rows and files, not training)."""

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
from service.store.db import Database
from service.store.tables import EpochMetric, Job, Model, Study, StudyTrial, Sweep, utcnow
from tests.support.jobs import SMALL, add_job

T0 = datetime(2030, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Finished:
    job_id: str
    model_id: str | None

    def model_files(self, settings: Settings) -> list[Path]:
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
    ``with_model``, a registered model created ``minute`` minutes after T0, its checkpoint and ONNX files written."""
    created = T0 + timedelta(minutes=minute)
    job_id = add_job(db, status=status, finished_at=created, **columns)
    model_id = queue.new_id() if with_model and status is JobStatus.succeeded else None
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
            register_model(
                session,
                Model(
                    id=model_id,
                    job_id=job_id,
                    spec=SMALL.model_dump(mode="json"),
                    sha256="0" * 64,
                    size_bytes=100,
                    test_acc=test_acc,
                    val_acc=val_acc,
                    epoch=1,
                    created_at=created,
                ),
            )
            session.execute(update(Job).where(Job.id == job_id).values(model_id=model_id))
    finished = Finished(job_id, model_id)
    if model_id is not None:
        checkpoint, onnx = finished.model_files(settings)
        write_file(checkpoint, 100)
        write_file(onnx, 50)
    return finished


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
