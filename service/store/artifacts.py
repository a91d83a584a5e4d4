"""Artifacts: the bytes the service trains and serves (model checkpoints, their ONNX exports, jobs' resume
states) behind one interface, kept as files in the home folder or as rows of the database.

Every artifact has a row in ``artifacts`` (service.store.tables.Artifact) with its sha256 and size, written in
the transaction that publishes it: a checkpoint in the one that registers its model and ends its job
(``queue.finish_job``), a resume state in the one that records its epoch (``queue.record_epoch``). Both are
guarded by the job's lease, so only the claim holding the current fencing token ever publishes one; a worker
that froze past its lease and wakes to publish finds its transaction refused. Every read checks the bytes
against the row: a tampered or truncated artifact raises ``ArtifactCorrupt``, it is never loaded.

Where the bytes go is the writer's setting (``FMNIST_ARTIFACTS``):

- ``folder`` (the default): files under ``$FMNIST_HOME`` (``checkpoints/<model>.safetensors``,
  ``checkpoints/<model>.onnx``, ``resume/<job>.<token>.<sha256 prefix>.safetensors``), written atomically
  before the publishing transaction commits and removed if it rolls back; a file the row no longer names (a
  superseded resume state, a forgotten artifact) is removed once the transaction that dropped it commits. A
  resume state's name carries its digest, so a newer state never overwrites the file an older row names.
  Several machines then need that folder shared.
- ``database``: the bytes are in the row itself, so they commit or roll back with it and a fleet shares
  nothing but the database URL.

Reading follows the row, whatever the reader's setting: bytes in the row are read from there, else from this
home's folder (``ArtifactMissing`` when the file is not there: another machine wrote it to its own folder).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, delete, event, select
from sqlalchemy.orm import Session

from models.checkpoints import CheckpointError
from models.files import bytes_sha256, write_atomic
from service.settings import Settings
from service.store.db import Database
from service.store.tables import Artifact, utcnow

log = logging.getLogger(__name__)

TOKEN_DIGITS = 12  # resume files: <job>.<token>.<digest>.safetensors, the token zero-padded
DIGEST_DIGITS = 16  # ... and the first hex digits of the state's sha256
# A resume file's name, as this store writes it and as releases before the store did (``<job>.safetensors``,
# ``<job>.<token>.safetensors``): retention finds the files no record names by it.
RESUME_FILE = re.compile(
    rf"(?P<job>[0-9a-f]{{32}})(\.\d{{{TOKEN_DIGITS}}}(\.[0-9a-f]{{{DIGEST_DIGITS}}})?)?\.safetensors"
)
# The temporary file of a resume state's write (models.files.write_atomic: ``.<file name>.<random>.tmp``), which a
# worker killed while writing leaves behind.
RESUME_TEMPORARY_FILE = re.compile(
    rf"\.(?P<job>[0-9a-f]{{32}})\.\d{{{TOKEN_DIGITS}}}\.[0-9a-f]{{{DIGEST_DIGITS}}}\.safetensors\.[^.]+\.tmp"
)


class ArtifactKind(StrEnum):
    """What an artifact is; its ``name`` is a model's id (checkpoint, onnx) or a job's id (resume)."""

    checkpoint = "checkpoint"
    onnx = "onnx"
    resume = "resume"


class ArtifactMissing(CheckpointError):
    """No artifact is recorded under this kind and name, or its file is not in this home's folder."""


class ArtifactCorrupt(CheckpointError):
    """The artifact's bytes do not match its recorded size or sha256 (tampered with, or truncated)."""


@dataclass(frozen=True)
class StoredArtifact:
    """An artifact's record: ``size_bytes`` in bytes; ``token`` the fencing token of a resume state's claim
    (None for other kinds); ``in_database`` whether its bytes are in its row (else a file in a home folder)."""

    kind: ArtifactKind
    name: str
    sha256: str
    size_bytes: int
    token: int | None = None
    in_database: bool = False


@dataclass(frozen=True)
class StagedArtifact:
    """An artifact ready to be recorded (``ArtifactStore.stage``): its record-to-be, and its bytes when they go
    into the database (None: its file is written already; ``owns_file``: written by this stage)."""

    stored: StoredArtifact
    data: bytes | None
    owns_file: bool


