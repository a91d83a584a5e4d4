"""The artifact store through the API, with the bytes in the home folder and in the database: every kind is
served only while it matches its recorded sha256, a model's artifacts go with it, and a database-mode service
keeps no file in its home. Also the migration that records the checkpoints registered before the store."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, insert, select, update

from models.files import bytes_sha256
from models.spec import TrainingSpec
from service.api.app import create_app
from service.jobs import queue
from service.settings import Settings
from service.store import migrations
from service.store.artifacts import ArtifactCorrupt, ArtifactKind, ArtifactMissing, ArtifactStore
from service.store.db import Database
from service.store.tables import Artifact, Model, utcnow
from tests.conftest import ON_POSTGRES
from tests.support.artifacts import MODES, artifact_files, in_mode
from tests.support.models import png, train_model

TINY = {"hidden_layers": [8], "epochs": 1, "batch_size": 256}


@pytest.fixture(params=MODES)
def mode_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    return in_mode(settings, request.param)


@pytest.fixture
def client(mode_settings: Settings, db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(mode_settings), raise_server_exceptions=False) as test_client:
        yield test_client


def train(client: TestClient, settings: Settings, db: Database, **spec: Any) -> str:
    return train_model(client, settings, db, **{**TINY, **spec})


def predict(client: TestClient, model_id: str) -> Any:
    return client.post("/v1/predict", params={"model": model_id}, files={"file": ("g.png", png(), "image/png")})


def alter(db: Database, store: ArtifactStore, kind: ArtifactKind, name: str, change: Any) -> None:
    """Applies ``change`` (bytes -> bytes) to the stored artifact, where it lives, behind the store's back."""
    record, data = store.read(db, kind, name)
    if record.in_database:
        with db.write() as session:
            session.execute(
                update(Artifact).where(Artifact.kind == kind.value, Artifact.name == name).values(data=change(data))
            )
    else:
        store.path(kind, name).write_bytes(change(data))


def flipped(data: bytes) -> bytes:
    return data[:-4] + bytes(b ^ 0xFF for b in data[-4:])


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def test_a_model_is_served_downloaded_and_exported_from_either_store(
    client: TestClient, mode_settings: Settings, db: Database
) -> None:
    model_id = train(client, mode_settings, db)
    store = ArtifactStore.for_settings(mode_settings)
    assert predict(client, model_id).status_code == 200
    download = client.get(f"/v1/models/{model_id}/download")
    assert download.status_code == 200
    assert download.headers["content-disposition"] == f'attachment; filename="fmnist-{model_id}.safetensors"'
    assert bytes_sha256(download.content) == download.headers["x-checkpoint-sha256"]
    assert download.headers["x-checkpoint-sha256"] == client.get(f"/v1/models/{model_id}").json()["sha256"]
    onnx = client.get(f"/v1/models/{model_id}/onnx")
    assert onnx.status_code == 200 and len(onnx.content) > 1000
    assert client.get(f"/v1/models/{model_id}/onnx").content == onnx.content, "kept, not made again"
    records = {(record.kind, record.name): record for kind in ArtifactKind for record in store.records(db, kind)}
    assert set(records) == {(ArtifactKind.checkpoint, model_id), (ArtifactKind.onnx, model_id)}
    assert all(record.in_database is store.in_database for record in records.values())
    files = artifact_files(mode_settings.home)
    if store.in_database:
        assert files == [], "a database-mode service keeps no artifact in its home"
    else:
        assert files == sorted([store.path(ArtifactKind.checkpoint, model_id), store.path(ArtifactKind.onnx, model_id)])

    assert client.delete(f"/v1/models/{model_id}").status_code == 204
    assert [record for kind in ArtifactKind for record in store.records(db, kind)] == []
    assert artifact_files(mode_settings.home) == []


