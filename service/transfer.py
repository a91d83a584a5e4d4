"""Export and import: a whole service (jobs and their epoch metrics, sweeps, studies and their trials, models with
their checkpoints, aliases, API keys as their hashes) as a folder that another database can take in, SQLite to
PostgreSQL or back, whatever either side's ``FMNIST_ARTIFACTS``.

The folder holds one JSON-lines file per table (``tables/<table>.jsonl``, rows in primary-key order), the
models' checkpoints (``checkpoints/<model>.safetensors``) and ``manifest.json``: the format, the schema revision
the rows follow, and every file's row count, size and sha256. The ``artifacts`` table is not carried as rows: the
checkpoints are read through the source's artifact store (service/store/artifacts.py), checked against their
records, whether its bytes are files in its home (``FMNIST_ARTIFACTS=folder``) or rows of its database
(``database``), and written as files to the export.

An import checks all of it before it writes anything: a tampered or truncated file, another schema revision, a
model without its checkpoint or a target that already holds runs or artifacts is refused with the reason, and
the target is left as it was. Then every row goes in one transaction, and each checkpoint, checked again against
the manifest, is published through the target's artifact store in that same transaction: into the target's
database (``database``), or as a file in its home written atomically and removed if the transaction rolls back
(``folder``). The registry's version moves, so servers drop what they had cached.

Not carried: ONNX exports (made again, and recorded, on first request) and jobs' resume states. Jobs are carried
as they stand: a queued one is trained in the target; one that was running stays ``running`` with its lease and
its recorded epochs until that lease expires there (no worker of the target holds it), then goes back to the
queue (or fails, out of attempts) and, with no resume state to go on from, its next attempt starts over.
"""

from __future__ import annotations

import enum
import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Table, func, insert, select

from models.checkpoints import CheckpointError
from models.files import bytes_sha256, file_sha256
from service.registry import bump_version, checkpoint_of
from service.store import migrations
from service.store.artifacts import ArtifactKind, ArtifactStore
from service.store.db import Database
from service.store.tables import Artifact, Base, Model, RegistryState, UTCDateTime

FORMAT = "fmnist-export/1"
MANIFEST = "manifest.json"
CHECKPOINTS = "checkpoints/"
CHECKPOINT_SUFFIX = ".safetensors"
# Tables the schema's migrations fill themselves: never carried (the target keeps its own, bumped).
_OWN_ROWS = {RegistryState.__tablename__}
# Tables carried as bytes, not rows: the checkpoints, files of their own in the export.
_AS_FILES = {Artifact.__tablename__}
# Tables carried as JSON lines, in an order their foreign keys allow.
_RUN_TABLES = [table for table in Base.metadata.sorted_tables if table.name not in _OWN_ROWS | _AS_FILES]
# Tables that must be empty in an import's target: what a fresh `fmnist db upgrade` leaves empty.
_EMPTY_TABLES = [table for table in Base.metadata.sorted_tables if table.name not in _OWN_ROWS]


class TransferError(ValueError):
    """An export or import that cannot go ahead; the message says why and what to do."""


@dataclass(frozen=True)
class TransferSummary:
    """What an export wrote or an import took in: rows per table, and the checkpoints."""

    rows: dict[str, int]
    checkpoints: int
    revision: str