class ArtifactStore:
    """Publishes, reads and forgets artifacts; ``in_database`` chooses where new bytes go (module docstring).
    Files, when used, live in ``checkpoint_dir`` (checkpoints, ONNX exports) and ``resume_dir`` (resume states).
    """

    def __init__(self, checkpoint_dir: Path, resume_dir: Path, *, in_database: bool) -> None:
        self.checkpoint_dir, self.resume_dir, self.in_database = checkpoint_dir, resume_dir, in_database

    @classmethod
    def for_settings(cls, settings: Settings) -> ArtifactStore:
        return cls(settings.checkpoint_dir, settings.resume_dir, in_database=settings.artifacts == "database")

    # -- where files go ----------------------------------------------------------------------------------
    def path(self, kind: ArtifactKind, name: str, token: int | None = None, sha256: str = "") -> Path:
        """The file that holds the artifact's bytes when they are kept in the folder (a resume state's name
        has its claim's ``token`` and its ``sha256``'s first digits)."""
        if kind is ArtifactKind.checkpoint:
            return self.checkpoint_dir / f"{name}.safetensors"
        if kind is ArtifactKind.onnx:
            return self.checkpoint_dir / f"{name}.onnx"
        if not sha256:
            raise ValueError("a resume state's file is named by its sha256: give it")
        return self.resume_dir / f"{name}.{token or 0:0{TOKEN_DIGITS}d}.{sha256[:DIGEST_DIGITS]}.safetensors"

    def file_of(self, stored: StoredArtifact) -> Path:
        """The file of a recorded artifact kept in the folder."""
        return self.path(stored.kind, stored.name, stored.token, stored.sha256)

    # -- writing: staged before the transaction, recorded in it ------------------------------------------------
    @contextmanager
    def staging(
        self, kind: ArtifactKind, name: str, data: bytes, *, token: int | None = None
    ) -> Iterator[StagedArtifact]:
        """``stage`` for the block, which records the artifact in its transaction; ``unstage`` if it raises."""
        staged = self.stage(kind, name, data, token=token)
        try:
            yield staged
        except BaseException:
            self.unstage(staged)
            raise

    def stage(self, kind: ArtifactKind, name: str, data: bytes, *, token: int | None = None) -> StagedArtifact:
        """The first half of publishing, before the caller's transaction begins, so that no file is written
        while it holds the database's locks (SQLite has one write lock for every process): hashes ``data`` and,
        in the folder, writes its file atomically. A staged artifact that is never recorded (its transaction
        failed first) is removed with ``unstage``."""
        stored = StoredArtifact(kind, name, bytes_sha256(data), len(data), token, self.in_database)
        if self.in_database:
            return StagedArtifact(stored, data, owns_file=False)
        path = self.file_of(stored)
        # The same bytes already there are another record's (a state published again): never this stage's to
        # remove. A checkpoint must outlive a power cut once its model is registered; a resume state that one
        # damaged is only not resumed from (its digest no longer matches).
        owns_file = not path.exists()
        write_atomic(path, data, durable=kind is not ArtifactKind.resume)
        return StagedArtifact(stored, None, owns_file)

    def unstage(self, staged: StagedArtifact) -> None:
        """Removes what ``stage`` wrote for an artifact that was not recorded."""
        if staged.owns_file:
            self.file_of(staged.stored).unlink(missing_ok=True)

    def record(self, session: Session, staged: StagedArtifact) -> StoredArtifact:
        """Records a staged artifact in ``session``'s transaction, replacing the one recorded before under its
        kind and name (a resume state: the job's previous state, perhaps of an earlier claim's token). In the
        folder, its file is removed if the transaction rolls back, and the replaced artifact's file once it
        commits."""
        stored = staged.stored
        replaced = self._drop_rows(session, stored.kind, [stored.name])
        session.add(
            Artifact(
                kind=stored.kind.value,
                name=stored.name,
                token=stored.token,
                sha256=stored.sha256,
                size_bytes=stored.size_bytes,
                data=staged.data,
                created_at=utcnow(),
            )
        )
        new_file = [self.file_of(stored)] if staged.owns_file else []
        old_files = [self.file_of(old) for old in replaced if not old.in_database]
        self._after(
            session,
            commit=[path for path in old_files if path != self.file_of(stored)],
            rollback=[path for path in new_file if path not in old_files],
        )
        return stored

    def publish(
        self, session: Session, kind: ArtifactKind, name: str, data: bytes, *, token: int | None = None
    ) -> StoredArtifact:
        """``stage`` and ``record`` in one call, inside ``session``'s transaction: for writes whose time under
        the transaction's locks does not matter (an ONNX export, an import)."""
        with self.staging(kind, name, data, token=token) as staged:
            return self.record(session, staged)

    def forget(self, session: Session, kind: ArtifactKind, names: Iterable[str]) -> list[StoredArtifact]:
        """Drops the records of ``kind`` artifacts named ``names`` in ``session``'s transaction; once it commits,
        their files go, and so do the files under their names that no record named: a checkpoint's or ONNX
        export's written before records existed, and a job's resume states that a worker killed between writing
        one and recording it left behind, or while writing it (its temporary file). A job's resume state is
        dropped only once the job has ended (or is deleted): a write of one still under way is then a stale
        worker's, whose transaction the lease refuses anyway. Returns the records dropped."""
        names = list(names)
        dropped = self._drop_rows(session, kind, names)
        files = {self.file_of(old) for old in dropped if not old.in_database}
        if kind is ArtifactKind.resume:
            for name in names:
                files.update([*self.resume_files(name), *self.resume_files(name, temporary=True)])
        else:
            files.update(self.path(kind, name) for name in names)
        self._after(session, commit=sorted(files), rollback=[])
        return dropped

    def resume_files(self, job_id: str | None = None, *, temporary: bool = False) -> list[Path]:
        """Every resume file of the job (of every job, without ``job_id``) in this home's folder, recorded or not
        (names of earlier releases too); with ``temporary``, the temporary files of its writes instead, whatever
        their age (a write under way, or one a killed worker left)."""
        if not self.resume_dir.is_dir():
            return []
        pattern, glob = (
            (RESUME_TEMPORARY_FILE, f".{job_id or ''}*.tmp")
            if temporary
            else (RESUME_FILE, f"{job_id or ''}*.safetensors")
        )
        found = []
        for path in self.resume_dir.glob(glob):
            match = pattern.fullmatch(path.name)
            if match and job_id in (None, match.group("job")) and path.is_file():
                found.append(path)
        return sorted(found)

    def _drop_rows(self, session: Session, kind: ArtifactKind, names: list[str]) -> list[StoredArtifact]:
        if not names:
            return []
        # Read, then deleted: SQLite evaluates ``data IS NOT NULL`` in a DELETE's RETURNING as true for a NULL.
        which = (Artifact.kind == kind.value) & Artifact.name.in_(names)
        dropped = self._matching(session, kind, which, lock=True)
        if dropped:
            session.execute(delete(Artifact).where(which).execution_options(synchronize_session=False))
        return dropped

    def recorded(self, session: Session, kind: ArtifactKind, names: Iterable[str]) -> list[StoredArtifact]:
        """The records of the ``kind`` artifacts named ``names``, by name, read in ``session``: what ``forget``
        would drop there."""
        return self._matching(session, kind, (Artifact.kind == kind.value) & Artifact.name.in_(list(names)))

    @staticmethod
    def _matching(
        session: Session, kind: ArtifactKind, which: ColumnElement[bool], *, lock: bool = False
    ) -> list[StoredArtifact]:
        query = select(
            Artifact.name, Artifact.sha256, Artifact.size_bytes, Artifact.token, Artifact.data.is_not(None)
        ).where(which)
        # Locked (PostgreSQL) when about to be deleted: a publish replacing the row meanwhile waits for this one.
        rows = session.execute((query.with_for_update() if lock else query).order_by(Artifact.name)).all()
        return [StoredArtifact(kind, row[0], row[1], row[2], row[3], bool(row[4])) for row in rows]

    @staticmethod
    def _after(session: Session, *, commit: list[Path], rollback: list[Path]) -> None:
        """Removes ``commit`` once the session's transaction commits, ``rollback`` if it rolls back. Only at the
        top level: SQLAlchemy reports a savepoint's rollback as a rollback too, and the file would go while the
        outer transaction still commits its row."""
        if session.in_nested_transaction():
            raise RuntimeError("artifacts are published and forgotten outside savepoints (begin_nested)")

        def remove(paths: list[Path]) -> None:
            for path in paths:
                path.unlink(missing_ok=True)

        if commit:
            event.listen(session, "after_commit", lambda _session: remove(commit), once=True)
        if rollback:
            event.listen(session, "after_rollback", lambda _session: remove(rollback), once=True)

    # -- reading ----------------------------------------------------------------------------------------
    def stat(self, db: Database, kind: ArtifactKind, name: str) -> StoredArtifact | None:
        """The artifact's record, or None when none is recorded."""
        with db.read() as session:
            found = self.recorded(session, kind, [name])
        return found[0] if found else None

    def records(self, db: Database, kind: ArtifactKind) -> list[StoredArtifact]:
        """Every recorded artifact of ``kind``, by name."""
        with db.read() as session:
            return self._matching(session, kind, Artifact.kind == kind.value)

    def read(self, db: Database, kind: ArtifactKind, name: str) -> tuple[StoredArtifact, bytes]:
        """The artifact's record and its bytes, checked against the record. ArtifactMissing when none is recorded
        or its file is not in this home; ArtifactCorrupt when the bytes are not the recorded ones."""
        row = self._fetch(db, kind, name)
        if row is None:
            raise ArtifactMissing(f"{kind.value} {name} is not recorded")
        return self._loaded(kind, name, row)

    def _loaded(self, kind: ArtifactKind, name: str, row: Any) -> tuple[StoredArtifact, bytes]:
        """The record and checked bytes of a ``_fetch``ed row."""
        stored = StoredArtifact(kind, name, row[0], row[1], row[2], row[3] is not None)
        return stored, self._checked(stored, bytes(row[3]) if row[3] is not None else self._read_file(stored))

    @staticmethod
    def _fetch(db: Database, kind: ArtifactKind, name: str) -> Any:
        """The artifact's (sha256, size_bytes, token, data) row, or None."""
        if db.engine.dialect.name == "postgresql":
            # psycopg reads bytea in its text form (hex) unless the cursor asks for the binary one: a 30 MB
            # resume state took 189 ms instead of 48 (bench/artifacts.py). SQLAlchemy has no such option.
            with db.engine.connect() as connection:
                driver = connection.connection.driver_connection
                assert driver is not None
                with driver.cursor(binary=True) as cursor:
                    cursor.execute(
                        "SELECT sha256, size_bytes, token, data FROM artifacts WHERE kind = %s AND name = %s",
                        (kind.value, name),
                    )
                    return cursor.fetchone()
        with db.read() as session:
            return session.execute(
                select(Artifact.sha256, Artifact.size_bytes, Artifact.token, Artifact.data).where(
                    Artifact.kind == kind.value, Artifact.name == name
                )
            ).first()

    def _read_file(self, stored: StoredArtifact) -> bytes:
        path = self.file_of(stored)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ArtifactMissing(
                f"{stored.kind.value} {stored.name} is kept as a file ({path.name}) that is not in this home's "
                "folder: the process that wrote it keeps artifacts in its own folder (FMNIST_ARTIFACTS=folder); "
                "share that folder, or keep artifacts in the database (FMNIST_ARTIFACTS=database)"
            ) from None
        except OSError as exc:
            raise ArtifactMissing(f"{stored.kind.value} {stored.name} could not be read: {exc}") from exc

    @staticmethod
    def _checked(stored: StoredArtifact, data: bytes) -> bytes:
        if len(data) != stored.size_bytes or bytes_sha256(data) != stored.sha256:
            raise ArtifactCorrupt(
                f"{stored.kind.value} {stored.name} does not match its recorded sha256 "
                f"({len(data):,} bytes read, {stored.size_bytes:,} recorded): it was altered or truncated, "
                "and is not loaded"
            )
        return data

    def resume_state(self, db: Database, job_id: str, below_token: int) -> bytes | None:
        """The job's resume state when one was published under a fencing token below ``below_token`` (an
        earlier claim's), checked against its record; None when there is none, or it cannot be used (missing,
        altered: logged, and the attempt starts over)."""
        row = self._fetch(db, ArtifactKind.resume, job_id)
        token = None if row is None else row[2]
        if token is None or token >= below_token:
            return None
        try:
            _, data = self._loaded(ArtifactKind.resume, job_id, row)
        except CheckpointError as exc:
            log.warning("job %s: resume state not usable (%s); starting over", job_id, exc)
            return None
        return data
