"""Ownership: a job, sweep or study belongs to the API key that created it (its ``owner`` column).

Reading stays open to every key with the scope, so that a team shares its results, unless
``FMNIST_OWNER_ONLY_READS`` is set: then a key reads only its own (another key's is a 404, as if it did not
exist, and listings leave it out), and an admin key reads everything. Changing one (cancel, tags and note,
delete) is for its owner or an admin key; any other key gets a 403 that names the owner's key (or the 404,
when reads are owner-only). With no keys at all (the open laptop mode) everyone is the anonymous admin. A row
created while the server had no keys has no owner: once keys exist, only an admin key changes or (owner-only)
reads it.
"""

from __future__ import annotations

from fastapi import Request
from sqlalchemy import select

from service.api.auth import Principal, TrainCaller
from service.api.deps import DatabaseDep, SettingsDep
from service.errors import JobNotFound, NotOwner, StudyNotFound, SweepNotFound
from service.store.db import Database
from service.store.tables import ApiKey, Job, Study, Sweep

_KINDS: dict[str, tuple[type[Job] | type[Sweep] | type[Study], type[JobNotFound | SweepNotFound | StudyNotFound]]] = {
    "job": (Job, JobNotFound),
    "sweep": (Sweep, SweepNotFound),
    "study": (Study, StudyNotFound),
}


def reads_restricted(settings_owner_only: bool, caller: Principal) -> bool:
    """Whether ``caller`` reads only its own runs: reads are owner-only and it is neither an admin key nor the
    open mode's anonymous caller."""
    return settings_owner_only and caller.key_id is not None and "admin" not in caller.scopes


def listing_owner(settings: SettingsDep, caller: TrainCaller) -> str | None:
    """A route dependency: the key whose runs alone a listing shows (FMNIST_OWNER_ONLY_READS), None for all."""
    return caller.key_id if reads_restricted(settings.owner_only_reads, caller) else None


def ensure_readable(db: Database, caller: Principal, owner_only: bool, kind: str, row_id: str) -> None:
    """Returns when ``caller`` may read the ``kind`` ``row_id``; raises its not-found error otherwise (an
    unknown id, or, with owner-only reads, another key's)."""
    if not reads_restricted(owner_only, caller):
        return  # the route itself answers 404 for an unknown id
    table, not_found = _KINDS[kind]
    with db.read() as session:
        owner = session.scalar(select(table.owner).where(table.id == row_id))
    if owner is None or owner != caller.key_id:
        raise not_found(row_id)


_PATH_KINDS = (("job_id", "job"), ("sweep_id", "sweep"), ("study_id", "study"))


def readable(request: Request, caller: TrainCaller, db: DatabaseDep, settings: SettingsDep) -> None:
    """A router dependency for the run routes: with owner-only reads, the job, sweep or study the path names,
    and each job a comparison's ``jobs`` lists, must be the caller's (404 otherwise, naming them), whatever the
    route then does with it."""
    if not reads_restricted(settings.owner_only_reads, caller):
        return
    for parameter, kind in _PATH_KINDS:
        row_id = request.path_params.get(parameter)
        if row_id is not None:
            ensure_readable(db, caller, True, kind, str(row_id))
    compared = request.query_params.get("jobs")
    if compared:
        ids = list(dict.fromkeys(compared.split(",")))
        with db.read() as session:
            mine = set(session.scalars(select(Job.id).where(Job.id.in_(ids), Job.owner == caller.key_id)))
        hidden = [job_id for job_id in ids if job_id not in mine]
        if hidden:
            raise JobNotFound(*hidden)


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