def export_service(db: Database, artifacts: ArtifactStore, target: Path) -> TransferSummary:
    """Writes the service's rows, and its models' checkpoints read through ``artifacts`` (files or database rows,
    as each was published), to the new folder ``target``, with a manifest of checksums.

    Raises ``TransferError`` when ``target`` exists and is not an empty folder, when the database's schema is
    not current, or when a model's checkpoint is missing (a file in another home's folder, say) or does not match
    its recorded sha256 (nothing is left behind: the folder is written under a temporary name and renamed at the
    end)."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise TransferError(f"{target} already exists and is not an empty folder: export into a new one")
    revision = _current_revision(db)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        files: dict[str, dict[str, Any]] = {}
        rows: dict[str, int] = {}
        (scratch / "tables").mkdir()
        with db.read() as session:
            for table in _RUN_TABLES:
                ordered = select(table).order_by(*table.primary_key.columns)
                path = scratch / "tables" / f"{table.name}.jsonl"
                count = 0
                with path.open("w", encoding="utf-8") as handle:
                    for row in session.execute(ordered).mappings():
                        handle.write(json.dumps(_encode(table, dict(row)), ensure_ascii=False, sort_keys=True) + "\n")
                        count += 1
                rows[table.name] = count
                files[f"tables/{table.name}.jsonl"] = _entry(path, rows=count)
            models = session.scalars(select(Model).order_by(Model.id)).all()
        (scratch / CHECKPOINTS).mkdir()
        for model in models:
            try:
                data = checkpoint_of(db, model, artifacts)
            except CheckpointError as exc:
                raise TransferError(
                    f"model {model.id}'s checkpoint cannot be read ({exc}): the export would be incomplete"
                ) from exc
            name = f"{CHECKPOINTS}{model.id}{CHECKPOINT_SUFFIX}"
            (scratch / name).write_bytes(data)
            files[name] = {"sha256": bytes_sha256(data), "size_bytes": len(data)}
        manifest = {"format": FORMAT, "revision": revision, "created_at": _now(), "files": files}
        (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if target.exists():
            target.rmdir()
        scratch.rename(target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return TransferSummary(rows=rows, checkpoints=len(models), revision=revision)


def import_service(db: Database, artifacts: ArtifactStore, source: Path) -> TransferSummary:
    """Takes in the folder an export wrote: verifies the manifest, every file's size and sha256, the format and
    the schema revision, that every model has its checkpoint and that the target holds no runs, models, aliases,
    keys or artifacts yet; then inserts every row and publishes every checkpoint through ``artifacts`` (into the
    database or the home's folder, as its setting says) in one transaction.

    Raises ``TransferError`` (the target unchanged) for anything that does not check out."""
    manifest_path = source / MANIFEST
    if not manifest_path.is_file():
        raise TransferError(f"{source} holds no {MANIFEST}: not a folder that `fmnist export` wrote")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files: dict[str, dict[str, Any]] = manifest["files"]
        fmt, revision = manifest["format"], manifest["revision"]
    except (ValueError, KeyError, TypeError) as exc:
        raise TransferError(f"{manifest_path} is not a readable manifest ({exc})") from exc
    if fmt != FORMAT:
        raise TransferError(f"{source} is in format {fmt!r}; this version reads {FORMAT!r}")
    current = _current_revision(db)
    if revision != current:
        raise TransferError(
            f"the export follows schema revision {revision} and this database is at {current}: "
            "import with the same version of the service that exported it"
        )
    for name, entry in files.items():
        path = source / name
        if not _inside(source, path) or not path.is_file():
            raise TransferError(f"{name}, listed in the manifest, is missing from {source}")
        if path.stat().st_size != entry["size_bytes"] or file_sha256(path) != entry["sha256"]:
            raise TransferError(f"{name} does not match the manifest's size and sha256: damaged or changed since")
    with db.read() as session:
        taken = [table.name for table in _EMPTY_TABLES if session.scalar(select(func.count()).select_from(table))]
    if taken:
        raise TransferError(
            f"this database already holds {', '.join(taken)}: import into a new, empty database "
            "(a fresh FMNIST_HOME or database URL, then `fmnist db upgrade`)"
        )
    tables = {table.name: table for table in _RUN_TABLES}
    decoded: dict[str, list[dict[str, Any]]] = {}
    for name in files:
        if name.startswith("tables/"):
            table_name = name.removeprefix("tables/").removesuffix(".jsonl")
            if table_name not in tables:
                raise TransferError(f"{name}: this schema has no table {table_name!r}")
            lines = (source / name).read_text(encoding="utf-8").splitlines()
            decoded[table_name] = [_decode(tables[table_name], json.loads(line)) for line in lines if line]
    checkpoints = _checkpoints(files, decoded.get(Model.__tablename__, []))
    with db.write() as session:
        for table in _RUN_TABLES:
            if decoded.get(table.name):
                session.execute(insert(table), decoded[table.name])
        for model_id, name in checkpoints.items():
            # The bytes published are the ones checked here: a file changed since the check above is refused
            # (and the transaction, with the checkpoints it published, rolls back).
            data = (source / name).read_bytes()
            if len(data) != files[name]["size_bytes"] or bytes_sha256(data) != files[name]["sha256"]:
                raise TransferError(f"{name} does not match the manifest's size and sha256: changed during the import")
            artifacts.publish(session, ArtifactKind.checkpoint, model_id, data)
        bump_version(session)
    return TransferSummary(
        rows={name: len(rows) for name, rows in decoded.items()}, checkpoints=len(checkpoints), revision=revision
    )


def _checkpoints(files: dict[str, dict[str, Any]], models: list[dict[str, Any]]) -> dict[str, str]:
    """Each model's checkpoint in the export (model id -> its name in the manifest), refused unless every model
    has exactly the checkpoint its row records (sha256) and every checkpoint belongs to a model."""
    found = {
        name.removeprefix(CHECKPOINTS).removesuffix(CHECKPOINT_SUFFIX): name
        for name in files
        if name.startswith(CHECKPOINTS)
    }
    recorded = {model["id"]: model["sha256"] for model in models}
    for model_id, sha256 in recorded.items():
        name = found.get(model_id)
        if name is None:
            raise TransferError(f"model {model_id}'s checkpoint is not in the export: it is incomplete")
        if files[name]["sha256"] != sha256:
            raise TransferError(f"{name} is not the checkpoint model {model_id} registered (its sha256 differs)")
    strays = sorted(name for model_id, name in found.items() if model_id not in recorded)
    if strays:
        raise TransferError(f"{', '.join(strays)}: checkpoints of no model in the export")
    return {model_id: found[model_id] for model_id in recorded}


def _current_revision(db: Database) -> str:
    revision = migrations.current_revision(db.engine)
    if revision is None or revision != migrations.head_revision():
        raise TransferError(
            f"the database is at schema revision {revision}, not the current one: run `fmnist db upgrade`"
        )
    return revision


def _entry(path: Path, **extra: int) -> dict[str, Any]:
    return {"sha256": file_sha256(path), "size_bytes": path.stat().st_size, **extra}


def _inside(folder: Path, path: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _now() -> str:
    return datetime.now().astimezone().isoformat()


def _encode(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """A row as JSON values: times as ISO 8601 with their offset, enums as their values."""
    encoded = {}
    for name, value in row.items():
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, enum.Enum):
            value = value.value
        encoded[name] = value
    return encoded


def _decode(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """A row back from JSON, typed by its table's columns; unknown columns are refused."""
    decoded = {}
    for name, value in row.items():
        if name not in table.columns:
            raise TransferError(f"table {table.name} has no column {name!r}: the export is from another schema")
        column_type = table.columns[name].type
        if value is not None and isinstance(column_type, UTCDateTime):
            value = datetime.fromisoformat(value)
        elif value is not None and getattr(column_type, "enum_class", None) is not None:
            value = column_type.enum_class(value)  # type: ignore[attr-defined]
        decoded[name] = value
    return decoded
