"""fmnist export / import (service/transfer.py): a service built on SQLite goes into the test database (SQLite,
or PostgreSQL in the `-m db` pass) with identical listings, predictions and checksums, whichever way either side
keeps its artifacts (FMNIST_ARTIFACTS=folder or database); damaged exports and occupied targets are refused with
nothing changed, and an import that fails midway leaves neither rows nor checkpoints behind."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr
from sqlalchemy import func, select

from service import transfer
from service.api import auth
from service.api.app import create_app
from service.jobs import queue, tracking
from service.registry import set_alias
from service.settings import Settings
from service.store import migrations
from service.store.artifacts import ArtifactKind, ArtifactStore
from service.store.db import Database
from service.store.tables import Artifact, Job, Model
from service.transfer import TransferError, export_service, import_service
from service.worker.worker import Worker
from tests.support.specs import spec_of

ADMIN_KEY = "an-admin-key-for-the-transfer-tests"

Source = tuple[Settings, Database]


@pytest.fixture
def make_source(settings: Settings, tmp_path: Path) -> Iterator[Callable[[str], Source]]:
    """Makes a SQLite service of its own, its artifacts kept as the mode given says, with two trained models (one
    aliased), a tagged job, a queued job and an API key."""
    made: list[Database] = []

    def make(mode: str) -> Source:
        home = tmp_path / f"source-{mode}"
        source = settings.model_copy(update={"home": home, "database_url": None, "artifacts": mode})
        migrations.upgrade(source.sqlalchemy_url)
        db = Database(source.sqlalchemy_url)
        made.append(db)
        for width in (8, 16):
            queue.enqueue_job(db, spec_of(hidden_layers=[width], epochs=1, batch_size=64, seed=width), max_attempts=1)
            assert Worker(source, db, torch.device("cpu"), burst=True).run_once()
        with db.read() as session:
            first, second = session.scalars(select(Job).order_by(Job.created_at)).all()
        tracking.label_job(db, first.id, tags={"team": "vision"}, note="the small one")
        assert second.model_id is not None
        set_alias(db, "production", second.model_id)
        queue.enqueue_job(db, spec_of(hidden_layers=[4], epochs=1), max_attempts=2)
        auth.create_key(db, "notebook", ["train", "predict"])
        return source, db

    yield make
    for db in made:
        db.dispose()


@pytest.fixture
def source(make_source: Callable[[str], Source]) -> Source:
    """A source service keeping its artifacts as files (the default)."""
    return make_source("folder")


def in_mode(settings: Settings, mode: str) -> Settings:
    return settings.model_copy(update={"artifacts": mode})


def store(settings: Settings) -> ArtifactStore:
    return ArtifactStore.for_settings(settings)


def checkpoint_files(settings: Settings) -> list[Path]:
    """The checkpoint files (and temporary files of interrupted writes) in the home's folder."""
    folder = settings.checkpoint_dir
    return sorted(path for path in folder.iterdir() if path.is_file()) if folder.is_dir() else []


def artifact_rows(db: Database) -> int:
    with db.read() as session:
        return session.scalar(select(func.count()).select_from(Artifact)) or 0


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
    source: Source, settings: Settings, db: Database, tmp_path: Path
) -> None:
    source_settings, source_db = source
    before = snapshot(source_settings)
    exported = export_service(source_db, store(source_settings), tmp_path / "export")
    assert exported.checkpoints == 2
    assert exported.rows["jobs"] == 3 and exported.rows["models"] == 2 and exported.rows["api_keys"] == 1
    assert "artifacts" not in exported.rows and "registry_state" not in exported.rows  # bytes go as files
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["format"] == transfer.FORMAT and manifest["revision"] == migrations.head_revision()
    assert set(manifest["files"]) >= {"tables/jobs.jsonl", "tables/epoch_metrics.jsonl", "tables/aliases.jsonl"}
    assert "tables/artifacts.jsonl" not in manifest["files"]
    assert "fmk_" not in (tmp_path / "export" / "tables" / "api_keys.jsonl").read_text()  # hashes only

    imported = import_service(db, store(settings), tmp_path / "export")
    assert imported.rows == exported.rows and imported.checkpoints == 2
    records = store(settings).records(db, ArtifactKind.checkpoint)
    assert len(records) == 2 and not any(record.in_database for record in records)
    assert [path.name for path in checkpoint_files(settings)] == sorted(f"{r.name}.safetensors" for r in records)
    after = snapshot(settings)
    assert after == before
    assert len(before["predictions"]["production"]["predictions"]) == 4


