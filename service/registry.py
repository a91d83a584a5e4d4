"""The model registry: trained checkpoints, and aliases that name the one to serve.

A prediction asks for a model by id or by alias; without either it gets the ``production`` alias when
that is set, else the newest model.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import torch
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from torch import nn

from models.checkpoints import checkpoint_from_bytes
from models.export import onnx_bytes
from models.spec import TrainingSpec
from service.errors import AliasNotFound, InvalidAliasName, ModelInUse, ModelNotFound, NoModelYet
from service.store.artifacts import ArtifactCorrupt, ArtifactKind, ArtifactMissing, ArtifactStore
from service.store.db import Database, valid_key
from service.store.tables import Alias, Model, RegistryState, utcnow

log = logging.getLogger(__name__)

DEFAULT_ALIAS = "production"
ALIAS_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_MODEL_ID = re.compile(r"^[0-9a-f]{32}$")


def bump_version(session: Session) -> None:
    """Marks, inside the caller's transaction, that model references may resolve differently now.

    Alias and model changes call it first: the row lock it takes makes them one at a time on PostgreSQL,
    as BEGIN IMMEDIATE does on SQLite, so that what they read (is the alias there? does an alias name this
    model?) still holds when they write.
    """
    session.execute(update(RegistryState).where(RegistryState.id == 1).values(version=RegistryState.version + 1))


def register_model(session: Session, model: Model) -> None:
    """Adds ``model`` to the registry inside the caller's transaction (the one that ends its job ``succeeded``:
    both commit or neither does). A new model changes what "the newest model" resolves to: the version moves."""
    bump_version(session)
    session.add(model)


def current_version(db: Database) -> int:
    """The registry's version: a cheap read that tells a server whether its cached resolutions still hold."""
    with db.engine.connect() as connection:
        return int(connection.execute(_VERSION_QUERY).scalar_one())


_VERSION_QUERY = select(RegistryState.version).where(RegistryState.id == 1)


def get_model(db: Database, ref: str | None) -> Model:
    """The model ``ref`` names (an id or an alias); without one, ``production`` or else the newest model."""
    with db.read() as session:
        if ref is not None:
            model = session.get(Model, ref) if _MODEL_ID.match(ref) else None
            if model is None and valid_key(ref):
                alias = session.get(Alias, ref)
                model = session.get(Model, alias.model_id) if alias is not None else None
            if model is None:
                raise ModelNotFound(ref)
            return model
        alias = session.get(Alias, DEFAULT_ALIAS)
        if alias is not None:
            model = session.get(Model, alias.model_id)
            if model is not None:
                return model
        newest = session.scalars(select(Model).order_by(Model.created_at.desc(), Model.id.desc()).limit(1)).first()
    if newest is None:
        raise NoModelYet()
    return newest


def list_models(db: Database, limit: int, offset: int) -> tuple[Sequence[Model], int, dict[str, list[str]]]:
    """Models newest first, the total, and each listed model's aliases."""
    with db.read() as session:
        models = session.scalars(
            select(Model).order_by(Model.created_at.desc(), Model.id.desc()).limit(limit).offset(offset)
        ).all()
        total = session.scalar(select(func.count()).select_from(Model)) or 0
        aliases = _aliases_of(session, [model.id for model in models])
    return models, total, aliases


def aliases_of(db: Database, model_id: str) -> list[str]:
    with db.read() as session:
        return _aliases_of(session, [model_id]).get(model_id, [])


