"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from service.api.deps import DatabaseDep
from service.schemas import HealthPublic, ReadyPublic
from service.store import migrations

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthPublic)
def healthz() -> HealthPublic:
    """The process is up."""
    return HealthPublic(status="ok")


@router.get("/readyz", response_model=ReadyPublic, responses={503: {"model": ReadyPublic}})
def readyz(db: DatabaseDep) -> ReadyPublic | JSONResponse:
    """The database answers and its schema is at the newest migration."""
    expected = migrations.head_revision()
    try:
        with db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        current = migrations.current_revision(db.engine)
    except SQLAlchemyError as exc:
        body = ReadyPublic(
            status="unavailable",
            database=f"unreachable: {type(exc).__name__}",
            schema_revision=None,
            expected_revision=expected,
        )
        return JSONResponse(body.model_dump(), status_code=503)
    if current != expected:
        body = ReadyPublic(
            status="unavailable",
            database="reachable; run `fmnist db upgrade`",
            schema_revision=current,
            expected_revision=expected,
        )
        return JSONResponse(body.model_dump(), status_code=503)
    return ReadyPublic(status="ok", database="reachable", schema_revision=current, expected_revision=expected)
