"""What the artifact store (service/store/artifacts.py) holds for a job or a model, as tests check it."""

from __future__ import annotations

from pathlib import Path

from service.settings import Settings
from service.store.artifacts import ArtifactKind, ArtifactStore, StoredArtifact
from service.store.db import Database

MODES = ("folder", "database")  # FMNIST_ARTIFACTS


def in_mode(settings: Settings, mode: str) -> Settings:
    """``settings`` with artifacts kept as ``mode`` says."""
    return settings.model_copy(update={"artifacts": mode})


def resume_record(settings: Settings, db: Database, job_id: str) -> StoredArtifact | None:
    """The job's recorded resume state, None when it has none."""
    return ArtifactStore.for_settings(settings).stat(db, ArtifactKind.resume, job_id)


def checkpoint_file(settings: Settings, model_id: str) -> Path:
    """Where the model's checkpoint lies with ``FMNIST_ARTIFACTS=folder``."""
    return ArtifactStore.for_settings(settings).path(ArtifactKind.checkpoint, model_id)


def artifact_files(*homes: Path) -> list[Path]:
    """Every file the artifact store could have written under these homes (checkpoints, ONNX exports, resume
    states, temporary files of interrupted writes)."""
    return sorted(
        path
        for home in homes
        for folder in ("checkpoints", "resume")
        for path in (home / folder).glob("*")
        if path.is_file()
    )


# A store that keeps bytes in the database: for tests that end jobs through the queue with made-up checkpoints.
DATABASE_STORE = ArtifactStore(Path("/nonexistent/checkpoints"), Path("/nonexistent/resume"), in_database=True)
