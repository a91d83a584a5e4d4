"""`fmnist export` and `fmnist import` as a user runs them: separate processes, a home each, one line per outcome
and exit 2 with the reason when refused; the checkpoints go where the importing home's FMNIST_ARTIFACTS says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from service.jobs import queue
from service.settings import Settings
from service.store import migrations
from service.store.artifacts import ArtifactKind, ArtifactStore
from service.store.db import Database
from service.worker.worker import Worker
from tests.support.specs import spec_of

FMNIST = [sys.executable, "-m", "service.cli"]


def fmnist(home: Path, *args: str, artifacts: str = "folder") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FMNIST_HOME": str(home), "FMNIST_ARTIFACTS": artifacts}
    env.pop("FMNIST_DATABASE_URL", None)  # each home's own SQLite
    return subprocess.run([*FMNIST, *args], env=env, capture_output=True, text=True, timeout=120)


def test_export_then_import_into_a_new_home(settings: Settings, tmp_path: Path) -> None:
    source = settings.model_copy(update={"home": tmp_path / "a", "database_url": None})
    migrations.upgrade(source.sqlalchemy_url)
    db = Database(source.sqlalchemy_url)
    queue.enqueue_job(db, spec_of(hidden_layers=[8], epochs=1, batch_size=64), max_attempts=1)
    assert Worker(source, db, torch.device("cpu"), burst=True).run_once()
    db.dispose()

    exported = fmnist(source.home, "export", str(tmp_path / "out"))
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.startswith("exported ") and "and 1 checkpoint to" in exported.stdout
    again = fmnist(source.home, "export", str(tmp_path / "out"))
    assert again.returncode == 2 and "already exists and is not an empty folder" in again.stderr

    target = tmp_path / "b"
    imported = fmnist(target, "import", str(tmp_path / "out"))  # a new home: its database is created first
    assert imported.returncode == 0, imported.stderr
    assert "imported " in imported.stdout and "jobs 1" in imported.stdout and "models 1" in imported.stdout
    assert len(list((target / "checkpoints").glob("*.safetensors"))) == 1
    twice = fmnist(target, "import", str(tmp_path / "out"))
    assert twice.returncode == 2 and "already holds" in twice.stderr and "Traceback" not in twice.stderr

    # A home that keeps its artifacts in its database takes the checkpoint in there: no file is written.
    in_database = tmp_path / "c"
    imported = fmnist(in_database, "import", str(tmp_path / "out"), artifacts="database")
    assert imported.returncode == 0, imported.stderr
    assert "and 1 checkpoint from" in imported.stdout
    assert not (in_database / "checkpoints").exists() or not any((in_database / "checkpoints").iterdir())
    target_settings = source.model_copy(update={"home": in_database, "artifacts": "database"})
    db = Database(target_settings.sqlalchemy_url)
    try:
        (record,) = ArtifactStore.for_settings(target_settings).records(db, ArtifactKind.checkpoint)
    finally:
        db.dispose()
    assert record.in_database
    out_again = fmnist(in_database, "export", str(tmp_path / "again"), artifacts="database")  # from the database
    assert out_again.returncode == 0, out_again.stderr
    (original,) = (tmp_path / "out" / "checkpoints").glob("*.safetensors")
    assert (tmp_path / "again" / "checkpoints" / original.name).read_bytes() == original.read_bytes()