def _aliases_of(session: Session, model_ids: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for alias in session.scalars(select(Alias).where(Alias.model_id.in_(model_ids)).order_by(Alias.name)):
        found.setdefault(alias.model_id, []).append(alias.name)
    return found


def delete_model(db: Database, model_id: str, artifacts: ArtifactStore) -> None:
    """Removes the model with its checkpoint and ONNX export; refused while an alias points at it."""
    with db.write() as session:
        bump_version(session)
        model = session.get(Model, model_id) if _MODEL_ID.match(model_id) else None
        if model is None:
            raise ModelNotFound(model_id)
        pointing = session.scalars(select(Alias.name).where(Alias.model_id == model_id)).all()
        if pointing:
            raise ModelInUse(model_id, pointing)
        session.delete(model)
        # In the same transaction: a reader never finds a registered model without its checkpoint (files go
        # once it commits).
        for kind in (ArtifactKind.checkpoint, ArtifactKind.onnx):
            artifacts.forget(session, kind, [model_id])
    log.info("model %s deleted", model_id)


def checkpoint_of(db: Database, model: Model, artifacts: ArtifactStore) -> bytes:
    """The model's checkpoint (safetensors bytes), checked against the artifact's record and the model's own
    sha256. ArtifactMissing (a CheckpointError) when it is not there, ArtifactCorrupt when altered."""
    stored, data = artifacts.read(db, ArtifactKind.checkpoint, model.id)
    if stored.sha256 != model.sha256:
        raise ArtifactCorrupt(f"checkpoint {model.id} is not the one its model registered (sha256 differs)")
    return data


def load_model(
    db: Database, model: Model, artifacts: ArtifactStore, device: str | torch.device = "cpu"
) -> tuple[nn.Module, TrainingSpec]:
    """The model's module (in eval mode, on ``device``) and spec, from its checked checkpoint; CheckpointError
    when the checkpoint is missing, altered or not a valid one."""
    return checkpoint_from_bytes(checkpoint_of(db, model, artifacts), model.id, device=device)


def onnx_of(db: Database, model: Model, artifacts: ArtifactStore) -> bytes:
    """The model's ONNX export, made from its checkpoint on first request and kept as its ``onnx`` artifact."""
    try:
        return artifacts.read(db, ArtifactKind.onnx, model.id)[1]
    except ArtifactMissing:
        log.info("model %s: no ONNX export recorded; exporting it", model.id)
    module, _spec = load_model(db, model, artifacts)
    data = onnx_bytes(module)
    with db.write() as session:
        # The model's row locked (PostgreSQL; SQLite's writes are one at a time): two first requests publish once.
        if session.scalar(select(Model.id).where(Model.id == model.id).with_for_update()) is None:
            raise ModelNotFound(model.id)
        exported_meanwhile = bool(artifacts.recorded(session, ArtifactKind.onnx, [model.id]))
        if not exported_meanwhile:
            artifacts.publish(session, ArtifactKind.onnx, model.id, data)
            log.info("model %s exported to ONNX", model.id)
    return artifacts.read(db, ArtifactKind.onnx, model.id)[1] if exported_meanwhile else data


def store_evaluation(db: Database, model_id: str, evaluation: dict[str, Any]) -> None:
    """Keeps an evaluation computed after the model was registered (models.evaluation) on its row. What a model
    resolves to does not change: the version stays."""
    with db.write() as session:
        session.execute(update(Model).where(Model.id == model_id).values(evaluation=evaluation))


def check_alias_name(name: str) -> str:
    """``name`` if it can name an alias, else InvalidAliasName (a ValueError, so it serves as a pydantic validator)."""
    if not ALIAS_PATTERN.match(name) or _MODEL_ID.match(name):
        raise InvalidAliasName(name)
    return name


def set_alias(db: Database, name: str, model_ref: str) -> tuple[Alias, bool]:
    """Points ``name`` at a model (by id or by another alias); returns the alias and whether it is new."""
    check_alias_name(name)
    target = get_model(db, model_ref)
    now = utcnow()
    with db.write() as session:
        bump_version(session)
        if session.get(Model, target.id) is None:  # deleted since it was resolved
            raise ModelNotFound(model_ref)
        alias = session.get(Alias, name)
        created = alias is None
        if alias is None:
            alias = Alias(name=name, model_id=target.id, created_at=now, updated_at=now)
            session.add(alias)
        else:
            alias.model_id, alias.updated_at = target.id, now
        session.flush()
        return alias, created


def list_aliases(db: Database) -> Sequence[Alias]:
    with db.read() as session:
        return session.scalars(select(Alias).order_by(Alias.name)).all()


def get_alias(db: Database, name: str) -> Alias:
    with db.read() as session:
        alias = session.get(Alias, name) if valid_key(name) else None
    if alias is None:
        raise AliasNotFound(name)
    return alias


def delete_alias(db: Database, name: str) -> None:
    with db.write() as session:
        bump_version(session)
        alias = session.get(Alias, name) if valid_key(name) else None
        if alias is None:
            raise AliasNotFound(name)
        session.delete(alias)