@pytest.mark.parametrize(("source_mode", "target_mode"), [("database", "database"), ("folder", "database")])
def test_a_round_trip_into_the_database(
    source_mode: str,
    target_mode: str,
    make_source: Callable[[str], Source],
    settings: Settings,
    db: Database,
    tmp_path: Path,
) -> None:
    """Checkpoints kept in the source's database are exported though no file holds them; a target keeping its
    artifacts in the database takes them in there, writing no file, and serves the same."""
    source_settings, source_db = make_source(source_mode)
    target = in_mode(settings, target_mode)
    in_source = store(source_settings).records(source_db, ArtifactKind.checkpoint)
    assert len(in_source) == 2 and all(record.in_database == (source_mode == "database") for record in in_source)
    if source_mode == "database":
        assert checkpoint_files(source_settings) == []
    before = snapshot(source_settings)
    exported = export_service(source_db, store(source_settings), tmp_path / "export")
    assert exported.checkpoints == 2
    assert len(list((tmp_path / "export" / "checkpoints").glob("*.safetensors"))) == 2

    imported = import_service(db, store(target), tmp_path / "export")
    assert imported.rows == exported.rows and imported.checkpoints == 2
    records = store(target).records(db, ArtifactKind.checkpoint)
    assert len(records) == 2 and all(record.in_database for record in records)
    with db.read() as session:
        registered = {model_id: sha256 for model_id, sha256 in session.execute(select(Model.id, Model.sha256))}
    assert {record.name: record.sha256 for record in records} == registered
    assert snapshot(target) == before
    assert checkpoint_files(target) == []  # in the database only, and no ONNX or other file either
    if source_mode == "database":
        assert checkpoint_files(source_settings) == []


@pytest.mark.parametrize("target_mode", ["folder", "database"])
def test_a_damaged_export_is_refused_and_nothing_changes(
    target_mode: str, source: Source, settings: Settings, db: Database, tmp_path: Path
) -> None:
    source_settings, source_db = source
    target = in_mode(settings, target_mode)
    export_service(source_db, store(source_settings), tmp_path / "export")
    (checkpoint,) = list((tmp_path / "export" / "checkpoints").glob("*.safetensors"))[:1]
    original = checkpoint.read_bytes()
    data = bytearray(original)
    data[-1] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(TransferError, match=re.escape(f"checkpoints/{checkpoint.name} does not match the manifest")):
        import_service(db, store(target), tmp_path / "export")
    checkpoint.write_bytes(bytes(data[:-10]))  # truncated
    with pytest.raises(TransferError, match="does not match the manifest"):
        import_service(db, store(target), tmp_path / "export")
    checkpoint.write_bytes(original)
    (tmp_path / "export" / "tables" / "jobs.jsonl").unlink()
    with pytest.raises(TransferError, match=re.escape("tables/jobs.jsonl, listed in the manifest, is missing")):
        import_service(db, store(target), tmp_path / "export")
    manifest_path = tmp_path / "export" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "revision": "0008"}))  # an export made before the artifacts
    with pytest.raises(
        TransferError, match=f"follows schema revision 0008 and this database is at {manifest['revision']}"
    ):
        import_service(db, store(target), tmp_path / "export")
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
    assert artifact_rows(db) == 0
    assert checkpoint_files(target) == []


