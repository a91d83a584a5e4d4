"""fmnist export / import (service/transfer.py): a service built on SQLite goes into the test database (SQLite,
or PostgreSQL in the `-m db` pass) with identical listings, predictions and checksums; damaged exports and
occupied targets are refused with nothing changed."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr
from sqlalchemy import func, select

from service.api import auth
from service.api.app import create_app
from service.jobs import queue, tracking
from service.registry import set_alias
from service.settings import Settings
from service.store import migrations
from service.store.db import Database
from service.store.tables import Job
from service.transfer import TransferError, export_service, import_service
from service.worker.worker import Worker
from tests.support.specs import spec_of

ADMIN_KEY = "an-admin-key-for-the-transfer-tests"


@pytest.fixture
def source(settings: Settings, tmp_path: Path) -> Iterator[tuple[Settings, Database]]:
    """A SQLite service of its own with two trained models (one aliased), a tagged job, a queued job, a sweep,
    and an API key."""
    settings = settings.model_copy(update={"home": tmp_path / "source", "database_url": None})
    migrations.upgrade(settings.sqlalchemy_url)
    db = Database(settings.sqlalchemy_url)
    for width in (8, 16):
        queue.enqueue_job(db, spec_of(hidden_layers=[width], epochs=1, batch_size=64, seed=width), max_attempts=1)
        assert Worker(settings, db, torch.device("cpu"), burst=True).run_once()
    with db.read() as session:
        first, second = session.scalars(select(Job).order_by(Job.created_at)).all()
    tracking.label_job(db, first.id, tags={"team": "vision"}, note="the small one")
    set_alias(db, "production", second.model_id)
    queue.enqueue_job(db, spec_of(hidden_layers=[4], epochs=1), max_attempts=2)
    auth.create_key(db, "notebook", ["train", "predict"])
    yield settings, db
    db.dispose()


def png(seed: int) -> bytes:
    pixels = torch.randint(0, 256, (28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def snapshot(settings: Settings) -> dict[str, Any]:
    """What users see of a service: listings, metrics, a prediction per model, checkpoints' checksums."""
    keyed = settings.model_copy(update={"api_keys": SecretStr(ADMIN_KEY)})  # the imported key table has a key
    with TestClient(create_app(keyed), headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
        jobs = client.get("/v1/jobs?limit=100").json()["data"]
        models = client.get("/v1/models").json()["models"]
        seen: dict[str, Any] = {
            "jobs": jobs,
            "models": models,
            "aliases": client.get("/v1/aliases").json(),
            "metrics": {job["id"]: client.get(f"/v1/jobs/{job['id']}/metrics").json() for job in jobs},
            "cards": {model["id"]: client.get(f"/v1/models/{model['id']}/evaluation").json() for model in models},
        }
        files = {"files": [("files", (f"{n}.png", png(n))) for n in range(4)]}
        seen["predictions"] = {
            ref: client.post(f"/v1/predict?model={ref}&top_k=10", **files).json()
            for ref in ["production", *(model["id"] for model in models)]  # type: ignore[arg-type]
        }
        seen["downloads"] = {
            model["id"]: client.get(f"/v1/models/{model['id']}/download").headers["X-Checkpoint-SHA256"]
            for model in models
        }
    return seen


def test_a_round_trip_keeps_listings_predictions_and_checksums(
    source: tuple[Settings, Database], settings: Settings, db: Database, tmp_path: Path
) -> None:
    source_settings, source_db = source
    before = snapshot(source_settings)
    exported = export_service(source_db, source_settings.checkpoint_dir, tmp_path / "export")
    assert exported.checkpoints == 2
    assert exported.rows["jobs"] == 3 and exported.rows["models"] == 2 and exported.rows["api_keys"] == 1
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"tables/jobs.jsonl", "tables/epoch_metrics.jsonl", "tables/aliases.jsonl"}
    assert "fmk_" not in (tmp_path / "export" / "tables" / "api_keys.jsonl").read_text()  # hashes only

    imported = import_service(db, settings.checkpoint_dir, tmp_path / "export")
    assert imported.rows == exported.rows and imported.checkpoints == 2
    after = snapshot(settings)
    assert after == before
    assert len(before["predictions"]["production"]["predictions"]) == 4


def test_a_damaged_export_is_refused_and_nothing_changes(
    source: tuple[Settings, Database], settings: Settings, db: Database, tmp_path: Path
) -> None:
    source_settings, source_db = source
    export_service(source_db, source_settings.checkpoint_dir, tmp_path / "export")
    (checkpoint,) = list((tmp_path / "export" / "checkpoints").glob("*.safetensors"))[:1]
    original = checkpoint.read_bytes()
    data = bytearray(original)
    data[-1] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(TransferError, match=re.escape(f"checkpoints/{checkpoint.name} does not match the manifest")):
        import_service(db, settings.checkpoint_dir, tmp_path / "export")
    checkpoint.write_bytes(bytes(data[:-10]))  # truncated
    with pytest.raises(TransferError, match="does not match the manifest"):
        import_service(db, settings.checkpoint_dir, tmp_path / "export")
    checkpoint.write_bytes(original)
    (tmp_path / "export" / "tables" / "jobs.jsonl").unlink()
    with pytest.raises(TransferError, match=re.escape("tables/jobs.jsonl, listed in the manifest, is missing")):
        import_service(db, settings.checkpoint_dir, tmp_path / "export")
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
    assert not settings.checkpoint_dir.exists() or not any(settings.checkpoint_dir.iterdir())


def test_an_occupied_target_and_an_occupied_folder_are_refused(
    source: tuple[Settings, Database], settings: Settings, db: Database, tmp_path: Path
) -> None:
    source_settings, source_db = source
    export_service(source_db, source_settings.checkpoint_dir, tmp_path / "export")
    with pytest.raises(TransferError, match="already exists and is not an empty folder"):
        export_service(source_db, source_settings.checkpoint_dir, tmp_path / "export")
    queue.enqueue_job(db, spec_of(hidden_layers=[4], epochs=1), max_attempts=1)
    with pytest.raises(TransferError, match="already holds jobs: import into a new, empty database"):
        import_service(db, settings.checkpoint_dir, tmp_path / "export")
    with pytest.raises(TransferError, match=re.escape("holds no manifest.json")):
        import_service(db, settings.checkpoint_dir, tmp_path)