@pytest.mark.parametrize("change", [flipped, truncated], ids=["altered", "truncated"])
def test_an_altered_checkpoint_is_refused_everywhere(
    client: TestClient, mode_settings: Settings, db: Database, change: Any
) -> None:
    model_id = train(client, mode_settings, db)
    store = ArtifactStore.for_settings(mode_settings)
    alter(db, store, ArtifactKind.checkpoint, model_id, change)
    for response in (
        predict(client, model_id),
        client.get(f"/v1/models/{model_id}/download"),
        client.get(f"/v1/models/{model_id}/onnx"),
    ):
        assert response.status_code == 500, response.text
        body = response.json()
        assert body["code"] == "model_unreadable" and "does not match its recorded sha256" in body["detail"]
    with pytest.raises(ArtifactCorrupt):
        store.read(db, ArtifactKind.checkpoint, model_id)


def test_an_altered_onnx_export_is_refused(client: TestClient, mode_settings: Settings, db: Database) -> None:
    model_id = train(client, mode_settings, db)
    assert client.get(f"/v1/models/{model_id}/onnx").status_code == 200
    alter(db, ArtifactStore.for_settings(mode_settings), ArtifactKind.onnx, model_id, flipped)
    refused = client.get(f"/v1/models/{model_id}/onnx")
    assert refused.status_code == 500 and "onnx" in refused.json()["detail"]
    assert predict(client, model_id).status_code == 200, "the checkpoint itself is intact"


def test_a_missing_artifact_says_where_it_was_kept(client: TestClient, mode_settings: Settings, db: Database) -> None:
    model_id = train(client, mode_settings, db)
    store = ArtifactStore.for_settings(mode_settings)
    if store.in_database:
        with db.write() as session:
            session.execute(delete(Artifact).where(Artifact.name == model_id))
        expected = "is not recorded"
    else:
        store.path(ArtifactKind.checkpoint, model_id).unlink()  # as on a machine that does not share the folder
        expected = "FMNIST_ARTIFACTS=database"
    response = client.get(f"/v1/models/{model_id}/download")
    assert response.status_code == 500 and expected in response.json()["detail"]
    with pytest.raises(ArtifactMissing):
        store.read(db, ArtifactKind.checkpoint, model_id)


def test_a_folder_artifact_is_read_by_a_database_mode_process_on_the_same_home(
    settings: Settings, db: Database
) -> None:
    """Switching a service to FMNIST_ARTIFACTS=database keeps serving what it trained before: reads follow
    each artifact's record, wherever the new ones go."""
    folder = in_mode(settings, "folder")
    with TestClient(create_app(folder), raise_server_exceptions=False) as before:
        model_id = train(before, folder, db)
    with TestClient(create_app(in_mode(settings, "database")), raise_server_exceptions=False) as after:
        assert predict(after, model_id).status_code == 200
        assert after.get(f"/v1/models/{model_id}/onnx").status_code == 200
    store = ArtifactStore.for_settings(settings)
    checkpoint, onnx = store.stat(db, ArtifactKind.checkpoint, model_id), store.stat(db, ArtifactKind.onnx, model_id)
    assert checkpoint is not None and not checkpoint.in_database
    assert onnx is not None and onnx.in_database, "made after the switch: kept in the database"


@pytest.mark.skipif(ON_POSTGRES, reason="migrates a database of its own from an older revision")
def test_the_migration_records_the_checkpoints_registered_before_it(settings: Settings) -> None:
    url = settings.sqlalchemy_url
    migrations.upgrade(url, "0008")
    old = Database(url)
    try:
        job = queue.enqueue_job(old, TrainingSpec(hidden_layers=[8]), max_attempts=1)
        with old.write() as session:
            session.execute(
                insert(Model.__table__).values(
                    id="a" * 32, job_id=job.id, spec={}, sha256="f" * 64, size_bytes=1234, created_at=utcnow()
                )
            )
        migrations.upgrade(url)
        with old.read() as session:
            rows = session.execute(select(Artifact.kind, Artifact.name, Artifact.sha256, Artifact.size_bytes)).all()
    finally:
        old.dispose()
    assert rows == [("checkpoint", "a" * 32, "f" * 64, 1234)]
