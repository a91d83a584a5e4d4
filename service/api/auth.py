"""API keys: who may train, predict and administer.

A key is ``fmk_<id>_<secret>``: 256 random bits, shown once when it is created; the database keeps only
its SHA-256 (a fast hash is right for a random secret of that size) and looks it up by the id. Keys in
``FMNIST_API_KEYS`` (comma-separated, any strings) are admin keys that live only in the environment, for
bootstrapping. Presented keys are compared in constant time.

With no key anywhere, the API is open (for a laptop); once one exists every ``/v1`` route needs one. The
server reads the key table at most every ``CACHE_SECONDS``, so a new or revoked key takes effect within
that time without a database query per request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from service.errors import InvalidKeyRequest, KeyNotFound, MissingScope, Unauthenticated
from service.store.db import Database
from service.store.tables import ApiKey, utcnow

if TYPE_CHECKING:
    from service.api.ratelimit import RateLimits

SCOPES = ("train", "predict", "admin")
RATE_COUNTED = "fmnist.rate_counted"  # the ASGI scope's key: the scopes this request was counted against
KEY_PREFIX = "fmk_"
CACHE_SECONDS = 2.0
_KEY_FORMAT = re.compile(r"fmk_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")
_NAME = re.compile(r"[\w .@-]{1,128}")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's id and scopes; ``key_id`` None when the API runs without keys."""

    key_id: str | None
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


ANONYMOUS = Principal(None, frozenset(SCOPES))


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(db: Database, name: str, scopes: list[str]) -> tuple[ApiKey, str]:
    """Stores a new key; returns its row and the key itself, which is never shown again."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise InvalidKeyRequest(f"scopes must be some of {', '.join(SCOPES)}; got {', '.join(scopes) or 'none'}")
    if not _NAME.fullmatch(name):
        raise InvalidKeyRequest("a key's name is 1-128 letters, digits, spaces or . @ _ -")
    key_id = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    row = ApiKey(
        id=key_id,
        name=name,
        key_sha256=key_digest(key),
        scopes=sorted(set(scopes), key=SCOPES.index),
        created_at=utcnow(),
    )
    with db.write() as session:
        session.add(row)
    return row, key


def list_keys(db: Database) -> list[ApiKey]:
    with db.read() as session:
        return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)).all())


def revoke_key(db: Database, key_id: str) -> ApiKey:
    with db.write() as session:
        row = session.get(ApiKey, key_id)
        if row is None:
            raise KeyNotFound(key_id)
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        return row


def has_active_key(db: Database, environment_keys: list[str]) -> bool:
    if environment_keys:
        return True
    with db.read() as session:
        return session.scalars(select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)).first() is not None


class KeyStore:
    """Verifies presented keys against the environment's and the database's, the latter cached."""

    def __init__(self, db: Database, environment_keys: list[str]) -> None:
        self.db = db
        self._environment = [(f"env-{n}", key_digest(key)) for n, key in enumerate(environment_keys, start=1)]
        self._stored: dict[str, tuple[str, frozenset[str]]] = {}  # id -> (sha256, scopes), active keys only
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    @property
    def stale(self) -> bool:
        return time.monotonic() - self._read_at > CACHE_SECONDS

    def refresh(self) -> None:
        with self._lock:
            if not self.stale:
                return
            with self.db.read() as session:
                rows = session.execute(
                    select(ApiKey.id, ApiKey.key_sha256, ApiKey.scopes).where(ApiKey.revoked_at.is_(None))
                ).all()
            self._stored = {row.id: (row.key_sha256, frozenset(row.scopes)) for row in rows}
            self._read_at = time.monotonic()

    @property
    def enabled(self) -> bool:
        return bool(self._environment or self._stored)

    def verify(self, key: str) -> Principal | None:
        digest = key_digest(key)
        match = _KEY_FORMAT.fullmatch(key)
        if match is not None:
            stored = self._stored.get(match.group(1))
            if stored is not None and hmac.compare_digest(stored[0], digest):
                return Principal(match.group(1), stored[1])
        found = None
        for key_id, expected in self._environment:  # every one compared: the time says nothing
            if hmac.compare_digest(expected, digest):
                found = Principal(key_id, frozenset(SCOPES))
        return found


def require(scope: str) -> Callable[[Request], Awaitable[Principal]]:
    """A route dependency: the caller's Principal, refused without a key (401) or the scope (403), or past the
    scope's rate limit for that key (429, ``service.api.ratelimit``)."""

    async def dependency(request: Request) -> Principal:
        store: KeyStore = request.app.state.keys
        limits: RateLimits = request.app.state.rate_limits
        if store.stale:
            await run_in_threadpool(store.refresh)
        principal = _presented_key(request, store, scope) if store.enabled else ANONYMOUS
        # Counted against the scope's rate limit once, though this check may run twice for a request (the
        # prediction path checks the key before it reads the body, and may then hand the request to the route).
        # Without keys the key id is None: each client address is counted.
        counted: set[str] = request.scope.setdefault(RATE_COUNTED, set())
        if scope not in counted:
            limits.check(scope, principal.key_id, request)
            counted.add(scope)
        return principal

    dependency.__name__ = f"require_{scope}"
    return dependency


def _presented_key(request: Request, store: KeyStore, scope: str) -> Principal:
    """The principal of the key the request presents; Unauthenticated (401) without a known one, MissingScope
    (403) when it lacks ``scope``."""
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthenticated("this server needs an API key: send the header `Authorization: Bearer <key>`")
    principal = store.verify(presented.strip())
    if principal is None:
        raise Unauthenticated("the API key is not known or has been revoked")
    if not principal.allows(scope):
        raise MissingScope(f"this API key lacks the `{scope}` scope (it has: {', '.join(sorted(principal.scopes))})")
    return principal


# One callable per scope, so that a route naming one and its router naming it too share one check.
TRAIN = require("train")
PREDICT = require("predict")
ADMIN = require("admin")

TrainCaller = Annotated[Principal, Depends(TRAIN)]
PredictCaller = Annotated[Principal, Depends(PREDICT)]


async def models_scope(request: Request) -> Principal:
    """Reading models and aliases needs `predict`; changing them (PUT, DELETE) needs `admin`."""
    return await (PREDICT if request.method in ("GET", "HEAD") else ADMIN)(request)
