"""Ownership: a job, sweep or study belongs to the API key that created it (its ``owner`` column).

Reading stays open to every key with the scope, so that a team shares its results. Changing one (cancel,
tags and note) is for its owner or an admin key; any other key gets a 403 that names the owner's key. With
no keys at all (the open laptop mode) everyone is the anonymous admin. A row created while the server had no
keys has no owner: once keys exist, only an admin key changes it.
"""

from __future__ import annotations

from sqlalchemy import select

from service.api.auth import Principal
from service.errors import JobNotFound, NotOwner, StudyNotFound, SweepNotFound
from service.store.db import Database
from service.store.tables import ApiKey, Job, Study, Sweep

_KINDS: dict[str, tuple[type[Job] | type[Sweep] | type[Study], type[JobNotFound | SweepNotFound | StudyNotFound]]] = {
    "job": (Job, JobNotFound),
    "sweep": (Sweep, SweepNotFound),
    "study": (Study, StudyNotFound),
}


def ensure_owner(db: Database, caller: Principal, kind: str, row_id: str, action: str) -> None:
    """Returns when ``caller`` may ``action`` (a verb: "cancel", "label") the ``kind`` ("job", "sweep" or
    "study") ``row_id``. Raises its not-found error for an unknown id, and ``NotOwner`` (403) naming the
    owner's key when the caller is neither the owner nor an admin key."""
    table, not_found = _KINDS[kind]
    if caller.key_id is None or "admin" in caller.scopes:
        return  # the open mode's anonymous caller, or an admin: no row read needed (the route reports a 404)
    with db.read() as session:
        found = session.execute(select(table.owner).where(table.id == row_id)).first()
        if found is None:
            raise not_found(row_id)
        owner = found.owner
        if owner == caller.key_id:
            return
        name = None if owner is None else session.scalar(select(ApiKey.name).where(ApiKey.id == owner))
    raise NotOwner(kind, row_id, owner, name, action)