def test_a_model_without_its_checkpoint_and_a_stray_checkpoint_are_refused(
    source: Source, settings: Settings, db: Database, tmp_path: Path
) -> None:
    source_settings, source_db = source
    export = tmp_path / "export"
    export_service(source_db, store(source_settings), export)
    manifest = json.loads((export / "manifest.json").read_text())
    name = sorted(n for n in manifest["files"] if n.startswith("checkpoints/"))[0]
    entry = manifest["files"].pop(name)
    (export / "manifest.json").write_text(json.dumps(manifest))
    model_id = Path(name).stem
    with pytest.raises(TransferError, match=re.escape(f"model {model_id}'s checkpoint is not in the export")):
        import_service(db, store(settings), export)
    manifest["files"][name] = entry
    stray = export / "checkpoints" / f"{'0' * 32}.safetensors"
    stray.write_bytes((export / name).read_bytes())
    manifest["files"][f"checkpoints/{stray.name}"] = entry
    (export / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TransferError, match=re.escape(f"checkpoints/{stray.name}: checkpoints of no model")):
        import_service(db, store(settings), export)
    assert artifact_rows(db) == 0 and checkpoint_files(settings) == []


@pytest.mark.parametrize("target_mode", ["folder", "database"])
def test_an_import_that_fails_midway_leaves_no_rows_and_no_checkpoints(
    target_mode: str, source: Source, settings: Settings, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoints are published in the transaction that inserts the rows: when it rolls back (here: at its
    last step), the files written are removed and no artifact is recorded."""
    source_settings, source_db = source
    target = in_mode(settings, target_mode)
    export_service(source_db, store(source_settings), tmp_path / "export")
    published: list[str] = []
    publish = ArtifactStore.publish

    def publishing(self: ArtifactStore, *args: Any, **kwargs: Any) -> Any:
        stored = publish(self, *args, **kwargs)
        published.append(stored.name)
        if target_mode == "folder":
            assert self.path(stored.kind, stored.name).is_file()  # written before the commit
        return stored

    def failing(_session: Any) -> None:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(ArtifactStore, "publish", publishing)
    monkeypatch.setattr(transfer, "bump_version", failing)
    with pytest.raises(RuntimeError, match="went away"):
        import_service(db, store(target), tmp_path / "export")
    assert len(published) == 2
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
        assert session.scalar(select(func.count()).select_from(Model)) == 0
    assert artifact_rows(db) == 0
    assert checkpoint_files(target) == []

    monkeypatch.undo()  # and the same export then goes in whole
    assert import_service(db, store(target), tmp_path / "export").checkpoints == 2
    assert len(store(target).records(db, ArtifactKind.checkpoint)) == 2


def test_an_export_with_a_checkpoint_missing_is_refused_and_leaves_nothing(source: Source, tmp_path: Path) -> None:
    source_settings, source_db = source
    (first, *_) = checkpoint_files(source_settings)
    first.unlink()
    with pytest.raises(TransferError, match=re.escape(f"model {first.stem}'s checkpoint cannot be read")):
        export_service(source_db, store(source_settings), tmp_path / "export")
    assert not (tmp_path / "export").exists()
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".export")] == []


def test_an_occupied_target_and_an_occupied_folder_are_refused(
    source: Source, settings: Settings, db: Database, tmp_path: Path
) -> None:
    source_settings, source_db = source
    export_service(source_db, store(source_settings), tmp_path / "export")
    with pytest.raises(TransferError, match="already exists and is not an empty folder"):
        export_service(source_db, store(source_settings), tmp_path / "export")
    with db.write() as session:  # an artifact alone (an ONNX export a model left behind, say) occupies it too
        store(in_mode(settings, "database")).publish(session, ArtifactKind.onnx, "f" * 32, b"onnx")
    with pytest.raises(TransferError, match="already holds artifacts: import into a new, empty database"):
        import_service(db, store(settings), tmp_path / "export")
    queue.enqueue_job(db, spec_of(hidden_layers=[4], epochs=1), max_attempts=1)
    with pytest.raises(TransferError, match=r"already holds .*: import into a new, empty database") as refused:
        import_service(db, store(settings), tmp_path / "export")
    assert "jobs" in str(refused.value) and "artifacts" in str(refused.value)
    with pytest.raises(TransferError, match=re.escape("holds no manifest.json")):
        import_service(db, store(settings), tmp_path)
